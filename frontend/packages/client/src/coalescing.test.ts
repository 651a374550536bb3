// Coalescing (a class asking the same question): `fresh` on both transports' starts, and the
// `shared` / `cached` marks of the start event in a block's state, kept across resumes.
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { BlockStream, type BlockStreamOptions } from "./block-stream.js";
import type { BlockType } from "./contract.js";
import { StreamClient } from "./stream-client.js";
import { FakeApi } from "../../../testing/fake-api.js";
import { FakeWebSocket } from "../../../testing/fake-websocket.js";
import { streamEvents } from "../../../testing/events.js";
import { clientFor } from "../../../testing/recorder.js";

/** Publishes on the next microtask: every change is seen, without waiting for frames. */
const microtasks = (callback: () => void) => {
  let live = true;
  queueMicrotask(() => live && callback());
  return () => (live = false);
};

const created: BlockStream<never>[] = [];
function blockStream<B extends BlockType>(api: FakeApi, options: BlockStreamOptions<B> = {}, blockType?: B) {
  const stream = new BlockStream<B>(clientFor(api, { backoff: { initialMs: 1, maxMs: 2 } }), { scheduler: microtasks, ...options }, blockType);
  created.push(stream as unknown as BlockStream<never>);
  return stream;
}

const startBodies = (api: FakeApi) => api.requestsTo("POST", /^\/api\/streams$/).map((request) => JSON.parse(request.body!) as unknown);

beforeEach(() => {
  sessionStorage.clear();
  FakeWebSocket.reset();
});
afterEach(() => {
  for (const stream of created.splice(0)) stream.detach();
});

describe("fresh: generate anew instead of joining the class's answer", () => {
  it("goes in the HTTP start body only when true, so a server from before coalescing takes every other start", async () => {
    const api = new FakeApi();
    const client = clientFor(api);
    const asked = [{}, { fresh: false }, { fresh: true }];
    for (const [index, options] of asked.entries()) {
      const handle = client.start("explain-eli10", { topic: "rain" }, {}, options);
      const e = streamEvents(`s${index + 1}`);
      (await api.eventResponse(index)).sendEvents(e.start("explain-eli10"), e.complete());
      expect((await handle.done).status).toBe("complete");
    }
    expect(startBodies(api)).toEqual([
      { block_type: "explain-eli10", input: { topic: "rain" } },
      { block_type: "explain-eli10", input: { topic: "rain" } },
      { block_type: "explain-eli10", input: { topic: "rain" }, fresh: true },
    ]);
  });

  it("goes in the WebSocket start message only when true (each frame checked against the contract's ClientStart)", async () => {
    const api = new FakeApi();
    const client = new StreamClient({ baseUrl: "http://127.0.0.1:9999", fetch: api.fetch, WebSocket: FakeWebSocket as unknown as typeof WebSocket });
    const plain = client.start("quiz", { topic: "volcanoes" }, {}, { mode: "websocket", idempotencyKey: "plain" });
    const fresh = client.start("quiz", { topic: "volcanoes" }, {}, { mode: "websocket", idempotencyKey: "fresh", fresh: true });
    await vi.waitFor(() => expect(FakeWebSocket.sockets).toHaveLength(1));
    const socket = FakeWebSocket.latest();
    socket.serverOpen();
    await vi.waitFor(() => expect(socket.sent).toHaveLength(2));
    expect(socket.sent).toEqual([
      { type: "start", block_type: "quiz", input: { topic: "volcanoes" }, ref: "plain" },
      { type: "start", block_type: "quiz", input: { topic: "volcanoes" }, ref: "fresh", fresh: true },
    ]);
    plain.detach();
    fresh.detach();
  });

  it("is asked again by retry(), like the rest of the request", async () => {
    const api = new FakeApi();
    const stream = blockStream<"explain-eli10">(api, {}, "explain-eli10");
    const first = stream.start("explain-eli10", { topic: "rain" }, { fresh: true });
    const e = streamEvents("s1");
    (await api.eventResponse(0)).sendEvents(e.start("explain-eli10"), e.error("provider_error", true));
    await expect(first).rejects.toMatchObject({ code: "provider_error" });
    void stream.retry();
    await vi.waitFor(() => expect(startBodies(api)).toHaveLength(2));
    expect(startBodies(api)[1]).toEqual({ block_type: "explain-eli10", input: { topic: "rain" }, fresh: true });
  });
});

