// The transport boundary check: every server message is validated against the contract's JSON
// Schemas before anything else sees it. The validators are ajv standalone code generated from
// the YAML when the package is built (scripts/generate-contract.mjs): no schema is parsed or
// compiled at run time.
import type { AIConfig, BlockResult, ClientMessage, ProtocolError, QuizQuestion, ServerMessage, StreamEvent } from "./contract.js";
import {
  validateBlockResult,
  validateClientMessage,
  validateKeepAlive,
  validateProtocolError,
  validateQuizQuestion,
  validateStreamEvent,
  type Validator,
} from "./generated/contract-validators.js";

export class ContractError extends Error {
  override readonly name = "ContractError";
}

function describe(validate: Validator): string {
  const first = validate.errors?.[0];
  return first ? `${first.instancePath || "/"} ${first.message ?? "is invalid"}` : "is invalid";
}

function parseJson(data: string): unknown {
  try {
    return JSON.parse(data);
  } catch {
    throw new ContractError(`not JSON: ${data.slice(0, 80)}`);
  }
}

/** Checks one already-parsed stream event. */
export function checkStreamEvent(value: unknown): StreamEvent {
  if (!validateStreamEvent(value)) throw new ContractError(`event ${describe(validateStreamEvent)}`);
  return value as StreamEvent;
}

/** Parses one SSE `data` payload; `expectedType` is the SSE `event:` field when present. */
export function parseStreamEvent(data: string, expectedType?: string): StreamEvent {
  const event = checkStreamEvent(parseJson(data));
  if (expectedType !== undefined && expectedType !== event.type) {
    throw new ContractError(`SSE event "${expectedType}" carries a "${event.type}" payload`);
  }
  return event;
}

/** Parses one WebSocket text frame: a stream event, a ProtocolError or a KeepAlive. */
export function parseServerMessage(data: string): ServerMessage {
  const value = parseJson(data);
  if (validateStreamEvent(value)) return { kind: "event", event: value as StreamEvent };
  if (validateKeepAlive(value)) return { kind: "keep_alive" };
  if (validateProtocolError(value)) return { kind: "protocol_error", error: value as ProtocolError };
  throw new ContractError(`message ${describe(validateStreamEvent)}`);
}

/** Checks a message the client is about to send (tests use it to hold fakes to the contract). */
export function checkClientMessage(value: unknown): ClientMessage {
  if (!validateClientMessage(value)) throw new ContractError(`client message ${describe(validateClientMessage)}`);
  return value as ClientMessage;
}

export function checkBlockResult(value: unknown): BlockResult {
  if (!validateBlockResult(value)) throw new ContractError(`result ${describe(validateBlockResult)}`);
  return value as BlockResult;
}

export function checkQuizQuestion(value: unknown): QuizQuestion {
  if (!validateQuizQuestion(value)) throw new ContractError(`quiz question ${describe(validateQuizQuestion)}`);
  return value as QuizQuestion;
}

/** The config endpoint has no schema in the contract, so only the fields the client uses are checked. */
export function checkConfig(value: unknown): AIConfig {
  const config = value as Partial<AIConfig> | null;
  if (
    !config ||
    typeof config.streaming_enabled !== "boolean" ||
    (config.streaming_backend !== "sse" && config.streaming_backend !== "websocket")
  ) {
    throw new ContractError("config lacks streaming_enabled or streaming_backend");
  }
  return config as AIConfig;
}
