// Typed failures the client reports: server error events, HTTP problems, WebSocket protocol
// errors, lost connections and contract violations all become one `StreamError` value.
import type { ErrorCode, ProtocolError, ProtocolErrorCode } from "./contract.js";

export type ClientErrorCode =
  | ErrorCode
  | ProtocolErrorCode
  | "connection_lost"
  | "http_error"
  | "contract_violation"
  | "streaming_disabled"
  | "not_found"
  | "too_large";

export interface StreamError {
  code: ClientErrorCode;
  message: string;
  /** Whether starting again may succeed (for limits: once `retryAt` has passed). */
  retryable: boolean;
  /** HTTP status, when the failure was an HTTP response. */
  status?: number;
  /** The input field at fault, when the server named one. */
  field?: string;
  /** How long the server asked the client to wait. */
  retryAfterMs?: number;
  /** When the learner may try again (epoch ms), computed from `retryAfterMs` on arrival. */
  retryAt?: number;
  /** `input_flagged` / `output_flagged`: the moderation categories (e.g. `profanity`, `self-harm`). */
  categories?: string[];
  /** What the stream showed must be removed: moderation flagged text already sent (async mode). */
  retract?: boolean;
}

/** Why a single connection ended; the session decides whether to reconnect. */
export interface TransportFailure {
  /** Reconnecting (resuming) may help: the network, not the request, failed. */
  transient: boolean;
  error: StreamError;
}

/** Refusals that come from a limit of the learner's, so the learner must be told when to come back. */
export const LIMIT_CODES: ReadonlySet<ClientErrorCode> = new Set(["rate_limited", "budget_exhausted"]);

export function connectionLost(message: string): TransportFailure {
  return { transient: true, error: { code: "connection_lost", message, retryable: true } };
}

export function contractViolation(message: string): TransportFailure {
  return { transient: false, error: { code: "contract_violation", message, retryable: true } };
}

function withRetryAt(error: StreamError): StreamError {
  return error.retryAfterMs === undefined ? error : { ...error, retryAt: Date.now() + error.retryAfterMs };
}

/** Maps a non-2xx HTTP answer (ideally `application/problem+json`) to a failure. */
export async function failureFromResponse(response: Response): Promise<TransportFailure> {
  let body: { code?: unknown; detail?: unknown; title?: unknown; field?: unknown; retry_after_ms?: unknown; categories?: unknown } = {};
  try {
    body = (await response.json()) as typeof body;
  } catch {
    // Not JSON (a proxy's HTML page, say): the status alone has to do.
  }
  const status = response.status;
  const message =
    (typeof body.detail === "string" && body.detail) || (typeof body.title === "string" && body.title) || `HTTP ${status}`;
  const field = typeof body.field === "string" ? body.field : undefined;
  const serverCode = typeof body.code === "string" ? body.code : undefined;
  const code = codeFor(status, serverCode);
  // A 5xx (except a deliberate "streaming disabled") is the server's trouble: reconnecting may
  // help. A 429 is the learner's limit: waiting helps, hammering does not, so it ends the stream
  // and the learner is told when to try again.
  const transient = status >= 500 && serverCode !== "streaming_disabled";
  const retryable = transient || LIMIT_CODES.has(code);
  const error: StreamError = { code, message, retryable, status, field, retryAfterMs: retryAfterOf(response, body.retry_after_ms) };
  if (Array.isArray(body.categories) && body.categories.every((c) => typeof c === "string")) error.categories = body.categories;
  return { transient, error: withRetryAt(error) };
}

/** A WebSocket `protocol_error` as a failure of the stream it names. */
export function failureFromProtocolError(error: ProtocolError): TransportFailure {
  return {
    // The store being unreachable is the server's trouble, as a 503 over HTTP: retry (resume or
    // start again with the same ref). Over the WebSocket, `rate_limited` is also how a full
    // server says "not now" (with a second's retry_after_ms); like a limit, it ends the stream
    // and the learner decides.
    transient: error.code === "store_unavailable" && error.retryable,
    error: withRetryAt({
      code: error.code,
      message: error.message,
      retryable: error.retryable,
      field: error.field,
      retryAfterMs: error.retry_after_ms,
    }),
  };
}

/** A server `error` event as the stream's error. */
export function errorFromEvent(event: {
  code: ErrorCode;
  message: string;
  retryable: boolean;
  retry_after_ms?: number;
  categories?: string[];
  retract?: boolean;
}): StreamError {
  const error: StreamError = { code: event.code, message: event.message, retryable: event.retryable, retryAfterMs: event.retry_after_ms };
  if (event.categories) error.categories = event.categories;
  if (event.retract) error.retract = true;
  return withRetryAt(error);
}

function retryAfterOf(response: Response, bodyMs: unknown): number | undefined {
  if (typeof bodyMs === "number" && Number.isFinite(bodyMs) && bodyMs >= 0) return bodyMs;
  const seconds = Number(response.headers.get("retry-after") ?? NaN);
  return Number.isFinite(seconds) && seconds >= 0 ? seconds * 1000 : undefined;
}

const SERVER_CODES: ReadonlySet<string> = new Set<ClientErrorCode>([
  "unauthorized",
  "forbidden_origin",
  "rate_limited",
  "budget_exhausted",
  "streaming_disabled",
  "stream_not_found",
  "input_flagged",
  "output_flagged",
  "moderation_unavailable",
]);

function codeFor(status: number, serverCode: string | undefined): ClientErrorCode {
  if (serverCode !== undefined && SERVER_CODES.has(serverCode)) return serverCode as ClientErrorCode;
  if (status === 401) return "unauthorized";
  if (status === 404) return "not_found";
  if (status === 413) return "too_large";
  if (status === 422 || status === 400) return "bad_request";
  if (status === 429) return "rate_limited";
  return "http_error";
}
