import { afterEach, describe, expect, it, vi } from "vitest";
import type { StreamEvent } from "./contract";
import { StreamClient, type StreamHandlers, type StreamStatus } from "./streamClient";
import { FakeApi, json, sseFrame } from "./testing/fake-api";
import { SAMPLE_QUESTION, streamEvents } from "./testing/events";

/** Records everything the handlers see, in order. */
function recorder() {
  const log: string[] = [];
  const statuses: StreamStatus[] = [];
  let text = "";
  const handlers: StreamHandlers = {
    onStatus: (status) => statuses.push(status),
    onStart: (event) => log.push(`start:${event.provider}`),
    onChunk: (event) => {
      log.push(`chunk:${event.seq}`);
      text += event.token;
    },
    onPart: (event) => log.push(`part:${event.index}`),
    onError: (error, event) => log.push(`error:${error.code}:${event ? "server" : "client"}`),
    onComplete: () => log.push("complete"),
    onCancelled: (event) => log.push(`cancelled:${event ? event.reason : "local"}`),
  };
  return { handlers, log, statuses, text: () => text };
}

function client(api: FakeApi, extra: Partial<ConstructorParameters<typeof StreamClient>[0]> = {}) {
  return new StreamClient({ fetch: api.fetch, random: () => 0.5, ...extra });
}

afterEach(() => {
  vi.useRealTimers();
});

