// When a stream's store publishes: coalesces many updates into one notification per animation
// frame (the default), or at most one per N milliseconds (the `throttle` option).

/** Schedules `callback` once; returns a function that cancels it. */
export type FrameScheduler = (callback: () => void) => () => void;

/** How often a block's state is published: per animation frame, or at most once per N ms. */
export type Throttle = "frame" | number;

export const animationFrameScheduler: FrameScheduler = (callback) => {
  if (typeof globalThis.requestAnimationFrame === "function") {
    const handle = globalThis.requestAnimationFrame(callback);
    return () => globalThis.cancelAnimationFrame(handle);
  }
  // No frames outside a browser (node, some test environments): about one per 60 Hz frame.
  const handle = setTimeout(callback, 16);
  return () => clearTimeout(handle);
};

/**
 * At most one publication per `intervalMs`: the first change after a quiet spell is published
 * on the next tick, later ones wait for the interval to run out, so a burst is never delayed
 * by more than one interval.
 */
export function intervalScheduler(intervalMs: number): FrameScheduler {
  let lastRun = -Infinity;
  return (callback) => {
    const wait = Math.max(0, lastRun + intervalMs - Date.now());
    const handle = setTimeout(() => {
      lastRun = Date.now();
      callback();
    }, wait);
    return () => clearTimeout(handle);
  };
}

export function schedulerFor(throttle: Throttle = "frame"): FrameScheduler {
  if (throttle === "frame") return animationFrameScheduler;
  if (!Number.isFinite(throttle) || throttle < 0) throw new RangeError(`throttle must be "frame" or milliseconds ≥ 0, not ${throttle}`);
  return intervalScheduler(throttle);
}
