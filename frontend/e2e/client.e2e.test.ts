// The TypeScript stream client against the real live-ai server: every block over both
// transports, resume after the connection is cut mid-stream, cancel, and the fallback.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import WebSocket from "ws";
import {
  parseServerMessage,
  StreamClient,
  type BlockInputs,
  type BlockType,
  type StreamEvent,
  type StreamHandlers,
  type StreamOutcome,
  type TransportKind,
} from "@live-ai/client";
import { streamExpired, streamNotFound } from "../testing/events";
import { startCutProxy, type CutProxy } from "./cut-proxy";
import { readAllEvents, untilLogEndsWith } from "./server-log";
import { startLiveAi, type LiveAiServer } from "./live-ai-server";

const INPUTS: { [B in BlockType]: BlockInputs[B] } = {
  "ask-question": { question: "Why is the sky blue?" },
  "explain-eli10": { topic: "volcanoes" },
  quiz: { topic: "volcanoes", count: 3, difficulty: "easy" },
  diagram: { description: "How rain forms", kind: "flowchart" },
};
const BLOCKS = Object.keys(INPUTS) as BlockType[];
const TRANSPORTS: TransportKind[] = ["sse", "websocket"];

interface Run {
  events: StreamEvent[];
  text: string;
  statuses: string[];
  outcome: StreamOutcome;
  streamId: string | undefined;
}

function newClient(baseUrl: string, fetchImpl?: typeof fetch) {
  return new StreamClient({
    baseUrl,
    fetch: fetchImpl,
    WebSocket: WebSocket as unknown as typeof globalThis.WebSocket,
    backoff: { initialMs: 50, maxMs: 500 },
  });
}

/** Runs one stream to its end, recording every event the handlers saw. */
function run<B extends BlockType>(
  client: StreamClient,
  blockType: B,
  mode: TransportKind | "whole",
  onEvent?: (event: StreamEvent, handle: { cancel(): void }) => void,
  /** Generate anew, where a coalescing server (the default) would join or replay an identical earlier request. */
  fresh = false,
): Promise<Run> {
  const events: StreamEvent[] = [];
  const statuses: string[] = [];
  let text = "";
  let handleRef: { cancel(): void } | undefined;
  const seen = (event: StreamEvent) => {
    events.push(event);
    onEvent?.(event, handleRef!);
  };
  const handlers: StreamHandlers = {
    onStatus: (status) => statuses.push(status),
    onStart: seen,
    onChunk: (event) => {
      text += event.token;
      seen(event);
    },
    onPart: seen,
    onComplete: seen,
    onError: (_error, event) => event && seen(event),
    onCancelled: (event) => event && seen(event),
  };
  const handle = client.start(blockType, INPUTS[blockType], handlers, { mode, fresh });
  handleRef = handle;
  return handle.done.then((outcome) => ({ events, text, statuses, outcome, streamId: handle.streamId }));
}

function expectContiguous(events: StreamEvent[]) {
  expect(events.map((event) => event.seq)).toEqual(events.map((_, index) => index));
}

