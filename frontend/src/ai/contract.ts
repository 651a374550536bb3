// The streaming contract as TypeScript types: one discriminated union on `type`, written
// once to mirror specs/050-live-ai-interaction/contracts/stream-schema.yaml.

export const BLOCK_TYPES = ["ask-question", "explain-eli10", "quiz", "diagram"] as const;
export type BlockType = (typeof BLOCK_TYPES)[number];

export type ErrorCode =
  | "provider_unavailable"
  | "rate_limited"
  | "provider_error"
  | "timeout"
  | "invalid_output"
  | "generation_lost"
  | "stream_not_found"
  | "bad_request";

interface EventBase {
  stream_id: string;
  seq: number;
}

export interface StartEvent extends EventBase {
  type: "start";
  block_type: BlockType;
  provider: string;
  model: string;
  ref?: string;
}

export interface ChunkEvent extends EventBase {
  type: "chunk";
  token: string;
}

export interface QuizQuestion {
  question: string;
  choices: string[];
  answer_index: number;
  explanation: string;
}

export interface PartEvent extends EventBase {
  type: "part";
  kind: "quiz_question";
  index: number;
  data: QuizQuestion;
}

export interface ErrorEvent extends EventBase {
  type: "error";
  code: ErrorCode;
  message: string;
  retryable: boolean;
  retry_after_ms?: number;
  raw_output?: string;
}

export interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
}

export interface MarkdownResult {
  markdown: string;
}
export interface QuizResult {
  questions: QuizQuestion[];
}
export type DiagramKind = "flowchart" | "sequence" | "mindmap";
export interface DiagramResult {
  kind: DiagramKind;
  source: string;
}
export type BlockResult = MarkdownResult | QuizResult | DiagramResult;

export interface CompleteEvent extends EventBase {
  type: "complete";
  finish_reason: "stop" | "length";
  usage: Usage;
  result: BlockResult;
  ttft_ms: number;
  duration_ms: number;
}

export interface CancelledEvent extends EventBase {
  type: "cancelled";
  reason: "requested" | "abandoned";
}

export type StreamEvent =
  | StartEvent
  | ChunkEvent
  | PartEvent
  | ErrorEvent
  | CompleteEvent
  | CancelledEvent;

export type TerminalEvent = ErrorEvent | CompleteEvent | CancelledEvent;

export function isTerminal(event: StreamEvent): event is TerminalEvent {
  return event.type === "error" || event.type === "complete" || event.type === "cancelled";
}

/** WebSocket only: answers a client message that could not be acted on; not part of any stream. */
export interface ProtocolError {
  type: "protocol_error";
  code: "bad_request" | "stream_not_found" | "rate_limited";
  message: string;
  retryable: boolean;
  field?: string;
  ref?: string;
  stream_id?: string;
  retry_after_ms?: number;
}

/** WebSocket only: sent on an idle socket, so a quiet socket can be told from a lost one. */
export interface KeepAlive {
  type: "keep_alive";
}

export type ServerMessage =
  | { kind: "event"; event: StreamEvent }
  | { kind: "protocol_error"; error: ProtocolError }
  | { kind: "keep_alive" };

export interface AskQuestionInput {
  question: string;
  context?: string;
}
export interface ExplainEli10Input {
  topic: string;
}
export interface QuizInput {
  topic: string;
  count?: number;
  difficulty?: "easy" | "medium" | "hard";
}
export interface DiagramInput {
  description: string;
  kind?: DiagramKind;
}

export interface BlockInputs {
  "ask-question": AskQuestionInput;
  "explain-eli10": ExplainEli10Input;
  quiz: QuizInput;
  diagram: DiagramInput;
}

export type ClientMessage =
  | { type: "start"; block_type: BlockType; input: BlockInputs[BlockType]; ref?: string }
  | { type: "resume"; stream_id: string; after?: number }
  | { type: "cancel"; stream_id: string };

/** `GET /api/ai/config`. */
export interface AIConfig {
  streaming_enabled: boolean;
  streaming_backend: "sse" | "websocket";
  provider: string;
  model: string;
  demo: boolean;
  resume_grace_seconds: number;
  keepalive_seconds: number;
  blocks: BlockType[];
}

/** `POST /api/ai-block/{block_type}`: the whole response, for when streaming is off. */
export interface WholeResponse {
  block_type: BlockType;
  provider: string;
  model: string;
  text: string;
  result: BlockResult;
  parts: QuizQuestion[];
  usage: Usage;
  finish_reason: "stop" | "length";
}

/** `application/problem+json` bodies of the HTTP API. */
export interface Problem {
  type: string;
  title: string;
  status: number;
  detail: string;
  code: string;
  field?: string;
}
