// What `start()`'s promise rejects with: the stream's error, or the fact that it was cancelled
// or left (detached) before it finished, as one Error subclass with a `code` to switch on.
import type { ClientErrorCode, StreamError } from "./stream-error.js";

export type AIBlockErrorCode = ClientErrorCode | "cancelled" | "detached";

export class AIBlockError extends Error {
  override readonly name = "AIBlockError";
  readonly code: AIBlockErrorCode;
  /** The stream's error, when it failed (not when it was cancelled or detached). */
  readonly error: StreamError | undefined;

  constructor(code: AIBlockErrorCode, message: string, error?: StreamError) {
    super(message);
    this.code = code;
    this.error = error;
  }

  static failed(error: StreamError): AIBlockError {
    return new AIBlockError(error.code, error.message, error);
  }
}
