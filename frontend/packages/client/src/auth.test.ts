// The learner's credential (issue 8's client side): sent on every API request and as the
// WebSocket's first message, refreshed once on a refusal, and a second refusal in a row ends
// the stream as `unauthorized`. The fake server refuses exactly as the contract says.
import { beforeEach, describe, expect, it, vi } from "vitest";
import type { StreamEvent } from "./contract.js";
import { TokenSource, type GetToken } from "./auth.js";
import { FakeApi, json } from "../../../testing/fake-api.js";
import { FakeWebSocket } from "../../../testing/fake-websocket.js";
import { SAMPLE_QUESTION, streamEvents } from "../../../testing/events.js";
import { clientFor, recorder } from "../../../testing/recorder.js";

/**
 * A host's getToken, caching as the README asks: the current token on every call, the next of
 * `issued` (the last one forever) when asked to refresh.
 */
function tokens(...issued: string[]) {
  let current = 0;
  const getToken = vi.fn(async ({ refresh }: { refresh: boolean }) => {
    if (refresh) current = Math.min(current + 1, issued.length - 1);
    return issued[current]!;
  });
  const refreshes = () => getToken.mock.calls.filter(([options]) => options.refresh).length;
  return { getToken, refreshes };
}

describe("getToken over HTTP (SSE, cancel, whole response)", () => {
  it("sends Authorization: Bearer on the start, the events, the cancel and the whole-response requests", async () => {
    const api = new FakeApi();
    api.requireToken("t1");
    const { getToken } = tokens("t1");
    const client = clientFor(api, { getToken });
    const handle = client.start("ask-question", { question: "q" }, {});
    const e = streamEvents("s1");
    (await api.eventResponse(0)).sendEvents(e.start(), e.chunk("a"));
    handle.cancel();
    await vi.waitFor(() => expect(api.requestsTo("DELETE", /^\/api\/streams\/s1$/)).toHaveLength(1));
    api.route((request) =>
      request.url.pathname === "/api/ai-block/quiz"
        ? json(200, { block_type: "quiz", provider: "demo", model: "demo-model", text: "[]", result: { questions: [SAMPLE_QUESTION] }, parts: [], usage: { prompt_tokens: 1, completion_tokens: 1, total_tokens: 2 }, finish_reason: "stop" })
        : undefined,
    );
    expect((await client.start("quiz", { topic: "x" }, {}, { mode: "whole" }).done).status).toBe("complete");
    const authorizations = api.requests.filter((r) => r.url.pathname !== "/api/ai/config").map((r) => `${r.method} ${r.url.pathname} ${r.headers.get("authorization")}`);
    expect(authorizations).toEqual([
      "POST /api/streams Bearer t1",
      "GET /api/streams/s1/events Bearer t1",
      "DELETE /api/streams/s1 Bearer t1",
      "POST /api/ai-block/quiz Bearer t1",
    ]);
    // Asked for every request (the host caches), never told to refresh.
    expect(getToken).toHaveBeenCalledTimes(4);
    expect(getToken.mock.calls.every(([options]) => options.refresh === false)).toBe(true);
  });

  it("sends no Authorization header without getToken, or when it returns null", async () => {
    const api = new FakeApi();
    const handle = clientFor(api, { getToken: async () => null }).start("ask-question", { question: "q" }, {});
    const e = streamEvents("s1");
    (await api.eventResponse(0)).sendEvents(e.start(), e.complete());
    await handle.done;
    expect(api.requests.every((r) => !r.headers.has("authorization"))).toBe(true);
  });

  it("on a 401 mid-stream asks for a fresh token once and resumes the same stream", async () => {
    const api = new FakeApi();
    api.requireToken("t1");
    const { getToken, refreshes } = tokens("t1", "t2");
    const r = recorder();
    const handle = clientFor(api, { getToken, backoff: { initialMs: 1, maxMs: 2 } }).start("ask-question", { question: "q" }, r.handlers);
    const e = streamEvents("s1");
    const first = await api.eventResponse(0);
    first.sendEvents(e.start(), e.chunk("Hello "));
    await vi.waitFor(() => expect(r.log).toContain("chunk:1"));
    // The learner's token expires while the connection is down.
    api.requireToken("t2");
    first.drop();
    const second = await api.eventResponse(1);
    expect(second.request.headers.get("authorization")).toBe("Bearer t2");
    expect(second.request.headers.get("last-event-id")).toBe("s1:1");
    second.sendEvents(e.chunk("world"), e.complete());
    expect((await handle.done).status).toBe("complete");
    expect(r.text()).toBe("Hello world");
    expect(refreshes()).toBe(1);
    expect(api.requestsTo("POST", /^\/api\/streams$/)).toHaveLength(1);
  });

  it("ends as unauthorized, not retried on its own, when the fresh token is refused too", async () => {
    const api = new FakeApi();
    api.requireToken("never-issued");
    const { getToken, refreshes } = tokens("t1", "t2", "t3");
    const r = recorder();
    const outcome = await clientFor(api, { getToken }).start("ask-question", { question: "q" }, r.handlers).done;
    expect(outcome).toMatchObject({ status: "error", error: { code: "unauthorized", status: 401, retryable: false } });
    expect(api.requestsTo("POST", /^\/api\/streams$/).map((q) => q.headers.get("authorization"))).toEqual(["Bearer t1", "Bearer t2"]);
    expect(refreshes()).toBe(1);
  });
});

