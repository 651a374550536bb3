// The learner's credential against the real live-ai with AUTH_MODE=jwt: after an account
// switch, what the client starts belongs to the new learner, over SSE and over a WebSocket
// that stays open (it re-authenticates before its next frame); resetCredentials() leaves the
// previous learner's streams; a token that expires on an open socket is refreshed and the
// refused start retried.
import { createHmac } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import WebSocket from "ws";
import { EventSourceParserStream } from "eventsource-parser/stream";
import { parseStreamEvent, StreamClient, type GetToken, type StreamEvent, type StreamOutcome, type TransportKind } from "@live-ai/client";
import { startLiveAi, type LiveAiServer } from "./live-ai-server";

const SECRET = "a-secret-shared-with-the-learning-app-0123456789";
const AUDIENCE = "live-ai";

/** An HS256 JWT for `sub`, as a host app mints it, valid for `seconds`. */
function jwt(sub: string, seconds = 600): { token: string; exp: number } {
  const exp = Math.floor(Date.now() / 1000) + seconds;
  const part = (value: object) => Buffer.from(JSON.stringify(value)).toString("base64url");
  const unsigned = `${part({ alg: "HS256", typ: "JWT" })}.${part({ sub, aud: AUDIENCE, iat: Math.floor(Date.now() / 1000), exp })}`;
  return { token: `${unsigned}.${createHmac("sha256", SECRET).update(unsigned).digest("base64url")}`, exp };
}

/** Frames the client sent, as the WebSocket saw them. */
const sentFrames: Array<{ type: string; token?: string; ref?: string }> = [];
class RecordingWebSocket extends WebSocket {
  override send(data: string) {
    sentFrames.push(JSON.parse(data));
    super.send(data);
  }
}

let server: LiveAiServer;
beforeAll(async () => {
  server = await startLiveAi({
    AUTH_MODE: "jwt",
    AUTH_JWT_SECRET: SECRET,
    AUTH_JWT_AUDIENCE: AUDIENCE,
    DEMO_TOKENS_PER_SECOND: "40",
    DEMO_FIRST_TOKEN_MS: "20",
    LIMIT_CONCURRENT_STREAMS: "16",
  });
});
afterAll(async () => {
  await server?.stop();
});

function clientWith(getToken: GetToken): StreamClient {
  return new StreamClient({ baseUrl: server.url, getToken, WebSocket: RecordingWebSocket as unknown as typeof globalThis.WebSocket, backoff: { initialMs: 50, maxMs: 200 } });
}

/** Whose stream `streamId` is: the learner whose token reads it (to anyone else it does not exist). */
async function readableBy(streamId: string, token: string): Promise<boolean> {
  const first = await firstEvent(`${server.url}/api/streams/${streamId}/events`, { authorization: `Bearer ${token}` });
  return !(first.type === "error" && first.code === "stream_not_found");
}

/** The first event of an SSE endpoint, without following the stream to its end. */
async function firstEvent(url: string, headers: Record<string, string>): Promise<StreamEvent> {
  const abort = new AbortController();
  const response = await fetch(url, { headers, signal: abort.signal });
  const reader = response.body!.pipeThrough(new TextDecoderStream()).pipeThrough(new EventSourceParserStream()).getReader();
  const { value } = await reader.read();
  abort.abort();
  return parseStreamEvent(value!.data, value!.event);
}

function start(client: StreamClient, mode: TransportKind, topic: string) {
  // fresh: each test runs over SSE, then over the WebSocket, with the same learner and topic; a
  // coalescing server (the default) would replay the SSE run's finished answer to the WebSocket
  // run, which would end before the account switch it is there to outlive.
  const handle = client.start("explain-eli10", { topic }, {}, { mode, fresh: true });
  return {
    handle,
    named: new Promise<string>((resolve, reject) => {
      const poll = setInterval(() => {
        if (handle.streamId) {
          clearInterval(poll);
          resolve(handle.streamId);
        }
      }, 10);
      void handle.done.then(() => {
        clearInterval(poll);
        handle.streamId ? resolve(handle.streamId) : reject(new Error("the stream ended unnamed"));
      });
    }),
  };
}

