// WebSocket transport: one socket multiplexes every stream of the client. Frames are routed
// to connections by `ref` (until the start event names the stream) and then by `stream_id`;
// every connection reading a stream gets each of its events (the server keeps one reader per
// stream per socket, restarted from the lowest position asked, and each session drops what it
// already holds). When the last connection of a live stream on the socket leaves, the socket
// says `detach`, so the server stops sending it and frees its slot. The socket opens on demand
// and closes when no stream uses it, so nothing lingers.
//
// Credentials: browsers cannot set headers on an upgrade, so the learner's token goes in an
// `{"type":"auth"}` message. The token is asked for each frame the client sends; when it
// differs from the one the socket carries (refreshed, or another learner), a fresh `auth` goes
// first. A refusal of the socket's credential (`protocol_error` `unauthorized`, then close 1008)
// loses its streams as on any drop (their sessions reconnect, on a new socket, with a fresh
// token); a refusal of one start or resume (a token that expired on an open socket) fails that
// stream transiently, after asking for a fresh token. A second refusal in a row, with no event
// in between, is final: `unauthorized`; so is the end of a stream the socket no longer reads
// because it now acts for another learner (a non-retryable `unauthorized` naming the stream).
//
// Parity with SSE: a retryable `store_unavailable` is retried like SSE's 503; a start whose
// frame would exceed the server's 32 KiB is refused here (`too_large`), never sent (the server
// would close the socket, and every stream on it, with 1009); a frame that fails the contract
// fails the stream it names with `contract_violation` (all of the socket's, when it names none).
import type { Credential, TokenSource } from "./auth.js";
import type { ClientMessage, ProtocolError, StreamEvent } from "./contract.js";
import { isTerminal } from "./contract.js";
import { ContractError, parseServerMessage } from "./contract-validator.js";
import { connectionLost, contractViolation, failureFromProtocolError, type TransportFailure } from "./stream-error.js";
import type { Connection, ConnectionListener, ConnectTarget, StreamTransport } from "./transport.js";

/** The largest message the server accepts; bigger frames close the socket (1009). */
export const MAX_CLIENT_MESSAGE_BYTES = 32 * 1024;

export interface WebSocketTransportOptions {
  /** ws:// or wss:// URL of `/api/stream/ws`. */
  url: string;
  /** The WebSocket constructor; the browser's by default (node tests pass the `ws` package's). */
  WebSocket?: typeof WebSocket;
  /** Silence on the socket longer than this, while streams are open, counts as a lost socket. */
  idleTimeoutMs: number;
  tokens: TokenSource;
  /** Cancels over HTTP, for when the socket is not open (opening one just to cancel would linger). */
  cancelOverHttp(streamId: string): Promise<void>;
}

interface Route {
  listener: ConnectionListener;
  ref?: string;
  streamId?: string;
  opened: boolean;
}

/** A frame's UTF-8 length: what the server's limit counts. */
export function utf8Length(text: string): number {
  return new TextEncoder().encode(text).length;
}

/** A start's frame, or why it cannot be sent. */
export function startFrame(target: Extract<ConnectTarget, { kind: "start" }>): { frame: ClientMessage } | { tooLarge: TransportFailure } {
  const frame = {
    type: "start",
    block_type: target.blockType,
    input: target.input,
    ref: target.idempotencyKey,
    // Only when true, as over SSE: a server from before coalescing refuses unknown fields.
    ...(target.fresh ? { fresh: true } : {}),
  } as ClientMessage;
  const bytes = utf8Length(JSON.stringify(frame));
  if (bytes <= MAX_CLIENT_MESSAGE_BYTES) return { frame };
  const field = largestField(target.input as unknown as Record<string, unknown>);
  return {
    tooLarge: {
      transient: false,
      error: {
        code: "too_large",
        message: `this start is ${bytes} bytes as UTF-8; the WebSocket takes at most ${MAX_CLIENT_MESSAGE_BYTES}${field ? ` (shorten ${field})` : ""}`,
        retryable: false,
        ...(field ? { field } : {}),
      },
    },
  };
}

