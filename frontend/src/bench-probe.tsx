// Render counting for the browser benchmark: only mounted when the page URL has `?bench`,
// it counts React commits per block and exposes them on `window.__liveAiBench`.
import { Profiler, type ReactNode } from "react";

export interface BenchCounters {
  renders: Record<string, number>;
}

declare global {
  interface Window {
    __liveAiBench?: BenchCounters;
  }
}

export function BenchProbe({ id, children }: { id: string; children: ReactNode }) {
  const counters = (window.__liveAiBench ??= { renders: {} });
  return (
    <Profiler id={id} onRender={() => (counters.renders[id] = (counters.renders[id] ?? 0) + 1)}>
      {children}
    </Profiler>
  );
}
