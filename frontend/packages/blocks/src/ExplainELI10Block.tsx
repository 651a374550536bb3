"use client";
// Explain a topic like I am 10, streamed as markdown.
import { useState, type FormEvent } from "react";
import { useBlockStreamOf, type BlockProps } from "./block-stream.js";
import { StreamingMarkdown, useFinishedParagraphs } from "./markdown/StreamingMarkdown.js";
import { BlockFrame, isActive, LiveOutput } from "./BlockFrame.js";

export function ExplainELI10Block(props: BlockProps<"explain-eli10"> & { initialTopic?: string }) {
  const stream = useBlockStreamOf("explain-eli10", props);
  const [topic, setTopic] = useState(props.initialTopic ?? "");
  const submit = (event: FormEvent) => {
    event.preventDefault();
    stream.start({ topic });
  };
  const active = isActive(stream.status);
  const paragraphs = useFinishedParagraphs(stream.text, stream.status === "complete");
  return (
    <BlockFrame
      blockType="explain-eli10"
      title="Explain like I am 10"
      stream={stream}
      errorMessages={props.errorMessages}
      labels={props.labels}
      form={
        <form onSubmit={submit}>
          <label>
            Topic
            <input value={topic} onChange={(e) => setTopic(e.target.value)} required maxLength={500} />
          </label>
          <button type="submit" disabled={active || topic.trim() === ""}>
            Explain
          </button>
        </form>
      }
    >
      <LiveOutput busy={active} announce={paragraphs}>
        <StreamingMarkdown text={stream.text} />
      </LiveOutput>
    </BlockFrame>
  );
}