describe("stream client against live-ai (fast demo model)", () => {
  let server: LiveAiServer;
  let client: StreamClient;
  beforeAll(async () => {
    server = await startLiveAi({ DEMO_TOKENS_PER_SECOND: "2000", DEMO_FIRST_TOKEN_MS: "20" });
    client = newClient(server.url);
  });
  afterAll(async () => {
    client?.dispose();
    await server?.stop();
  });

  for (const transport of TRANSPORTS) {
    for (const blockType of BLOCKS) {
      it(`streams ${blockType} over ${transport}`, async () => {
        const result = await run(client, blockType, transport);
        expect(result.outcome.status).toBe("complete");
        expectContiguous(result.events);
        const [start] = result.events;
        expect(start).toMatchObject({ type: "start", block_type: blockType, provider: "demo" });
        expect(result.events.filter((e) => e.type === "chunk").length).toBeGreaterThan(3);
        expect(result.statuses).toEqual(["connecting", "streaming", "complete"]);
        const complete = result.events.at(-1)!;
        if (complete.type !== "complete") throw new Error("last event is not complete");
        if (blockType === "quiz") {
          const parts = result.events.flatMap((e) => (e.type === "part" ? [e.data] : []));
          expect(parts).toHaveLength(3);
          expect(complete.result).toEqual({ questions: parts });
        } else if (blockType === "diagram") {
          expect(complete.result).toMatchObject({ kind: "flowchart" });
          expect(result.text).toContain((complete.result as { source: string }).source.split("\n")[0]);
        } else {
          expect((complete.result as { markdown: string }).markdown.trim()).toBe(result.text.trim());
        }
      });
    }
  }

  it("gives the same output over both transports (the demo model is deterministic)", async () => {
    // fresh: two generations of their own; a replay of the first answer would prove nothing about the model.
    const sse = await run(client, "explain-eli10", "sse", undefined, true);
    const ws = await run(client, "explain-eli10", "websocket", undefined, true);
    expect(ws.text).toBe(sse.text);
  });

  it("serves the one-shot GET endpoint as contract-valid SSE", async () => {
    const { status, events } = await readAllEvents(`${server.url}/api/stream/ai-block/explain-eli10?topic=volcanoes`);
    expect(status).toBe(200);
    expectContiguous(events);
    expect(events.at(-1)?.type).toBe("complete");
  });

  it("resume(id, terminalSeq) of a finished stream ends with its own terminal event, over both transports", async () => {
    const client = newClient(server.url);
    for (const mode of TRANSPORTS) {
      const done = await run(client, "explain-eli10", mode);
      const terminal = done.events.at(-1)!;
      const outcome = await client.resume(done.streamId!, terminal.seq, {}, { mode }).done;
      expect(outcome).toEqual({ status: "complete", event: terminal });
    }
    client.dispose();
  });

  it("answers 204 when resuming a finished stream whose terminal event the client holds", async () => {
    const done = await run(client, "explain-eli10", "sse");
    const last = done.events.at(-1)!;
    const response = await fetch(`${server.url}/api/streams/${done.streamId}/events`, {
      headers: { "last-event-id": `${done.streamId}:${last.seq}` },
    });
    expect(response.status).toBe(204);
  });

  it("answers a resume of an unknown stream, over SSE, with exactly the stream_not_found event the unit fakes send", async () => {
    const { status, events } = await readAllEvents(`${server.url}/api/streams/nosuchstream/events?after=5`);
    expect(status).toBe(200);
    expect(events).toEqual([streamNotFound("nosuchstream", 5)]);
    expect((await readAllEvents(`${server.url}/api/streams/nosuchstream/events`)).events).toEqual([streamNotFound("nosuchstream", null)]);
  });

  it("answers a resume of an unknown stream, over the WebSocket, with exactly the stream_not_found event the unit fakes send", async () => {
    const socket = new WebSocket(`${server.url.replace("http", "ws")}/api/stream/ws`);
    const frame = new Promise<string>((resolve, reject) => {
      socket.once("message", (data) => resolve(String(data)));
      socket.once("error", reject);
    });
    await new Promise((resolve) => socket.once("open", resolve));
    socket.send(JSON.stringify({ type: "resume", stream_id: "nosuchstream", after: 7 }));
    const message = parseServerMessage(await frame);
    socket.close();
    expect(message).toEqual({ kind: "event", event: streamNotFound("nosuchstream", 7) });
  });

  it("runs a retried start with the same idempotency key as one generation", async () => {
    const body = JSON.stringify({ block_type: "explain-eli10", input: INPUTS["explain-eli10"] });
    const post = () =>
      fetch(`${server.url}/api/streams`, {
        method: "POST",
        headers: { "content-type": "application/json", "idempotency-key": "e2e-same-key" },
        body,
      });
    const first = await post();
    const second = await post();
    expect(first.status).toBe(201);
    expect(second.status).toBe(200);
    expect((await second.json()).stream_id).toBe((await first.json()).stream_id);
  });

  it("surfaces a bad input as a non-retryable error naming the field", async () => {
    for (const mode of TRANSPORTS) {
      const handle = client.start("quiz", { topic: "" }, {}, { mode });
      const outcome = await handle.done;
      expect(outcome).toMatchObject({ status: "error", error: { retryable: false, field: "topic" } });
    }
  });
});