function largestField(input: Record<string, unknown>): string | undefined {
  let largest: { field: string; bytes: number } | undefined;
  for (const [field, value] of Object.entries(input)) {
    if (typeof value !== "string") continue;
    const bytes = utf8Length(value);
    if (!largest || bytes > largest.bytes) largest = { field, bytes };
  }
  return largest?.field;
}

export class WebSocketTransport implements StreamTransport {
  readonly kind = "websocket" as const;
  private socket: WebSocket | null = null;
  /** The socket is open: frames may go out (each after its credential is settled). */
  private ready = false;
  /** The token the open socket carries (undefined: none sent yet). */
  private socketToken: string | null | undefined;
  /** The credential the socket's last auth sent, for a refusal to name. */
  private socketCredential: Credential | null = null;
  private authRefused: Credential | null = null;
  private refusalsInARow = 0;
  /** Refusals of single starts or resumes, by ref or stream id, since that stream's last event. */
  private readonly streamRefusals = new Map<string, number>();
  private readonly routes = new Set<Route>();
  private readonly byRef = new Map<string, Route>();
  private readonly byStream = new Map<string, Set<Route>>();
  /** Streams this client cancelled: no detach needs to follow. */
  private readonly cancelled = new Set<string>();
  private outbox: ClientMessage[] = [];
  private pumping = false;
  private idleTimer: ReturnType<typeof setTimeout> | undefined;

  constructor(private readonly options: WebSocketTransportOptions) {}

  connect(target: ConnectTarget, listener: ConnectionListener): Connection {
    let message: ClientMessage;
    if (target.kind === "start") {
      const start = startFrame(target);
      if ("tooLarge" in start) {
        // Reported after connect() returns, as every outcome of a connection is.
        let live = true;
        queueMicrotask(() => live && listener.onClose(start.tooLarge));
        return { close: () => (live = false) };
      }
      message = start.frame;
    } else {
      message = { type: "resume", stream_id: target.streamId, ...(target.after === null ? {} : { after: target.after }) };
    }
    const route: Route = { listener, opened: false };
    this.routes.add(route);
    if (target.kind === "start") {
      route.ref = target.idempotencyKey;
      this.byRef.set(route.ref, route);
    } else {
      this.name(route, target.streamId);
      this.cancelled.delete(target.streamId);
    }
    this.send(message);
    if (this.ready) {
      this.openRoute(route);
      this.armIdleTimer();
    }
    return { close: () => this.removeRoute(route) };
  }

  async cancel(streamId: string): Promise<void> {
    this.cancelled.add(streamId);
    if (this.ready) this.send({ type: "cancel", stream_id: streamId });
    else await this.options.cancelOverHttp(streamId);
  }

  dispose(): void {
    for (const route of [...this.routes]) this.removeRoute(route, false);
    this.closeSocket();
  }

  private send(message: ClientMessage): void {
    this.ensureSocket();
    this.outbox.push(message);
    this.pump();
  }

  /** Sends the outbox in order, each frame after the token it goes with (and an auth when that changed). */
  private pump(): void {
    if (!this.ready || this.pumping) return;
    const socket = this.socket!;
    this.pumping = true;
    void (async () => {
      try {
        while (this.outbox.length > 0 && this.socket === socket) {
          const credential = await this.options.tokens.credential();
          if (this.socket !== socket) return;
          const message = this.outbox.shift()!;
          if (credential.token !== null && credential.token !== this.socketToken) {
            socket.send(JSON.stringify({ type: "auth", token: credential.token } satisfies ClientMessage));
            this.socketToken = credential.token;
            this.socketCredential = credential;
          } else if (this.socketToken === undefined) {
            this.socketToken = credential.token;
            this.socketCredential = credential;
          }
          socket.send(JSON.stringify(message));
        }
        if (this.socket === socket && this.routes.size === 0) this.closeSocket();
      } catch (error) {
        // getToken failed (or the socket refused the frame): the streams go on on a new socket.
        if (this.socket === socket) this.loseSocket(`could not send on the WebSocket: ${error instanceof Error ? error.message : String(error)}`);
      } finally {
        if (this.socket === socket) this.pumping = false;
      }
    })();
  }

