// The one place React meets the core: a BlockStream per component, read with
// useSyncExternalStore (so a block re-renders at most once per published snapshot), given the
// latest options through a ref (so inline callbacks never restart anything), resumed on mount
// when `resume: true`, and released on unmount.
import { useEffect, useLayoutEffect, useRef, useState, useSyncExternalStore } from "react";
import { BlockStream, type BlockStreamOptions, type BlockType, type StreamState } from "@live-ai/client";
import { useStreamClient } from "./provider.js";

export function useBlockStream<B extends BlockType>(
  options: BlockStreamOptions<B>,
  blockType?: B,
): { stream: BlockStream<B>; state: StreamState } {
  const client = useStreamClient();
  const latestOptions = useRef(options);
  useLayoutEffect(() => {
    latestOptions.current = options;
  });
  const [stream] = useState(() => new BlockStream<B>(client, () => latestOptions.current, blockType));
  useEffect(() => {
    stream.resumeStored();
    return () => stream.dispose();
  }, [stream]);
  const state = useSyncExternalStore(stream.subscribe, stream.getSnapshot, stream.getSnapshot);
  return { stream, state };
}
