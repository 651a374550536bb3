// The framework-agnostic streaming client (no React): reads the server's config, picks a
// transport (SSE over fetch, WebSocket, or the whole-response fallback) and runs streams.
import type { AIConfig, BlockInputs, BlockType } from "./contract";
import { checkConfig } from "./contract-validator";
import { DEFAULT_BACKOFF, type BackoffPolicy } from "./backoff";
import { cancelOverHttp } from "./http-cancel";
import { SseTransport } from "./sse-transport";
import {
  StreamSession,
  type StreamHandlers,
  type StreamOutcome,
  type StreamStatus,
} from "./stream-session";
import { idleTimeoutFor, type StreamTransport, type TransportKind } from "./transport";
import { WholeResponseRun } from "./whole-response";
import { WebSocketTransport } from "./ws-transport";

export type * from "./contract";
export type { StreamError, ClientErrorCode } from "./stream-error";
export type { StreamHandlers, StreamOutcome, StreamStatus } from "./stream-session";
export type { TransportKind } from "./transport";
export type { BackoffPolicy } from "./backoff";

/** How a stream is carried: a streaming transport, or one whole response. */
export type DeliveryMode = TransportKind | "whole";

export interface StreamClientOptions {
  /** Origin of the API, e.g. "http://127.0.0.1:8000"; "" (default) is the page's origin. */
  baseUrl?: string;
  fetch?: typeof fetch;
  /** WebSocket constructor; the global one by default. */
  WebSocket?: typeof WebSocket;
  backoff?: Partial<BackoffPolicy>;
  /** Overrides the silence timeout derived from the server's keep-alive interval. */
  idleTimeoutMs?: number;
  random?: () => number;
}

export interface StartOptions {
  /** Overrides the mode the server's config picks (`streaming_backend`, or whole when off). */
  mode?: DeliveryMode;
  /** Reuse a key to attach to a start already made with it; a fresh one by default. */
  idempotencyKey?: string;
}

export interface StreamHandle {
  /** The server's stream id, once known. */
  readonly streamId: string | undefined;
  /** Settles once with how the stream ended. */
  readonly done: Promise<StreamOutcome>;
  /** Stops the stream on the server and ends it here as cancelled. */
  cancel(): void;
  /** Stops listening and releases everything, without cancelling on the server. */
  detach(): void;
}

/** Used when the config endpoint cannot be read: stream over SSE with the default keep-alive. */
const FALLBACK_CONFIG: AIConfig = {
  streaming_enabled: true,
  streaming_backend: "sse",
  provider: "unknown",
  model: "unknown",
  demo: false,
  resume_grace_seconds: 30,
  keepalive_seconds: 15,
  blocks: ["ask-question", "explain-eli10", "quiz", "diagram"],
};

interface Run {
  readonly id: string | undefined;
  readonly done: Promise<StreamOutcome>;
  begin(): void;
  cancel(): void;
  detach(): void;
}

export class StreamClient {
  private readonly baseUrl: string;
  private readonly fetch: typeof fetch;
  private readonly backoff: BackoffPolicy;
  private configRequest: Promise<AIConfig> | undefined;
  private readonly transports = new Map<TransportKind, StreamTransport>();
  private readonly runs = new Set<Run>();

  constructor(private readonly options: StreamClientOptions = {}) {
    this.baseUrl = (options.baseUrl ?? "").replace(/\/$/, "");
    this.fetch = options.fetch ?? ((input, init) => globalThis.fetch(input, init));
    this.backoff = { ...DEFAULT_BACKOFF, ...options.backoff };
  }

  /** `GET /api/ai/config`, read once; a failed read is retried on the next call. */
  config(): Promise<AIConfig> {
    this.configRequest ??= this.fetch(`${this.baseUrl}/api/ai/config`)
      .then(async (response) => {
        if (!response.ok) throw new Error(`GET /api/ai/config: HTTP ${response.status}`);
        return checkConfig(await response.json());
      })
      .catch((error: unknown) => {
        this.configRequest = undefined;
        throw error;
      });
    return this.configRequest;
  }