describe("stream client against live-ai after a stream's log expired (STREAM_RETENTION_SECONDS=1)", () => {
  let server: LiveAiServer;
  beforeAll(async () => {
    server = await startLiveAi({ STREAM_RETENTION_SECONDS: "1", DEMO_TOKENS_PER_SECOND: "0", DEMO_FIRST_TOKEN_MS: "0" });
  });
  afterAll(async () => {
    await server?.stop();
  });

  /** A finished stream whose log the server has since expired, and how long that log was. */
  async function expiredStream(): Promise<{ streamId: string; logLength: number }> {
    const client = newClient(server.url);
    const done = await run(client, "explain-eli10", "sse");
    client.dispose();
    expect(done.outcome.status).toBe("complete");
    const streamId = done.streamId!;
    const logLength = done.events.length;
    // The server's sweep expires it within a second or two; its answer then says so.
    await expect
      .poll(async () => (await readAllEvents(`${server.url}/api/streams/${streamId}/events?after=0`)).events[0]?.type, { timeout: 10_000, interval: 200 })
      .toBe("error");
    return { streamId, logLength };
  }

  it("answers a resume of the expired log with exactly the stream_not_found event the unit fakes send, after the log's end", async () => {
    const { streamId, logLength } = await expiredStream();
    expect(logLength).toBeGreaterThan(10);
    const { events } = await readAllEvents(`${server.url}/api/streams/${streamId}/events?after=3`);
    expect(events).toEqual([streamExpired(streamId, logLength)]);
  });

  it("resume(id, 3) over SSE settles with stream_not_found after exactly one request", async () => {
    const { streamId } = await expiredStream();
    const requests: string[] = [];
    const countingFetch: typeof fetch = (input, init) => {
      requests.push(`${init?.method ?? "GET"} ${new URL(String(input)).pathname}`);
      return fetch(input, init);
    };
    const client = newClient(server.url, countingFetch);
    const statuses: string[] = [];
    const outcome = await client.resume(streamId, 3, { onStatus: (status) => statuses.push(status) }, { mode: "sse" }).done;
    client.dispose();
    expect(outcome).toMatchObject({ status: "error", error: { code: "stream_not_found", retryable: true } });
    expect(requests.filter((request) => request.endsWith("/events"))).toEqual([`GET /api/streams/${streamId}/events`]);
    expect(statuses).not.toContain("reconnecting");
  });

  it("resume(id, 3) over the WebSocket settles with stream_not_found after exactly one resume", async () => {
    const { streamId } = await expiredStream();
    const sent: unknown[] = [];
    class CountingWebSocket extends WebSocket {
      override send(data: string) {
        sent.push(JSON.parse(data));
        super.send(data);
      }
    }
    const client = new StreamClient({ baseUrl: server.url, WebSocket: CountingWebSocket as unknown as typeof globalThis.WebSocket, backoff: { initialMs: 50, maxMs: 500 } });
    const statuses: string[] = [];
    const outcome = await client.resume(streamId, 3, { onStatus: (status) => statuses.push(status) }, { mode: "websocket" }).done;
    client.dispose();
    expect(outcome).toMatchObject({ status: "error", error: { code: "stream_not_found", retryable: true } });
    expect(sent.filter((message) => (message as { type: string }).type === "resume")).toHaveLength(1);
    expect(statuses).not.toContain("reconnecting");
  });

});

describe("stream client against live-ai (slow demo model, flaky network)", () => {
  let server: LiveAiServer;
  let proxy: CutProxy;
  beforeAll(async () => {
    // Async moderation: chunks flow one by one (buffered mode releases them a window at a time,
    // so two cuts "while tokens are flowing" could land in one burst).
    server = await startLiveAi({ DEMO_TOKENS_PER_SECOND: "60", DEMO_FIRST_TOKEN_MS: "50", SSE_KEEPALIVE_SECONDS: "1", MODERATION_OUTPUT_MODE: "async" });
    proxy = await startCutProxy(server.port);
  });
  afterAll(async () => {
    await proxy?.close();
    await server?.stop();
  });

  for (const transport of TRANSPORTS) {
    it(`resumes over ${transport} after the connection is cut mid-stream, with no gap or duplicate`, async () => {
      const reference = await run(newClient(server.url), "ask-question", transport);
      expect(reference.outcome.status).toBe("complete");

      let posts = 0;
      const countingFetch: typeof fetch = (input, init) => {
        if (init?.method === "POST") posts++;
        return fetch(input, init);
      };
      const client = newClient(proxy.url, countingFetch);
      let cuts = 0;
      const result = await run(
        client,
        "ask-question",
        transport,
        (event) => {
          // Cut twice: once early, once later, each while tokens are flowing.
          if (event.type === "chunk" && (event.seq === 5 || event.seq === 25)) cuts += proxy.cutAll() > 0 ? 1 : 0;
        },
        // fresh: the reference asked the same; its finished answer, replayed, would arrive at once,
        // not while tokens flow at the model's pace.
        true,
      );
      client.dispose();
      expect(cuts).toBe(2);
      expect(result.outcome.status).toBe("complete");
      expect(result.statuses.filter((s) => s === "reconnecting").length).toBeGreaterThanOrEqual(1);
      expectContiguous(result.events);
      expect(result.text).toBe(reference.text);
      expect(result.events.filter((e) => e.type === "start")).toHaveLength(1);
      if (transport === "sse") expect(posts).toBe(1);
    });

    it(`cancels over ${transport}: the stream ends as cancelled on the server too`, async () => {
      const client = newClient(server.url);
      let chunks = 0;
      const result = await run(client, "explain-eli10", transport, (event, handle) => {
        if (event.type === "chunk" && ++chunks === 3) handle.cancel();
      });
      client.dispose();
      expect(result.outcome).toEqual({ status: "cancelled", event: null });
      expect(result.streamId).toBeDefined();
      // The server's log of the stream ends with `cancelled` (requested), soon after.
      const replay = await untilLogEndsWith(server.url, result.streamId!, "cancelled");
      expect(replay.at(-1)).toMatchObject({ type: "cancelled", reason: "requested" });
      expect(replay.filter((e) => e.type === "chunk").length).toBeLessThan(40);
    });
  }
});

