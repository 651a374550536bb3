// The WebSocket transport: multiplexing, resume on a new socket, protocol errors, cancel, silence.
import { beforeEach, describe, expect, it, vi } from "vitest";
import type { StreamEvent } from "./contract.js";
import { StreamClient } from "./stream-client.js";
import type { StreamHandlers } from "./stream-session.js";
import { FakeApi } from "../../../testing/fake-api.js";
import { FakeWebSocket } from "../../../testing/fake-websocket.js";
import { streamEvents } from "../../../testing/events.js";
import type { GetToken } from "./auth.js";

function setup() {
  const api = new FakeApi();
  api.config = { ...api.config, streaming_backend: "websocket" };
  const client = new StreamClient({
    baseUrl: "http://127.0.0.1:9999",
    fetch: api.fetch,
    WebSocket: FakeWebSocket as unknown as typeof WebSocket,
    backoff: { initialMs: 1, maxMs: 2 },
  });
  return { api, client };
}

function collect() {
  let text = "";
  const statuses: string[] = [];
  const handlers: StreamHandlers = {
    onChunk: (event) => (text += event.token),
    onStatus: (status) => statuses.push(status),
  };
  return { handlers, statuses, text: () => text };
}

async function openedSocket(index: number): Promise<FakeWebSocket> {
  await vi.waitFor(() => expect(FakeWebSocket.sockets.length).toBeGreaterThan(index));
  const socket = FakeWebSocket.sockets[index]!;
  socket.serverOpen();
  return socket;
}

