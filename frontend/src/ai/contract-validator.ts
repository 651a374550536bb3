// The transport boundary check: every server message is validated against the contract's
// JSON Schemas (loaded from the AsyncAPI YAML at build time) before anything else sees it.
import Ajv, { type ValidateFunction } from "ajv";
import contractDocument from "../../../specs/050-live-ai-interaction/contracts/stream-schema.yaml";
import type {
  AIConfig,
  BlockResult,
  ProtocolError,
  QuizQuestion,
  ServerMessage,
  StreamEvent,
} from "./contract";

const CONTRACT_ID = "stream-schema";

interface ContractDocument {
  components: { schemas: Record<string, unknown> };
}

function compileValidators() {
  const document = contractDocument as ContractDocument;
  // Refs in the contract point at `#/components/schemas/...`, so the schemas are mounted at
  // that path; AsyncAPI's own keywords are not JSON Schema, hence `strict: false`.
  const ajv = new Ajv({ strict: false, allErrors: false });
  ajv.addSchema({ $id: CONTRACT_ID, components: document.components }, CONTRACT_ID);
  const get = (name: string): ValidateFunction => {
    const validate = ajv.getSchema(`${CONTRACT_ID}#/components/schemas/${name}`);
    if (!validate) throw new Error(`contract has no schema ${name}`);
    return validate;
  };
  return {
    streamEvent: get("StreamEvent"),
    protocolError: get("ProtocolError"),
    keepAlive: get("KeepAlive"),
    blockResult: get("BlockResult"),
    quizQuestion: get("QuizQuestion"),
  };
}

let validators: ReturnType<typeof compileValidators> | undefined;
function schemas() {
  validators ??= compileValidators();
  return validators;
}

export class ContractError extends Error {
  override readonly name = "ContractError";
}

function describe(validate: ValidateFunction): string {
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

/** Parses one SSE `data` payload; `expectedType` is the SSE `event:` field when present. */
export function parseStreamEvent(data: string, expectedType?: string): StreamEvent {
  const value = parseJson(data);
  const { streamEvent } = schemas();
  if (!streamEvent(value)) throw new ContractError(`event ${describe(streamEvent)}`);
  const event = value as StreamEvent;
  if (expectedType !== undefined && expectedType !== event.type) {
    throw new ContractError(`SSE event "${expectedType}" carries a "${event.type}" payload`);
  }
  return event;
}

/** Parses one WebSocket text frame: a stream event, a ProtocolError or a KeepAlive. */
export function parseServerMessage(data: string): ServerMessage {
  const value = parseJson(data);
  const { streamEvent, protocolError, keepAlive } = schemas();
  if (streamEvent(value)) return { kind: "event", event: value as StreamEvent };
  if (keepAlive(value)) return { kind: "keep_alive" };
  if (protocolError(value)) return { kind: "protocol_error", error: value as ProtocolError };
  throw new ContractError(`message ${describe(streamEvent)}`);
}

export function checkBlockResult(value: unknown): BlockResult {
  const { blockResult } = schemas();
  if (!blockResult(value)) throw new ContractError(`result ${describe(blockResult)}`);
  return value as BlockResult;
}

export function checkQuizQuestion(value: unknown): QuizQuestion {
  const { quizQuestion } = schemas();
  if (!quizQuestion(value)) throw new ContractError(`quiz question ${describe(quizQuestion)}`);
  return value as QuizQuestion;
}

/** The config endpoint has no schema in the contract, so only its shape is checked here. */
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
