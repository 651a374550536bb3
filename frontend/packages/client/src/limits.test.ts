// A learner's limits (issue 8): a 429 or a WebSocket protocol_error rate_limited /
// budget_exhausted ends the start with when to try again, and nothing retries on its own;
// a refused origin (403) is final.
import { beforeEach, describe, expect, it, vi } from "vitest";
import { FakeApi, limited, problem } from "../../../testing/fake-api.js";
import { FakeWebSocket } from "../../../testing/fake-websocket.js";
import { clientFor, recorder } from "../../../testing/recorder.js";

beforeEach(() => FakeWebSocket.reset());

describe("limits over HTTP", () => {
  it.each([
    ["rate_limited", 12_000],
    ["budget_exhausted", 6 * 3_600_000],
  ] as const)("a 429 %s ends the stream with the time to try again, after one request", async (code, retryAfterMs) => {
    const api = new FakeApi();
    api.route((request) => (request.method === "POST" ? limited(code, retryAfterMs) : undefined));
    const before = Date.now();
    const r = recorder();
    const outcome = await clientFor(api, { backoff: { initialMs: 1, maxMs: 1 } }).start("quiz", { topic: "x" }, r.handlers).done;
    expect(outcome).toMatchObject({ status: "error", error: { code, status: 429, retryable: true, retryAfterMs } });
    if (outcome.status !== "error") return;
    expect(outcome.error.retryAt).toBeGreaterThanOrEqual(before + retryAfterMs);
    expect(outcome.error.retryAt).toBeLessThanOrEqual(Date.now() + retryAfterMs);
    expect(r.statuses).not.toContain("reconnecting");
    expect(api.requestsTo("POST", /^\/api\/streams$/)).toHaveLength(1);
  });

  it("takes the wait from Retry-After when the body has no retry_after_ms", async () => {
    const api = new FakeApi();
    api.route((request) => (request.method === "POST" ? problem(429, "rate_limited", "slow down", {}, { "retry-after": "7" }) : undefined));
    const outcome = await clientFor(api).start("quiz", { topic: "x" }, {}).done;
    expect(outcome).toMatchObject({ status: "error", error: { code: "rate_limited", retryAfterMs: 7_000 } });
  });

  it("a 403 forbidden_origin is final", async () => {
    const api = new FakeApi();
    api.route((request) => (request.method === "POST" ? problem(403, "forbidden_origin", "cross-site start refused") : undefined));
    const outcome = await clientFor(api).start("quiz", { topic: "x" }, {}).done;
    expect(outcome).toMatchObject({ status: "error", error: { code: "forbidden_origin", status: 403, retryable: false } });
    expect(api.requestsTo("POST", /^\/api\/streams$/)).toHaveLength(1);
  });
});

describe("limits over the WebSocket", () => {
  it("a protocol_error budget_exhausted for the start's ref ends that stream with the time to try again", async () => {
    const api = new FakeApi();
    api.config = { ...api.config, streaming_backend: "websocket" };
    const client = clientFor(api, { baseUrl: "http://127.0.0.1:9999", WebSocket: FakeWebSocket as unknown as typeof WebSocket });
    const r = recorder();
    const handle = client.start("quiz", { topic: "x" }, r.handlers, { idempotencyKey: "q1" });
    await vi.waitFor(() => expect(FakeWebSocket.sockets).toHaveLength(1));
    const socket = FakeWebSocket.latest();
    socket.serverOpen();
    await vi.waitFor(() => expect(socket.sent).toHaveLength(1));
    socket.serverSend({ type: "protocol_error", code: "budget_exhausted", message: "daily budget used", retryable: true, ref: "q1", retry_after_ms: 3_600_000 });
    const outcome = await handle.done;
    expect(outcome).toMatchObject({ status: "error", error: { code: "budget_exhausted", retryable: true, retryAfterMs: 3_600_000 } });
    expect(r.statuses).not.toContain("reconnecting");
    expect(socket.sent.filter((m) => (m as { type: string }).type === "start")).toHaveLength(1);
  });
});
