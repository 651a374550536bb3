// The block controller: start()'s promise, the callbacks, throttle, detach vs cancel, the
// visibility resume and the reload resume (sessionStorage).
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { AIBlockError } from "./block-error.js";
import { BlockStream, type BlockStreamOptions } from "./block-stream.js";
import type { BlockType } from "./contract.js";
import { FakeApi } from "../../../testing/fake-api.js";
import { SAMPLE_QUESTION, streamEvents } from "../../../testing/events.js";
import { clientFor } from "../../../testing/recorder.js";

/** Publishes on the next microtask: every change is seen, without waiting for frames. */
const microtasks = (callback: () => void) => {
  let live = true;
  queueMicrotask(() => live && callback());
  return () => (live = false);
};

const created: BlockStream<never>[] = [];
function blockStream<B extends BlockType>(api: FakeApi, options: BlockStreamOptions<B> = {}, blockType?: B, backoff = {}) {
  const client = clientFor(api, { backoff: { initialMs: 1, maxMs: 2, ...backoff } });
  const stream = new BlockStream<B>(client, { scheduler: microtasks, ...options }, blockType);
  created.push(stream as unknown as BlockStream<never>);
  return stream;
}

beforeEach(() => sessionStorage.clear());
afterEach(() => {
  // A page that goes away leaves its streams to the server, like a closed tab.
  for (const stream of created.splice(0)) stream.detach();
  vi.useRealTimers();
  vi.restoreAllMocks();
});

describe("BlockStream.start()", () => {
  it("resolves with the block's result, after onChunk, onPart and onFinish saw the stream", async () => {
    const api = new FakeApi();
    const seen: string[] = [];
    const stream = blockStream<"quiz">(api, {
      onChunk: (event) => seen.push(`chunk:${event.token}`),
      onPart: (event) => seen.push(`part:${event.index}`),
      onFinish: (result, event) => seen.push(`finish:${result.questions.length}:${event.seq}`),
      onError: () => seen.push("error"),
    });
    const result = stream.start("quiz", { topic: "volcanoes", count: 1 });
    const e = streamEvents("s1");
    (await api.eventResponse(0)).sendEvents(e.start("quiz"), e.chunk("[{"), e.part(0, SAMPLE_QUESTION), e.complete({ questions: [SAMPLE_QUESTION] }));
    await expect(result).resolves.toEqual({ questions: [SAMPLE_QUESTION] });
    expect(seen).toEqual(["chunk:[{", "part:0", "finish:1:3"]);
    await vi.waitFor(() => expect(stream.getSnapshot()).toMatchObject({ status: "complete", parts: [SAMPLE_QUESTION], text: "[{" }));
  });

  it("rejects with an AIBlockError carrying the stream's error, and calls onError once", async () => {
    const api = new FakeApi();
    const onError = vi.fn();
    const stream = blockStream(api, { onError });
    const result = stream.start("explain-eli10", { topic: "rain" });
    const e = streamEvents("s1");
    (await api.eventResponse(0)).sendEvents(e.start("explain-eli10"), e.error("provider_error", true));
    const error = await result.catch((failure: unknown) => failure);
    expect(error).toBeInstanceOf(AIBlockError);
    expect(error).toMatchObject({ code: "provider_error", error: { retryable: true } });
    expect(onError).toHaveBeenCalledTimes(1);
  });

  it("removes the text and the quiz questions shown when moderation retracts them", async () => {
    const api = new FakeApi();
    const stream = blockStream<"quiz">(api);
    const result = stream.start("quiz", { topic: "volcanoes", count: 2 });
    const e = streamEvents("s1");
    const response = await api.eventResponse(0);
    response.sendEvents(e.start("quiz"), e.chunk("[{"), e.part(0, SAMPLE_QUESTION));
    await vi.waitFor(() => expect(stream.getSnapshot()).toMatchObject({ text: "[{", parts: [SAMPLE_QUESTION] }));
    // The retraction keeps its seq in the log, so it may come after a gap.
    response.sendEvents({ ...e.error("output_flagged", false, { categories: ["profanity"], retract: true }), seq: 9 });
    await expect(result).rejects.toMatchObject({ code: "output_flagged", error: { categories: ["profanity"], retract: true } });
    await vi.waitFor(() => expect(stream.getSnapshot()).toMatchObject({ status: "error", text: "", parts: [], result: undefined }));
  });

  it("keeps what passed when moderation stops an answer without retracting it", async () => {
    const api = new FakeApi();
    const stream = blockStream(api);
    const result = stream.start("explain-eli10", { topic: "rain" });
    const e = streamEvents("s1");
    (await api.eventResponse(0)).sendEvents(e.start("explain-eli10"), e.chunk("Rain falls. "), e.error("output_flagged", false, { categories: ["profanity"] }));
    await expect(result).rejects.toMatchObject({ code: "output_flagged" });
    await vi.waitFor(() => expect(stream.getSnapshot()).toMatchObject({ status: "error", text: "Rain falls. " }));
  });

  it("rejects with code cancelled on cancel(), and the server is told", async () => {
    const api = new FakeApi();
    const stream = blockStream(api);
    const result = stream.start("explain-eli10", { topic: "rain" });
    const e = streamEvents("s1");
    (await api.eventResponse(0)).sendEvents(e.start("explain-eli10"), e.chunk("a"));
    await vi.waitFor(() => expect(stream.getSnapshot().text).toBe("a"));
    stream.cancel();
    await expect(result).rejects.toMatchObject({ code: "cancelled" });
    await vi.waitFor(() => expect(api.requestsTo("DELETE", /^\/api\/streams\/s1$/)).toHaveLength(1));
  });

  it("detach() leaves the generation running: no cancel reaches the server, and the promise says detached", async () => {
    const api = new FakeApi();
    const stream = blockStream(api);
    const result = stream.start("explain-eli10", { topic: "rain" });
    const response = await api.eventResponse(0);
    response.sendEvents(streamEvents("s1").start("explain-eli10"));
    await vi.waitFor(() => expect(stream.getSnapshot().streamId).toBe("s1"));
    stream.detach();
    await expect(result).rejects.toMatchObject({ code: "detached" });
    expect(response.request.signal?.aborted).toBe(true);
    expect(api.requestsTo("DELETE", /.*/)).toHaveLength(0);
  });

  it("a promise nobody awaits does not surface as an unhandled rejection", async () => {
    const api = new FakeApi();
    const unhandled = vi.fn();
    process.on("unhandledRejection", unhandled);
    try {
      const stream = blockStream(api);
      void stream.start("explain-eli10", { topic: "rain" });
      stream.cancel();
      // A rejection nobody handles is reported after the microtask queue drains.
      await new Promise((resolve) => setTimeout(resolve, 0));
      expect(unhandled).not.toHaveBeenCalled();
    } finally {
      process.off("unhandledRejection", unhandled);
    }
  });
});

