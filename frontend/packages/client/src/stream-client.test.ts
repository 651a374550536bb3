// The client's choice of delivery mode (config, override, fallback) and its own lifecycle.
import { afterEach, describe, expect, it, vi } from "vitest";
import { FakeApi, json } from "../../../testing/fake-api.js";
import { SAMPLE_QUESTION, streamEvents } from "../../../testing/events.js";
import { clientFor as client, recorder } from "../../../testing/recorder.js";

afterEach(() => {
  vi.useRealTimers();
});

/** Lets every promise continuation already queued run (a macrotask turn; not a wait for time). */
const settled = () => new Promise<void>((resolve) => setTimeout(resolve, 0));

describe("StreamClient delivery mode: SSE, WebSocket or whole response", () => {
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

  it("cancel() before the config arrived ends the stream at once, without touching the server", async () => {
    const api = new FakeApi();
    const r = recorder();
    const streamClient = client(api);
    const handle = streamClient.start("quiz", { topic: "x" }, r.handlers);
    handle.cancel();
    expect(await handle.done).toEqual({ status: "cancelled", event: null });
    expect(r.log).toEqual(["cancelled:local"]);
    expect(r.statuses).toEqual(["connecting", "cancelled"]);
    // The start goes on only once the config is read: once it is, nothing else was asked.
    await streamClient.config();
    await settled();
    expect(api.requests.map((q) => q.url.pathname)).toEqual(["/api/ai/config"]);
  });

  it("dispose() detaches running streams and releases the transports", async () => {
    const api = new FakeApi();
    const streamClient = client(api);
    const handle = streamClient.start("quiz", { topic: "x" }, recorder().handlers);
    const response = await api.eventResponse(0);
    streamClient.dispose();
    expect(await handle.done).toEqual({ status: "detached" });
    expect(response.request.signal?.aborted).toBe(true);
    expect(api.requestsTo("DELETE", /.*/)).toHaveLength(0);
  });
});
