// The framework-agnostic streaming client (no React): reads the server's config, picks a
// transport (SSE over fetch, WebSocket, or the whole-response fallback), carries the learner's
// token, and runs streams: started here, or resumed by id after a reload.
import { ApiHttp } from "./api-http.js";
import { TokenSource, type GetToken } from "./auth.js";
import { DEFAULT_BACKOFF, type BackoffPolicy } from "./backoff.js";
import type { AIConfig, BlockInputs, BlockType } from "./contract.js";
import { checkConfig } from "./contract-validator.js";
import { cancelOverHttp } from "./http-cancel.js";
import { SseTransport } from "./sse-transport.js";
import { StreamSession, type ResumeRequest, type StartRequest, type StreamHandlers, type StreamOutcome, type StreamStatus } from "./stream-session.js";
import { idleTimeoutFor, type StreamTransport, type TransportKind } from "./transport.js";
import { WholeResponseRun } from "./whole-response.js";
import { startFrame, WebSocketTransport } from "./ws-transport.js";

/** How a stream is carried: a streaming transport, or one whole response. */
export type DeliveryMode = TransportKind | "whole";

export interface StreamClientOptions {
  /** Origin of the API, e.g. "https://ai.example.org"; "" (default) is the page's origin. */
  baseUrl?: string;
  /**
   * The learner's credential, asked for every request (so cache it in the host, and refetch it
   * when called with `{ refresh: true }`: the server refused the last one): sent as
   * `Authorization: Bearer` on every API request and in an `auth` message on the WebSocket
   * (again whenever the token changes). When the learner changes, call `resetCredentials()`.
   */
  getToken?: GetToken;
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
  /** Reuse a key to attach to a start already made with it; a new one by default. */
  idempotencyKey?: string;
  /**
   * Generate anew. By default (a server with `COALESCE=on`), a start identical to a classmate's
   * joins that generation while it runs (its `start` event says `shared: true`) or gets its
   * finished answer replayed (`cached: true`). Streaming modes only: the whole response has no
   * such field.
   */
  fresh?: boolean;
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
  private readonly http: ApiHttp;
  private readonly baseUrl: string;
  private readonly backoff: BackoffPolicy;
  private configRequest: Promise<AIConfig> | undefined;
  private readonly transports = new Map<TransportKind, StreamTransport>();
  private readonly runs = new Set<Run>();
  private readonly tokens: TokenSource;

  constructor(private readonly options: StreamClientOptions = {}) {
    this.baseUrl = (options.baseUrl ?? "").replace(/\/$/, "");
    // Wrapped so a bare `fetch` keeps its `this` (browsers throw "Illegal invocation" otherwise).
    const fetch = options.fetch ?? ((input, init) => globalThis.fetch(input, init));
    this.tokens = new TokenSource(options.getToken);
    this.http = new ApiHttp(fetch, this.baseUrl, this.tokens);
    this.backoff = { ...DEFAULT_BACKOFF, ...options.backoff };
  }

  /** `GET /api/ai/config`, read once; a failed read is retried on the next call. */
  config(): Promise<AIConfig> {
    this.configRequest ??= this.http
      .requestPublic("/api/ai/config")
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
  start<B extends BlockType>(blockType: B, input: BlockInputs[B], handlers: StreamHandlers, options: StartOptions = {}): StreamHandle {
    const idempotencyKey = options.idempotencyKey ?? newKey();
    return this.launch(handlers, (config, handlers) => {
      let mode = options.mode ?? (config.streaming_enabled ? config.streaming_backend : "whole");
      if (mode === "whole") return new WholeResponseRun(this.http, blockType, input, handlers);
      const target: StartRequest = { kind: "start", blockType, input, idempotencyKey, fresh: options.fresh === true };
      // A start too big for a WebSocket frame goes over SSE when the server's config chose the
      // transport; one the caller forced onto the WebSocket is refused there (too_large).
      if (mode === "websocket" && !options.mode && "tooLarge" in startFrame(target)) mode = "sse";
      return this.session(mode, config, target, handlers);
    });
  }

  /**
   * Re-attaches to a stream started earlier (before a page reload, say): events after
   * `lastSeq` are replayed, then the live tail follows; -1 replays the whole stream.
   */
  resume(streamId: string, lastSeq: number, handlers: StreamHandlers, options: Pick<StartOptions, "mode"> = {}): StreamHandle {
    return this.launch(handlers, (config, handlers) => {
      // A whole response cannot be resumed; the stream was started on a streaming transport.
      const mode = options.mode && options.mode !== "whole" ? options.mode : config.streaming_backend;
      const request: ResumeRequest = { kind: "resume", streamId, lastSeq };
      return this.session(mode, config, request, handlers);
    });
  }

  /** Stops a stream on the server by id (`DELETE /api/streams/{id}`), whoever is reading it. */
  cancelStream(streamId: string): Promise<void> {
    return cancelOverHttp(this.http, streamId);
  }

  /**
   * The learner changed (signed out, or signed in as someone else): every running stream,
   * the previous learner's, is detached here (it goes on on the server for its resume grace,
   * then is abandoned), the shared WebSocket closes, and what was learned about refused tokens
   * is forgotten. The next request asks `getToken` and acts for whoever it names.
   */
  resetCredentials(): void {
    this.tokens.reset();
    this.dispose();
  }

  /** Detaches every running stream (without cancelling it) and closes the shared WebSocket. */
  dispose(): void {
    for (const run of [...this.runs]) run.detach();
    for (const transport of this.transports.values()) transport.dispose();
    this.transports.clear();
  }

  /** Reads the config, then begins the run `create` makes; cancel and detach work at any point. */
  private launch(handlers: StreamHandlers, create: (config: AIConfig, handlers: StreamHandlers) => Run): StreamHandle {
    let run: Run | undefined;
    let stopped: "cancel" | "detach" | undefined;
    let resolveDone!: (outcome: StreamOutcome) => void;
    const done = new Promise<StreamOutcome>((resolve) => (resolveDone = resolve));
    const distinct = withDistinctStatuses(handlers);
    distinct.onStatus?.("connecting");
    this.config()
      .catch(() => FALLBACK_CONFIG)
      .then((config) => {
        if (stopped) return;
        const current = create(config, distinct);
        run = current;
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
        distinct.onStatus?.("cancelled");
        distinct.onCancelled?.(null);
        resolveDone({ status: "cancelled", event: null });
      },
      detach: () => {
        if (run) return run.detach();
        if (stopped) return;
        stopped = "detach";
        distinct.onStatus?.("detached");
        resolveDone({ status: "detached" });
      },
    };
  }

  private session(kind: TransportKind, config: AIConfig, request: ConstructorParameters<typeof StreamSession>[1], handlers: StreamHandlers): StreamSession {
    return new StreamSession(this.transport(kind, config), request, handlers, {
      backoff: this.backoff,
      random: this.options.random ?? Math.random,
    });
  }

  private transport(kind: TransportKind, config: AIConfig): StreamTransport {
    const existing = this.transports.get(kind);
    if (existing) return existing;
    const idleTimeoutMs = this.options.idleTimeoutMs ?? idleTimeoutFor(config.keepalive_seconds);
    const transport =
      kind === "sse"
        ? new SseTransport({ http: this.http, idleTimeoutMs })
        : new WebSocketTransport({
            url: webSocketUrl(this.baseUrl),
            WebSocket: this.options.WebSocket,
            idleTimeoutMs,
            tokens: this.tokens,
            cancelOverHttp: (streamId) => cancelOverHttp(this.http, streamId),
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
