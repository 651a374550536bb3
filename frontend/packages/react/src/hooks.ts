"use client";
// useAIStreaming (any block, picked per start) and useAIBlockStreaming (one block, typed):
// the stream's state plus start / cancel / detach / resume / retry / reset, with stable identities.
import { useMemo } from "react";
import {
  isLoadingStatus,
  type BlockInputs,
  type BlockResults,
  type BlockStartOptions,
  type BlockStreamOptions,
  type BlockStreamState,
  type BlockType,
  type StreamState,
} from "@live-ai/client";
import { useBlockStream } from "./use-block-stream.js";

export interface StreamActions<Start extends (...args: never[]) => unknown, Result> {
  /**
   * Starts a stream (cancelling one still running); resolves with its final result, or rejects
   * with an AIBlockError (its `code`: the stream's error, "cancelled" or "detached"). It always
   * settles, unmount included (then "cancelled", or "detached" with `resume: true`). On a server
   * that coalesces, a classmate's identical request may answer it (`shared` / `cached` in the
   * state); `{ fresh: true }` asks for a generation of its own.
   */
  start: Start;
  /** Stops the generation on the server. */
  cancel(): void;
  /** Stops listening; the generation goes on on the server, the status becomes "detached", and `resume()` continues it. */
  detach(): void;
  /**
   * Re-attaches to a stream: the one detached from (after what is shown) by default, or one of
   * the learner's by id (from its first event). Resolves with its result.
   */
  resume(streamId?: string): Promise<Result>;
  /** Starts the last request again, as it was asked (`fresh` included). */
  retry(): Promise<Result>;
  /** Back to idle: a stream still running is cancelled, nothing is kept to retry or resume. */
  reset(): void;
}

/** Whether a stream is under way (connecting, streaming or reconnecting). */
export interface Loading {
  isLoading: boolean;
}

export type AIStreaming = StreamState &
  Loading &
  StreamActions<<B extends BlockType>(blockType: B, input: BlockInputs[B], options?: BlockStartOptions) => Promise<BlockResults[B]>, BlockResults[BlockType]>;

export type AIBlockStreaming<B extends BlockType> = BlockStreamState<B> &
  Loading &
  StreamActions<(input: BlockInputs[B], options?: BlockStartOptions) => Promise<BlockResults[B]>, BlockResults[B]>;

/** Streams any block; `start(blockType, input)` picks it per call. */
export function useAIStreaming(options: BlockStreamOptions = {}): AIStreaming {
  const { stream, state } = useBlockStream(options);
  const actions = useMemo(
    () => ({
      start: <B extends BlockType>(blockType: B, input: BlockInputs[B], options?: BlockStartOptions) =>
        stream.start(blockType, input as BlockInputs[BlockType], options) as Promise<BlockResults[B]>,
      cancel: () => stream.cancel(),
      detach: () => stream.detach(),
      resume: (streamId?: string) => stream.resume(streamId),
      retry: () => stream.retry(),
      reset: () => stream.reset(),
    }),
    [stream],
  );
  return { ...state, isLoading: isLoadingStatus(state.status), ...actions };
}

/** Streams one block type: `start(input)` takes that block's input, `result` is that block's result. */
export function useAIBlockStreaming<B extends BlockType>(blockType: B, options: BlockStreamOptions<B> = {}): AIBlockStreaming<B> {
  const { stream, state } = useBlockStream(options, blockType);
  const actions = useMemo(
    () => ({
      start: (input: BlockInputs[B], options?: BlockStartOptions) => stream.start(blockType, input, options),
      cancel: () => stream.cancel(),
      detach: () => stream.detach(),
      resume: (streamId?: string) => stream.resume(streamId),
      retry: () => stream.retry(),
      reset: () => stream.reset(),
    }),
    [stream, blockType],
  );
  return { ...(state as BlockStreamState<B>), isLoading: isLoadingStatus(state.status), ...actions };
}
