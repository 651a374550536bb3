// Builders of contract-valid stream events for tests.
import type { BlockResult, BlockType, QuizQuestion, StreamEvent } from "../contract";

export function streamEvents(streamId: string) {
  let seq = 0;
  return {
    start: (blockType: BlockType = "ask-question", provider = "demo"): StreamEvent => ({
      type: "start",
      stream_id: streamId,
      seq: seq++,
      block_type: blockType,
      provider,
      model: provider === "demo" ? "demo-model" : "gpt-test",
    }),
    chunk: (token: string): StreamEvent => ({ type: "chunk", stream_id: streamId, seq: seq++, token }),
    part: (index: number, data: QuizQuestion): StreamEvent => ({
      type: "part",
      stream_id: streamId,
      seq: seq++,
      kind: "quiz_question",
      index,
      data,
    }),
    complete: (result: BlockResult = { markdown: "" }): StreamEvent => ({
        type: "complete",
        stream_id: streamId,
        seq: seq++,
        finish_reason: "stop",
        usage: { prompt_tokens: 3, completion_tokens: 5, total_tokens: 8 },
        result,
        ttft_ms: 12,
        duration_ms: 40,
      }),
    error: (code: "provider_error" | "rate_limited" = "provider_error", retryable = true): StreamEvent => ({
      type: "error",
      stream_id: streamId,
      seq: seq++,
      code,
      message: `${code} happened`,
      retryable,
    }),
    cancelled: (reason: "requested" | "abandoned" = "requested"): StreamEvent => ({
      type: "cancelled",
      stream_id: streamId,
      seq: seq++,
      reason,
    }),
  };
}

export const SAMPLE_QUESTION: QuizQuestion = {
  question: "What comes out of a volcano?",
  choices: ["Lava", "Milk", "Sand"],
  answer_index: 0,
  explanation: "Molten rock, called lava, comes out.",
};
