// Reconnect delays: exponential backoff with "equal jitter", so a crowd of clients that lost
// the same server does not come back in lockstep, yet no client retries instantly.

export interface BackoffPolicy {
  initialMs: number;
  maxMs: number;
  factor: number;
  /** Reconnect attempts in a row (without a single event in between) before giving up. */
  maxAttempts: number;
}

export const DEFAULT_BACKOFF: BackoffPolicy = {
  initialMs: 250,
  maxMs: 8_000,
  factor: 2,
  maxAttempts: 10,
};

/** Delay before reconnect attempt `attempt` (1-based); `random` returns [0, 1). */
export function backoffDelay(
  policy: BackoffPolicy,
  attempt: number,
  random: () => number = Math.random,
): number {
  const ceiling = Math.min(policy.maxMs, policy.initialMs * policy.factor ** (attempt - 1));
  return Math.round(ceiling / 2 + random() * (ceiling / 2));
}
