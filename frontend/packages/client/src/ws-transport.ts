// WebSocket transport: one socket multiplexes every stream of the client. Frames are routed
// to connections by `ref` (until the start event names the stream) and then by `stream_id`.
// The socket opens on demand and closes when no stream uses it, so nothing lingers.
//
// Credentials: browsers cannot set headers on an upgrade, so the learner's token goes in the
// socket's first message (`{"type":"auth"}`). A server that refuses it answers with a
// `protocol_error` `unauthorized` and closes the socket; the streams on it are then lost as on
// any drop (their sessions reconnect, on a new socket, with a fresh token), and a second
// refusal in a row, with no event in between, ends them as `unauthorized`.
import type { Credential, TokenSource } from "./auth.js";
import type { ClientMessage, ProtocolError, StreamEvent } from "./contract.js";
import { isTerminal } from "./contract.js";
import { ContractError, parseServerMessage } from "./contract-validator.js";
import { connectionLost, failureFromProtocolError, type TransportFailure } from "./stream-error.js";
import type { Connection, ConnectionListener, ConnectTarget, StreamTransport } from "./transport.js";

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

export class WebSocketTransport implements StreamTransport {
  readonly kind = "websocket" as const;
  private socket: WebSocket | null = null;
  /** The socket is open and its auth message (if any) sent: frames may go out. */
  private ready = false;
  private credential: Credential | null = null;
  private authRefused: Credential | null = null;
  private refusalsInARow = 0;
  private readonly routes = new Set<Route>();
  private readonly byRef = new Map<string, Route>();
  private readonly byStream = new Map<string, Route>();
  private outbox: string[] = [];
  private idleTimer: ReturnType<typeof setTimeout> | undefined;

  constructor(private readonly options: WebSocketTransportOptions) {}

  connect(target: ConnectTarget, listener: ConnectionListener): Connection {
    const route: Route = { listener, opened: false };
    this.routes.add(route);
    if (target.kind === "start") {
      route.ref = target.idempotencyKey;
      this.byRef.set(route.ref, route);
      this.send({ type: "start", block_type: target.blockType, input: target.input, ref: target.idempotencyKey } as ClientMessage);
    } else {
      route.streamId = target.streamId;
      this.byStream.set(route.streamId, route);
      this.send({ type: "resume", stream_id: target.streamId, ...(target.after === null ? {} : { after: target.after }) });
    }
    if (this.ready) {
      this.openRoute(route);
      this.armIdleTimer();
    }
    return { close: () => this.removeRoute(route) };
  }

  async cancel(streamId: string): Promise<void> {
    if (this.ready) this.send({ type: "cancel", stream_id: streamId });
    else await this.options.cancelOverHttp(streamId);
  }

  dispose(): void {
    for (const route of [...this.routes]) this.removeRoute(route);
    this.closeSocket();
  }

  private send(message: ClientMessage): void {
    const frame = JSON.stringify(message);
    const socket = this.ensureSocket();
    if (this.ready) socket.send(frame);
    else this.outbox.push(frame);
  }

  private ensureSocket(): WebSocket {
    if (this.socket) return this.socket;
    const Socket = this.options.WebSocket ?? globalThis.WebSocket;
    const socket = new Socket(this.options.url);
    this.socket = socket;
    this.ready = false;
    // Asked while the socket connects, so the token rarely delays the first frame.
    const credential = this.options.tokens.credential();
    socket.onopen = () => {
      credential.then(
        (current) => {
          if (this.socket !== socket) return;
          this.credential = current;
          if (current.token !== null) socket.send(JSON.stringify({ type: "auth", token: current.token } satisfies ClientMessage));
          this.ready = true;
          for (const frame of this.outbox) socket.send(frame);
          this.outbox = [];
          this.armIdleTimer();
          for (const route of [...this.routes]) this.openRoute(route);
        },
        (error: unknown) => {
          if (this.socket === socket) this.loseSocket(`could not get a token: ${error instanceof Error ? error.message : String(error)}`);
        },
      );
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

  private route(frame: string): void {
    let message;
    try {
      message = parseServerMessage(frame);
    } catch (error) {
      // Which stream a broken frame belonged to is unknowable; the missing seq shows up as a
      // gap in that stream, and its session resumes from the last good event.
      if (!(error instanceof ContractError)) throw error;
      return;
    }
    // A keep_alive has done its job by arriving: any frame re-arms the idle timer.
    if (message.kind === "event") this.deliver(message.event);
    else if (message.kind === "protocol_error") this.reject(message.error);
  }

  private deliver(event: StreamEvent): void {
    this.refusalsInARow = 0;
    if (event.type === "start" && event.ref !== undefined) {
      const route = this.byRef.get(event.ref);
      if (route) {
        this.byRef.delete(event.ref);
        route.streamId = event.stream_id;
        this.byStream.set(event.stream_id, route);
        route.listener.onStreamId(event.stream_id);
      }
    }
    const route = this.byStream.get(event.stream_id);
    if (!route) return;
    route.listener.onEvent(event);
    if (isTerminal(event) && this.routes.has(route)) {
      this.removeRoute(route);
      route.listener.onClose(null);
    }
  }

  private reject(error: ProtocolError): void {
    if (error.code === "unauthorized" && error.ref === undefined && error.stream_id === undefined) {
      // The socket's credential was refused; the server closes the socket next.
      this.authRefused = this.credential;
      return;
    }
    const route =
      (error.ref !== undefined && this.byRef.get(error.ref)) ||
      (error.stream_id !== undefined && this.byStream.get(error.stream_id)) ||
      undefined;
    if (!route) return;
    this.removeRoute(route);
    route.listener.onClose(failureFromProtocolError(error));
  }

  private removeRoute(route: Route): void {
    if (!this.routes.delete(route)) return;
    if (route.ref !== undefined && this.byRef.get(route.ref) === route) this.byRef.delete(route.ref);
    if (route.streamId !== undefined && this.byStream.get(route.streamId) === route) {
      this.byStream.delete(route.streamId);
    }
    if (this.routes.size === 0) this.closeSocket();
  }

  private loseSocket(reason: string): void {
    const failure = this.authRefused ? this.authFailure() : connectionLost(reason);
    const lost = [...this.routes];
    for (const route of lost) this.removeRoute(route);
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
    this.outbox = [];
    if (socket && socket.readyState < 2) socket.close();
  }

  private armIdleTimer(): void {
    clearTimeout(this.idleTimer);
    if (this.routes.size === 0) return;
    this.idleTimer = setTimeout(() => this.loseSocket(`no message for ${this.options.idleTimeoutMs} ms`), this.options.idleTimeoutMs);
  }
}