  private ensureSocket(): WebSocket {
    if (this.socket) return this.socket;
    const Socket = this.options.WebSocket ?? globalThis.WebSocket;
    const socket = new Socket(this.options.url);
    this.socket = socket;
    this.ready = false;
    this.pumping = false;
    this.socketToken = undefined;
    this.socketCredential = null;
    socket.onopen = () => {
      if (this.socket !== socket) return;
      this.ready = true;
      this.armIdleTimer();
      for (const route of [...this.routes]) this.openRoute(route);
      this.pump();
    };
    socket.onmessage = (message: MessageEvent) => {
      if (this.socket !== socket) return;
      this.armIdleTimer();
      if (typeof message.data === "string") this.route(message.data);
    };
    // `error` is always followed by `close`, which is where the loss is handled.
    socket.onclose = () => {
      if (this.socket === socket) this.loseSocket("the WebSocket closed");
    };
    return socket;
  }

  private openRoute(route: Route): void {
    if (route.opened) return;
    route.opened = true;
    route.listener.onOpen();
  }

  private name(route: Route, streamId: string): void {
    route.streamId = streamId;
    let readers = this.byStream.get(streamId);
    if (!readers) this.byStream.set(streamId, (readers = new Set()));
    readers.add(route);
  }

  private route(frame: string): void {
    let message;
    try {
      message = parseServerMessage(frame);
    } catch (error) {
      if (!(error instanceof ContractError)) throw error;
      return this.violation(frame, error.message);
    }
    // A keep_alive has done its job by arriving: any frame re-arms the idle timer.
    if (message.kind === "event") this.deliver(message.event);
    else if (message.kind === "protocol_error") this.reject(message.error);
  }

  /** A frame that fails the contract fails the stream it names, or every stream when it names none. */
  private violation(frame: string, reason: string): void {
    let named: { stream_id?: unknown; ref?: unknown } = {};
    try {
      const value: unknown = JSON.parse(frame);
      if (value && typeof value === "object") named = value as typeof named;
    } catch {
      // Not JSON: it names nothing.
    }
    const readers =
      (typeof named.stream_id === "string" && this.byStream.get(named.stream_id)) ||
      (typeof named.ref === "string" && this.byRef.has(named.ref) && new Set([this.byRef.get(named.ref)!])) ||
      (named.stream_id === undefined && named.ref === undefined ? new Set(this.routes) : undefined);
    if (!readers) return; // A stream nobody here reads any more.
    const failure = contractViolation(`a WebSocket frame breaks the contract: ${reason}`);
    for (const route of [...readers]) {
      this.removeRoute(route);
      route.listener.onClose(failure);
    }
  }

  private deliver(event: StreamEvent): void {
    this.refusalsInARow = 0;
    if (event.type === "start" && event.ref !== undefined) {
      const route = this.byRef.get(event.ref);
      if (route) {
        this.byRef.delete(event.ref);
        this.streamRefusals.delete(event.ref);
        this.name(route, event.stream_id);
        route.listener.onStreamId(event.stream_id);
      }
    }
    this.streamRefusals.delete(event.stream_id);
    const readers = this.byStream.get(event.stream_id);
    if (!readers) return;
    for (const route of [...readers]) {
      if (!this.routes.has(route)) continue;
      route.listener.onEvent(event);
      if (isTerminal(event) && this.routes.has(route)) {
        this.removeRoute(route, false);
        route.listener.onClose(null);
      }
    }
  }

