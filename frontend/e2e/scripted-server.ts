// A stand-in for live-ai whose event stream the test writes, event by event: it serves the
// built demo page and the API the page calls, and holds each SSE response open until the test
// sends events into it. Every event is checked against the contract before it is sent, so the
// page sees nothing the real server could not send. For what the demo model cannot be made to
// produce on cue (a diagram source that stops parsing mid-stream, then fails for good).
import { readFile } from "node:fs/promises";
import { createServer, type ServerResponse } from "node:http";
import { extname, join, normalize } from "node:path";
import { checkStreamEvent, type AIConfig, type StreamEvent } from "@live-ai/client";

const TYPES: Record<string, string> = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript",
  ".css": "text/css",
  ".svg": "image/svg+xml",
};

const CONFIG: AIConfig = {
  streaming_enabled: true,
  streaming_backend: "sse",
  provider: "demo",
  model: "demo-model (offline)",
  demo: true,
  resume_grace_seconds: 30,
  keepalive_seconds: 15,
  blocks: ["ask-question", "explain-eli10", "quiz", "diagram"],
};

export interface ScriptedServer {
  url: string;
  /** Resolves once the page has opened the event stream of its n-th (0-based) start. */
  stream(index: number): Promise<{ streamId: string; send(...events: StreamEvent[]): void }>;
  close(): Promise<void>;
}

export async function startScriptedServer(staticDir: string): Promise<ScriptedServer> {
  const streams: Array<{ streamId: string; response: ServerResponse }> = [];
  const waiting: Array<() => void> = [];
  let started = 0;
  const server = createServer(async (request, response) => {
    const path = new URL(request.url ?? "/", "http://scripted").pathname;
    if (path === "/api/ai/config") return sendJson(response, 200, CONFIG);
    if (path === "/api/streams" && request.method === "POST") return sendJson(response, 201, { stream_id: `scripted${++started}` });
    const events = /^\/api\/streams\/([\w-]+)\/events$/.exec(path);
    if (events) {
      response.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-cache" });
      response.write("retry: 1000\n: connected\n\n");
      streams.push({ streamId: events[1]!, response });
      waiting.splice(0).forEach((wake) => wake());
      return;
    }
    if (path.startsWith("/api/")) return sendJson(response, 404, { type: "about:blank", title: "Not Found", status: 404, detail: "no route", code: "not_found" });
    const file = join(staticDir, normalize(path === "/" ? "/index.html" : path));
    try {
      const body = await readFile(file);
      response.writeHead(200, { "content-type": TYPES[extname(file)] ?? "application/octet-stream" });
      response.end(body);
    } catch {
      response.writeHead(404).end();
    }
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const address = server.address();
  if (typeof address !== "object" || !address) throw new Error("scripted server has no address");
  return {
    url: `http://127.0.0.1:${address.port}`,
    async stream(index) {
      while (streams.length <= index) await new Promise<void>((wake) => waiting.push(wake));
      const { streamId, response } = streams[index]!;
      return {
        streamId,
        send: (...sent) => {
          for (const event of sent) {
            checkStreamEvent(event);
            response.write(`id: ${event.stream_id}:${event.seq}\nevent: ${event.type}\ndata: ${JSON.stringify(event)}\n\n`);
          }
        },
      };
    },
    close: () =>
      new Promise<void>((resolve) => {
        for (const { response } of streams) response.destroy();
        server.close(() => resolve());
      }),
  };
}

function sendJson(response: ServerResponse, status: number, body: unknown): void {
  response.writeHead(status, { "content-type": status >= 400 ? "application/problem+json" : "application/json" });
  response.end(JSON.stringify(body));
}
