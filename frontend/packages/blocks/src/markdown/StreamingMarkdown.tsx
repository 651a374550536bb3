"use client";
// Renders markdown that is still arriving: finished blocks render once (memoized), and only
// the unfinished last block re-renders, so long answers do not flicker or re-parse. The same
// split tells the announcer which paragraphs are finished (`useFinishedParagraphs`).
import { memo, useMemo, useRef } from "react";
import { MarkdownBlockSplitter, type MarkdownSplit } from "./markdown-blocks.js";
import { plainText } from "./plain-text.js";
import { renderMarkdown } from "./render-markdown.js";

const MarkdownBlock = memo(function MarkdownBlock({ source }: { source: string }) {
  return <div className="md-block" dangerouslySetInnerHTML={{ __html: renderMarkdown(source) }} />;
});

function useMarkdownSplit(text: string): MarkdownSplit {
  const splitter = useRef<MarkdownBlockSplitter | null>(null);
  splitter.current ??= new MarkdownBlockSplitter();
  return splitter.current.update(text);
}

export function StreamingMarkdown({ text }: { text: string }) {
  const { blocks, tail } = useMarkdownSplit(text);
  return (
    <div className="markdown">
      {blocks.map((block, index) => (
        <MarkdownBlock key={index} source={block} />
      ))}
      {tail.trim() !== "" && <MarkdownBlock key={blocks.length} source={tail} />}
    </div>
  );
}

/** The paragraphs of `text` a learner can have read out: the finished ones, and the last one once `done`. */
export function useFinishedParagraphs(text: string, done: boolean): readonly string[] {
  const { blocks, tail } = useMarkdownSplit(text);
  const spoken = useRef(new Map<string, string>());
  return useMemo(() => {
    const finished = done && tail.trim() !== "" ? [...blocks, tail] : blocks;
    return finished.map((block) => {
      let words = spoken.current.get(block);
      if (words === undefined) spoken.current.set(block, (words = plainText(block)));
      return words;
    });
  }, [blocks, tail, done]);
}