describe("StreamClient over WebSocket", () => {
  beforeEach(() => FakeWebSocket.reset());

  it("multiplexes two streams on one socket, routing by ref and then stream id", async () => {
    const { client } = setup();
    const a = collect();
    const b = collect();
    const ha = client.start("explain-eli10", { topic: "rain" }, a.handlers, { idempotencyKey: "ref-a" });
    const hb = client.start("ask-question", { question: "why?" }, b.handlers, { idempotencyKey: "ref-b" });
    const socket = await openedSocket(0);
    await vi.waitFor(() => expect(socket.sent).toHaveLength(2));
    expect(socket.url).toBe("ws://127.0.0.1:9999/api/stream/ws");
    expect(socket.sent).toEqual([
      { type: "start", block_type: "explain-eli10", input: { topic: "rain" }, ref: "ref-a" },
      { type: "start", block_type: "ask-question", input: { question: "why?" }, ref: "ref-b" },
    ]);
    const ea = streamEvents("A");
    const eb = streamEvents("B");
    socket.serverSend(
      { ...ea.start("explain-eli10"), ref: "ref-a" } as StreamEvent,
      { ...eb.start(), ref: "ref-b" } as StreamEvent,
      ea.chunk("drops "),
      eb.chunk("because "),
      ea.chunk("fall"),
      eb.complete(),
      ea.complete(),
    );
    expect((await ha.done).status).toBe("complete");
    expect((await hb.done).status).toBe("complete");
    expect(a.text()).toBe("drops fall");
    expect(b.text()).toBe("because ");
    expect(FakeWebSocket.sockets).toHaveLength(1);
    // No stream uses the socket any more, so it is closed rather than left open.
    expect(socket.readyState).toBe(3);
  });

  it("resumes every stream of a dropped socket on one new socket, each from its own last seq, without duplicates", async () => {
    const { client } = setup();
    const [a, b, c] = [collect(), collect(), collect()];
    const ha = client.start("explain-eli10", { topic: "rain" }, a.handlers, { idempotencyKey: "r1" });
    const hb = client.start("ask-question", { question: "why?" }, b.handlers, { idempotencyKey: "r2" });
    const hc = client.start("quiz", { topic: "volcanoes" }, c.handlers, { idempotencyKey: "r3" });
    const first = await openedSocket(0);
    await vi.waitFor(() => expect(first.sent).toHaveLength(3));
    const ea = streamEvents("A");
    const eb = streamEvents("B");
    const ec = streamEvents("C");
    const logA = [{ ...ea.start("explain-eli10"), ref: "r1" } as StreamEvent, ea.chunk("one "), ea.chunk("two "), ea.chunk("three"), ea.complete()];
    const logB = [{ ...eb.start(), ref: "r2" } as StreamEvent, eb.chunk("because "), eb.chunk("light"), eb.complete()];
    const logC = [{ ...ec.start("quiz"), ref: "r3" } as StreamEvent, ec.chunk("["), ec.complete({ questions: [{ question: "q", choices: ["a", "b"], answer_index: 0, explanation: "e" }] })];
    // A has two events, B one, and C's start was never answered when the socket drops.
    first.serverSend(logA[0]!, logB[0]!, logA[1]!);
    first.serverDrop();

    const second = await openedSocket(1);
    await vi.waitFor(() => expect(second.sent).toHaveLength(3));
    expect(second.sent).toEqual(
      expect.arrayContaining([
        { type: "resume", stream_id: "A", after: 1 },
        { type: "resume", stream_id: "B", after: 0 },
        { type: "start", block_type: "quiz", input: { topic: "volcanoes" }, ref: "r3" },
      ]),
    );
    // The server replays each from where it was asked, interleaved on the one socket.
    second.serverSend(logA[2]!, logB[1]!, logC[0]!, logA[3]!, logB[2]!, logC[1]!, logA[4]!, logB[3]!, logC[2]!);
    for (const handle of [ha, hb, hc]) expect((await handle.done).status).toBe("complete");
    expect(a.text()).toBe("one two three");
    expect(b.text()).toBe("because light");
    expect(c.text()).toBe("[");
    for (const run of [a, b, c]) expect(run.statuses).toEqual(["connecting", "streaming", "reconnecting", "streaming", "complete"].filter((_status, i) => run !== c || i !== 1));
    expect(FakeWebSocket.sockets).toHaveLength(2);
  });

  it("retries a start whose socket dropped before the server answered, with the same ref", async () => {
    const { client } = setup();
    const handle = client.start("quiz", { topic: "x" }, collect().handlers, { idempotencyKey: "same" });
    const first = await openedSocket(0);
    await vi.waitFor(() => expect(first.sent).toHaveLength(1));
    first.serverDrop();
    const second = await openedSocket(1);
    await vi.waitFor(() => expect(second.sent).toHaveLength(1));
    expect(second.sent[0]).toMatchObject({ type: "start", ref: "same" });
    const e = streamEvents("Q");
    second.serverSend({ ...e.start("quiz"), ref: "same" } as StreamEvent, e.complete({ questions: [{ question: "q", choices: ["a", "b"], answer_index: 1, explanation: "e" }] }));
    expect((await handle.done).status).toBe("complete");
  });

  it("ends a stream whose start the server rejected, leaving the other streams alone", async () => {
    const { client } = setup();
    const good = client.start("explain-eli10", { topic: "rain" }, collect().handlers, { idempotencyKey: "good" });
    const bad = client.start("quiz", { topic: "" }, collect().handlers, { idempotencyKey: "bad" });
    const socket = await openedSocket(0);
    await vi.waitFor(() => expect(socket.sent).toHaveLength(2));
    socket.serverSend({ type: "protocol_error", code: "bad_request", message: "topic is empty", retryable: false, field: "topic", ref: "bad" });
    expect(await bad.done).toMatchObject({ status: "error", error: { code: "bad_request", field: "topic", retryable: false } });
    const e = streamEvents("G");
    socket.serverSend({ ...e.start("explain-eli10"), ref: "good" } as StreamEvent, e.complete());
    expect((await good.done).status).toBe("complete");
  });

  it("cancel() sends a cancel message and ends the stream as cancelled", async () => {
    const { client } = setup();
    const a = collect();
    const handle = client.start("explain-eli10", { topic: "rain" }, a.handlers, { idempotencyKey: "c1" });
    const socket = await openedSocket(0);
    const e = streamEvents("C");
    await vi.waitFor(() => expect(socket.sent).toHaveLength(1));
    socket.serverSend({ ...e.start("explain-eli10"), ref: "c1" } as StreamEvent, e.chunk("x"));
    handle.cancel();
    expect(await handle.done).toEqual({ status: "cancelled", event: null });
    expect(socket.sent.at(-1)).toEqual({ type: "cancel", stream_id: "C" });
    expect(socket.readyState).toBe(3);
  });

  it("cancels over HTTP while the socket is down, rather than opening a socket just to cancel", async () => {
    const { api, client } = setup();
    const handle = client.start("explain-eli10", { topic: "rain" }, collect().handlers, { idempotencyKey: "d1" });
    const socket = await openedSocket(0);
    await vi.waitFor(() => expect(socket.sent).toHaveLength(1));
    const e = streamEvents("D");
    socket.serverSend({ ...e.start("explain-eli10"), ref: "d1" } as StreamEvent);
    socket.serverDrop();
    handle.cancel();
    expect(await handle.done).toEqual({ status: "cancelled", event: null });
    await vi.waitFor(() => expect(api.requestsTo("DELETE", /^\/api\/streams\/D$/)).toHaveLength(1));
    expect(FakeWebSocket.sockets).toHaveLength(1);
  });

  it("keeps a quiet socket that sends keep_alive frames", async () => {
    vi.useFakeTimers({ toFake: ["setTimeout", "clearTimeout"] });
    try {
      const { api } = setup();
      const client = new StreamClient({
        fetch: api.fetch,
        baseUrl: "http://127.0.0.1:9999",
        WebSocket: FakeWebSocket as unknown as typeof WebSocket,
        idleTimeoutMs: 500,
      });
      const a = collect();
      const handle = client.start("explain-eli10", { topic: "rain" }, a.handlers, { idempotencyKey: "k1" });
      await vi.advanceTimersByTimeAsync(0);
      const socket = FakeWebSocket.latest();
      socket.serverOpen();
      const e = streamEvents("K");
      socket.serverSend({ ...e.start("explain-eli10"), ref: "k1" } as StreamEvent);
      // A slow first token: nothing but keep-alives for well over the idle timeout.
      for (let i = 0; i < 6; i++) {
        await vi.advanceTimersByTimeAsync(400);
        socket.serverSend({ type: "keep_alive" });
      }
      socket.serverSend(e.chunk("late"), e.complete());
      await vi.advanceTimersByTimeAsync(0);
      expect((await handle.done).status).toBe("complete");
      expect(a.statuses).not.toContain("reconnecting");
      expect(FakeWebSocket.sockets).toHaveLength(1);
    } finally {
      vi.useRealTimers();
    }
  });

  it("treats a silent socket as lost and resumes on a new one", async () => {
    vi.useFakeTimers({ toFake: ["setTimeout", "clearTimeout"] });
    try {
      const { api } = setup();
      const client = new StreamClient({
        fetch: api.fetch,
        baseUrl: "http://127.0.0.1:9999",
        WebSocket: FakeWebSocket as unknown as typeof WebSocket,
        idleTimeoutMs: 500,
        backoff: { initialMs: 10, maxMs: 10 },
      });
      const handle = client.start("explain-eli10", { topic: "rain" }, collect().handlers, { idempotencyKey: "i1" });
      await vi.advanceTimersByTimeAsync(0);
      const first = FakeWebSocket.latest();
      first.serverOpen();
      const e = streamEvents("I");
      first.serverSend({ ...e.start("explain-eli10"), ref: "i1" } as StreamEvent);
      await vi.advanceTimersByTimeAsync(499);
      expect(FakeWebSocket.sockets).toHaveLength(1);
      await vi.advanceTimersByTimeAsync(1 + 10);
      expect(first.readyState).toBe(3);
      const second = FakeWebSocket.latest();
      expect(second).not.toBe(first);
      second.serverOpen();
      await vi.advanceTimersByTimeAsync(0);
      expect(second.sent).toEqual([{ type: "resume", stream_id: "I", after: 0 }]);
      second.serverSend(e.complete());
      await vi.advanceTimersByTimeAsync(0);
      expect((await handle.done).status).toBe("complete");
      expect(vi.getTimerCount()).toBe(0);
    } finally {
      vi.useRealTimers();
    }
  });
});

