// One block's stream controller: connects StreamClient runs to a StreamStore and owns start /
// cancel / detach / resume / retry / reset, the promise `start()` returns (it always settles:
// with the result, or an AIBlockError when the stream fails, is cancelled or is left), the
// caller's callbacks, and two ways a stream outlives a connection the session itself gave up on:
// - visibility: a stream that failed with `connection_lost` while the page was hidden (the
//   network dropped while the learner was away, and the browser throttled the reconnects) is
//   parked in `error` and resumed from its last seq when the page becomes visible again;
// - `resume: true`: the stream id and what was shown so far are kept in sessionStorage, and a
//   new page (a reload) resumes the same generation with `resumeStored()`.
// A `start()` identical to one made earlier in the same task (before any await: React
// StrictMode's second run of a mount effect) returns that one's promise instead of starting a
// second generation. Framework-agnostic; the React hooks are thin wrappers around it.
import { AIBlockError } from "./block-error.js";
import type { BlockInputs, BlockResults, BlockType, ChunkEvent, CompleteEvent, PartEvent } from "./contract.js";
import { schedulerFor, type FrameScheduler, type Throttle } from "./frame-scheduler.js";
import { forgetStream, loadStream, saveStream, type StoredStream } from "./resume-storage.js";
import type { StreamError } from "./stream-error.js";
import type { StreamHandlers } from "./stream-session.js";
import { StreamStore, type StreamState } from "./stream-store.js";
import type { DeliveryMode, StartOptions, StreamClient, StreamHandle } from "./stream-client.js";

export interface BlockStreamOptions<B extends BlockType = BlockType> {
  /** Overrides the delivery mode the server's config picks (read at each start). */
  mode?: DeliveryMode;
  /** How often the state is published: "frame" (default, once per animation frame) or every N ms. Read once. */
  throttle?: Throttle;
  /** Every chunk of output text, as it arrives (not throttled). */
  onChunk?(event: ChunkEvent): void;
  /** Every structured part (a quiz question), as it arrives. */
  onPart?(event: PartEvent): void;
  /** Once, when a stream completes, with the block's final result. */
  onFinish?(result: BlockResults[B], event: CompleteEvent): void;
  /** Once, when a stream fails for good. */
  onError?(error: StreamError): void;
  /**
   * Keep the stream in sessionStorage so that, after a reload, `resumeStored()` re-attaches to
   * the same generation; leaving (unmount) then detaches instead of cancelling. Read once.
   */
  resume?: boolean;
  /** Names the stored stream (default: the block type; useAIStreaming, which has none, needs one to resume). */
  id?: string;
  /** Replaces the publication schedule entirely (tests). */
  scheduler?: FrameScheduler;
}

/** How `start()` asks (the delivery mode is the block's, in its options). */
export type BlockStartOptions = Pick<StartOptions, "fresh">;

interface Run<B extends BlockType> {
  /** The block, when known (a stream resumed by id names it in its start event). */
  blockType: B | undefined;
  /** The request that started it; unknown for a stream resumed by id. */
  input: BlockInputs[B] | undefined;
  handle?: StreamHandle;
  streamId?: string;
  lastSeq: number;
  promise: Promise<BlockResults[B]>;
  resolve(result: BlockResults[B]): void;
  reject(error: AIBlockError): void;
}

/** A stream this block stopped listening to (`detach()`): enough to continue it with `resume()`. */
interface Detached<B extends BlockType> {
  streamId: string;
  blockType: B | undefined;
  input: BlockInputs[B] | undefined;
  lastSeq: number;
}

function noop(): void {}

function rejected<T>(error: AIBlockError): Promise<T> {
  const promise = Promise.reject(error);
  promise.catch(noop);
  return promise;
}

export class BlockStream<B extends BlockType = BlockType> {
  readonly store: StreamStore;
  private current: Run<B> | undefined;
  private last: { blockType: B; input: BlockInputs[B]; options?: BlockStartOptions } | undefined;
  private parked: Run<B> | undefined;
  private detached: Detached<B> | undefined;
  /** The start made in the current task, by request: a second identical one joins it. */
  private startedThisTask: { request: string; run: Run<B> } | undefined;
  private readonly options: () => BlockStreamOptions<B>;
  private readonly resumable: boolean;
  private readonly fixedKey: string | undefined;