describe("TokenSource", () => {
  it("refreshes once for a burst of refusals of the same token", async () => {
    const { getToken, refreshes } = tokens("t1", "t2", "t3");
    const source = new TokenSource(getToken);
    const used = await source.credential();
    const refreshed = await Promise.all([source.refresh(used), source.refresh(used), source.refresh(used)]);
    expect(refreshed.map((credential) => credential.token)).toEqual(["t2", "t2", "t2"]);
    // A refusal of the old token that arrives after the refresh does not refresh again.
    expect((await source.refresh(used)).token).toBe("t2");
    expect(refreshes()).toBe(1);
  });
});

describe("getToken over the WebSocket", () => {
  beforeEach(() => FakeWebSocket.reset());

  function wsClient(api: FakeApi, getToken: GetToken) {
    api.config = { ...api.config, streaming_backend: "websocket" };
    return clientFor(api, {
      getToken,
      baseUrl: "http://127.0.0.1:9999",
      WebSocket: FakeWebSocket as unknown as typeof WebSocket,
      backoff: { initialMs: 1, maxMs: 2 },
    });
  }

  async function openSocket(index: number) {
    await vi.waitFor(() => expect(FakeWebSocket.sockets.length).toBeGreaterThan(index));
    const socket = FakeWebSocket.sockets[index]!;
    socket.serverOpen();
    await vi.waitFor(() => expect(socket.sent.length).toBeGreaterThan(0));
    return socket;
  }

  it("sends the token as the socket's first message, before any start", async () => {
    const api = new FakeApi();
    const handle = wsClient(api, tokens("t1").getToken).start("explain-eli10", { topic: "rain" }, {}, { idempotencyKey: "k1" });
    const socket = await openSocket(0);
    await vi.waitFor(() => expect(socket.sent).toHaveLength(2));
    expect(socket.sent).toEqual([
      { type: "auth", token: "t1" },
      { type: "start", block_type: "explain-eli10", input: { topic: "rain" }, ref: "k1" },
    ]);
    const e = streamEvents("W");
    socket.serverSend(e.start("explain-eli10", "demo", "k1"), e.complete());
    expect((await handle.done).status).toBe("complete");
  });

  it("refused (protocol_error unauthorized, close 1008): reconnects with a fresh token and resumes", async () => {
    const api = new FakeApi();
    const { getToken } = tokens("t1", "t2");
    const r = recorder();
    const handle = wsClient(api, getToken).start("explain-eli10", { topic: "rain" }, r.handlers, { idempotencyKey: "k1" });
    const first = await openSocket(0);
    const e = streamEvents("W");
    first.serverSend(e.start("explain-eli10", "demo", "k1") as StreamEvent, e.chunk("Rain "));
    // The token expired; the server says so on the socket and closes it.
    first.serverSend({ type: "protocol_error", code: "unauthorized", message: "token expired", retryable: false });
    first.serverClose(1008);
    const second = await openSocket(1);
    await vi.waitFor(() => expect(second.sent).toHaveLength(2));
    expect(second.sent).toEqual([
      { type: "auth", token: "t2" },
      { type: "resume", stream_id: "W", after: 1 },
    ]);
    second.serverSend(e.chunk("falls."), e.complete());
    expect((await handle.done).status).toBe("complete");
    expect(r.text()).toBe("Rain falls.");
  });

  it("refused twice in a row: ends as unauthorized", async () => {
    const api = new FakeApi();
    const handle = wsClient(api, tokens("t1", "t2").getToken).start("explain-eli10", { topic: "rain" }, {}, { idempotencyKey: "k1" });
    for (const index of [0, 1]) {
      const socket = await openSocket(index);
      socket.serverSend({ type: "protocol_error", code: "unauthorized", message: "bad token", retryable: false });
      socket.serverClose(1008);
    }
    expect(await handle.done).toMatchObject({ status: "error", error: { code: "unauthorized", retryable: false } });
    expect(FakeWebSocket.sockets).toHaveLength(2);
  });
});
