// @live-ai/client: the framework-free core. Transports (SSE over fetch, WebSocket, whole
// response), sessions (resume, backoff, dedupe), the block store and its controller, the
// learner's credential, and the contract's types and validators.
export { StreamClient, getDefaultStreamClient } from "./stream-client.js";
export type { DeliveryMode, StartOptions, StreamClientOptions, StreamHandle } from "./stream-client.js";
export { BlockStream } from "./block-stream.js";
export type { BlockStartOptions, BlockStreamOptions } from "./block-stream.js";
export { StreamStore, INITIAL_STREAM_STATE, isLoadingStatus } from "./stream-store.js";
export type { BlockStreamState, StreamState } from "./stream-store.js";
export { AIBlockError } from "./block-error.js";
export type { AIBlockErrorCode } from "./block-error.js";
export type { ClientErrorCode, StreamError } from "./stream-error.js";
export type { StreamHandlers, StreamOutcome, StreamStatus } from "./stream-session.js";
export type { TransportKind } from "./transport.js";
export type { BackoffPolicy } from "./backoff.js";
export type { GetToken, GetTokenOptions } from "./auth.js";
export { MAX_CLIENT_MESSAGE_BYTES } from "./ws-transport.js";
export { animationFrameScheduler, intervalScheduler } from "./frame-scheduler.js";
export type { FrameScheduler, Throttle } from "./frame-scheduler.js";
export { BLOCK_TYPES, isTerminal } from "./contract.js";
export type * from "./contract.js";
export {
  ContractError,
  checkBlockResult,
  checkClientMessage,
  checkQuizQuestion,
  checkStreamEvent,
  parseServerMessage,
  parseStreamEvent,
} from "./contract-validator.js";
