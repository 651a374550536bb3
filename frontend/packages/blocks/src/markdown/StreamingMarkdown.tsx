// Renders markdown that is still arriving: finished blocks render once (memoized), and only
// the unfinished last block re-renders, so long answers do not flicker or re-parse.
import { memo, useRef } from "react";
import { MarkdownBlockSplitter } from "./markdown-blocks.js";
import { renderMarkdown } from "./render-markdown.js";

const MarkdownBlock = memo(function MarkdownBlock({ source }: { source: string }) {
  return <div className="md-block" dangerouslySetInnerHTML={{ __html: renderMarkdown(source) }} />;
});

export function StreamingMarkdown({ text }: { text: string }) {
  const splitter = useRef<MarkdownBlockSplitter | null>(null);
  splitter.current ??= new MarkdownBlockSplitter();
  const { blocks, tail } = splitter.current.update(text);
  return (
    <div className="markdown">
      {blocks.map((block, index) => (
        <MarkdownBlock key={index} source={block} />
      ))}
      {tail.trim() !== "" && <MarkdownBlock key={blocks.length} source={tail} />}
    </div>
  );
}