describe("WebSocket as good as SSE", () => {
  beforeEach(() => FakeWebSocket.reset());

  it("retries a start the server could not take for its store (store_unavailable, retryable), with the same ref", async () => {
    const { client } = setup();
    const a = collect();
    const handle = client.start("explain-eli10", { topic: "rain" }, a.handlers, { idempotencyKey: "s1" });
    const first = await openedSocket(0);
    await vi.waitFor(() => expect(first.sent).toHaveLength(1));
    first.serverSend({ type: "protocol_error", code: "store_unavailable", message: "the server's store is unavailable; try again shortly", retryable: true, ref: "s1" });
    // Nothing else used the socket, so it closed; the retry opens the next one.
    const second = await openedSocket(1);
    await vi.waitFor(() => expect(second.sent).toHaveLength(1));
    expect(second.sent[0]).toEqual(first.sent[0]);
    const e = streamEvents("S");
    second.serverSend({ ...e.start("explain-eli10"), ref: "s1" } as StreamEvent, e.chunk("ok"), e.complete());
    expect((await handle.done).status).toBe("complete");
    expect(a.statuses).toContain("reconnecting");
  });

  it("refuses a start over 32 KiB as UTF-8 with too_large, never sending it (the server would close the socket and every stream on it)", async () => {
    const { client } = setup();
    const other = client.start("explain-eli10", { topic: "rain" }, collect().handlers, { idempotencyKey: "ok" });
    const socket = await openedSocket(0);
    await vi.waitFor(() => expect(socket.sent).toHaveLength(1));
    // 16,000 CJK characters: within the contract's 16,000-character context, 48,000 bytes as UTF-8.
    const context = "漢".repeat(16_000);
    expect(context.length).toBe(16_000);
    const big = client.start("ask-question", { question: "why?", context }, collect().handlers, { mode: "websocket", idempotencyKey: "big" });
    expect(await big.done).toMatchObject({ status: "error", error: { code: "too_large", field: "context", retryable: false } });
    expect(socket.sent.map((frame) => (frame as { ref?: string }).ref)).toEqual(["ok"]);
    const e = streamEvents("O");
    socket.serverSend({ ...e.start("explain-eli10"), ref: "ok" } as StreamEvent, e.complete());
    expect((await other.done).status).toBe("complete");
  });

  it("sends a start too big for the WebSocket over SSE when the transport was the server's choice", async () => {
    const { api, client } = setup();
    const handle = client.start("ask-question", { question: "why?", context: "漢".repeat(16_000) }, collect().handlers);
    const e = streamEvents("s1");
    (await api.eventResponse(0)).sendEvents(e.start(), e.complete());
    expect((await handle.done).status).toBe("complete");
    expect(FakeWebSocket.sockets).toHaveLength(0);
    expect(JSON.parse(api.requestsTo("POST", /^\/api\/streams$/)[0]!.body!).input.context).toHaveLength(16_000);
  });

  it("fails the stream a contract-breaking frame names with contract_violation, and only that one", async () => {
    const { client } = setup();
    const bad = client.start("explain-eli10", { topic: "rain" }, collect().handlers, { idempotencyKey: "bad" });
    const good = client.start("explain-eli10", { topic: "snow" }, collect().handlers, { idempotencyKey: "good" });
    const socket = await openedSocket(0);
    await vi.waitFor(() => expect(socket.sent).toHaveLength(2));
    const eb = streamEvents("B");
    const eg = streamEvents("G");
    socket.serverSend({ ...eb.start("explain-eli10"), ref: "bad" } as StreamEvent, { ...eg.start("explain-eli10"), ref: "good" } as StreamEvent);
    // A chunk without its token: not an event of the contract.
    socket.onmessage?.(new MessageEvent("message", { data: JSON.stringify({ type: "chunk", stream_id: "B", seq: 1 }) }));
    expect(await bad.done).toMatchObject({ status: "error", error: { code: "contract_violation" } });
    socket.serverSend(eg.chunk("fine"), eg.complete());
    expect((await good.done).status).toBe("complete");
  });

  it("fails every stream of the socket when a broken frame names none", async () => {
    const { client } = setup();
    const one = client.start("explain-eli10", { topic: "rain" }, collect().handlers, { idempotencyKey: "one" });
    const socket = await openedSocket(0);
    await vi.waitFor(() => expect(socket.sent).toHaveLength(1));
    socket.onmessage?.(new MessageEvent("message", { data: "{not json" }));
    expect(await one.done).toMatchObject({ status: "error", error: { code: "contract_violation" } });
  });

  it("delivers every event to every reader of a stream on the socket", async () => {
    const { client } = setup();
    const [a, b] = [collect(), collect()];
    const first = client.resume("R", 1, a.handlers);
    const socket = await openedSocket(0);
    await vi.waitFor(() => expect(socket.sent).toHaveLength(1));
    const second = client.resume("R", -1, b.handlers);
    await vi.waitFor(() => expect(socket.sent).toHaveLength(2));
    expect(socket.sent).toEqual([
      { type: "resume", stream_id: "R", after: 0 },
      { type: "resume", stream_id: "R" },
    ]);
    // The server keeps one reader per stream per socket, restarted from the lower position.
    const e = streamEvents("R");
    socket.serverSend(e.start("explain-eli10"), e.chunk("one "), e.chunk("two"), e.complete());
    expect((await first.done).status).toBe("complete");
    expect((await second.done).status).toBe("complete");
    expect(a.text()).toBe("two");
    expect(b.text()).toBe("one two");
    expect(socket.readyState).toBe(3);
  });
});