describe("shared and cached in a block's state", () => {
  it("are false until a start event says otherwise, and are each taken from it", async () => {
    const api = new FakeApi();
    const stream = blockStream<"explain-eli10">(api, {}, "explain-eli10");
    expect(stream.getSnapshot()).toMatchObject({ shared: false, cached: false });

    void stream.start("explain-eli10", { topic: "rain" });
    const joined = streamEvents("s1");
    (await api.eventResponse(0)).sendEvents(joined.start("explain-eli10", "demo", undefined, "shared"), joined.chunk("Rain "));
    await vi.waitFor(() => expect(stream.getSnapshot()).toMatchObject({ streamId: "s1", shared: true, cached: false }));

    // A new start forgets the last one's marks at once, then takes its own.
    void stream.start("explain-eli10", { topic: "snow" });
    await vi.waitFor(() => expect(stream.getSnapshot()).toMatchObject({ status: "connecting", shared: false, cached: false }));
    const replayed = streamEvents("s2");
    (await api.eventResponse(1)).sendEvents(replayed.start("explain-eli10", "demo", undefined, "cached"), replayed.chunk("Snow "));
    await vi.waitFor(() => expect(stream.getSnapshot()).toMatchObject({ streamId: "s2", shared: false, cached: true }));

    void stream.start("explain-eli10", { topic: "hail" }, { fresh: true });
    const own = streamEvents("s3");
    (await api.eventResponse(2)).sendEvents(own.start("explain-eli10"), own.chunk("Hail "));
    await vi.waitFor(() => expect(stream.getSnapshot()).toMatchObject({ streamId: "s3", text: "Hail ", shared: false, cached: false }));
  });

  it("stay after detach() and resume(), whose replay starts after the start event", async () => {
    const api = new FakeApi();
    const stream = blockStream<"explain-eli10">(api, {}, "explain-eli10");
    const first = stream.start("explain-eli10", { topic: "rain" });
    const e = streamEvents("s1");
    const log = [e.start("explain-eli10", "demo", undefined, "shared"), e.chunk("Rain "), e.chunk("falls"), e.chunk("."), e.complete({ markdown: "Rain falls." })];
    (await api.eventResponse(0)).sendEvents(...log.slice(0, 3));
    await vi.waitFor(() => expect(stream.getSnapshot().text).toBe("Rain falls"));
    stream.detach();
    await expect(first).rejects.toMatchObject({ code: "detached" });

    const resumed = stream.resume();
    const response = await api.eventResponse(1);
    // The client asks again for the last event it holds (seq 2); the start event (seq 0) is not replayed.
    expect(response.request.headers.get("last-event-id")).toBe("s1:1");
    response.sendEvents(...log.slice(2));
    await expect(resumed).resolves.toEqual({ markdown: "Rain falls." });
    await vi.waitFor(() => expect(stream.getSnapshot()).toMatchObject({ status: "complete", text: "Rain falls.", shared: true }));
  });

  it("stay after a reload (resume: true), whose resume starts after the start event", async () => {
    const api = new FakeApi();
    const before = blockStream<"explain-eli10">(api, { resume: true }, "explain-eli10");
    void before.start("explain-eli10", { topic: "rain" });
    const e = streamEvents("s1");
    const log = [e.start("explain-eli10", "demo", undefined, "cached"), e.chunk("Rain "), e.chunk("falls"), e.chunk("."), e.complete({ markdown: "Rain falls." })];
    (await api.eventResponse(0)).sendEvents(...log.slice(0, 3));
    await vi.waitFor(() => expect(before.getSnapshot().text).toBe("Rain falls"));
    window.dispatchEvent(new Event("pagehide"));
    before.detach();

    const after = blockStream<"explain-eli10">(api, { resume: true }, "explain-eli10");
    expect(after.resumeStored()).toBe(true);
    expect(after.getSnapshot()).toMatchObject({ status: "reconnecting", text: "Rain falls", cached: true, shared: false });
    const resumed = await api.eventResponse(1);
    expect(resumed.request.headers.get("last-event-id")).toBe("s1:1");
    resumed.sendEvents(...log.slice(2));
    await vi.waitFor(() => expect(after.getSnapshot()).toMatchObject({ status: "complete", text: "Rain falls.", cached: true }));
  });
});