  private reject(error: ProtocolError): void {
    if (error.code === "unauthorized" && error.ref === undefined && error.stream_id === undefined) {
      // The socket's credential was refused; the server closes the socket next.
      this.authRefused = this.socketCredential ?? { token: null };
      return;
    }
    const readers =
      error.ref !== undefined
        ? this.byRef.get(error.ref) && [this.byRef.get(error.ref)!]
        : error.stream_id !== undefined
          ? this.byStream.get(error.stream_id) && [...this.byStream.get(error.stream_id)!]
          : undefined;
    if (!readers) return;
    const failure = error.code === "unauthorized" ? this.streamRefused(error) : failureFromProtocolError(error);
    for (const route of readers) {
      // The server answered this stream's request: it no longer reads it for this socket.
      this.removeRoute(route, false);
      route.listener.onClose(failure);
    }
  }

  /**
   * A start or resume refused for its credential. Retryable (the token expired on the socket):
   * the first time asks for a fresh token and retries. Not retryable (the socket now acts for
   * another learner, and this stream was the previous one's): final.
   */
  private streamRefused(error: ProtocolError): TransportFailure {
    if (!error.retryable) return { transient: false, error: { code: "unauthorized", message: error.message, retryable: false } };
    const key = (error.ref ?? error.stream_id)!;
    const refusals = (this.streamRefusals.get(key) ?? 0) + 1;
    this.streamRefusals.set(key, refusals);
    const refused = { code: "unauthorized" as const, message: error.message, retryable: false };
    if (refusals >= 2) {
      this.streamRefusals.delete(key);
      return { transient: false, error: refused };
    }
    void this.options.tokens.refresh(this.socketCredential ?? { token: null }).catch(() => undefined);
    return { transient: true, error: { ...refused, retryable: true } };
  }

  /** `notify`: the stream may still be live on the server, so it is told this socket no longer reads it. */
  private removeRoute(route: Route, notify = true): void {
    if (!this.routes.delete(route)) return;
    if (route.ref !== undefined && this.byRef.get(route.ref) === route) this.byRef.delete(route.ref);
    const streamId = route.streamId;
    if (streamId !== undefined) {
      const readers = this.byStream.get(streamId);
      readers?.delete(route);
      if (readers?.size === 0) {
        this.byStream.delete(streamId);
        if (notify && this.ready && this.routes.size > 0 && !this.cancelled.has(streamId)) {
          this.send({ type: "detach", stream_id: streamId });
        }
        this.cancelled.delete(streamId);
      }
    }
    // With nothing left to read the socket goes, once what is queued for it (a cancel) is out.
    if (this.routes.size === 0 && this.outbox.length === 0 && !this.pumping) this.closeSocket();
  }

  private loseSocket(reason: string): void {
    const failure = this.authRefused ? this.authFailure() : connectionLost(reason);
    const lost = [...this.routes];
    for (const route of lost) this.removeRoute(route, false);
    this.closeSocket();
    for (const route of lost) route.listener.onClose(failure);
  }

  /** The first refusal asks for a fresh token and lets the streams reconnect; the second ends them. */
  private authFailure(): TransportFailure {
    const refused = this.authRefused!;
    this.authRefused = null;
    this.refusalsInARow += 1;
    const error = { code: "unauthorized" as const, message: "the server refused the learner's credential", retryable: false };
    if (this.refusalsInARow >= 2) {
      this.refusalsInARow = 0;
      return { transient: false, error };
    }
    void this.options.tokens.refresh(refused).catch(() => undefined);
    return { transient: true, error: { ...error, retryable: true } };
  }

  private closeSocket(): void {
    clearTimeout(this.idleTimer);
    const socket = this.socket;
    this.socket = null;
    this.ready = false;
    this.pumping = false;
    this.outbox = [];
    this.cancelled.clear();
    if (socket && socket.readyState < 2) socket.close();
  }

  private armIdleTimer(): void {
    clearTimeout(this.idleTimer);
    if (this.routes.size === 0) return;
    this.idleTimer = setTimeout(() => this.loseSocket(`no message for ${this.options.idleTimeoutMs} ms`), this.options.idleTimeoutMs);
  }
}