describe("an account switch", () => {
  for (const mode of ["sse", "websocket"] as const) {
    it(`over ${mode}: after the host's getToken says learner B, the next start is B's, not A's`, async () => {
      const a = jwt("learner-a");
      const b = jwt("learner-b");
      let current = a.token;
      const client = clientWith(async () => current);
      const first = start(client, mode, "rain");
      const firstId = await first.named;
      expect(await readableBy(firstId, a.token)).toBe(true);
      // A signs out, B signs in; the host's cached token is now B's. A's stream is still running.
      current = b.token;
      const second = start(client, mode, "snow");
      const secondId = await second.named;
      expect(await readableBy(secondId, b.token)).toBe(true);
      expect(await readableBy(secondId, a.token)).toBe(false);
      expect((await second.handle.done).status).toBe("complete");
      if (mode === "websocket") {
        // The open socket said auth again, as B, before B's start; A's stream, no longer delivered to it, ended.
        const auths = sentFrames.filter((frame) => frame.type === "auth").map((frame) => frame.token);
        expect(auths.slice(-2)).toEqual([a.token, b.token]);
        expect(await first.handle.done).toMatchObject({ status: "error", error: { code: "unauthorized", retryable: false } });
      } else {
        expect((await first.handle.done).status).toBe("complete");
      }
      client.dispose();
    });

    it(`over ${mode}: resetCredentials() leaves the previous learner's streams, and the next start is the new learner's`, async () => {
      const a = jwt("learner-a");
      const b = jwt("learner-b");
      let current = a.token;
      const client = clientWith(async () => current);
      const first = start(client, mode, "volcanoes");
      const firstId = await first.named;
      current = b.token;
      client.resetCredentials();
      const outcome: StreamOutcome = await first.handle.done;
      expect(outcome).toEqual({ status: "detached" });
      const second = start(client, mode, "rivers");
      const secondId = await second.named;
      expect(await readableBy(secondId, b.token)).toBe(true);
      expect(await readableBy(firstId, b.token)).toBe(false);
      expect((await second.handle.done).status).toBe("complete");
      client.dispose();
    });
  }
});

describe("a token that expires on an open WebSocket", () => {
  it("a start refused after exp is retried once, after a fresh token and a new auth on the same socket", async () => {
    // Usable until exp plus the server's 5 s of tolerated skew.
    const old = jwt("learner-c", 1);
    const fresh = jwt("learner-c");
    let current = old.token;
    const asked: boolean[] = [];
    const client = clientWith(async ({ refresh }) => {
      asked.push(refresh);
      if (refresh) current = fresh.token;
      return current;
    });
    sentFrames.length = 0;
    // A long answer keeps the socket open across the expiry.
    const long = client.start("quiz", { topic: "volcanoes", count: 10 }, {}, { mode: "websocket" });
    const events: StreamEvent[] = [];
    await new Promise<void>((resolve) => {
      const poll = setInterval(() => long.streamId && (clearInterval(poll), resolve()), 10);
    });
    const wait = (old.exp + 5) * 1000 + 500 - Date.now();
    await new Promise((resolve) => setTimeout(resolve, Math.max(0, wait)));
    const late = client.start("explain-eli10", { topic: "rain" }, { onChunk: (event) => events.push(event) }, { mode: "websocket", idempotencyKey: "after-exp" });
    expect((await late.done).status).toBe("complete");
    expect(events.length).toBeGreaterThan(3);
    expect(asked.filter(Boolean)).toHaveLength(1);
    const frames = sentFrames.map((frame) => `${frame.type}${frame.ref === "after-exp" ? ":late" : ""}${frame.token === fresh.token ? ":fresh" : ""}`);
    expect(frames.filter((frame) => frame.startsWith("auth"))).toEqual(["auth", "auth:fresh"]);
    // The refused start, then the fresh auth, then the same start again, on the one socket.
    expect(frames.slice(frames.indexOf("start:late"), frames.indexOf("start:late") + 3)).toEqual(["start:late", "auth:fresh", "start:late"]);
    expect(frames.filter((frame) => frame === "start:late")).toHaveLength(2);
    long.cancel();
    client.dispose();
  }, 30_000);
});
