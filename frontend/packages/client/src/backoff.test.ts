// Backoff delays: exponential growth, the cap, and the jitter range.
import { describe, expect, it } from "vitest";
import { backoffDelay, DEFAULT_BACKOFF } from "./backoff.js";

describe("backoffDelay", () => {
  const policy = { ...DEFAULT_BACKOFF, initialMs: 100, maxMs: 1_000 };

  it.each([
    [1, 0, 50],
    [1, 0.999999, 100],
    [2, 0, 100],
    [3, 0.5, 300],
    [4, 0, 400],
    [5, 0, 500], // 1600 capped at 1000
    [9, 1 - 1e-9, 1_000],
  ])("attempt %i with random %f waits %i ms", (attempt, random, expected) => {
    expect(backoffDelay(policy, attempt, () => random)).toBe(expected);
  });

  it("spreads clients out between half and all of the ceiling", () => {
    const delays = Array.from({ length: 200 }, () => backoffDelay(policy, 3));
    expect(Math.min(...delays)).toBeGreaterThanOrEqual(200);
    expect(Math.max(...delays)).toBeLessThanOrEqual(400);
    expect(new Set(delays).size).toBeGreaterThan(10);
  });
});