describe("WebSocket detach", () => {
  beforeEach(() => FakeWebSocket.reset());

  it("says detach when the last reader of a live stream on the socket leaves, so the server stops sending it", async () => {
    const { client } = setup();
    const left = client.start("explain-eli10", { topic: "rain" }, collect().handlers, { idempotencyKey: "l" });
    const stays = client.start("explain-eli10", { topic: "snow" }, collect().handlers, { idempotencyKey: "s" });
    const socket = await openedSocket(0);
    await vi.waitFor(() => expect(socket.sent).toHaveLength(2));
    const el = streamEvents("L");
    const es = streamEvents("S");
    socket.serverSend({ ...el.start("explain-eli10"), ref: "l" } as StreamEvent, { ...es.start("explain-eli10"), ref: "s" } as StreamEvent);
    await vi.waitFor(() => expect(left.streamId).toBe("L"));
    left.detach();
    expect(await left.done).toEqual({ status: "detached" });
    await vi.waitFor(() => expect(socket.sent).toContainEqual({ type: "detach", stream_id: "L" }));
    // The server may still have sent some of L before it read the detach: nobody hears it.
    socket.serverSend(el.chunk("late"), es.chunk("kept"), es.complete());
    expect((await stays.done).status).toBe("complete");
    // A cancelled stream needs no detach after its cancel.
    expect(socket.sent.filter((frame) => (frame as { type: string }).type === "detach")).toHaveLength(1);
  });
});

