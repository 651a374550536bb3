// Splits streaming markdown into finished blocks and one unfinished tail, incrementally:
// each call scans only the text added since the last call, so finished blocks are parsed
// once and only the tail is re-parsed as tokens arrive.

const FENCE = /^ {0,3}(`{3,}|~{3,})/;

export interface MarkdownSplit {
  /** Blocks that can no longer change: a blank line (outside a code fence) ended them. */
  readonly blocks: readonly string[];
  /** The block still being written. */
  readonly tail: string;
}

export class MarkdownBlockSplitter {
  private text = "";
  private blocks: string[] = [];
  private blockStart = 0;
  private scanned = 0;
  private fence: string | null = null;

  /** Accepts the whole text so far; text that does not extend the previous one starts over. */
  update(text: string): MarkdownSplit {
    if (!text.startsWith(this.text)) this.restart();
    this.text = text;
    let lineEnd = text.indexOf("\n", this.scanned);
    while (lineEnd !== -1) {
      this.scanLine(text.slice(this.scanned, lineEnd), lineEnd + 1);
      this.scanned = lineEnd + 1;
      lineEnd = text.indexOf("\n", this.scanned);
    }
    return { blocks: this.blocks, tail: text.slice(this.blockStart) };
  }

  private scanLine(line: string, next: number): void {
    const fence = FENCE.exec(line)?.[1];
    if (fence !== undefined) {
      // A fence closes only with the same character, at least as long as the opener.
      if (this.fence === null) this.fence = fence;
      else if (fence[0] === this.fence[0] && fence.length >= this.fence.length) this.fence = null;
      return;
    }
    if (this.fence !== null || line.trim() !== "") return;
    const block = this.text.slice(this.blockStart, this.scanned);
    if (block.trim() !== "") this.blocks = [...this.blocks, block];
    this.blockStart = next;
  }

  private restart(): void {
    this.text = "";
    this.blocks = [];
    this.blockStart = 0;
    this.scanned = 0;
    this.fence = null;
  }
}
