// One block's stream controller: connects a StreamClient run to a StreamStore and owns
// start / cancel / retry. Framework-agnostic; the React hooks are thin wrappers around it.
import type { BlockInputs, BlockType, CompleteEvent } from "./contract";
import type { FrameScheduler } from "./frame-scheduler";
import type { StreamError } from "./stream-error";
import { StreamStore, type StreamState } from "./stream-store";
import type { DeliveryMode, StreamClient, StreamHandle } from "./streamClient";

export interface BlockStreamOptions {
  /** Overrides the delivery mode the server's config picks (read at each start). */
  mode?: DeliveryMode;
  /** How store updates are batched (read once, at creation); animation frames by default. */
  scheduler?: FrameScheduler;
  /** Called once when a stream completes. */
  onComplete?(event: CompleteEvent): void;
  /** Called once when a stream fails. */
  onError?(error: StreamError): void;
}

export class BlockStream {
  readonly store: StreamStore;
  private handle: StreamHandle | undefined;
  private last: { blockType: BlockType; input: BlockInputs[BlockType] } | undefined;

  private readonly options: () => BlockStreamOptions;

  /** `options` may be a getter, so a caller (the hook) can hand in its latest options. */
  constructor(
    private readonly client: StreamClient,
    options: BlockStreamOptions | (() => BlockStreamOptions) = {},
  ) {
    this.options = typeof options === "function" ? options : () => options;
    this.store = new StreamStore(this.options().scheduler);
  }

  readonly subscribe = (listener: () => void) => this.store.subscribe(listener);
  readonly getSnapshot = (): StreamState => this.store.getSnapshot();

  /** Starts a new generation, cancelling one still running. */
  start<B extends BlockType>(blockType: B, input: BlockInputs[B]): void {
    this.handle?.cancel();
    this.last = { blockType, input };
    const store = this.store;
    store.reset({ blockType, status: "connecting" });
    const handle: StreamHandle = this.client.start(
      blockType,
      input,
      {
        onStatus: (status) => store.update({ status }),
        onStart: (event) =>
          store.update({
            streamId: event.stream_id,
            provider: event.provider,
            model: event.model,
            isDemo: event.provider === "demo",
          }),
        onChunk: (event) => store.appendText(event.token),
        onPart: (event) => store.setPart(event.index, event.data),
        onComplete: (event) => {
          store.update({ result: event.result, usage: event.usage });
          this.options().onComplete?.(event);
        },
        onError: (error) => {
          store.update({ error });
          this.options().onError?.(error);
        },
        onCancelled: () => undefined,
      },
      { mode: this.options().mode },
    );
    this.handle = handle;
  }

  cancel(): void {
    this.handle?.cancel();
  }

  /** Starts the last request again, as a new generation. */
  retry(): void {
    if (this.last) this.start(this.last.blockType, this.last.input);
  }

  /**
   * Releases everything (unmount). A stream still running is cancelled on the server, since
   * nobody is left to resume it. The object stays usable: React may mount it again.
   */
  dispose(): void {
    this.handle?.cancel();
    this.handle = undefined;
    this.store.dispose();
  }
}
