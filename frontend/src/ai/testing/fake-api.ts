// A scriptable in-memory stand-in for the live-ai HTTP API, for unit tests: the test
// decides which bytes each SSE response carries, where they split, and when a link drops.
import type { AIConfig, StreamEvent } from "../contract";

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
    this.sendText(events.map(sseFrame).join(""));
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
  private nextStream = 1;
  private readonly keys = new Map<string, string>();
  private readonly waiters: Array<() => void> = [];
  private readonly extraRoutes: Route[] = [];

  route(handler: Route): void {
    this.extraRoutes.push(handler);
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
    for (const handler of this.extraRoutes) {
      const response = await handler(request);
      if (response) return response;
    }
    const path = url.pathname;
    if (path === "/api/ai/config") return json(200, this.config);
    if (path === "/api/streams" && request.method === "POST") {
      const key = request.headers.get("idempotency-key") ?? `anon-${this.nextStream}`;
      const known = this.keys.get(key);
      if (known) return json(200, { stream_id: known });
      const streamId = `s${this.nextStream++}`;
      this.keys.set(key, streamId);
      return json(201, { stream_id: streamId });
    }
    if (/^\/api\/streams\/[^/]+\/events$/.test(path)) {
      const status = this.eventStatuses.shift() ?? 200;
      if (status !== 200) return new Response(null, { status });
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
    return json(404, { type: "about:blank", title: "Not Found", status: 404, detail: "no route", code: "not_found" });
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

export function json(status: number, body: unknown, contentType = "application/json"): Response {
  return new Response(JSON.stringify(body), { status, headers: { "content-type": contentType } });
}
