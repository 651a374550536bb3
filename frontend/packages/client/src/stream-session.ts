// One stream's life on the client: start (or resume a stream started earlier), dedupe by seq,
// detect gaps, reconnect with backoff and resume from the last seq held, cancel, and report
// exactly one outcome.
//
// Two deliberate oddities:
// - An `error` event above the next seq ends the stream at once instead of counting as a gap:
//   the server synthesises some terminal errors outside the log (`stream_not_found` for an
//   expired log comes at the seq after the log's end), and resuming could never fill that gap.
// - A resumed session (`client.resume`) first asks for the last event it already holds again:
//   so the server always has something to answer (a resume of a finished stream from its
//   terminal event gets 204 over SSE and nothing at all over WebSocket), and the session learns
//   how a stream it may already hold the end of ended. Once any event arrived, resumes ask from
//   the last seq held, as usual.
import type {
  BlockInputs,
  BlockType,
  CancelledEvent,
  ChunkEvent,
  CompleteEvent,
  ErrorEvent,
  PartEvent,
  StartEvent,
  StreamEvent,
  TerminalEvent,
} from "./contract.js";
import { backoffDelay, type BackoffPolicy } from "./backoff.js";
import { isTerminal } from "./contract.js";
import { connectionLost, contractViolation, errorFromEvent, type StreamError, type TransportFailure } from "./stream-error.js";
import type { Connection, ConnectTarget, StreamTransport } from "./transport.js";

export type StreamStatus =
  | "idle"
  | "connecting"
  | "streaming"
  | "reconnecting"
  | "complete"
  | "error"
  | "cancelled"
  /** The caller stopped listening (`detach()`); the generation goes on on the server and can be resumed. */
  | "detached";

export interface StreamHandlers {
  onStatus?(status: StreamStatus): void;
  onStart?(event: StartEvent): void;
  onChunk?(event: ChunkEvent): void;
  onPart?(event: PartEvent): void;
  /** A terminal failure: the server's error event (then `event` is set) or the client's own. */
  onError?(error: StreamError, event?: ErrorEvent): void;
  onComplete?(event: CompleteEvent): void;
  /** `event` is the server's; it is null when the client cancelled and stopped listening. */
  onCancelled?(event: CancelledEvent | null): void;
}

export type StreamOutcome =
  | { status: "complete"; event: CompleteEvent }
  | { status: "error"; error: StreamError }
  | { status: "cancelled"; event: CancelledEvent | null }
  | { status: "detached" };

export interface SessionOptions {
  backoff: BackoffPolicy;
  random: () => number;
}

export interface StartRequest<B extends BlockType = BlockType> {
  kind: "start";
  blockType: B;
  input: BlockInputs[B];
  idempotencyKey: string;
  /** Generate anew rather than join a classmate's identical request (COALESCE); a retried start asks the same. */
  fresh: boolean;
}

/** Re-attaches to a stream started earlier (another page load, another session). */
export interface ResumeRequest {
  kind: "resume";
  streamId: string;
  /** The last seq the caller holds; -1 to replay the stream from its first event. */
  lastSeq: number;
}

export class StreamSession {
  private status: StreamStatus = "idle";
  private lastSeq = -1;
  private streamId: string | undefined;
  private attempt = 0;
  private connection: Connection | null = null;
  private reconnectTimer: ReturnType<typeof setTimeout> | undefined;
  private ended = false;
  private cancelWhenNamed = false;
  /** A resumed session that has not received an event yet: it asks from one before its last seq. */
  private overlapping = false;
  private resolveDone!: (outcome: StreamOutcome) => void;
  /** Settles once with how the stream ended (or `detached` when the caller stopped listening). */
  readonly done = new Promise<StreamOutcome>((resolve) => (this.resolveDone = resolve));

  constructor(
    private readonly transport: StreamTransport,
    private readonly request: StartRequest | ResumeRequest,
    private readonly handlers: StreamHandlers,
    private readonly options: SessionOptions,
  ) {
    if (request.kind === "resume") {
      this.streamId = request.streamId;
      this.lastSeq = request.lastSeq;
      this.overlapping = request.lastSeq >= 0;
    }
  }

  get id(): string | undefined {
    return this.streamId;
  }

  begin(): void {
    this.setStatus("connecting");
    this.connect();
  }

  /** Stops the stream on the server and ends it here as cancelled, without waiting. */
  cancel(): void {
    if (this.ended) return;
    this.ended = true;
    this.stopReconnecting();
    if (this.streamId !== undefined) {
      this.cancelOnServer(this.streamId);
      this.dropConnection();
    } else if (this.connection) {
      // The server has not named the stream yet: keep listening only to learn its id, then cancel it.
      this.cancelWhenNamed = true;
    }
    this.setStatus("cancelled");
    this.handlers.onCancelled?.(null);
    this.resolveDone({ status: "cancelled", event: null });
  }

  /** Stops listening without cancelling (the server keeps the generation for its grace period). */
  detach(): void {
    if (this.ended && !this.cancelWhenNamed) return;
    const cancelled = this.ended;
    this.ended = true;
    this.cancelWhenNamed = false;
    this.stopReconnecting();
    this.dropConnection();
    if (cancelled) return;
    this.setStatus("detached");
    this.resolveDone({ status: "detached" });
  }