describe("BlockStream lifecycle: every state settles", () => {
  it("detach() says so in the state, and resume() continues the same stream after what is shown", async () => {
    const api = new FakeApi();
    const stream = blockStream<"explain-eli10">(api, {}, "explain-eli10");
    const first = stream.start("explain-eli10", { topic: "rain" });
    const e = streamEvents("s1");
    const log = [e.start("explain-eli10"), e.chunk("Rain "), e.chunk("falls."), e.complete({ markdown: "Rain falls." })];
    (await api.eventResponse(0)).sendEvents(log[0]!, log[1]!);
    await vi.waitFor(() => expect(stream.getSnapshot().text).toBe("Rain "));
    stream.detach();
    await expect(first).rejects.toMatchObject({ code: "detached" });
    await vi.waitFor(() => expect(stream.getSnapshot()).toMatchObject({ status: "detached", streamId: "s1", text: "Rain " }));

    const resumed = stream.resume();
    const response = await api.eventResponse(1);
    expect(response.request.url.pathname).toBe("/api/streams/s1/events");
    expect(response.request.headers.get("last-event-id")).toBe("s1:0");
    response.sendEvents(...log.slice(1));
    await expect(resumed).resolves.toEqual({ markdown: "Rain falls." });
    await vi.waitFor(() => expect(stream.getSnapshot()).toMatchObject({ status: "complete", text: "Rain falls." }));
    expect(api.requestsTo("POST", /^\/api\/streams$/)).toHaveLength(1);
    // The stream is known again: retry starts the same request anew.
    void stream.retry();
    await vi.waitFor(() => expect(api.requestsTo("POST", /^\/api\/streams$/)).toHaveLength(2));
  });

  it("resume(streamId) re-attaches to any of the learner's streams by id, from its first event", async () => {
    const api = new FakeApi();
    const stream = blockStream(api);
    const result = stream.resume("s9");
    const response = await api.eventResponse(0);
    expect(response.request.url.pathname).toBe("/api/streams/s9/events");
    expect(response.request.headers.get("last-event-id")).toBeNull();
    const e = streamEvents("s9");
    response.sendEvents(e.start("quiz"), e.part(0, SAMPLE_QUESTION), e.complete({ questions: [SAMPLE_QUESTION] }));
    await expect(result).resolves.toEqual({ questions: [SAMPLE_QUESTION] });
    await vi.waitFor(() => expect(stream.getSnapshot()).toMatchObject({ status: "complete", blockType: "quiz", streamId: "s9", parts: [SAMPLE_QUESTION] }));
    await expect(stream.retry()).rejects.toMatchObject({ code: "bad_request" });
  });

  it("resume() with nothing detached rejects, and changes nothing", async () => {
    const stream = blockStream(new FakeApi());
    await expect(stream.resume()).rejects.toMatchObject({ code: "bad_request" });
    expect(stream.getSnapshot().status).toBe("idle");
  });

  it("dispose() publishes the final state before going quiet", async () => {
    const api = new FakeApi();
    // Frames that never come on their own: only a flush publishes.
    const stream = blockStream(api, { scheduler: () => () => undefined });
    void stream.start("explain-eli10", { topic: "rain" });
    (await api.eventResponse(0)).sendEvents(streamEvents("s1").start("explain-eli10"));
    await vi.waitFor(() => {
      stream.store.flush();
      expect(stream.getSnapshot()).toMatchObject({ status: "streaming", streamId: "s1" });
    });
    stream.dispose();
    expect(stream.getSnapshot().status).toBe("cancelled");
  });

  it.each([
    [false, "cancelled"],
    [true, "detached"],
  ] as const)("start()'s promise settles when the block is disposed of (resume: %s → %s)", async (resume, code) => {
    const api = new FakeApi();
    const stream = blockStream<"explain-eli10">(api, { resume }, "explain-eli10");
    const result = stream.start("explain-eli10", { topic: "rain" });
    (await api.eventResponse(0)).sendEvents(streamEvents("s1").start("explain-eli10"));
    await vi.waitFor(() => expect(stream.getSnapshot().streamId).toBe("s1"));
    stream.dispose();
    await expect(result).rejects.toMatchObject({ name: "AIBlockError", code });
    expect(stream.getSnapshot().status).toBe(code);
  });

  it("start()'s promise settles when the block is disposed of before the server was even asked", async () => {
    const api = new FakeApi();
    let release!: () => void;
    const configGate = new Promise<void>((resolve) => (release = resolve));
    api.route(async (request) => {
      if (request.url.pathname === "/api/ai/config") await configGate;
      return undefined;
    });
    const stream = blockStream(api);
    const result = stream.start("explain-eli10", { topic: "rain" });
    stream.dispose();
    release();
    await expect(result).rejects.toMatchObject({ code: "cancelled" });
  });

  it("reset() cancels what runs and returns to idle, with nothing left to retry", async () => {
    const api = new FakeApi();
    const stream = blockStream(api);
    const result = stream.start("explain-eli10", { topic: "rain" });
    (await api.eventResponse(0)).sendEvents(streamEvents("s1").start("explain-eli10"), streamEvents("s1").chunk("x"));
    await vi.waitFor(() => expect(stream.getSnapshot().streamId).toBe("s1"));
    stream.reset();
    await expect(result).rejects.toMatchObject({ code: "cancelled" });
    await vi.waitFor(() => expect(stream.getSnapshot()).toMatchObject({ status: "idle", text: "", streamId: undefined, error: undefined }));
    await vi.waitFor(() => expect(api.requestsTo("DELETE", /^\/api\/streams\/s1$/)).toHaveLength(1));
    await expect(stream.retry()).rejects.toMatchObject({ code: "bad_request" });
  });

  it("joins a start() repeated in the same task (StrictMode's second mount effect) instead of starting a second generation", async () => {
    const api = new FakeApi();
    const stream = blockStream(api);
    const first = stream.start("explain-eli10", { topic: "rain" });
    const again = stream.start("explain-eli10", { topic: "rain" });
    expect(again).toBe(first);
    const e = streamEvents("s1");
    (await api.eventResponse(0)).sendEvents(e.start("explain-eli10"), e.complete({ markdown: "ok" }));
    await expect(first).resolves.toEqual({ markdown: "ok" });
    expect(api.requestsTo("POST", /^\/api\/streams$/)).toHaveLength(1);
    // A later task's start() is a new generation, as ever.
    void stream.start("explain-eli10", { topic: "rain" });
    await vi.waitFor(() => expect(api.requestsTo("POST", /^\/api\/streams$/)).toHaveLength(2));
  });
});