describe("WebSocket credentials", () => {
  beforeEach(() => FakeWebSocket.reset());

  function clientWith(getToken: GetToken) {
    const api = new FakeApi();
    api.config = { ...api.config, streaming_backend: "websocket" };
    return new StreamClient({
      baseUrl: "http://127.0.0.1:9999",
      fetch: api.fetch,
      WebSocket: FakeWebSocket as unknown as typeof WebSocket,
      backoff: { initialMs: 1, maxMs: 2 },
      getToken,
    });
  }

  it("re-authenticates the open socket with a fresh auth before the next frame, once the host's token changed", async () => {
    let token = "learner-a";
    const client = clientWith(async () => token);
    const a = client.start("explain-eli10", { topic: "rain" }, collect().handlers, { idempotencyKey: "a" });
    const socket = await openedSocket(0);
    await vi.waitFor(() => expect(socket.sent).toHaveLength(2));
    const ea = streamEvents("A");
    socket.serverSend({ ...ea.start("explain-eli10"), ref: "a" } as StreamEvent);
    // Learner A signs out, B signs in: the host's getToken now says B.
    token = "learner-b";
    client.start("explain-eli10", { topic: "snow" }, collect().handlers, { idempotencyKey: "b" });
    await vi.waitFor(() => expect(socket.sent).toHaveLength(4));
    expect(socket.sent).toEqual([
      { type: "auth", token: "learner-a" },
      { type: "start", block_type: "explain-eli10", input: { topic: "rain" }, ref: "a" },
      { type: "auth", token: "learner-b" },
      { type: "start", block_type: "explain-eli10", input: { topic: "snow" }, ref: "b" },
    ]);
    // The socket now acts for B: the server stops delivering A's stream on it, and says so once.
    socket.serverSend({
      type: "protocol_error",
      code: "unauthorized",
      message: "this socket now acts for another principal (a new auth): it no longer delivers this stream of the previous one",
      retryable: false,
      stream_id: "A",
    });
    expect(await a.done).toMatchObject({ status: "error", error: { code: "unauthorized", retryable: false } });
    expect(socket.sent.filter((frame) => (frame as { type: string }).type === "resume")).toEqual([]);
  });

  it("a start refused for an expired token on an open socket is retried once after a fresh token, with its ref", async () => {
    let token = "t1";
    const getToken = vi.fn(async ({ refresh }: { refresh: boolean }) => {
      if (refresh) token = "t2";
      return token;
    });
    const client = clientWith(getToken);
    const handle = client.start("explain-eli10", { topic: "rain" }, collect().handlers, { idempotencyKey: "k" });
    const socket = await openedSocket(0);
    await vi.waitFor(() => expect(socket.sent).toHaveLength(2));
    socket.serverSend({ type: "protocol_error", code: "unauthorized", message: "the socket's token has expired: send {\"type\":\"auth\",\"token\":…} with a fresh one, then try again", retryable: true, ref: "k" });
    const next = await openedSocket(1);
    await vi.waitFor(() => expect(next.sent).toHaveLength(2));
    expect(next.sent).toEqual([
      { type: "auth", token: "t2" },
      { type: "start", block_type: "explain-eli10", input: { topic: "rain" }, ref: "k" },
    ]);
    expect(getToken.mock.calls.filter(([options]) => options.refresh)).toHaveLength(1);
    const e = streamEvents("K");
    next.serverSend({ ...e.start("explain-eli10"), ref: "k" } as StreamEvent, e.complete());
    expect((await handle.done).status).toBe("complete");
  });

  it("a start refused twice in a row for its credential ends as unauthorized", async () => {
    const client = clientWith(async () => "t1");
    const handle = client.start("explain-eli10", { topic: "rain" }, collect().handlers, { idempotencyKey: "k" });
    for (const index of [0, 1]) {
      const socket = await openedSocket(index);
      await vi.waitFor(() => expect(socket.sent).toHaveLength(2));
      socket.serverSend({ type: "protocol_error", code: "unauthorized", message: "refused", retryable: true, ref: "k" });
    }
    expect(await handle.done).toMatchObject({ status: "error", error: { code: "unauthorized", retryable: false } });
  });

  it("resetCredentials() detaches the previous learner's streams and closes the socket; the next start authenticates anew", async () => {
    let token = "learner-a";
    const client = clientWith(async () => token);
    const a = client.start("explain-eli10", { topic: "rain" }, collect().handlers, { idempotencyKey: "a" });
    const first = await openedSocket(0);
    await vi.waitFor(() => expect(first.sent).toHaveLength(2));
    token = "learner-b";
    client.resetCredentials();
    expect(await a.done).toEqual({ status: "detached" });
    expect(first.readyState).toBe(3);
    client.start("explain-eli10", { topic: "snow" }, collect().handlers, { idempotencyKey: "b" });
    const second = await openedSocket(1);
    await vi.waitFor(() => expect(second.sent).toHaveLength(2));
    expect(second.sent[0]).toEqual({ type: "auth", token: "learner-b" });
  });
});
