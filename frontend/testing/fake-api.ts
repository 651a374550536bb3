// A scriptable in-memory stand-in for the live-ai HTTP API, for unit tests: the test
// decides which bytes each SSE response carries, where they split, and when a link drops.
// Events go through the contract's validators on the way out (`sendEvents`), and its answers
// follow the server's: problem+json bodies, a start body with only the fields live-ai takes (422
// otherwise), 201/200 for idempotent starts, 202 for cancel,
// 204 for a resume from a finished stream's terminal event (`finished`), and, with
// `requireToken`, 401 + `WWW-Authenticate: Bearer` for a missing or wrong token.
import { checkStreamEvent, type AIConfig, type StreamEvent } from "@live-ai/client";

export const TEST_CONFIG: AIConfig = {
  streaming_enabled: true,
  streaming_backend: "sse",
  provider: "demo",
  model: "demo-model",
  demo: true,
  resume_grace_seconds: 30,
  keepalive_seconds: 15,
  blocks: ["ask-question", "explain-eli10", "quiz", "diagram"],
};

export interface RecordedRequest {
  method: string;
  url: URL;
  headers: Headers;
  body: string | undefined;
  signal: AbortSignal | undefined;
}

/** One open SSE response; the test pushes bytes into it. */
export class FakeSseResponse {
  private controller!: ReadableStreamDefaultController<Uint8Array>;
  readonly body = new ReadableStream<Uint8Array>({
    start: (controller) => (this.controller = controller),
  });
  constructor(readonly request: RecordedRequest) {}

  sendText(text: string): void {
    this.controller.enqueue(new TextEncoder().encode(text));
  }
  sendBytes(bytes: Uint8Array): void {
    this.controller.enqueue(bytes);
  }
  sendEvents(...events: StreamEvent[]): void {
    this.sendText(events.map((event) => sseFrame(checkStreamEvent(event))).join(""));
  }
  /** The network drops mid-response. */
  drop(): void {
    this.controller.error(new TypeError("network error"));
  }
  end(): void {
    this.controller.close();
  }
}

export function sseFrame(event: StreamEvent): string {
  return `id: ${event.stream_id}:${event.seq}\nevent: ${event.type}\ndata: ${JSON.stringify(event)}\n\n`;
}

type Route = (request: RecordedRequest) => Response | undefined | Promise<Response | undefined>;

export class FakeApi {
  config: AIConfig = { ...TEST_CONFIG };
  readonly requests: RecordedRequest[] = [];
  readonly eventResponses: FakeSseResponse[] = [];
  /** Status for GET events responses; the first entries are used up first. */
  eventStatuses: number[] = [];
  /**
   * Streams that ended, by id, with the seq of their terminal event: a resume from exactly that
   * seq gets 204 No Content, as live-ai answers a client that already holds the end.
   */
  readonly finished = new Map<string, number>();
  private nextStream = 1;
  private readonly keys = new Map<string, string>();
  private readonly waiters: Array<() => void> = [];
  private readonly extraRoutes: Route[] = [];
  private acceptedTokens: ReadonlySet<string> | undefined;

  route(handler: Route): void {
    this.extraRoutes.push(handler);
  }

  /** From now on, every API request but the config needs `Authorization: Bearer <one of tokens>`. */
  requireToken(...tokens: string[]): void {
    this.acceptedTokens = new Set(tokens);
  }