  private connect(): void {
    const target: ConnectTarget =
      this.streamId === undefined && this.request.kind === "start"
        ? {
            kind: "start",
            blockType: this.request.blockType,
            input: this.request.input,
            idempotencyKey: this.request.idempotencyKey,
            fresh: this.request.fresh,
          }
        : { kind: "resume", streamId: this.streamId!, after: this.resumeAfter() };
    let current = true;
    const connection = this.transport.connect(target, {
      onOpen: () => {
        if (current && !this.ended && this.status === "reconnecting") this.setStatus("streaming");
      },
      onStreamId: (streamId) => {
        if (!current) return;
        this.streamId = streamId;
        if (this.cancelWhenNamed) {
          this.cancelWhenNamed = false;
          this.cancelOnServer(streamId);
          this.dropConnection();
        }
      },
      onEvent: (event) => {
        if (current && !this.ended) this.receive(event);
      },
      onClose: (failure) => {
        if (!current) return;
        current = false;
        this.connection = null;
        if (!this.ended) this.lost(failure ?? connectionLost("the server closed the stream early"));
      },
      onUpToDate: () => {
        if (!current) return;
        current = false;
        this.connection = null;
        // The session never asks from a terminal event it holds (it would have ended), so "you
        // hold the last event" contradicts what it holds; reconnecting would only repeat it.
        if (!this.ended) this.fail(contractViolation(`the server says event ${this.resumeAfter()} ended the stream, which this client does not hold as its end`).error);
      },
    });
    this.connection = {
      close: () => {
        current = false;
        connection.close();
      },
    };
  }

  /** The seq a (re)connection asks for the events after; null for all of them. */
  private resumeAfter(): number | null {
    const after = this.overlapping ? this.lastSeq - 1 : this.lastSeq;
    return after >= 0 ? after : null;
  }

  private receive(event: StreamEvent): void {
    if (event.seq < this.lastSeq) return; // a replayed event the client already holds
    if (event.seq === this.lastSeq) {
      // Held already; but the one a resume asked for again says whether the stream ended there.
      if (!this.overlapping) return;
      this.overlapping = false;
      this.attempt = 0;
      if (isTerminal(event)) this.settle(event);
      return;
    }
    this.overlapping = false;
    if (event.seq !== this.lastSeq + 1 && event.type !== "error") {
      // A gap: resume from the last seq held, which replays the missing events.
      this.dropConnection();
      this.lost(connectionLost(`expected seq ${this.lastSeq + 1}, got ${event.seq}`));
      return;
    }
    this.lastSeq = event.seq;
    this.attempt = 0;
    if (this.status !== "streaming") this.setStatus("streaming");
    switch (event.type) {
      case "start":
        this.handlers.onStart?.(event);
        return;
      case "chunk":
        this.handlers.onChunk?.(event);
        return;
      case "part":
        this.handlers.onPart?.(event);
        return;
      default:
        this.settle(event);
    }
  }

  /** Ends the session with the server's terminal event: the one place a terminal event lands. */
  private settle(event: TerminalEvent): void {
    switch (event.type) {
      case "error": {
        const error = errorFromEvent(event);
        this.end("error");
        this.handlers.onError?.(error, event);
        this.resolveDone({ status: "error", error });
        return;
      }
      case "complete":
        this.end("complete");
        this.handlers.onComplete?.(event);
        this.resolveDone({ status: "complete", event });
        return;
      case "cancelled":
        this.end("cancelled");
        this.handlers.onCancelled?.(event);
        this.resolveDone({ status: "cancelled", event });
        return;
    }
  }

  private lost(failure: TransportFailure): void {
    if (!failure.transient) return this.fail(failure.error);
    this.attempt += 1;
    if (this.attempt > this.options.backoff.maxAttempts) return this.fail(failure.error);
    this.setStatus("reconnecting");
    const delay = Math.max(
      backoffDelay(this.options.backoff, this.attempt, this.options.random),
      failure.error.retryAfterMs ?? 0,
    );
    this.reconnectTimer = setTimeout(() => this.reconnectNow(), delay);
    // Coming back online, or to a tab the browser had been throttling the timers of, is a
    // better signal than the timer.
    globalThis.addEventListener?.("online", this.reconnectNow);
    globalThis.document?.addEventListener("visibilitychange", this.reconnectWhenVisible);
  }

  private readonly reconnectNow = (): void => {
    if (this.reconnectTimer === undefined) return;
    this.stopReconnecting();
    if (!this.ended) this.connect();
  };

  private readonly reconnectWhenVisible = (): void => {
    if (globalThis.document?.visibilityState === "visible") this.reconnectNow();
  };

  private stopReconnecting(): void {
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = undefined;
    globalThis.removeEventListener?.("online", this.reconnectNow);
    globalThis.document?.removeEventListener("visibilitychange", this.reconnectWhenVisible);
  }

  private fail(error: StreamError): void {
    this.end("error");
    this.handlers.onError?.(error);
    this.resolveDone({ status: "error", error });
  }

  private end(status: "complete" | "error" | "cancelled"): void {
    this.ended = true;
    this.stopReconnecting();
    this.dropConnection();
    this.setStatus(status);
  }

  private dropConnection(): void {
    this.connection?.close();
    this.connection = null;
  }

  private cancelOnServer(streamId: string): void {
    // Best effort: if the request is lost, the server abandons the stream after its grace period.
    this.transport.cancel(streamId).catch(() => undefined);
  }

  private setStatus(status: StreamStatus): void {
    if (this.status === status) return;
    this.status = status;
    this.handlers.onStatus?.(status);
  }
}
