// The streaming contract as TypeScript types. The event, result, input and protocol types are
// generated from specs/050-live-ai-interaction/contracts/stream-schema.yaml at build time
// (./generated/contract-schema.ts); this module re-exports them and adds what the YAML does
// not express: per-block maps, the client-message union, and the HTTP bodies.
import type {
  AskQuestionInput,
  BlockType,
  CancelledEvent,
  ClientAuth,
  ClientCancel,
  ClientDetach,
  ClientResume,
  ClientStart,
  CompleteEvent,
  DiagramInput,
  DiagramResult,
  ErrorEvent,
  ExplainEli10Input,
  MarkdownResult,
  ProtocolError,
  QuizInput,
  QuizQuestion,
  QuizResult,
  StreamEvent,
} from "./generated/contract-schema.js";

export type {
  AskQuestionInput,
  BlockResult,
  BlockType,
  CancelledEvent,
  ChunkEvent,
  ClientAuth,
  ClientCancel,
  ClientDetach,
  ClientResume,
  CompleteEvent,
  DiagramInput,
  DiagramResult,
  ErrorCode,
  ErrorEvent,
  ExplainEli10Input,
  KeepAlive,
  MarkdownResult,
  PartEvent,
  ProtocolError,
  QuizInput,
  QuizQuestion,
  QuizResult,
  StartEvent,
  StreamEvent,
  Usage,
} from "./generated/contract-schema.js";

export const BLOCK_TYPES = ["ask-question", "explain-eli10", "quiz", "diagram"] as const satisfies readonly BlockType[];

export type DiagramKind = DiagramResult["kind"];
export type ProtocolErrorCode = ProtocolError["code"];

export type TerminalEvent = ErrorEvent | CompleteEvent | CancelledEvent;

export function isTerminal(event: StreamEvent): event is TerminalEvent {
  return event.type === "error" || event.type === "complete" || event.type === "cancelled";
}

/** Each block's input. */
export interface BlockInputs {
  "ask-question": AskQuestionInput;
  "explain-eli10": ExplainEli10Input;
  quiz: QuizInput;
  diagram: DiagramInput;
}

/** Each block's final result (the `result` of its `complete` event). */
export interface BlockResults {
  "ask-question": MarkdownResult;
  "explain-eli10": MarkdownResult;
  quiz: QuizResult;
  diagram: DiagramResult;
}

/** Each block's structured parts while it streams; only the quiz has any. */
export interface BlockParts {
  "ask-question": never;
  "explain-eli10": never;
  quiz: QuizQuestion;
  diagram: never;
}

/** Blocks whose stream carries `part` events. */
export type BlockTypeWithParts = { [B in BlockType]: BlockParts[B] extends never ? never : B }[BlockType];

/** A client `start` over the WebSocket (the contract's ClientStart), with the input typed for its block. */
export type ClientStartMessage = {
  [B in BlockType]: Omit<ClientStart, "block_type" | "input"> & { block_type: B; input: BlockInputs[B] };
}[BlockType];

export type ClientMessage = ClientStartMessage | ClientResume | ClientCancel | ClientAuth | ClientDetach;

/** A WebSocket frame from the server, after the boundary check. */
export type ServerMessage =
  | { kind: "event"; event: StreamEvent }
  | { kind: "protocol_error"; error: ProtocolError }
  | { kind: "keep_alive" };

/**
 * `POST /api/streams`: the HTTP start, the same request as the WebSocket's start (its `ref` goes
 * in the Idempotency-Key header instead).
 */
export type CreateStreamRequest = {
  [B in BlockType]: Pick<ClientStart, "fresh"> & { block_type: B; input: BlockInputs[B] };
}[BlockType];

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
  /** How the server authenticates learners; servers before auth existed omit it. */
  auth_mode?: "none" | "jwt" | "api_key";
}

/** `POST /api/ai-block/{block_type}`: the whole response, for when streaming is off. */
export interface WholeResponse {
  block_type: BlockType;
  provider: string;
  model: string;
  text: string;
  result: unknown;
  parts: unknown[];
  usage: CompleteEvent["usage"];
  finish_reason: CompleteEvent["finish_reason"];
}

/** `application/problem+json` bodies of the HTTP API. */
export interface Problem {
  type: string;
  title: string;
  status: number;
  detail: string;
  code: string;
  field?: string;
  retry_after_ms?: number;
}
