// Where a block with `resume: true` keeps its stream across a page reload: sessionStorage (this
// tab only, gone with it), one entry per block key. Written when the stream is named and when
// the page is hidden or unloaded (not per event: storage writes are synchronous), removed when
// the stream ends.
import type { BlockInputs, BlockType, QuizQuestion } from "./contract.js";

export interface StoredStream {
  streamId: string;
  blockType: BlockType;
  /** The request that started it; absent for a stream resumed by id (then it cannot be retried). */
  input: BlockInputs[BlockType] | undefined;
  /** The last seq the page had shown; -1 when the text below is not kept. */
  lastSeq: number;
  text: string;
  parts: QuizQuestion[];
  provider?: string;
  model?: string;
  /** What the start event said, which a resume after it does not repeat. */
  shared?: boolean;
  cached?: boolean;
}

const PREFIX = "live-ai:stream:";

function storage(): Storage | undefined {
  try {
    return globalThis.sessionStorage;
  } catch {
    // Storage can be off (privacy settings, sandboxed frames): resuming is then not possible.
    return undefined;
  }
}

export function loadStream(key: string): StoredStream | undefined {
  const raw = storage()?.getItem(PREFIX + key);
  if (!raw) return undefined;
  try {
    const value = JSON.parse(raw) as Partial<StoredStream>;
    if (typeof value.streamId !== "string" || typeof value.blockType !== "string" || typeof value.lastSeq !== "number") return undefined;
    return { text: "", parts: [], ...value } as StoredStream;
  } catch {
    return undefined;
  }
}

export function saveStream(key: string, stream: StoredStream): void {
  try {
    storage()?.setItem(PREFIX + key, JSON.stringify(stream));
  } catch {
    // Quota exceeded: keep only what resuming from the first event needs.
    try {
      storage()?.setItem(PREFIX + key, JSON.stringify({ ...stream, lastSeq: -1, text: "", parts: [] }));
    } catch {
      // Nothing can be kept; the stream still runs, it just will not survive a reload.
    }
  }
}

export function forgetStream(key: string): void {
  storage()?.removeItem(PREFIX + key);
}