  /** `options` may be a getter, so a caller (the hook) can hand in its latest callbacks. */
  constructor(
    private readonly client: StreamClient,
    options: BlockStreamOptions<B> | (() => BlockStreamOptions<B>) = {},
    /** The block this stream is for, when fixed: names the stored stream. */
    private readonly blockType?: B,
  ) {
    this.options = typeof options === "function" ? options : () => options;
    const initial = this.options();
    this.store = new StreamStore(initial.scheduler ?? schedulerFor(initial.throttle));
    this.resumable = initial.resume === true;
    this.fixedKey = initial.id ?? blockType;
  }

  readonly subscribe = (listener: () => void) => this.store.subscribe(listener);
  readonly getSnapshot = (): StreamState => this.store.getSnapshot();

  /**
   * Starts a stream (cancelling one still running); resolves with its final result. The same
   * request made again in the same task joins the first instead (StrictMode's double mount). On a
   * server that coalesces, an identical request of a classmate may answer it (`shared` or `cached`
   * in the state) unless `fresh: true`.
   */
  start(blockType: B, input: BlockInputs[B], options: BlockStartOptions = {}): Promise<BlockResults[B]> {
    const fresh = options.fresh === true;
    const request = JSON.stringify([blockType, input, fresh]);
    const joined = this.startedThisTask;
    if (joined?.request === request && this.current === joined.run) return joined.run.promise;
    this.stopCurrent("cancel");
    this.detached = undefined;
    this.last = { blockType, input, options };
    this.store.reset({ blockType, status: "connecting" });
    const run = this.newRun(blockType, input, -1);
    this.startedThisTask = { request, run };
    queueMicrotask(() => {
      if (this.startedThisTask?.run === run) this.startedThisTask = undefined;
    });
    this.follow(run, this.client.start(blockType, input, this.handlersFor(run), { mode: this.options().mode, fresh }));
    return run.promise;
  }

  /** Stops the generation on the server (a detached one too); `start()`'s promise rejects with code "cancelled". */
  cancel(): void {
    if (this.parked) return this.stopCurrent("cancel");
    if (this.current) return this.current.handle?.cancel();
    const detached = this.detached;
    if (!detached) return;
    this.detached = undefined;
    void this.client.cancelStream(detached.streamId).catch(noop);
    if (this.resumable && this.fixedKey !== undefined) forgetStream(this.fixedKey);
    this.store.update({ status: "cancelled" });
  }

  /**
   * Stops listening; the generation goes on on the server, and `resume()` picks it up again.
   * The state's status becomes "detached"; the promise rejects with code "detached".
   */
  detach(): void {
    this.stopCurrent("detach");
  }

  /**
   * Re-attaches to a stream: by default the one this block detached from, continuing after what
   * it shows; or any stream of the learner's by id, replayed from its first event. A stream still
   * running here is cancelled first, as by `start()`. Resolves with the stream's result.
   */
  resume(streamId?: string): Promise<BlockResults[B]> {
    const parked = this.parked;
    if (parked && (streamId === undefined || streamId === parked.streamId)) {
      this.resumeRun(parked);
      return parked.promise;
    }
    const target = streamId ?? this.detached?.streamId;
    if (target === undefined) return rejected(new AIBlockError("bad_request", "nothing to resume: no stream was detached"));
    if (this.current?.streamId === target) return this.current.promise;
    const continuing = this.detached?.streamId === target ? this.detached : undefined;
    this.stopCurrent("cancel");
    this.detached = undefined;
    const from = continuing ?? { streamId: target, blockType: this.blockType, input: undefined, lastSeq: -1 };
    this.last = from.blockType !== undefined && from.input !== undefined ? { blockType: from.blockType, input: from.input } : undefined;
    if (continuing) this.store.update({ status: "reconnecting", error: undefined });
    else this.store.reset({ blockType: from.blockType, streamId: target, status: "connecting" });
    const run = this.newRun(from.blockType, from.input, from.lastSeq);
    run.streamId = target;
    this.follow(run, this.client.resume(target, from.lastSeq, this.handlersFor(run), { mode: this.options().mode }));
    return run.promise;
  }

  /**
   * Starts the last request again, as it was asked (`fresh` included): a new stream, which on a
   * coalescing server may join the class's retry of the same request rather than run alone.
   */
  retry(): Promise<BlockResults[B]> {
    if (!this.last) return rejected(new AIBlockError("bad_request", "nothing to retry: no stream was started"));
    return this.start(this.last.blockType, this.last.input, this.last.options);
  }

