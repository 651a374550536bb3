// A stream's life: terminal events, seq gaps, backoff, coming back online or visible, expiry.
import { afterEach, describe, expect, it, vi } from "vitest";
import { FakeApi } from "../../../testing/fake-api.js";
import { streamEvents, streamExpired, streamNotFound } from "../../../testing/events.js";
import { clientFor as client, recorder } from "../../../testing/recorder.js";

afterEach(() => {
  vi.useRealTimers();
});

describe("stream session: ends, gaps, reconnects", () => {
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

  it("ends with stream_not_found, as the server sends it, when the stream is gone after a drop (a restarted server)", async () => {
    const api = new FakeApi();
    const r = recorder();
    const handle = client(api, { backoff: { initialMs: 1, maxMs: 2 } }).start("ask-question", { question: "q" }, r.handlers);
    const e = streamEvents("s1");
    const first = await api.eventResponse(0);
    first.sendEvents(e.start(), e.chunk("a"), e.chunk("b"));
    await vi.waitFor(() => expect(r.log).toContain("chunk:2"));
    first.drop();
    const second = await api.eventResponse(1);
    expect(second.request.url.searchParams.get("after")).toBe("2");
    second.sendEvents(streamNotFound("s1", 2));
    // Retryable: starting again (a new generation) may succeed; resuming this one cannot.
    expect(await handle.done).toMatchObject({ status: "error", error: { code: "stream_not_found", retryable: true } });
    expect(r.log.at(-1)).toBe("error:stream_not_found:server");
    expect(api.eventResponses).toHaveLength(2);
  });

  it("ends at once when the resumed stream's log expired: its stream_not_found comes after the log's end, far above the last seq held", async () => {
    const api = new FakeApi();
    const r = recorder();
    const handle = client(api, { backoff: { initialMs: 1, maxMs: 2 } }).resume("s1", 3, r.handlers);
    const response = await api.eventResponse(0);
    response.sendEvents(streamExpired("s1", 41));
    response.end();
    expect(await handle.done).toMatchObject({ status: "error", error: { code: "stream_not_found", retryable: true } });
    expect(r.log).toEqual(["error:stream_not_found:server"]);
    expect(r.statuses).toEqual(["connecting", "streaming", "error"]);
    expect(api.requestsTo("GET", /\/events$/)).toHaveLength(1);
  });

  it("still treats a chunk above the next seq as a gap to fill, not an end", async () => {
    const api = new FakeApi();
    const r = recorder();
    const handle = client(api, { backoff: { initialMs: 1, maxMs: 2 } }).resume("s1", 1, r.handlers);
    const e = streamEvents("s1");
    const log = [e.start(), e.chunk("a"), e.chunk("b"), e.chunk("c"), e.complete()];
    (await api.eventResponse(0)).sendEvents(log[1]!, log[3]!);
    const second = await api.eventResponse(1);
    expect(second.request.url.searchParams.get("after")).toBe("1");
    second.sendEvents(...log.slice(2));
    expect((await handle.done).status).toBe("complete");
    expect(r.text()).toBe("bc");
  });

  it("reconnects at once when a hidden tab, whose timers the browser throttles, becomes visible", async () => {
    vi.useFakeTimers({ toFake: ["setTimeout", "clearTimeout"] });
    const visibility = vi.spyOn(document, "visibilityState", "get").mockReturnValue("hidden");
    const api = new FakeApi();
    const r = recorder();
    const handle = client(api, { backoff: { initialMs: 60_000, maxMs: 60_000 } }).start("ask-question", { question: "q" }, r.handlers);
    await vi.advanceTimersByTimeAsync(0);
    const e = streamEvents("s1");
    const first = await api.eventResponse(0);
    first.sendEvents(e.start());
    first.drop();
    await vi.advanceTimersByTimeAsync(0);
    expect(r.statuses.at(-1)).toBe("reconnecting");
    visibility.mockReturnValue("visible");
    document.dispatchEvent(new Event("visibilitychange"));
    await vi.advanceTimersByTimeAsync(0);
    // Well before the 30–60 s backoff timer: the page coming back was the signal.
    const second = await api.eventResponse(1);
    expect(second.request.headers.get("last-event-id")).toBe("s1:0");
    second.sendEvents(e.complete());
    await vi.advanceTimersByTimeAsync(0);
    expect((await handle.done).status).toBe("complete");
  });
});