describe("StreamClient over SSE", () => {
  it("delivers every event type, in order, to its handler", async () => {
    const api = new FakeApi();
    const r = recorder();
    const handle = client(api).start("quiz", { topic: "volcanoes" }, r.handlers);
    const response = await api.eventResponse(0);
    const e = streamEvents("s1");
    response.sendEvents(
      e.start("quiz"),
      e.chunk("Q1"),
      e.part(0, SAMPLE_QUESTION),
      e.chunk(" done"),
      e.complete({ questions: [SAMPLE_QUESTION] }),
    );
    response.end();
    const outcome = await handle.done;
    expect(outcome.status).toBe("complete");
    expect(r.log).toEqual(["start:demo", "chunk:1", "part:0", "chunk:3", "complete"]);
    expect(r.text()).toBe("Q1 done");
    expect(r.statuses).toEqual(["connecting", "streaming", "complete"]);
    expect(handle.streamId).toBe("s1");
    const [post] = api.requestsTo("POST", /^\/api\/streams$/);
    expect(JSON.parse(post!.body!)).toEqual({ block_type: "quiz", input: { topic: "volcanoes" } });
    expect(post!.headers.get("idempotency-key")).toMatch(/^[0-9a-f]{32}$/);
  });

  it("reports a server error event as a terminal error carrying retryable", async () => {
    const api = new FakeApi();
    const r = recorder();
    const handle = client(api).start("ask-question", { question: "Why?" }, r.handlers);
    const e = streamEvents("s1");
    (await api.eventResponse(0)).sendEvents(e.start(), e.chunk("a"), e.error("rate_limited", true));
    const outcome = await handle.done;
    expect(outcome).toMatchObject({ status: "error", error: { code: "rate_limited", retryable: true } });
    expect(r.log).toEqual(["start:demo", "chunk:1", "error:rate_limited:server"]);
  });

  it("reports a server cancelled event", async () => {
    const api = new FakeApi();
    const r = recorder();
    const handle = client(api).start("ask-question", { question: "Why?" }, r.handlers);
    const e = streamEvents("s1");
    (await api.eventResponse(0)).sendEvents(e.start(), e.cancelled("abandoned"));
    expect(await handle.done).toMatchObject({ status: "cancelled", event: { reason: "abandoned" } });
    expect(r.statuses.at(-1)).toBe("cancelled");
  });

  it("parses events split at every byte boundary, including inside multi-byte UTF-8", async () => {
    const e = streamEvents("s1");
    const tokens = ["Vulkane ", "spucken 🌋 ", "Läva—", "数据", " ok"];
    const events: StreamEvent[] = [e.start(), ...tokens.map((t) => e.chunk(t)), e.complete({ markdown: tokens.join("") })];
    const bytes = new TextEncoder().encode(": keep-alive\n\n" + events.map(sseFrame).join(""));
    for (const step of [1, 2, 3, 5, 7, 13]) {
      const api = new FakeApi();
      const r = recorder();
      const handle = client(api).start("explain-eli10", { topic: "volcanoes" }, r.handlers);
      const response = await api.eventResponse(0);
      for (let offset = 0; offset < bytes.length; offset += step) {
        response.sendBytes(bytes.slice(offset, offset + step));
      }
      response.end();
      expect((await handle.done).status).toBe("complete");
      expect(r.text()).toBe(tokens.join(""));
    }
  });

  it("accepts CRLF line endings", async () => {
    const api = new FakeApi();
    const r = recorder();
    const handle = client(api).start("explain-eli10", { topic: "rain" }, r.handlers);
    const e = streamEvents("s1");
    const response = await api.eventResponse(0);
    response.sendText([e.start(), e.chunk("hi"), e.complete()].map(sseFrame).join("").replace(/\n/g, "\r\n"));
    expect((await handle.done).status).toBe("complete");
    expect(r.text()).toBe("hi");
  });

  it("resumes after a dropped connection with Last-Event-ID, dropping replayed duplicates", async () => {
    const api = new FakeApi();
    const r = recorder();
    const handle = client(api, { backoff: { initialMs: 1, maxMs: 2 } }).start(
      "ask-question",
      { question: "Why is the sky blue?" },
      r.handlers,
    );
    const e = streamEvents("s1");
    const all = [e.start(), e.chunk("The "), e.chunk("sky "), e.chunk("is "), e.chunk("blue."), e.complete()];
    const first = await api.eventResponse(0);
    first.sendEvents(...all.slice(0, 3));
    await vi.waitFor(() => expect(r.log).toContain("chunk:2"));
    first.drop();

    const second = await api.eventResponse(1);
    expect(second.request.headers.get("last-event-id")).toBe("s1:2");
    expect(second.request.url.searchParams.get("after")).toBe("2");
    // A server may replay from earlier than asked; the client still shows each token once.
    second.sendEvents(...all.slice(1));
    second.end();
    expect((await handle.done).status).toBe("complete");
    expect(r.text()).toBe("The sky is blue.");
    expect(r.log).toEqual(["start:demo", "chunk:1", "chunk:2", "chunk:3", "chunk:4", "complete"]);
    expect(r.statuses).toEqual(["connecting", "streaming", "reconnecting", "streaming", "complete"]);
    expect(api.requestsTo("POST", /^\/api\/streams$/)).toHaveLength(1);
  });

  it("treats a gap in seq as a lost connection and resumes from the last seq held", async () => {
    const api = new FakeApi();
    const r = recorder();
    const handle = client(api, { backoff: { initialMs: 1, maxMs: 2 } }).start(
      "ask-question",
      { question: "q" },
      r.handlers,
    );
    const e = streamEvents("s1");
    const all = [e.start(), e.chunk("a"), e.chunk("b"), e.chunk("c"), e.complete()];
    (await api.eventResponse(0)).sendEvents(all[0]!, all[1]!, all[3]!);
    const second = await api.eventResponse(1);
    expect(second.request.headers.get("last-event-id")).toBe("s1:1");
    second.sendEvents(...all.slice(2));
    expect((await handle.done).status).toBe("complete");
    expect(r.text()).toBe("abc");
  });

  it("resumes when the server ends the response before a terminal event", async () => {
    const api = new FakeApi();
    const r = recorder();
    const handle = client(api, { backoff: { initialMs: 1, maxMs: 2 } }).start(
      "ask-question",
      { question: "q" },
      r.handlers,
    );
    const e = streamEvents("s1");
    const first = await api.eventResponse(0);
    first.sendEvents(e.start(), e.chunk("a"));
    first.end();
    (await api.eventResponse(1)).sendEvents(e.chunk("b"), e.complete());
    expect((await handle.done).status).toBe("complete");
    expect(r.text()).toBe("ab");
  });

  it("retries a failed start with the same idempotency key, so no second generation is paid for", async () => {
    const api = new FakeApi();
    let failures = 1;
    api.route((request) => {
      if (request.method === "POST" && failures-- > 0) throw new TypeError("Failed to fetch");
      return undefined;
    });
    const r = recorder();
    const handle = client(api, { backoff: { initialMs: 1, maxMs: 2 } }).start("diagram", { description: "rain" }, r.handlers);
    const e = streamEvents("s1");
    (await api.eventResponse(0)).sendEvents(e.start("diagram"), e.complete({ kind: "flowchart", source: "graph TD; A-->B" }));
    expect((await handle.done).status).toBe("complete");
    const posts = api.requestsTo("POST", /^\/api\/streams$/);
    expect(posts).toHaveLength(2);
    expect(posts[0]!.headers.get("idempotency-key")).toBe(posts[1]!.headers.get("idempotency-key"));
  });

  it("backs off exponentially with jitter between reconnect attempts, then gives up", async () => {
    vi.useFakeTimers({ toFake: ["setTimeout", "clearTimeout"] });
    const api = new FakeApi();
    api.route((request) => {
      if (request.url.pathname.endsWith("/events")) throw new TypeError("Failed to fetch");
      return undefined;
    });
    const r = recorder();
    const handle = client(api, {
      backoff: { initialMs: 100, maxMs: 1_000, factor: 2, maxAttempts: 4 },
      random: () => 0,
    }).start("ask-question", { question: "q" }, r.handlers);
    const eventRequests = () => api.requestsTo("GET", /\/events$/).length;
    await vi.advanceTimersByTimeAsync(0);
    expect(eventRequests()).toBe(1);
    // With random() = 0 the delays are half the ceiling: 50, 100, 200, 400 ms.
    for (const [delay, expected] of [[50, 2], [100, 3], [200, 4], [400, 5]] as const) {
      await vi.advanceTimersByTimeAsync(delay - 1);
      expect(eventRequests()).toBe(expected - 1);
      await vi.advanceTimersByTimeAsync(1);
      expect(eventRequests()).toBe(expected);
    }
    const outcome = await handle.done;
    expect(outcome).toMatchObject({ status: "error", error: { code: "connection_lost", retryable: true } });
    expect(r.statuses).toEqual(["connecting", "reconnecting", "error"]);
    expect(vi.getTimerCount()).toBe(0);
  });

  it("treats a silent connection as lost once no event or keep-alive arrives in time", async () => {
    vi.useFakeTimers({ toFake: ["setTimeout", "clearTimeout"] });
    const api = new FakeApi();
    const r = recorder();
    const handle = client(api, { idleTimeoutMs: 1_000, backoff: { initialMs: 10, maxMs: 10 } }).start(
      "ask-question",
      { question: "q" },
      r.handlers,
    );
    const e = streamEvents("s1");
    await vi.advanceTimersByTimeAsync(0);
    const first = await api.eventResponse(0);
    first.sendEvents(e.start());
    await vi.advanceTimersByTimeAsync(900);
    first.sendText(": keep-alive\n\n");
    await vi.advanceTimersByTimeAsync(900);
    expect(api.eventResponses).toHaveLength(1);
    await vi.advanceTimersByTimeAsync(200);
    expect(r.statuses).toContain("reconnecting");
    await vi.advanceTimersByTimeAsync(10);
    const second = await api.eventResponse(1);
    expect(second.request.headers.get("last-event-id")).toBe("s1:0");
    second.sendEvents(e.complete());
    await vi.advanceTimersByTimeAsync(0);
    expect((await handle.done).status).toBe("complete");
  });

  it("reconnects at once when the browser comes back online", async () => {
    const api = new FakeApi();
    const r = recorder();
    const handle = client(api, { backoff: { initialMs: 60_000, maxMs: 60_000 } }).start(
      "ask-question",
      { question: "q" },
      r.handlers,
    );
    const e = streamEvents("s1");
    const first = await api.eventResponse(0);
    first.sendEvents(e.start());
    await vi.waitFor(() => expect(r.log).toContain("start:demo"));
    first.drop();
    await vi.waitFor(() => expect(r.statuses.at(-1)).toBe("reconnecting"));
    window.dispatchEvent(new Event("online"));
    (await api.eventResponse(1)).sendEvents(e.complete());
    expect((await handle.done).status).toBe("complete");
  });

  it("ends with stream_not_found when the resumed stream has expired, whatever its seq", async () => {
    const api = new FakeApi();
    const r = recorder();
    const handle = client(api).start("ask-question", { question: "q" }, r.handlers);
    const e = streamEvents("s1");
    const first = await api.eventResponse(0);
    first.sendEvents(e.start(), e.chunk("a"), e.chunk("b"));
    await vi.waitFor(() => expect(r.log).toContain("chunk:2"));
    first.drop();
    (await api.eventResponse(1)).sendEvents({
      type: "error",
      stream_id: "s1",
      seq: 0,
      code: "stream_not_found",
      message: "expired",
      retryable: false,
    });
    expect(await handle.done).toMatchObject({ status: "error", error: { code: "stream_not_found", retryable: false } });
    expect(api.eventResponses).toHaveLength(2);
  });

  it("keeps streaming untouched when the tab is hidden and shown again", async () => {
    const api = new FakeApi();
    const r = recorder();
    const handle = client(api).start("ask-question", { question: "q" }, r.handlers);
    const e = streamEvents("s1");
    const response = await api.eventResponse(0);
    response.sendEvents(e.start(), e.chunk("a"));
    await vi.waitFor(() => expect(r.log).toContain("chunk:1"));
    const visibility = vi.spyOn(document, "visibilityState", "get").mockReturnValue("hidden");
    document.dispatchEvent(new Event("visibilitychange"));
    response.sendEvents(e.chunk("b"));
    visibility.mockReturnValue("visible");
    document.dispatchEvent(new Event("visibilitychange"));
    response.sendEvents(e.complete());
    expect((await handle.done).status).toBe("complete");
    expect(r.text()).toBe("ab");
    expect(api.requests.map((q) => `${q.method} ${q.url.pathname}`)).toEqual([
      "GET /api/ai/config",
      "POST /api/streams",
      "GET /api/streams/s1/events",
    ]);
  });

  it.each([
    ["an event that breaks the schema", 'event: chunk\ndata: {"type":"chunk","stream_id":"s1","seq":1}\n\n'],
    ["an event of another stream", 'event: chunk\ndata: {"type":"chunk","stream_id":"zz","seq":1,"token":"x"}\n\n'],
    ["a payload that is not JSON", "event: chunk\ndata: {oops\n\n"],
  ])("ends with contract_violation on %s, without reconnecting", async (_name, frame) => {
    const api = new FakeApi();
    const r = recorder();
    const handle = client(api).start("ask-question", { question: "q" }, r.handlers);
    const response = await api.eventResponse(0);
    response.sendEvents(streamEvents("s1").start());
    response.sendText(frame);
    expect(await handle.done).toMatchObject({ status: "error", error: { code: "contract_violation" } });
    expect(r.log).toEqual(["start:demo", "error:contract_violation:client"]);
    expect(api.eventResponses).toHaveLength(1);
  });

  it("does not reconnect on a non-transient HTTP problem and reports its field", async () => {
    const api = new FakeApi();
    api.route((request) =>
      request.method === "POST"
        ? json(422, { type: "about:blank", title: "Bad input", status: 422, detail: "topic is empty", code: "bad_request", field: "topic" }, "application/problem+json")
        : undefined,
    );
    const r = recorder();
    const outcome = await client(api).start("quiz", { topic: "" }, r.handlers).done;
    expect(outcome).toMatchObject({
      status: "error",
      error: { code: "bad_request", retryable: false, status: 422, field: "topic", message: "topic is empty" },
    });
    expect(api.requestsTo("POST", /^\/api\/streams$/)).toHaveLength(1);
  });

  it("stops on 204 once the stream already ended", async () => {
    const api = new FakeApi();
    api.eventStatuses = [204];
    const r = recorder();
    const outcome = await client(api, { backoff: { maxAttempts: 0 } }).start("quiz", { topic: "x" }, r.handlers).done;
    expect(outcome.status).toBe("error");
  });

  it("cancel() calls the server and ends the stream as cancelled", async () => {
    const api = new FakeApi();
    const r = recorder();
    const handle = client(api).start("ask-question", { question: "q" }, r.handlers);
    const e = streamEvents("s1");
    const response = await api.eventResponse(0);
    response.sendEvents(e.start(), e.chunk("a"));
    await vi.waitFor(() => expect(r.log).toContain("chunk:1"));
    handle.cancel();
    expect(await handle.done).toEqual({ status: "cancelled", event: null });
    expect(r.statuses.at(-1)).toBe("cancelled");
    expect(response.request.signal?.aborted).toBe(true);
    await vi.waitFor(() => expect(api.requestsTo("DELETE", /^\/api\/streams\/s1$/)).toHaveLength(1));
    // Late events from the server are not delivered after cancel.
    expect(r.log).toEqual(["start:demo", "chunk:1", "cancelled:local"]);
  });

  it("cancel() before the server named the stream cancels it once it is named", async () => {
    const api = new FakeApi();
    let release!: () => void;
    const gate = new Promise<void>((resolve) => (release = resolve));
    api.route(async (request) => {
      if (request.method === "POST") await gate;
      return undefined;
    });
    const r = recorder();
    const handle = client(api).start("ask-question", { question: "q" }, r.handlers);
    await vi.waitFor(() => expect(api.requestsTo("POST", /^\/api\/streams$/)).toHaveLength(1));
    handle.cancel();
    expect(r.statuses.at(-1)).toBe("cancelled");
    release();
    await vi.waitFor(() => expect(api.requestsTo("DELETE", /^\/api\/streams\/s1$/)).toHaveLength(1));
    expect(api.requestsTo("GET", /\/events$/)).toHaveLength(0);
  });
});