  /**
   * Back to the initial (idle) state: a stream still running is cancelled on the server (its
   * promise rejects with "cancelled"), and nothing is kept to retry or resume.
   */
  reset(): void {
    this.stopCurrent("cancel");
    this.detached = undefined;
    this.last = undefined;
    if (this.resumable && this.fixedKey !== undefined) forgetStream(this.fixedKey);
    this.store.reset();
  }

  /**
   * With `resume: true`, re-attaches to the stream this block left in sessionStorage (before a
   * reload), showing what was shown then and continuing from there. Returns whether there was one.
   */
  resumeStored(): boolean {
    if (!this.resumable || this.current) return false;
    const key = this.fixedKey;
    const stored = key === undefined ? undefined : loadStream(key);
    if (!stored || (this.blockType !== undefined && stored.blockType !== this.blockType)) return false;
    const blockType = stored.blockType as B;
    const input = stored.input as BlockInputs[B] | undefined;
    this.last = input === undefined ? undefined : { blockType, input };
    this.store.reset({
      blockType,
      streamId: stored.streamId,
      provider: stored.provider,
      model: stored.model,
      isDemo: stored.provider === "demo",
      shared: stored.shared === true,
      cached: stored.cached === true,
      text: stored.text,
      parts: stored.parts,
      status: "reconnecting",
    });
    // Shown at once: the first render after a reload already has the text of before.
    this.store.flush();
    const run = this.newRun(blockType, input, stored.lastSeq);
    run.streamId = stored.streamId;
    this.follow(run, this.client.resume(stored.streamId, stored.lastSeq, this.handlersFor(run), { mode: this.options().mode }));
    return true;
  }

  /**
   * Releases everything (unmount). A running stream is cancelled on the server, since nobody is
   * left to resume it, unless `resume: true` (then it is kept for the next page and detached);
   * its `start()` promise rejects with "cancelled" or "detached" accordingly. The final state is
   * published before the object goes quiet, and it stays usable: React may mount it again.
   */
  dispose(): void {
    if (this.resumable) {
      this.persist();
      this.stopCurrent("detach");
    } else {
      this.stopCurrent("cancel");
    }
    this.store.flush();
    this.store.dispose();
  }

  private newRun(blockType: B | undefined, input: BlockInputs[B] | undefined, lastSeq: number): Run<B> {
    let resolve!: (result: BlockResults[B]) => void;
    let reject!: (error: AIBlockError) => void;
    const promise = new Promise<BlockResults[B]>((res, rej) => ((resolve = res), (reject = rej)));
    // A caller may ignore the promise (a form's submit handler); its failure is in the state.
    promise.catch(noop);
    const run: Run<B> = { blockType, input, lastSeq, promise, resolve, reject };
    this.current = run;
    if (this.resumable) {
      // Saved when the page goes away (or into the background, where it may be discarded).
      globalThis.addEventListener?.("pagehide", this.persist);
      globalThis.document?.addEventListener("visibilitychange", this.persistWhenHidden);
    }
    return run;
  }

  /** Runs `handle` for `run`; a handle detached from below (the client was disposed) leaves the run detached. */
  private follow(run: Run<B>, handle: StreamHandle): void {
    run.handle = handle;
    void handle.done.then((outcome) => {
      if (outcome.status !== "detached" || this.current !== run || run.handle !== handle) return;
      this.detached = this.detachedOf(run);
      this.finish(run, false);
      run.reject(new AIBlockError("detached", "the stream was left; it goes on on the server"));
    });
  }

  private detachedOf(run: Run<B>): Detached<B> | undefined {
    return run.streamId === undefined ? undefined : { streamId: run.streamId, blockType: run.blockType, input: run.input, lastSeq: run.lastSeq };
  }

  private stopCurrent(how: "cancel" | "detach"): void {
    const run = this.current;
    if (!run) return;
    if (this.parked === run) {
      this.unpark();
      // The session already ended; the generation may still be running on the server.
      if (how === "cancel" && run.streamId) void this.client.cancelStream(run.streamId).catch(noop);
      this.store.update({ status: how === "cancel" ? "cancelled" : "detached" });
      if (how === "detach") this.detached = this.detachedOf(run);
      this.finish(run, how === "cancel");
      run.reject(new AIBlockError(how === "cancel" ? "cancelled" : "detached", `the stream was ${how === "cancel" ? "cancelled" : "left"}`));
      return;
    }
    if (how === "cancel") run.handle?.cancel();
    else {
      // Kept before the handle reports "detached", so a listener of the state can resume at once.
      this.detached = this.detachedOf(run);
      run.handle?.detach();
      this.finish(run, false);
      run.reject(new AIBlockError("detached", "the stream was left; it goes on on the server"));
    }
  }

