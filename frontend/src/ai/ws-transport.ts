// WebSocket transport: one socket multiplexes every stream of the client. Frames are routed
// to connections by `ref` (until the start event names the stream) and then by `stream_id`.
// The socket opens on demand and closes when no stream uses it, so nothing lingers.
import type { ClientMessage, ProtocolError, StreamEvent } from "./contract";
import { isTerminal } from "./contract";
import { ContractError, parseServerMessage } from "./contract-validator";
import { connectionLost, type TransportFailure } from "./stream-error";
import type { Connection, ConnectionListener, ConnectTarget, StreamTransport } from "./transport";

export interface WebSocketTransportOptions {
  /** ws:// or wss:// URL of `/api/stream/ws`. */
  url: string;
  /** The WebSocket constructor; the browser's by default (node tests pass the `ws` package's). */
  WebSocket?: typeof WebSocket;
  /** Silence on the socket longer than this, while streams are open, counts as a lost socket. */
  idleTimeoutMs: number;
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
      this.send({
        type: "start",
        block_type: target.blockType,
        input: target.input,
        ref: target.idempotencyKey,
      });
    } else {
      route.streamId = target.streamId;
      this.byStream.set(route.streamId, route);
      this.send({
        type: "resume",
        stream_id: target.streamId,
        ...(target.after === null ? {} : { after: target.after }),
      });
    }
    if (this.socket?.readyState === 1) {
      this.openRoute(route);
      this.armIdleTimer();
    }
    return { close: () => this.removeRoute(route) };
  }

  async cancel(streamId: string): Promise<void> {
    if (this.socket?.readyState === 1) this.send({ type: "cancel", stream_id: streamId });
    else await this.options.cancelOverHttp(streamId);
  }

  dispose(): void {
    for (const route of [...this.routes]) this.removeRoute(route);
    this.closeSocket();
  }

  private send(message: ClientMessage): void {
    const frame = JSON.stringify(message);
    const socket = this.ensureSocket();
    if (socket.readyState === 1) socket.send(frame);
    else this.outbox.push(frame);
  }

  private ensureSocket(): WebSocket {
    if (this.socket) return this.socket;
    const Socket = this.options.WebSocket ?? globalThis.WebSocket;
    const socket = new Socket(this.options.url);
    this.socket = socket;
    socket.onopen = () => {
      if (this.socket !== socket) return;
      for (const frame of this.outbox) socket.send(frame);
      this.outbox = [];
      this.armIdleTimer();
      for (const route of [...this.routes]) this.openRoute(route);
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
    const route =
      (error.ref !== undefined && this.byRef.get(error.ref)) ||
      (error.stream_id !== undefined && this.byStream.get(error.stream_id)) ||
      undefined;
    if (!route) return;
    this.removeRoute(route);
    route.listener.onClose({
      transient: error.code === "rate_limited",
      error: {
        code: error.code,
        message: error.message,
        retryable: error.retryable,
        field: error.field,
        retryAfterMs: error.retry_after_ms,
      },
    });
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
    const failure: TransportFailure = connectionLost(reason);
    const lost = [...this.routes];
    for (const route of lost) this.removeRoute(route);
    this.closeSocket();
    for (const route of lost) route.listener.onClose(failure);
  }

  private closeSocket(): void {
    clearTimeout(this.idleTimer);
    const socket = this.socket;
    this.socket = null;
    this.outbox = [];
    if (socket && socket.readyState < 2) socket.close();
  }

  private armIdleTimer(): void {
    clearTimeout(this.idleTimer);
    if (this.routes.size === 0) return;
    this.idleTimer = setTimeout(
      () => this.loseSocket(`no message for ${this.options.idleTimeoutMs} ms`),
      this.options.idleTimeoutMs,
    );
  }
}
