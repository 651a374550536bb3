"use client";
// Where a block gets its stream: from the host (`stream`, made with useAIBlockStreaming, when the
// host wants the start() promise, the callbacks or the state itself) or its own.
import { useAIBlockStreaming, type AIBlockStreaming } from "@live-ai/react";
import type { BlockStreamOptions, BlockType } from "@live-ai/client";
import type { BlockLabels } from "./block-labels.js";
import type { ErrorMessages } from "./error-text.js";

export interface BlockProps<B extends BlockType> {
  /** Options of the block's own stream (throttle, callbacks, resume…); unused when `stream` is given. */
  options?: BlockStreamOptions<B>;
  /** The host's stream for this block type, from `useAIBlockStreaming`. */
  stream?: AIBlockStreaming<B>;
  /** Rewords error codes for this block, over an `ErrorMessagesProvider`'s table. */
  errorMessages?: ErrorMessages;
  /** Rewords this block's labels ("answered for your class"), over a `BlockLabelsProvider`'s table. */
  labels?: Partial<BlockLabels>;
}

export function useBlockStreamOf<B extends BlockType>(blockType: B, props: BlockProps<B>): AIBlockStreaming<B> {
  // Hooks run unconditionally; an unused own stream is idle and costs no request.
  const own = useAIBlockStreaming(blockType, props.options);
  return props.stream ?? own;
}