  private handlersFor(run: Run<B>): StreamHandlers {
    const store = this.store;
    const mine = () => this.current === run;
    const seen = (seq: number) => {
      run.lastSeq = seq;
    };
    return {
      onStatus: (status) => mine() && store.update({ status }),
      onStart: (event) => {
        seen(event.seq);
        if (!mine()) return;
        run.streamId = event.stream_id;
        run.blockType ??= event.block_type as B;
        store.update({
          blockType: event.block_type,
          streamId: event.stream_id,
          provider: event.provider,
          model: event.model,
          isDemo: event.provider === "demo",
          shared: event.shared === true,
          cached: event.cached === true,
        });
        if (this.resumable) this.persist();
      },
      onChunk: (event) => {
        seen(event.seq);
        if (!mine()) return;
        store.appendText(event.token);
        this.options().onChunk?.(event);
      },
      onPart: (event) => {
        seen(event.seq);
        if (!mine()) return;
        store.setPart(event.index, event.data);
        this.options().onPart?.(event);
      },
      onComplete: (event) => {
        seen(event.seq);
        if (!mine()) return;
        const result = event.result as BlockResults[B];
        store.update({ result, usage: event.usage });
        this.finish(run);
        this.options().onFinish?.(result, event);
        run.resolve(result);
      },
      onError: (error, event) => {
        if (event) seen(event.seq);
        if (!mine()) return;
        // The one place a terminal error meets what is shown: moderation's retraction
        // withdraws the output (text, quiz questions, diagram) as the error lands.
        if (error.retract) store.retract();
        store.update({ error });
        if (this.shouldPark(run, error)) return this.park(run);
        this.finish(run);
        this.options().onError?.(error);
        run.reject(AIBlockError.failed(error));
      },
      onCancelled: (event) => {
        if (event) seen(event.seq);
        if (!mine()) return;
        this.finish(run);
        run.reject(new AIBlockError("cancelled", "the stream was cancelled"));
      },
    };
  }

  /** The run is over here; `ended` (it will never resume) also drops what was kept of it. */
  private finish(run: Run<B>, ended = true): void {
    if (this.current === run) this.current = undefined;
    if (this.current === undefined) {
      globalThis.removeEventListener?.("pagehide", this.persist);
      globalThis.document?.removeEventListener("visibilitychange", this.persistWhenHidden);
    }
    if (ended && this.resumable && this.fixedKey !== undefined) forgetStream(this.fixedKey);
  }

  private shouldPark(run: Run<B>, error: StreamError): boolean {
    return error.code === "connection_lost" && run.streamId !== undefined && globalThis.document?.visibilityState === "hidden";
  }

  private park(run: Run<B>): void {
    this.parked = run;
    globalThis.document?.addEventListener("visibilitychange", this.resumeParked);
  }

  private unpark(): void {
    this.parked = undefined;
    globalThis.document?.removeEventListener("visibilitychange", this.resumeParked);
  }

  private readonly resumeParked = (): void => {
    const run = this.parked;
    if (run && globalThis.document?.visibilityState === "visible") this.resumeRun(run);
  };

  /** Continues a parked run: same promise, from its last seq. */
  private resumeRun(run: Run<B>): void {
    this.unpark();
    this.store.update({ status: "reconnecting", error: undefined });
    this.follow(run, this.client.resume(run.streamId!, run.lastSeq, this.handlersFor(run), { mode: this.options().mode }));
  }

  private readonly persistWhenHidden = (): void => {
    if (globalThis.document?.visibilityState === "hidden") this.persist();
  };

  /** Saves the running stream (`resume: true`), with what is shown so far, for the next page. */
  private readonly persist = (): void => {
    const run = this.current;
    if (!run?.streamId || run.blockType === undefined || this.fixedKey === undefined) return;
    this.store.flush();
    const state = this.store.getSnapshot();
    const stored: StoredStream = {
      streamId: run.streamId,
      blockType: run.blockType,
      input: run.input,
      lastSeq: run.lastSeq,
      text: state.text,
      parts: state.parts,
      provider: state.provider,
      model: state.model,
      shared: state.shared,
      cached: state.cached,
    };
    saveStream(this.fixedKey, stored);
  };
}
