// The WebSocket transport: multiplexing, resume on a new socket, protocol errors, cancel, silence.
import { beforeEach, describe, expect, it, vi } from "vitest";
import type { StreamEvent } from "./contract.js";
import { StreamClient } from "./stream-client.js";
import type { StreamHandlers } from "./stream-session.js";
import { FakeApi } from "../../../testing/fake-api.js";
import { FakeWebSocket } from "../../../testing/fake-websocket.js";
import { streamEvents } from "../../../testing/events.js";

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

  it("resumes every stream of a dropped socket on one new socket, without duplicates", async () => {
    const { client } = setup();
    const a = collect();
    const handle = client.start("explain-eli10", { topic: "rain" }, a.handlers, { idempotencyKey: "r1" });
    const first = await openedSocket(0);
    const e = streamEvents("A");
    const all = [{ ...e.start("explain-eli10"), ref: "r1" } as StreamEvent, e.chunk("one "), e.chunk("two "), e.chunk("three"), e.complete()];
    await vi.waitFor(() => expect(first.sent).toHaveLength(1));
    first.serverSend(...all.slice(0, 2));
    first.serverDrop();
    const second = await openedSocket(1);
    await vi.waitFor(() => expect(second.sent).toEqual([{ type: "resume", stream_id: "A", after: 1 }]));
    second.serverSend(...all.slice(1));
    expect((await handle.done).status).toBe("complete");
    expect(a.text()).toBe("one two three");
    expect(a.statuses).toEqual(["connecting", "streaming", "reconnecting", "streaming", "complete"]);
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