describe("BlockStream throttle", () => {
  it("publishes at most once per throttle interval however fast chunks arrive", async () => {
    vi.useFakeTimers({ toFake: ["setTimeout", "clearTimeout", "Date"] });
    const api = new FakeApi();
    const client = clientFor(api);
    const stream = new BlockStream(client, { throttle: 100 });
    let published = 0;
    stream.subscribe(() => published++);
    void stream.start("explain-eli10", { topic: "rain" });
    await vi.advanceTimersByTimeAsync(0);
    const response = await api.eventResponse(0);
    const e = streamEvents("s1");
    response.sendEvents(e.start("explain-eli10"));
    await vi.advanceTimersByTimeAsync(1);
    const before = published;
    for (let i = 0; i < 50; i++) {
      response.sendEvents(e.chunk("x"));
      await vi.advanceTimersByTimeAsync(10); // 500 ms of chunks every 10 ms
    }
    await vi.advanceTimersByTimeAsync(100);
    expect(stream.getSnapshot().text).toHaveLength(50);
    // 500 ms at one publication per 100 ms: 5 or 6, not 50.
    expect(published - before).toBeGreaterThanOrEqual(5);
    expect(published - before).toBeLessThanOrEqual(6);
  });
});

describe("BlockStream visibility", () => {
  it("resumes, once the page is visible again, a stream whose connection was lost for good while hidden", async () => {
    const visibility = vi.spyOn(document, "visibilityState", "get").mockReturnValue("hidden");
    const api = new FakeApi();
    let networkDown = false;
    api.route((request) => {
      if (networkDown && request.url.pathname.endsWith("/events")) throw new TypeError("Failed to fetch");
      return undefined;
    });
    const onError = vi.fn();
    const stream = blockStream(api, { onError }, undefined, { maxAttempts: 2 });
    const result = stream.start("explain-eli10", { topic: "rain" });
    const e = streamEvents("s1");
    const first = await api.eventResponse(0);
    first.sendEvents(e.start("explain-eli10"), e.chunk("Rain "));
    await vi.waitFor(() => expect(stream.getSnapshot().text).toBe("Rain "));
    networkDown = true;
    first.drop();
    // Every reconnect fails while the learner is away: the block shows the error…
    await vi.waitFor(() => expect(stream.getSnapshot()).toMatchObject({ status: "error", error: { code: "connection_lost" } }));
    expect(onError).not.toHaveBeenCalled();

    // …and picks the same stream up where it stopped when the learner comes back.
    networkDown = false;
    visibility.mockReturnValue("visible");
    document.dispatchEvent(new Event("visibilitychange"));
    const resumed = await api.eventResponse(1);
    expect(resumed.request.url.pathname).toBe("/api/streams/s1/events");
    // From one before the last event held: a resume learns whether that one was the end.
    expect(resumed.request.headers.get("last-event-id")).toBe("s1:0");
    resumed.sendEvents({ type: "chunk", stream_id: "s1", seq: 1, token: "Rain " }, e.chunk("falls."), e.complete({ markdown: "Rain falls." }));
    await expect(result).resolves.toEqual({ markdown: "Rain falls." });
    await vi.waitFor(() => expect(stream.getSnapshot()).toMatchObject({ status: "complete", text: "Rain falls.", error: undefined }));
    expect(onError).not.toHaveBeenCalled();
    expect(api.requestsTo("POST", /^\/api\/streams$/)).toHaveLength(1);
  });

  it("reports a connection lost while the page is visible as a plain error", async () => {
    vi.spyOn(document, "visibilityState", "get").mockReturnValue("visible");
    const api = new FakeApi();
    api.route((request) => (request.url.pathname.endsWith("/events") && api.eventResponses.length > 0 ? Promise.reject(new TypeError("Failed to fetch")) : undefined));
    const onError = vi.fn();
    const stream = blockStream(api, { onError }, undefined, { maxAttempts: 1 });
    const result = stream.start("explain-eli10", { topic: "rain" });
    const first = await api.eventResponse(0);
    first.sendEvents(streamEvents("s1").start("explain-eli10"));
    await vi.waitFor(() => expect(stream.getSnapshot().streamId).toBe("s1"));
    first.drop();
    await expect(result).rejects.toMatchObject({ code: "connection_lost" });
    expect(onError).toHaveBeenCalledTimes(1);
  });
});

