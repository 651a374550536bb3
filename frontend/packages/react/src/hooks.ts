// useAIStreaming (any block, picked per start) and useAIBlockStreaming (one block, typed):
// the stream's state plus start / cancel / detach / retry, with stable identities.
import { useMemo } from "react";
import type { BlockInputs, BlockResults, BlockStreamOptions, BlockStreamState, BlockType, StreamState } from "@live-ai/client";
import { useBlockStream } from "./use-block-stream.js";

export interface StreamActions<Start extends (...args: never[]) => unknown, Result> {
  /** Starts a new generation (cancelling one still running); resolves with its final result. */
  start: Start;
  /** Stops the generation on the server. */
  cancel(): void;
  /** Stops listening; the generation goes on on the server and can be resumed. */
  detach(): void;
  /** Starts the last request again, as a new generation. */
  retry(): Promise<Result>;
}

export type AIStreaming = StreamState &
  StreamActions<<B extends BlockType>(blockType: B, input: BlockInputs[B]) => Promise<BlockResults[B]>, BlockResults[BlockType]>;

export type AIBlockStreaming<B extends BlockType> = BlockStreamState<B> &
  StreamActions<(input: BlockInputs[B]) => Promise<BlockResults[B]>, BlockResults[B]>;

/** Streams any block; `start(blockType, input)` picks it per call. */
export function useAIStreaming(options: BlockStreamOptions = {}): AIStreaming {
  const { stream, state } = useBlockStream(options);
  const actions = useMemo(
    () => ({
      start: <B extends BlockType>(blockType: B, input: BlockInputs[B]) =>
        stream.start(blockType, input as BlockInputs[BlockType]) as Promise<BlockResults[B]>,
      cancel: () => stream.cancel(),
      detach: () => stream.detach(),
      retry: () => stream.retry(),
    }),
    [stream],
  );
  return { ...state, ...actions };
}

/** Streams one block type: `start(input)` takes that block's input, `result` is that block's result. */
export function useAIBlockStreaming<B extends BlockType>(blockType: B, options: BlockStreamOptions<B> = {}): AIBlockStreaming<B> {
  const { stream, state } = useBlockStream(options, blockType);
  const actions = useMemo(
    () => ({
      start: (input: BlockInputs[B]) => stream.start(blockType, input),
      cancel: () => stream.cancel(),
      detach: () => stream.detach(),
      retry: () => stream.retry(),
    }),
    [stream, blockType],
  );
  return { ...(state as BlockStreamState<B>), ...actions };
}
