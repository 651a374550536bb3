// Explain a topic like I am 10, streamed as markdown.
import { useState, type FormEvent } from "react";
import { useAIBlockStreaming, type BlockStreamOptions } from "../../ai/streamHooks";
import { StreamingMarkdown } from "../markdown/StreamingMarkdown";
import { BlockFrame, isActive, LiveOutput } from "./BlockFrame";

export function ExplainELI10Block({ options, initialTopic = "" }: { options?: BlockStreamOptions; initialTopic?: string }) {
  const stream = useAIBlockStreaming("explain-eli10", options);
  const [topic, setTopic] = useState(initialTopic);
  const submit = (event: FormEvent) => {
    event.preventDefault();
    stream.start({ topic });
  };
  const active = isActive(stream.status);
  return (
    <BlockFrame
      blockType="explain-eli10"
      title="Explain like I am 10"
      stream={stream}
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
      <LiveOutput busy={active}>
        <StreamingMarkdown text={stream.text} />
      </LiveOutput>
    </BlockFrame>
  );
}
