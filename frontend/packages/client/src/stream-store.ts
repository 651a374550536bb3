// The state of one block's stream as an external store (subscribe / getSnapshot) whose
// snapshot is published at most once per scheduled tick (an animation frame by default, or
// the `throttle` interval), however fast events arrive.
import type { BlockParts, BlockResult, BlockResults, BlockType, BlockTypeWithParts, QuizQuestion, Usage } from "./contract.js";
import { animationFrameScheduler, type FrameScheduler } from "./frame-scheduler.js";
import type { StreamError } from "./stream-error.js";
import type { StreamStatus } from "./stream-session.js";

export interface StreamState {
  status: StreamStatus;
  blockType: BlockType | undefined;
  streamId: string | undefined;
  provider: string | undefined;
  model: string | undefined;
  /** The demo model answered (its start event said provider `demo`). */
  isDemo: boolean;
  /**
   * This stream joined a generation already running for a classmate's identical request (its
   * start event said `shared: true`): the answer is written for the whole class. The stream, its
   * cancel and its resume are still this learner's own.
   */
  shared: boolean;
  /** This stream replays a classmate's finished answer to the same request (`cached: true`); no model was asked. */
  cached: boolean;
  /** The output text so far: every chunk's token, in seq order. */
  text: string;
  /** Structured parts so far (quiz questions), by their index. */
  parts: QuizQuestion[];
  result: BlockResult | undefined;
  usage: Usage | undefined;
  error: StreamError | undefined;
}

/** One block type's view of the state: its own result type, and `parts` only where it has parts. */
export type BlockStreamState<B extends BlockType> = Omit<StreamState, "blockType" | "result" | "parts"> & {
  blockType: B | undefined;
  result: BlockResults[B] | undefined;
} & ([B] extends [BlockTypeWithParts] ? { parts: BlockParts[B][] } : unknown);

/** Whether a stream in `status` is under way: connecting, streaming or reconnecting (the hooks' `isLoading`). */
export function isLoadingStatus(status: StreamStatus): boolean {
  return status === "connecting" || status === "streaming" || status === "reconnecting";
}

export const INITIAL_STREAM_STATE: StreamState = Object.freeze({
  status: "idle",
  blockType: undefined,
  streamId: undefined,
  provider: undefined,
  model: undefined,
  isDemo: false,
  shared: false,
  cached: false,
  text: "",
  parts: [],
  result: undefined,
  usage: undefined,
  error: undefined,
}) as StreamState;

export class StreamStore {
  private snapshot: StreamState = INITIAL_STREAM_STATE;
  private draft: StreamState = INITIAL_STREAM_STATE;
  private pendingText: string[] = [];
  private readonly listeners = new Set<() => void>();
  private cancelFrame: (() => void) | undefined;

  constructor(private readonly schedule: FrameScheduler = animationFrameScheduler) {}

  readonly subscribe = (listener: () => void): (() => void) => {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  };

  readonly getSnapshot = (): StreamState => this.snapshot;

  /** Applies a change now; readers see it with the next frame. */
  update(change: Partial<StreamState>): void {
    this.draft = { ...this.draft, ...change };
    this.scheduleFlush();
  }

  /** Appends output text; tokens are joined once per frame rather than once per token. */
  appendText(token: string): void {
    this.pendingText.push(token);
    this.scheduleFlush();
  }

  setPart(index: number, question: QuizQuestion): void {
    const parts = this.draft.parts.slice();
    parts[index] = question;
    this.update({ parts });
  }

  /**
   * Removes everything the stream showed — text, parts, result — because moderation withdrew
   * it (`retract: true`). Published with the next frame, with whatever else changes with it.
   */
  retract(): void {
    this.pendingText = [];
    this.update({ text: "", parts: [], result: undefined });
  }

  /** Starts over from the initial state (a new stream), published with the next frame. */
  reset(change: Partial<StreamState> = {}): void {
    this.pendingText = [];
    this.draft = { ...INITIAL_STREAM_STATE, ...change };
    this.scheduleFlush();
  }

  /** Publishes pending changes immediately (tests, and before a component goes away). */
  flush = (): void => {
    // Called early (not by the frame itself), the frame has nothing left to publish.
    this.cancelFrame?.();
    this.cancelFrame = undefined;
    if (this.pendingText.length > 0) {
      this.draft = { ...this.draft, text: this.draft.text + this.pendingText.join("") };
      this.pendingText = [];
    }
    if (this.draft === this.snapshot) return;
    this.snapshot = this.draft;
    for (const listener of [...this.listeners]) listener();
  };

  /** Drops a scheduled frame (unmount). */
  dispose(): void {
    this.cancelFrame?.();
    this.cancelFrame = undefined;
  }

  private scheduleFlush(): void {
    this.cancelFrame ??= this.schedule(this.flush);
  }
}
