// @live-ai/react: React bindings over @live-ai/client (React is a peer dependency).
export { useAIBlockStreaming, useAIStreaming } from "./hooks.js";
export type { AIBlockStreaming, AIStreaming, Loading, StreamActions } from "./hooks.js";
export { StreamClientProvider, useStreamClient } from "./provider.js";
export type { StreamClientProviderProps } from "./provider.js";
// The types a hook's caller meets, so a React app can import everything from one package.
export type {
  AIBlockErrorCode,
  BlockInputs,
  BlockResults,
  BlockStreamOptions,
  BlockStreamState,
  BlockType,
  StreamClientOptions,
  StreamError,
  StreamState,
  StreamStatus,
  Throttle,
} from "@live-ai/client";
export { AIBlockError, StreamClient } from "@live-ai/client";
