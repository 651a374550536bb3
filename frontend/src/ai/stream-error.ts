// Typed failures the client reports: server error events, HTTP problems, lost connections
// and contract violations all become one `StreamError` value with a `retryable` flag.
import type { ErrorCode } from "./contract";

export type ClientErrorCode =
  | ErrorCode
  | "connection_lost"
  | "http_error"
  | "contract_violation"
  | "streaming_disabled"
  | "not_found"
  | "too_large";

export interface StreamError {
  code: ClientErrorCode;
  message: string;
  retryable: boolean;
  /** HTTP status, when the failure was an HTTP response. */
  status?: number;
  /** The input field at fault, when the server named one. */
  field?: string;
  retryAfterMs?: number;
}

/** Why a single connection ended; the session decides whether to reconnect. */
export interface TransportFailure {
  /** Reconnecting (resuming) may help: the network, not the request, failed. */
  transient: boolean;
  error: StreamError;
}

export function connectionLost(message: string): TransportFailure {
  return { transient: true, error: { code: "connection_lost", message, retryable: true } };
}

export function contractViolation(message: string): TransportFailure {
  return { transient: false, error: { code: "contract_violation", message, retryable: true } };
}

/** Maps a non-2xx HTTP answer (ideally `application/problem+json`) to a failure. */
export async function failureFromResponse(response: Response): Promise<TransportFailure> {
  let body: { code?: unknown; detail?: unknown; title?: unknown; field?: unknown } = {};
  try {
    body = (await response.json()) as typeof body;
  } catch {
    // Not JSON (a proxy's HTML page, say): the status alone has to do.
  }
  const status = response.status;
  const message =
    (typeof body.detail === "string" && body.detail) ||
    (typeof body.title === "string" && body.title) ||
    `HTTP ${status}`;
  const field = typeof body.field === "string" ? body.field : undefined;
  const retryAfter = Number(response.headers.get("retry-after"));
  const retryAfterMs = Number.isFinite(retryAfter) && retryAfter > 0 ? retryAfter * 1000 : undefined;
  const serverCode = typeof body.code === "string" ? body.code : undefined;
  // 5xx (except a deliberate "streaming disabled") and 429 are worth retrying; 4xx are not.
  const transient = (status >= 500 && serverCode !== "streaming_disabled") || status === 429;
  return {
    transient,
    error: {
      code: codeForStatus(status, serverCode),
      message,
      retryable: transient,
      status,
      field,
      retryAfterMs,
    },
  };
}

function codeForStatus(status: number, serverCode: string | undefined): ClientErrorCode {
  if (serverCode === "streaming_disabled") return "streaming_disabled";
  if (status === 404) return "not_found";
  if (status === 413) return "too_large";
  if (status === 422 || status === 400) return "bad_request";
  if (status === 429) return "rate_limited";
  return "http_error";
}
