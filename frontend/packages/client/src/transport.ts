// The interface both transports implement: open a connection that starts or resumes one
// stream and reports its events, and cancel a stream on the server.
import type { BlockInputs, BlockType, StreamEvent } from "./contract.js";
import type { TransportFailure } from "./stream-error.js";

export type TransportKind = "sse" | "websocket";

export type ConnectTarget =
  | {
      kind: "start";
      blockType: BlockType;
      input: BlockInputs[BlockType];
      /** Sent as Idempotency-Key (SSE) or ref (WebSocket): a retried start reuses it. */
      idempotencyKey: string;
      /** Generate anew: never join a classmate's generation in flight or replay a finished answer (COALESCE). */
      fresh?: boolean;
    }
  | {
      kind: "resume";
      streamId: string;
      /** The last seq the client holds; null when it holds none yet. */
      after: number | null;
    };

export interface ConnectionListener {
  /** The connection is up; events may follow. */
  onOpen(): void;
  /** The server named the stream (before its first event over SSE, with `start` over WebSocket). */
  onStreamId(streamId: string): void;
  /** A validated event of this stream, possibly one the client already holds. */
  onEvent(event: StreamEvent): void;
  /** The connection ended: `null` when the server closed it after the stream ended. */
  onClose(failure: TransportFailure | null): void;
  /** The connection ended because the server says the client already holds the stream's terminal event (SSE 204). */
  onUpToDate(): void;
}

export interface Connection {
  /** Stops listening; no listener method is called afterwards. */
  close(): void;
}

export interface StreamTransport {
  readonly kind: TransportKind;
  connect(target: ConnectTarget, listener: ConnectionListener): Connection;
  /** Asks the server to stop the stream; resolves once the server accepted the request. */
  cancel(streamId: string): Promise<void>;
  /** Releases shared resources (the WebSocket). */
  dispose(): void;
}

/** How long a connection may stay silent (no event, no keep-alive) before it counts as lost. */
export function idleTimeoutFor(keepaliveSeconds: number): number {
  return Math.max(3_000, Math.round(keepaliveSeconds * 2_500));
}
