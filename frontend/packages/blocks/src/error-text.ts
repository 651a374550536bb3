// What a learner reads when a block fails: plain words per error code, and for limits the time
// they can try again ("in 12 s" for a short wait, the UTC clock time for a budget that resets).
import type { StreamError } from "@live-ai/client";

/** Waits up to this long are counted down in seconds; longer ones are given as a clock time. */
const COUNTDOWN_LIMIT_MS = 5 * 60_000;

export function errorText(error: StreamError, now: number): string {
  const wait = error.retryAt === undefined ? undefined : Math.max(0, error.retryAt - now);
  switch (error.code) {
    case "budget_exhausted":
      return `You've used today's AI budget — ${whenText(error.retryAt, wait) ?? "try again tomorrow"}.`;
    case "rate_limited":
      return `Too many requests — ${whenText(error.retryAt, wait) ?? "try again in a moment"}.`;
    case "unauthorized":
      return "You're signed out of the AI service — sign in again, then retry.";
    case "forbidden_origin":
      return "This page is not allowed to use the AI service.";
    default:
      return error.field ? `${error.message} (field: ${error.field})` : error.message;
  }
}

function whenText(retryAt: number | undefined, wait: number | undefined): string | undefined {
  if (retryAt === undefined || wait === undefined) return undefined;
  if (wait === 0) return "you can try again now";
  if (wait <= COUNTDOWN_LIMIT_MS) return `try again in ${Math.ceil(wait / 1000)} s`;
  const at = new Date(retryAt);
  const clock = `${String(at.getUTCHours()).padStart(2, "0")}:${String(at.getUTCMinutes()).padStart(2, "0")} UTC`;
  return `try again at ${clock}`;
}

/** Whether the Retry button may be pressed yet. */
export function canRetryAt(error: StreamError, now: number): boolean {
  return error.retryable && (error.retryAt === undefined || error.retryAt <= now);
}
