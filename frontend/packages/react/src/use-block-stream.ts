"use client";
// The one place React meets the core: a BlockStream per component, read with
// useSyncExternalStore (so a block re-renders at most once per published snapshot), given the
// latest options through a ref (so inline callbacks never restart anything), resumed on mount
// when `resume: true`, and released on unmount.
//
// Release waits for the end of the current task: React StrictMode unmounts and mounts every
// component once more, synchronously, in development; a release that ran at once would cancel
// the stream a mount effect just started (and the effect, run again, would start a second).
import { useEffect, useRef, useState, useSyncExternalStore } from "react";
import { useIsomorphicLayoutEffect } from "./layout-effect.js";
import { BlockStream, type BlockStreamOptions, type BlockType, type StreamState } from "@live-ai/client";
import { useStreamClient } from "./provider.js";

export function useBlockStream<B extends BlockType>(
  options: BlockStreamOptions<B>,
  blockType?: B,
): { stream: BlockStream<B>; state: StreamState } {
  const client = useStreamClient();
  const latestOptions = useRef(options);
  useIsomorphicLayoutEffect(() => {
    latestOptions.current = options;
  });
  const [stream] = useState(() => new BlockStream<B>(client, () => latestOptions.current, blockType));
  const release = useRef<{ pending: boolean } | undefined>(undefined);
  useEffect(() => {
    if (release.current?.pending) {
      // Mounted again before the release ran (StrictMode): the stream simply goes on.
      release.current.pending = false;
    } else {
      stream.resumeStored();
    }
    return () => {
      const pending = { pending: true };
      release.current = pending;
      queueMicrotask(() => {
        if (pending.pending) stream.dispose();
        pending.pending = false;
      });
    };
  }, [stream]);
  const state = useSyncExternalStore(stream.subscribe, stream.getSnapshot, stream.getSnapshot);
  return { stream, state };
}