  readonly fetch = async (input: RequestInfo | URL, init: RequestInit = {}): Promise<Response> => {
    const url = new URL(String(input), "http://test.local");
    const request: RecordedRequest = {
      method: init.method ?? "GET",
      url,
      headers: new Headers(init.headers),
      body: typeof init.body === "string" ? init.body : undefined,
      signal: init.signal ?? undefined,
    };
    this.requests.push(request);
    if (request.signal?.aborted) throw new DOMException("aborted", "AbortError");
    const path = url.pathname;
    if (this.acceptedTokens && path !== "/api/ai/config") {
      const token = request.headers.get("authorization")?.replace(/^Bearer /, "");
      if (!token || !this.acceptedTokens.has(token)) return unauthorized();
    }
    for (const handler of this.extraRoutes) {
      const response = await handler(request);
      if (response) return response;
    }
    if (path === "/api/ai/config") return json(200, this.config);
    if (path === "/api/streams" && request.method === "POST") {
      const refused = refusedStart(request.body);
      if (refused) return refused;
      const key = request.headers.get("idempotency-key") ?? `anon-${this.nextStream}`;
      const known = this.keys.get(key);
      if (known) return json(200, { stream_id: known });
      const streamId = `s${this.nextStream++}`;
      this.keys.set(key, streamId);
      // As live-ai with auth: a read token for EventSource/curl readers, which this client ignores.
      return json(201, { stream_id: streamId, read_token: `rt-${streamId}`, read_token_expires_at: "2030-01-01T00:00:00Z" });
    }
    if (/^\/api\/streams\/[^/]+\/events$/.test(path)) {
      const terminalSeq = this.finished.get(decodeURIComponent(path.split("/")[3]!));
      const after = url.searchParams.get("after");
      if (terminalSeq !== undefined && after !== null && Number(after) === terminalSeq) return new Response(null, { status: 204 });
      const status = this.eventStatuses.shift() ?? 200;
      if (status !== 200) return status === 204 ? new Response(null, { status }) : problem(status, "http_error", `HTTP ${status}`);
      const response = new FakeSseResponse(request);
      this.eventResponses.push(response);
      request.signal?.addEventListener("abort", () => {
        try {
          response.drop();
        } catch {
          // already closed
        }
      });
      this.waiters.splice(0).forEach((wake) => wake());
      return new Response(response.body, {
        status: 200,
        headers: { "content-type": "text/event-stream" },
      });
    }
    if (/^\/api\/streams\/[^/]+$/.test(path) && request.method === "DELETE") {
      return json(202, { stream_id: path.split("/").pop(), state: "cancelling" });
    }
    return problem(404, "not_found", "no route");
  };

  /** Resolves with the n-th (0-based) events response once the client has opened it. */
  async eventResponse(index: number): Promise<FakeSseResponse> {
    while (this.eventResponses.length <= index) {
      await new Promise<void>((wake) => this.waiters.push(wake));
    }
    return this.eventResponses[index]!;
  }

  requestsTo(method: string, pathPattern: RegExp): RecordedRequest[] {
    return this.requests.filter((r) => r.method === method && pathPattern.test(r.url.pathname));
  }
}

/** The fields of a `POST /api/streams` body; live-ai refuses any other (serde's deny_unknown_fields). */
const CREATE_STREAM_FIELDS = new Set(["block_type", "input", "fresh"]);

/**
 * live-ai's refusal of a start body it cannot take, as axum's JSON extractor words it (422,
 * `bad_request`): an unknown field, or a `fresh` that is not a boolean. The block's input is
 * checked by the server too, but unit tests send valid ones.
 */
function refusedStart(body: string | undefined): Response | undefined {
  let parsed: unknown;
  try {
    parsed = JSON.parse(body ?? "");
  } catch {
    return problem(400, "bad_request", "Failed to parse the request body as JSON");
  }
  if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) return problem(422, "bad_request", "invalid type: expected struct CreateStream");
  const unknown = Object.keys(parsed).find((field) => !CREATE_STREAM_FIELDS.has(field));
  if (unknown !== undefined) return problem(422, "bad_request", `Failed to deserialize the JSON body into the target type: unknown field \`${unknown}\``);
  const fresh = (parsed as { fresh?: unknown }).fresh;
  if (fresh !== undefined && typeof fresh !== "boolean") return problem(422, "bad_request", "Failed to deserialize the JSON body into the target type: fresh: invalid type, expected a boolean");
  return undefined;
}

export function json(status: number, body: unknown, contentType = "application/json"): Response {
  return new Response(JSON.stringify(body), { status, headers: { "content-type": contentType } });
}

/** An `application/problem+json` answer, as live-ai's error.rs writes them. */
export function problem(status: number, code: string, detail: string, extra: Record<string, unknown> = {}, headers: Record<string, string> = {}): Response {
  return new Response(JSON.stringify({ type: "about:blank", title: detail, status, detail, code, ...extra }), {
    status,
    headers: { "content-type": "application/problem+json", ...headers },
  });
}

/** The 401 of issue 8's contract: problem+json `unauthorized` with `WWW-Authenticate: Bearer`. */
export function unauthorized(): Response {
  return problem(401, "unauthorized", "missing or invalid credentials", {}, { "www-authenticate": "Bearer" });
}

/** The 429 of issue 8's contract: `retry_after_ms` in the body, `Retry-After` and `RateLimit-*` headers. */
export function limited(code: "rate_limited" | "budget_exhausted", retryAfterMs: number): Response {
  const seconds = String(Math.ceil(retryAfterMs / 1000));
  return problem(429, code, code === "rate_limited" ? "too many starts" : "today's token budget is used up", { retry_after_ms: retryAfterMs }, {
    "retry-after": seconds,
    "ratelimit-limit": "30",
    "ratelimit-remaining": "0",
    "ratelimit-reset": seconds,
  });
}
