// The non-streaming path (`POST /api/ai-block/{block_type}`), used when the server has
// streaming off. The whole answer is replayed through the same handlers as one stream.
import type { ApiHttp } from "./api-http.js";
import type { BlockInputs, BlockType, StreamEvent, WholeResponse } from "./contract.js";
import { checkBlockResult, checkQuizQuestion, ContractError } from "./contract-validator.js";
import { failureFromResponse, type StreamError } from "./stream-error.js";
import type { StreamHandlers, StreamOutcome, StreamStatus } from "./stream-session.js";

let localStreams = 0;

export class WholeResponseRun {
  private readonly abort = new AbortController();
  private ended = false;
  private resolveDone!: (outcome: StreamOutcome) => void;
  readonly done = new Promise<StreamOutcome>((resolve) => (this.resolveDone = resolve));

  constructor(
    private readonly http: ApiHttp,
    private readonly blockType: BlockType,
    private readonly input: BlockInputs[BlockType],
    private readonly handlers: StreamHandlers,
  ) {}

  get id(): string | undefined {
    return undefined;
  }

  begin(): void {
    this.status("connecting");
    this.run().catch((error: unknown) => {
      if (this.ended) return;
      const message = error instanceof Error ? error.message : String(error);
      this.fail(
        error instanceof ContractError
          ? { code: "contract_violation", message, retryable: true }
          : { code: "connection_lost", message, retryable: true },
      );
    });
  }

  cancel(): void {
    if (this.ended) return;
    this.ended = true;
    // Aborting closes the request, which is all the server needs to stop a whole-response call.
    this.abort.abort();
    this.status("cancelled");
    this.handlers.onCancelled?.(null);
    this.resolveDone({ status: "cancelled", event: null });
  }

  detach(): void {
    if (this.ended) return;
    this.ended = true;
    this.abort.abort();
    this.status("detached");
    this.resolveDone({ status: "detached" });
  }

  private async run(): Promise<void> {
    const startedAt = Date.now();
    const response = await this.http.request(`/api/ai-block/${this.blockType}`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(this.input),
      signal: this.abort.signal,
    });
    if (this.ended) return;
    if (!response.ok) return this.fail((await failureFromResponse(response)).error);
    const body = (await response.json()) as WholeResponse;
    if (this.ended) return;
    for (const event of eventsOf(body, Date.now() - startedAt)) this.dispatch(event);
  }

  private dispatch(event: StreamEvent): void {
    switch (event.type) {
      case "start":
        this.status("streaming");
        return this.handlers.onStart?.(event);
      case "chunk":
        return this.handlers.onChunk?.(event);
      case "part":
        return this.handlers.onPart?.(event);
      case "complete":
        this.ended = true;
        this.status("complete");
        this.handlers.onComplete?.(event);
        return this.resolveDone({ status: "complete", event });
      default:
        return;
    }
  }

  private fail(error: StreamError): void {
    this.ended = true;
    this.status("error");
    this.handlers.onError?.(error);
    this.resolveDone({ status: "error", error });
  }

  private status(status: StreamStatus): void {
    this.handlers.onStatus?.(status);
  }
}

/** The whole response as the event sequence a stream of it would have carried. */
export function eventsOf(body: WholeResponse, durationMs: number): StreamEvent[] {
  if (typeof body.text !== "string" || typeof body.provider !== "string") {
    throw new ContractError("whole response lacks text or provider");
  }
  const result = checkBlockResult(body.result);
  const stream_id = `local-${++localStreams}`;
  let seq = 0;
  const events: StreamEvent[] = [
    {
      type: "start",
      stream_id,
      seq: seq++,
      block_type: body.block_type,
      provider: body.provider,
      model: body.model,
    },
    { type: "chunk", stream_id, seq: seq++, token: body.text },
  ];
  (body.parts ?? []).forEach((part: unknown, index) => {
    // Accept both bare questions and part envelopes ({kind, index, data}).
    const data = isEnvelope(part) ? part.data : part;
    events.push({
      type: "part",
      stream_id,
      seq: seq++,
      kind: "quiz_question",
      index,
      data: checkQuizQuestion(data),
    });
  });
  events.push({
    type: "complete",
    stream_id,
    seq: seq++,
    finish_reason: body.finish_reason,
    usage: body.usage,
    result,
    ttft_ms: durationMs,
    duration_ms: durationMs,
  });
  return events;
}

function isEnvelope(part: unknown): part is { data: unknown } {
  return typeof part === "object" && part !== null && "data" in part && "kind" in part;
}
