// Builders of stream events for unit tests. Every event they build is checked against the
// contract (the same generated validators the client uses), and the ones the server shapes in
// a particular way are built the way the server builds them (see `streamNotFound` and
// `streamExpired`).
import { checkStreamEvent, type BlockResult, type BlockType, type ErrorEvent, type QuizQuestion, type StreamEvent } from "@live-ai/client";

export function streamEvents(streamId: string) {
  let seq = 0;
  const valid = (event: StreamEvent): StreamEvent => checkStreamEvent(event);
  return {
    /**
     * `coalesced`: the stream joined a running generation ("shared") or replays a finished one
     * ("cached"); live-ai then sets that one field to true, and otherwise sends neither.
     */
    start: (blockType: BlockType = "ask-question", provider = "demo", ref?: string, coalesced?: "shared" | "cached"): StreamEvent =>
      valid({
        type: "start",
        stream_id: streamId,
        seq: seq++,
        block_type: blockType,
        provider,
        model: provider === "demo" ? "demo-model (offline)" : "gpt-test",
        ...(ref === undefined ? {} : { ref }),
        ...(coalesced === undefined ? {} : { [coalesced]: true }),
      }),
    chunk: (token: string): StreamEvent => valid({ type: "chunk", stream_id: streamId, seq: seq++, token }),
    part: (index: number, data: QuizQuestion): StreamEvent =>
      valid({ type: "part", stream_id: streamId, seq: seq++, kind: "quiz_question", index, data }),
    complete: (result: BlockResult = { markdown: "" }): StreamEvent =>
      valid({
        type: "complete",
        stream_id: streamId,
        seq: seq++,
        finish_reason: "stop",
        usage: { prompt_tokens: 3, completion_tokens: 5, total_tokens: 8 },
        result,
        ttft_ms: 12,
        duration_ms: 40,
      }),
    error: (code: ErrorEvent["code"] = "provider_error", retryable = true, extra: Partial<ErrorEvent> = {}): StreamEvent =>
      valid({ type: "error", stream_id: streamId, seq: seq++, code, message: `${code} happened`, retryable, ...extra }),
    cancelled: (reason: "requested" | "abandoned" = "requested"): StreamEvent =>
      valid({ type: "cancelled", stream_id: streamId, seq: seq++, reason }),
  };
}

/**
 * What live-ai answers a resume of a stream it never had (or someone else's: the same answer,
 * so ids cannot be probed), on both transports: one error event at the seq after the client's
 * `after` (0 without one), retryable because starting again succeeds. Mirrors `open` in
 * backend/src/ai/streaming/stream_manager.rs with `not_found` in backend/src/api/sse.rs and the
 * resume branch of backend/src/api/ws.rs; e2e/client.e2e.test.ts checks the real server still
 * answers exactly this.
 */
export function streamNotFound(streamId: string, after: number | null): ErrorEvent {
  return notFoundAt(streamId, after === null ? 0 : after + 1);
}

/**
 * What live-ai answers a resume, by its owner, of a stream whose log expired or was evicted (it
 * keeps the log's length): the same error event, at the seq after the log's end (`logLength`),
 * whatever the client's `after` was, as long as it is below that (an `after` at or beyond the
 * end is refused as a bad request). So the event usually comes far above the last seq the
 * client holds. e2e/client.e2e.test.ts checks the real server answers exactly this.
 */
export function streamExpired(streamId: string, logLength: number): ErrorEvent {
  return notFoundAt(streamId, logLength);
}

function notFoundAt(streamId: string, seq: number): ErrorEvent {
  return checkStreamEvent({
    type: "error",
    stream_id: streamId,
    seq,
    code: "stream_not_found",
    message: `no stream ${streamId}; it may have expired: start again`,
    retryable: true,
  }) as ErrorEvent;
}

export const SAMPLE_QUESTION: QuizQuestion = {
  question: "What comes out of a volcano?",
  choices: ["Lava", "Milk", "Sand"],
  answer_index: 0,
  explanation: "Molten rock, called lava, comes out.",
};