describe("stream client against live-ai, a class asking the same question (coalescing on, as by default)", () => {
  let server: LiveAiServer;
  beforeAll(async () => {
    // Slow enough that a second start comes while the first answer is still being written.
    server = await startLiveAi({ DEMO_TOKENS_PER_SECOND: "60", DEMO_FIRST_TOKEN_MS: "50", MODERATION_OUTPUT_MODE: "async" });
  });
  afterAll(async () => {
    await server?.stop();
  });

  it("marks a start that joined a running generation shared and a replayed one cached, each field only when true, as the unit fakes build them; fresh asks anew", async () => {
    const client = newClient(server.url);
    let joining: Promise<Run> | undefined;
    const first = await run(client, "diagram", "sse", (event) => {
      if (event.type === "chunk" && !joining) joining = run(client, "diagram", "websocket");
    });
    const joined = await joining!;
    const replayed = await run(client, "diagram", "sse");
    const fresh = await run(client, "diagram", "websocket", undefined, true);
    client.dispose();
    for (const each of [first, joined, replayed, fresh]) expect(each.outcome.status).toBe("complete");
    const starts = [first, joined, replayed, fresh].map((each) => each.events[0]!);
    const marks = starts.map((start) => ({ shared: "shared" in start ? start.shared : "absent", cached: "cached" in start ? start.cached : "absent" }));
    expect(marks).toEqual([
      { shared: "absent", cached: "absent" },
      { shared: true, cached: "absent" },
      { shared: "absent", cached: true },
      { shared: "absent", cached: "absent" },
    ]);
    // Each learner's stream is their own, with the one answer.
    expect(new Set([first, joined, replayed, fresh].map((each) => each.streamId)).size).toBe(4);
    for (const each of [joined, replayed, fresh]) expect(each.text).toBe(first.text);
  });
});

describe("the WebSocket against live-ai, as good as SSE", () => {
  let server: LiveAiServer;
  beforeAll(async () => {
    server = await startLiveAi({ DEMO_TOKENS_PER_SECOND: "40", DEMO_FIRST_TOKEN_MS: "20", LIMIT_STREAMS_PER_SOCKET: "2", LIMIT_CONCURRENT_STREAMS: "8" });
  });
  afterAll(async () => {
    await server?.stop();
  });

  const named = (handle: { streamId: string | undefined; done: Promise<StreamOutcome> }) =>
    new Promise<string>((resolve, reject) => {
      const poll = setInterval(() => {
        if (handle.streamId) (clearInterval(poll), resolve(handle.streamId));
      }, 10);
      void handle.done.then(() => (clearInterval(poll), handle.streamId ? resolve(handle.streamId) : reject(new Error("ended unnamed"))));
    });

  it("a detached stream frees its place on the socket (LIMIT_STREAMS_PER_SOCKET), and goes on on the server", async () => {
    const client = newClient(server.url);
    const first = client.start("explain-eli10", INPUTS["explain-eli10"], {}, { mode: "websocket" });
    const second = client.start("ask-question", INPUTS["ask-question"], {}, { mode: "websocket" });
    const firstId = await named(first);
    await named(second);
    first.detach();
    const third = client.start("diagram", INPUTS.diagram, {}, { mode: "websocket" });
    expect((await third.done).status).toBe("complete");
    expect((await second.done).status).toBe("complete");
    // The detached generation finished on the server all the same.
    expect((await untilLogEndsWith(server.url, firstId, "complete")).at(-1)?.type).toBe("complete");
    client.dispose();
  });

  it("refuses a start over 32 KiB before sending it, and the socket's other stream goes on", async () => {
    const client = newClient(server.url);
    const other = client.start("explain-eli10", INPUTS["explain-eli10"], {}, { mode: "websocket" });
    await named(other);
    const big = client.start("ask-question", { question: "why?", context: "漢".repeat(16_000) }, {}, { mode: "websocket" });
    expect(await big.done).toMatchObject({ status: "error", error: { code: "too_large", field: "context" } });
    expect((await other.done).status).toBe("complete");
    client.dispose();
  });

  it("delivers a stream to both of its readers on one socket", async () => {
    const client = newClient(server.url);
    const reference = await run(client, "explain-eli10", "websocket");
    const texts = ["", ""];
    const readers = [0, 1].map((index) =>
      client.resume(reference.streamId!, -1, { onChunk: (event) => (texts[index] += event.token) }, { mode: "websocket" }),
    );
    for (const reader of readers) expect((await reader.done).status).toBe("complete");
    expect(texts).toEqual([reference.text, reference.text]);
    client.dispose();
  });
});