describe("StreamClient delivery mode", () => {
  it("falls back to the whole-response endpoint when streaming is off, with the same handlers", async () => {
    const api = new FakeApi();
    api.config = { ...api.config, streaming_enabled: false };
    api.route((request) =>
      request.url.pathname === "/api/ai-block/quiz"
        ? json(200, {
            block_type: "quiz",
            provider: "demo",
            model: "demo-model",
            text: "[...]",
            result: { questions: [SAMPLE_QUESTION] },
            parts: [SAMPLE_QUESTION],
            usage: { prompt_tokens: 1, completion_tokens: 2, total_tokens: 3 },
            finish_reason: "stop",
          })
        : undefined,
    );
    const r = recorder();
    const outcome = await client(api).start("quiz", { topic: "volcanoes", count: 1 }, r.handlers).done;
    expect(outcome.status).toBe("complete");
    expect(r.log).toEqual(["start:demo", "chunk:1", "part:0", "complete"]);
    expect(r.text()).toBe("[...]");
    const [post] = api.requestsTo("POST", /^\/api\/ai-block\/quiz$/);
    expect(JSON.parse(post!.body!)).toEqual({ topic: "volcanoes", count: 1 });
    expect(api.requestsTo("POST", /^\/api\/streams$/)).toHaveLength(0);
  });

  it("reports a whole-response problem as an error", async () => {
    const api = new FakeApi();
    api.config = { ...api.config, streaming_enabled: false };
    api.route((request) =>
      request.url.pathname.startsWith("/api/ai-block/")
        ? json(413, { type: "x", title: "Too large", status: 413, detail: "question too long", code: "too_large", field: "question" })
        : undefined,
    );
    const outcome = await client(api).start("ask-question", { question: "q" }, recorder().handlers).done;
    expect(outcome).toMatchObject({ status: "error", error: { code: "too_large", field: "question", retryable: false } });
  });

  it("streams over SSE when config is unreachable", async () => {
    const api = new FakeApi();
    api.route((request) => (request.url.pathname === "/api/ai/config" ? new Response("", { status: 500 }) : undefined));
    const handle = client(api).start("ask-question", { question: "q" }, recorder().handlers);
    const e = streamEvents("s1");
    (await api.eventResponse(0)).sendEvents(e.start(), e.complete());
    expect((await handle.done).status).toBe("complete");
  });

  it("lets the caller force the mode regardless of config", async () => {
    const api = new FakeApi();
    api.config = { ...api.config, streaming_backend: "websocket" };
    const handle = client(api).start("ask-question", { question: "q" }, recorder().handlers, { mode: "sse" });
    const e = streamEvents("s1");
    (await api.eventResponse(0)).sendEvents(e.start(), e.complete());
    expect((await handle.done).status).toBe("complete");
  });
});
