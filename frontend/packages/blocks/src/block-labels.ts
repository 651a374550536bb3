// The words the blocks show beside an answer (error messages have their own table, in
// error-text.ts): one table a host rewords, for every block below a `BlockLabelsProvider` or for
// one block through its `labels` prop — to translate them, or to say it the host's way.

export interface BlockLabels {
  /**
   * Beside an answer written for the whole class: the server answered a classmate's identical
   * request, and this learner joined it while it was written (`shared`) or got it once finished
   * (`cached`).
   */
  sharedAnswer: string;
}

export const DEFAULT_BLOCK_LABELS: BlockLabels = {
  sharedAnswer: "answered for your class",
};
