// React bindings over the stream client: each hook owns one BlockStream and reads its store
// with useSyncExternalStore, so a block re-renders at most once per animation frame.
import {
  createContext,
  createElement,
  useContext,
  useEffect,
  useLayoutEffect,
  useMemo,
  useRef,
  useState,
  useSyncExternalStore,
} from "react";
import type { ReactNode } from "react";
import { BlockStream, type BlockStreamOptions } from "./block-stream";
import type { BlockInputs, BlockType } from "./contract";
import type { StreamState } from "./stream-store";
import { getDefaultStreamClient, type StreamClient } from "./streamClient";

export type { StreamState } from "./stream-store";
export type { BlockStreamOptions } from "./block-stream";

const StreamClientContext = createContext<StreamClient | null>(null);

/** Gives the hooks below a specific client (tests, another origin); the default is page-wide. */
export function StreamClientProvider(props: { client: StreamClient; children?: ReactNode }) {
  return createElement(StreamClientContext.Provider, { value: props.client }, props.children);
}

export interface AIStreaming extends StreamState {
  start<B extends BlockType>(blockType: B, input: BlockInputs[B]): void;
  cancel(): void;
  retry(): void;
}

export interface AIBlockStreaming<B extends BlockType> extends StreamState {
  start(input: BlockInputs[B]): void;
  cancel(): void;
  retry(): void;
}

/** Streams any block; `start(blockType, input)` picks it per call. */
export function useAIStreaming(options: BlockStreamOptions = {}): AIStreaming {
  const client = useContext(StreamClientContext) ?? getDefaultStreamClient();
  // The controller reads the latest options (callbacks, mode) through this ref, so callers
  // may pass inline functions without restarting anything.
  const latestOptions = useRef(options);
  useLayoutEffect(() => {
    latestOptions.current = options;
  });
  const [stream] = useState(() => new BlockStream(client, () => latestOptions.current));
  useEffect(() => () => stream.dispose(), [stream]);
  const state = useSyncExternalStore(stream.subscribe, stream.getSnapshot, stream.getSnapshot);
  const actions = useMemo(
    () => ({
      start: <B extends BlockType>(blockType: B, input: BlockInputs[B]) => stream.start(blockType, input),
      cancel: () => stream.cancel(),
      retry: () => stream.retry(),
    }),
    [stream],
  );
  return { ...state, ...actions };
}

/** Streams one block type; `start(input)` takes that block's input. */
export function useAIBlockStreaming<B extends BlockType>(
  blockType: B,
  options: BlockStreamOptions = {},
): AIBlockStreaming<B> {
  const streaming = useAIStreaming(options);
  const { start: startAny } = streaming;
  const start = useMemo(() => (input: BlockInputs[B]) => startAny(blockType, input), [startAny, blockType]);
  return { ...streaming, start };
}
