// Render counting for the browser benchmark, active only when the page URL has `?bench`:
// each block counts its commits into `window.__liveAiBench.renders[blockType]`.
import { useLayoutEffect } from "react";

export interface BenchCounters {
  renders: Record<string, number>;
}

declare global {
  interface Window {
    __liveAiBench?: BenchCounters;
  }
}

export function enableBenchCounters(): void {
  window.__liveAiBench ??= { renders: {} };
}

/** Counts every commit of the calling component (a no-op unless the bench is enabled). */
export function useRenderCounter(id: string): void {
  useLayoutEffect(() => {
    const counters = window.__liveAiBench;
    if (counters) counters.renders[id] = (counters.renders[id] ?? 0) + 1;
  });
}
