"use client";
// Ask a question (optionally with context) and stream the markdown answer.
import { useState, type FormEvent } from "react";
import { useBlockStreamOf, type BlockProps } from "./block-stream.js";
import { StreamingMarkdown, useFinishedParagraphs } from "./markdown/StreamingMarkdown.js";
import { BlockFrame, isActive, LiveOutput } from "./BlockFrame.js";

export function AskQuestionBlock(props: BlockProps<"ask-question"> & { initialQuestion?: string }) {
  const stream = useBlockStreamOf("ask-question", props);
  const [question, setQuestion] = useState(props.initialQuestion ?? "");
  const [context, setContext] = useState("");
  const submit = (event: FormEvent) => {
    event.preventDefault();
    stream.start(context.trim() ? { question, context } : { question });
  };
  const active = isActive(stream.status);
  const paragraphs = useFinishedParagraphs(stream.text, stream.status === "complete");
  return (
    <BlockFrame
      blockType="ask-question"
      title="Ask a question"
      stream={stream}
      errorMessages={props.errorMessages}
      labels={props.labels}
      form={
        <form onSubmit={submit}>
          <label>
            Question
            <textarea value={question} onChange={(e) => setQuestion(e.target.value)} required maxLength={4000} rows={2} />
          </label>
          <label>
            Context (optional)
            <textarea value={context} onChange={(e) => setContext(e.target.value)} maxLength={16000} rows={2} />
          </label>
          <button type="submit" disabled={active || question.trim() === ""}>
            Ask
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
