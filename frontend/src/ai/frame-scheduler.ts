// Coalesces many updates into one notification per animation frame.

/** Schedules `callback` once; returns a function that cancels it. */
export type FrameScheduler = (callback: () => void) => () => void;

export const animationFrameScheduler: FrameScheduler = (callback) => {
  if (typeof globalThis.requestAnimationFrame === "function") {
    const handle = globalThis.requestAnimationFrame(callback);
    return () => globalThis.cancelAnimationFrame(handle);
  }
  // No frames outside a browser (node, some test environments): about one per 60 Hz frame.
  const handle = setTimeout(callback, 16);
  return () => clearTimeout(handle);
};