describe("stream client against live-ai with a slow first token", () => {
  let server: LiveAiServer;
  beforeAll(async () => {
    // 1 s keep-alives give a 3 s silence timeout; the first token takes longer than that.
    server = await startLiveAi({ SSE_KEEPALIVE_SECONDS: "1", DEMO_FIRST_TOKEN_MS: "4500", DEMO_TOKENS_PER_SECOND: "2000" });
  });
  afterAll(async () => {
    await server?.stop();
  });

  for (const transport of TRANSPORTS) {
    it(`keeps a quiet ${transport} connection alive through its keep-alives, without reconnecting`, async () => {
      const client = newClient(server.url);
      // fresh: the other transport's run asked the same; a replay of its answer has no slow first token.
      const result = await run(client, "explain-eli10", transport, undefined, true);
      client.dispose();
      expect(result.outcome.status).toBe("complete");
      expect(result.statuses).toEqual(["connecting", "streaming", "complete"]);
    });
  }
});

describe("stream client when the server restarts mid-stream", () => {
  // The memory store dies with the process, so the stream cannot survive a restart; what
  // matters is that the client ends with a typed error instead of hanging or looping.
  it.each([
    ["stops gracefully (SIGTERM)", "SIGTERM", ["generation_lost", "stream_not_found"]],
    ["crashes (SIGKILL)", "SIGKILL", ["stream_not_found"]],
  ] as const)("ends with a typed error when the server %s", async (_name, signal, codes) => {
    const env = { DEMO_TOKENS_PER_SECOND: "40", STREAM_STORE: "memory" };
    let server = await startLiveAi(env);
    const client = newClient(server.url);
    let restarted: Promise<void> | undefined;
    try {
      const result = await run(client, "ask-question", "sse", (event) => {
        if (event.type === "chunk" && event.seq === 5 && !restarted) {
          restarted = server.stop(signal).then(async () => {
            server = await startLiveAi(env, server.port);
          });
        }
      });
      await restarted;
      expect(result.outcome.status).toBe("error");
      if (result.outcome.status !== "error") return;
      expect(codes).toContain(result.outcome.error.code);
      // A crash leaves the client to find out by itself: it reconnects, then learns the stream is gone.
      if (signal === "SIGKILL") expect(result.statuses).toContain("reconnecting");
    } finally {
      client.dispose();
      await restarted?.catch(() => undefined);
      await server.stop();
    }
  });
});

describe("stream client against live-ai with streaming off", () => {
  let server: LiveAiServer;
  beforeAll(async () => {
    server = await startLiveAi({ AI_STREAMING_ENABLED: "false", DEMO_TOKENS_PER_SECOND: "2000" });
  });
  afterAll(async () => {
    await server?.stop();
  });

  it("falls back to the whole-response endpoint with the same handlers", async () => {
    const client = newClient(server.url);
    const config = await client.config();
    expect(config.streaming_enabled).toBe(false);
    for (const blockType of BLOCKS) {
      const result = await run(client, blockType, undefined as unknown as "whole");
      expect(result.outcome.status).toBe("complete");
      expect(result.events[0]).toMatchObject({ type: "start", provider: "demo" });
      expect(result.text.length).toBeGreaterThan(0);
      if (blockType === "quiz") expect(result.events.filter((e) => e.type === "part")).toHaveLength(3);
    }
    const refused = await fetch(`${server.url}/api/streams`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ block_type: "quiz", input: { topic: "x" } }),
    });
    expect(refused.status).toBe(503);
    expect((await refused.json()).code).toBe("streaming_disabled");
  });
});