describe("BlockStream resume: true", () => {
  it("a reloaded page resumes the stream from the last seq it showed, with the text shown so far", async () => {
    const api = new FakeApi();
    const before = blockStream<"explain-eli10">(api, { resume: true }, "explain-eli10");
    void before.start("explain-eli10", { topic: "rain" });
    const e = streamEvents("s1");
    (await api.eventResponse(0)).sendEvents(e.start("explain-eli10"), e.chunk("Rain "), e.chunk("is "));
    await vi.waitFor(() => expect(before.getSnapshot().text).toBe("Rain is "));
    // The page unloads (a reload): pagehide is the last thing it hears.
    window.dispatchEvent(new Event("pagehide"));
    before.detach();

    const after = blockStream<"explain-eli10">(api, { resume: true }, "explain-eli10");
    expect(after.resumeStored()).toBe(true);
    expect(after.getSnapshot()).toMatchObject({ status: "reconnecting", text: "Rain is ", streamId: "s1" });
    const resumed = await api.eventResponse(1);
    expect(resumed.request.headers.get("last-event-id")).toBe("s1:1");
    resumed.sendEvents({ type: "chunk", stream_id: "s1", seq: 2, token: "is " }, e.chunk("water."), e.complete({ markdown: "Rain is water." }));
    await vi.waitFor(() => expect(after.getSnapshot()).toMatchObject({ status: "complete", text: "Rain is water." }));
    expect(api.requestsTo("POST", /^\/api\/streams$/)).toHaveLength(1);
    // Finished: nothing is left to resume on the next load.
    expect(blockStream(api, { resume: true }, "explain-eli10").resumeStored()).toBe(false);
  });

  it("leaving (unmount) detaches instead of cancelling, so the next mount resumes", async () => {
    const api = new FakeApi();
    const first = blockStream<"quiz">(api, { resume: true, id: "lesson-3-quiz" }, "quiz");
    void first.start("quiz", { topic: "volcanoes" });
    (await api.eventResponse(0)).sendEvents(streamEvents("s1").start("quiz"));
    await vi.waitFor(() => expect(first.getSnapshot().streamId).toBe("s1"));
    first.dispose();
    expect(api.requestsTo("DELETE", /.*/)).toHaveLength(0);
    const second = blockStream<"quiz">(api, { resume: true, id: "lesson-3-quiz" }, "quiz");
    expect(second.resumeStored()).toBe(true);
    // It holds only the start event (seq 0): the resume replays the stream from its first event.
    const resumed = (await api.eventResponse(1)).request;
    expect(resumed.url.pathname).toBe("/api/streams/s1/events");
    expect(resumed.headers.get("last-event-id")).toBeNull();
  });

  it("without resume, nothing is stored and unmount cancels", async () => {
    const api = new FakeApi();
    const stream = blockStream<"quiz">(api, {}, "quiz");
    void stream.start("quiz", { topic: "volcanoes" });
    (await api.eventResponse(0)).sendEvents(streamEvents("s1").start("quiz"));
    await vi.waitFor(() => expect(stream.getSnapshot().streamId).toBe("s1"));
    window.dispatchEvent(new Event("pagehide"));
    expect(sessionStorage.length).toBe(0);
    stream.dispose();
    await vi.waitFor(() => expect(api.requestsTo("DELETE", /^\/api\/streams\/s1$/)).toHaveLength(1));
  });
});
