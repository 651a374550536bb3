// SSE over fetch: POST /api/streams to start (with an Idempotency-Key), then GET the event
// stream, composed as bytes → TextDecoderStream → EventSourceParserStream → contract check.
import { EventSourceParserStream } from "eventsource-parser/stream";
import type { EventSourceMessage } from "eventsource-parser";
import type { ApiHttp } from "./api-http.js";
import type { CreateStreamRequest, StreamEvent } from "./contract.js";
import { ContractError, parseStreamEvent } from "./contract-validator.js";
import { cancelOverHttp } from "./http-cancel.js";
import {
  connectionLost,
  contractViolation,
  failureFromResponse,
  type TransportFailure,
} from "./stream-error.js";
import type { Connection, ConnectionListener, ConnectTarget, StreamTransport } from "./transport.js";

export interface SseTransportOptions {
  /** The API, with the learner's credential. */
  http: ApiHttp;
  /** Silence (no event, no keep-alive comment) longer than this counts as a lost connection. */
  idleTimeoutMs: number;
}

export class SseTransport implements StreamTransport {
  readonly kind = "sse" as const;
  private readonly http: ApiHttp;

  constructor(private readonly options: SseTransportOptions) {
    this.http = options.http;
  }

  connect(target: ConnectTarget, listener: ConnectionListener): Connection {
    const abort = new AbortController();
    let finished = false;
    let idleTimer: ReturnType<typeof setTimeout> | undefined;

    const finish = (failure: TransportFailure | null | "up_to_date") => {
      if (finished) return;
      finished = true;
      clearTimeout(idleTimer);
      abort.abort();
      if (failure === "up_to_date") listener.onUpToDate();
      else listener.onClose(failure);
    };
    const armIdleTimer = () => {
      clearTimeout(idleTimer);
      idleTimer = setTimeout(
        () => finish(connectionLost(`no event or keep-alive for ${this.options.idleTimeoutMs} ms`)),
        this.options.idleTimeoutMs,
      );
    };

    const run = async () => {
      armIdleTimer();
      const { streamId, after } = await this.resolveStream(target, abort.signal, listener);
      if (streamId === null) return finish(after);
      if (finished) return;
      const response = await this.http.request(this.eventsPath(streamId, after), {
        headers: {
          accept: "text/event-stream",
          ...(after === null ? {} : { "last-event-id": `${streamId}:${after}` }),
        },
        cache: "no-store",
        signal: abort.signal,
      });
      // 204: the stream is over and the client already holds its terminal event.
      if (response.status === 204) return finish("up_to_date");
      if (!response.ok) return finish(await failureFromResponse(response));
      if (!response.body) return finish(connectionLost("response has no body"));
      if (finished) return;
      listener.onOpen();
      armIdleTimer();

      const events = response.body
        .pipeThrough(new TextDecoderStream())
        .pipeThrough(new EventSourceParserStream({ onComment: armIdleTimer }))
        .pipeThrough(contractEvents(streamId));
      const reader = events.getReader();
      try {
        for (;;) {
          const { done, value } = await reader.read();
          if (done || finished) break;
          armIdleTimer();
          listener.onEvent(value);
        }
      } finally {
        reader.releaseLock();
      }
      finish(null);
    };

    run().catch((error: unknown) => {
      if (error instanceof ContractError) finish(contractViolation(error.message));
      else finish(connectionLost(error instanceof Error ? error.message : String(error)));
    });

    return {
      close: () => {
        finished = true;
        clearTimeout(idleTimer);
        abort.abort();
      },
    };
  }

  cancel(streamId: string): Promise<void> {
    return cancelOverHttp(this.http, streamId);
  }

  dispose(): void {}

  /** For a start, creates the stream (idempotently); for a resume, the target names it. */
  private async resolveStream(
    target: ConnectTarget,
    signal: AbortSignal,
    listener: ConnectionListener,
  ): Promise<{ streamId: string; after: number | null } | { streamId: null; after: TransportFailure }> {
    if (target.kind === "resume") return { streamId: target.streamId, after: target.after };
    const response = await this.http.request("/api/streams", {
      method: "POST",
      headers: { "content-type": "application/json", "idempotency-key": target.idempotencyKey },
      body: JSON.stringify(createStreamRequest(target)),
      signal,
    });
    if (!response.ok) return { streamId: null, after: await failureFromResponse(response) };
    // Later servers add fields (read_token, read_token_expires_at): only stream_id matters here.
    const body = (await response.json()) as { stream_id?: unknown };
    if (typeof body.stream_id !== "string") {
      throw new ContractError("POST /api/streams answered without a stream_id");
    }
    listener.onStreamId(body.stream_id);
    return { streamId: body.stream_id, after: null };
  }

  private eventsPath(streamId: string, after: number | null): string {
    const query = after === null ? "" : `?after=${after}`;
    return `/api/streams/${encodeURIComponent(streamId)}/events${query}`;
  }
}

/**
 * The start's body. `fresh` goes only when true: a server from before coalescing refuses fields
 * it does not know (422), and `false` asks for nothing anyway.
 */
export function createStreamRequest(target: Extract<ConnectTarget, { kind: "start" }>): CreateStreamRequest {
  return { block_type: target.blockType, input: target.input, ...(target.fresh ? { fresh: true } : {}) } as CreateStreamRequest;
}

/** The boundary check as a stream stage: SSE messages in, contract-valid events of one stream out. */
function contractEvents(streamId: string): TransformStream<EventSourceMessage, StreamEvent> {
  return new TransformStream({
    transform(message, controller) {
      const event = parseStreamEvent(message.data, message.event);
      if (event.stream_id !== streamId) {
        throw new ContractError(`event of stream ${event.stream_id} on stream ${streamId}`);
      }
      controller.enqueue(event);
    },
  });
}
