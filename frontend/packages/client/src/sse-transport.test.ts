// SSE over fetch: framing split anywhere, resume headers, idle timeout, HTTP problems, cancel.
import { afterEach, describe, expect, it, vi } from "vitest";
import type { StreamEvent } from "./contract.js";
import { FakeApi, json, sseFrame } from "../../../testing/fake-api.js";
import { SAMPLE_QUESTION, streamEvents } from "../../../testing/events.js";
import { clientFor as client, recorder } from "../../../testing/recorder.js";

afterEach(() => {
  vi.useRealTimers();
});

describe("SSE transport (through StreamClient)", () => {
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

  it("fails at once, without reconnecting, when the server answers 204 to a resume from an event that did not end the stream", async () => {
    const api = new FakeApi();
    const r = recorder();
    const handle = client(api, { backoff: { initialMs: 1, maxMs: 2 } }).start("quiz", { topic: "x" }, r.handlers);
    const e = streamEvents("s1");
    const first = await api.eventResponse(0);
    first.sendEvents(e.start("quiz"), e.chunk("a"));
    await vi.waitFor(() => expect(r.log).toContain("chunk:1"));
    // A server that claims the chunk at seq 1 was the stream's end: resuming cannot fix that.
    api.finished.set("s1", 1);
    first.drop();
    expect(await handle.done).toMatchObject({ status: "error", error: { code: "contract_violation", retryable: true } });
    const resumes = api.requestsTo("GET", /\/events$/);
    expect(resumes).toHaveLength(2);
    expect(resumes[1]!.url.searchParams.get("after")).toBe("1");
  });

  it("resume(id, terminalSeq) ends with the stream's own terminal event after one request, never a 204 loop", async () => {
    const api = new FakeApi();
    const e = streamEvents("s1");
    const log = [e.start(), e.chunk("a"), e.chunk("b"), e.complete({ markdown: "ab" })];
    api.finished.set("s1", 3);
    const r = recorder();
    const handle = client(api, { backoff: { initialMs: 1, maxMs: 2 } }).resume("s1", 3, r.handlers);
    const response = await api.eventResponse(0);
    // The server replays what follows the `after` the client sent, as live-ai does.
    const after = Number(response.request.url.searchParams.get("after"));
    expect(after).toBe(2);
    expect(response.request.headers.get("last-event-id")).toBe("s1:2");
    response.sendEvents(...log.slice(after + 1));
    response.end();
    expect(await handle.done).toMatchObject({ status: "complete", event: { seq: 3, result: { markdown: "ab" } } });
    expect(r.log).toEqual(["complete"]);
    expect(api.requestsTo("GET", /\/events$/)).toHaveLength(1);
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