  /** Starts a stream; handlers see its events in seq order, each exactly once. */
  start<B extends BlockType>(
    blockType: B,
    input: BlockInputs[B],
    handlers: StreamHandlers,
    options: StartOptions = {},
  ): StreamHandle {
    const idempotencyKey = options.idempotencyKey ?? newKey();
    let run: Run | undefined;
    let stopped: "cancel" | "detach" | undefined;
    let resolveDone!: (outcome: StreamOutcome) => void;
    const done = new Promise<StreamOutcome>((resolve) => (resolveDone = resolve));

    handlers = withDistinctStatuses(handlers);
    handlers.onStatus?.("connecting");
    this.config()
      .catch(() => FALLBACK_CONFIG)
      .then((config) => {
        if (stopped) return;
        const mode = options.mode ?? (config.streaming_enabled ? config.streaming_backend : "whole");
        run =
          mode === "whole"
            ? new WholeResponseRun(this.fetch, this.baseUrl, blockType, input, handlers)
            : new StreamSession(
                this.transport(mode, config),
                { blockType, input, idempotencyKey },
                handlers,
                { backoff: this.backoff, random: this.options.random ?? Math.random },
              );
        const current = run;
        this.runs.add(current);
        current.done.then((outcome) => {
          this.runs.delete(current);
          resolveDone(outcome);
        });
        current.begin();
      });

    return {
      get streamId() {
        return run?.id;
      },
      done,
      cancel: () => {
        if (run) return run.cancel();
        if (stopped) return;
        // Nothing reached the server yet, so there is nothing to cancel there.
        stopped = "cancel";
        handlers.onStatus?.("cancelled");
        handlers.onCancelled?.(null);
        resolveDone({ status: "cancelled", event: null });
      },
      detach: () => {
        if (run) return run.detach();
        if (stopped) return;
        stopped = "detach";
        resolveDone({ status: "detached" });
      },
    };
  }

  /** Detaches every running stream (without cancelling it) and closes the shared WebSocket. */
  dispose(): void {
    for (const run of [...this.runs]) run.detach();
    for (const transport of this.transports.values()) transport.dispose();
    this.transports.clear();
  }

  private transport(kind: TransportKind, config: AIConfig): StreamTransport {
    const existing = this.transports.get(kind);
    if (existing) return existing;
    const idleTimeoutMs = this.options.idleTimeoutMs ?? idleTimeoutFor(config.keepalive_seconds);
    const transport =
      kind === "sse"
        ? new SseTransport({ baseUrl: this.baseUrl, fetch: this.fetch, idleTimeoutMs })
        : new WebSocketTransport({
            url: webSocketUrl(this.baseUrl),
            WebSocket: this.options.WebSocket,
            idleTimeoutMs,
            cancelOverHttp: (streamId) => cancelOverHttp(this.fetch, this.baseUrl, streamId),
          });
    this.transports.set(kind, transport);
    return transport;
  }
}

/** Both the client and the run it starts report "connecting"; handlers hear it once. */
function withDistinctStatuses(handlers: StreamHandlers): StreamHandlers {
  let last: StreamStatus | undefined;
  return {
    ...handlers,
    onStatus: (status) => {
      if (status === last) return;
      last = status;
      handlers.onStatus?.(status);
    },
  };
}

function webSocketUrl(baseUrl: string): string {
  const base = new URL(baseUrl || "/", globalThis.location?.href);
  base.protocol = base.protocol === "https:" ? "wss:" : "ws:";
  return new URL("/api/stream/ws", base).href;
}

/** 128 random bits; getRandomValues (unlike randomUUID) also works outside secure contexts. */
function newKey(): string {
  const bytes = globalThis.crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (byte) => byte.toString(16).padStart(2, "0")).join("");
}

let defaultClient: StreamClient | undefined;

/** The page-wide client the hooks use unless given another. */
export function getDefaultStreamClient(): StreamClient {
  defaultClient ??= new StreamClient();
  return defaultClient;
}
