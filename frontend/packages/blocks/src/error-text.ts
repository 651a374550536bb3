// What a learner reads when a block fails: one table from error code to plain words (and to the
// label of the button that starts again), which a host replaces entry by entry through
// `ErrorMessagesProvider` or a block's `errorMessages` prop; for limits, the time they can try
// again ("in 12 s" for a short wait, the UTC clock time for a budget that resets). Codes the
// table does not know (a newer server's) read as the server's own message.
import type { ClientErrorCode, StreamError } from "@live-ai/client";

/** Waits up to this long are counted down in seconds; longer ones are given as a clock time. */
const COUNTDOWN_LIMIT_MS = 5 * 60_000;

export interface ErrorMessage {
  /** The sentence shown; a function gets the error and, for limits, when to try again ("try again in 12 s"). */
  text: string | ((error: StreamError, when: string | undefined) => string);
  /** The label of the button that starts the block again (default "Retry"). */
  action?: string;
}

/** Messages by error code; any code, so a host can word codes this version does not know yet. */
export type ErrorMessages = Partial<Record<ClientErrorCode, ErrorMessage>> & Record<string, ErrorMessage | undefined>;

export const DEFAULT_ERROR_MESSAGES: ErrorMessages = {
  budget_exhausted: { text: (_error, when) => `You've used today's AI budget — ${when ?? "try again tomorrow"}.` },
  rate_limited: { text: (_error, when) => `Too many requests — ${when ?? "try again in a moment"}.` },
  unauthorized: { text: "You're signed out of the AI service — sign in again, then retry." },
  forbidden_origin: { text: "This page is not allowed to use the AI service." },
  stream_not_found: { text: "This answer has expired and can no longer be shown.", action: "Ask again" },
  // Moderation: kind words for a learner (often a child); never the flagged text, never blame.
  input_flagged: { text: "Let's ask that in a different way — this question can't be answered here." },
  output_flagged: {
    text: (error) =>
      error.retract
        ? "We took that answer away because it wasn't right for this lesson. Try asking in a different way."
        : "We stopped that answer because it wasn't right for this lesson. Try asking in a different way.",
  },
  moderation_unavailable: { text: "We couldn't check this answer is safe just now, so it isn't shown. Please try again in a moment." },
};

/** The sentence for `error` at time `now` (epoch ms), from `messages` over the defaults. */
export function errorText(error: StreamError, now: number, messages: ErrorMessages = DEFAULT_ERROR_MESSAGES): string {
  const message = messageFor(error, messages);
  if (!message) return error.field ? `${error.message} (field: ${error.field})` : error.message;
  if (typeof message.text === "string") return message.text;
  const wait = error.retryAt === undefined ? undefined : Math.max(0, error.retryAt - now);
  return message.text(error, whenText(error.retryAt, wait));
}

/** The label of the button that starts a failed block again. */
export function errorAction(error: StreamError, messages: ErrorMessages = DEFAULT_ERROR_MESSAGES): string {
  return messageFor(error, messages)?.action ?? "Retry";
}

function messageFor(error: StreamError, messages: ErrorMessages): ErrorMessage | undefined {
  return messages[error.code] ?? (messages === DEFAULT_ERROR_MESSAGES ? undefined : DEFAULT_ERROR_MESSAGES[error.code]);
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
