// The demo page: the four AI blocks, each streaming from the live-ai server that serves it,
// used the way a host app would: a hook per block (resumable across a reload) handed to the
// block component. `?transport=sse|websocket|whole` overrides the server's choice of
// transport; `?bench` counts each block's renders for bench/browser-bench.mjs.
import { AskQuestionBlock, DiagramBlock, ExplainELI10Block, QuizBlock } from "@live-ai/blocks";
import type { DeliveryMode } from "@live-ai/client";
import { useAIBlockStreaming, type BlockStreamOptions, type BlockType } from "@live-ai/react";
import { enableBenchCounters, useRenderCounter } from "./bench-probe";

const MODES: readonly DeliveryMode[] = ["sse", "websocket", "whole"];

function pageOptions(search: string) {
  const params = new URLSearchParams(search);
  const transport = params.get("transport") as DeliveryMode | null;
  return {
    mode: transport && MODES.includes(transport) ? transport : undefined,
    bench: params.has("bench"),
  };
}

/** The options every demo block streams with: the page's transport, and resume after a reload. */
function useDemoStream<B extends BlockType>(blockType: B, mode: DeliveryMode | undefined) {
  const options: BlockStreamOptions<B> = { resume: true, ...(mode ? { mode } : {}) };
  const stream = useAIBlockStreaming(blockType, options);
  // This component re-renders exactly when its block does: its stream published a new state.
  useRenderCounter(blockType);
  return stream;
}

function AskDemo({ mode }: { mode?: DeliveryMode }) {
  return <AskQuestionBlock stream={useDemoStream("ask-question", mode)} initialQuestion="Why is the sky blue?" />;
}
function ExplainDemo({ mode }: { mode?: DeliveryMode }) {
  return <ExplainELI10Block stream={useDemoStream("explain-eli10", mode)} initialTopic="volcanoes" />;
}
function QuizDemo({ mode }: { mode?: DeliveryMode }) {
  return <QuizBlock stream={useDemoStream("quiz", mode)} initialTopic="volcanoes" />;
}
function DiagramDemo({ mode }: { mode?: DeliveryMode }) {
  return <DiagramBlock stream={useDemoStream("diagram", mode)} initialDescription="How rain forms" />;
}

export function App({ search = window.location.search }: { search?: string }) {
  const { mode, bench } = pageOptions(search);
  if (bench) enableBenchCounters();
  return (
    <main>
      <header className="page-header">
        <h1>Live AI Blocks</h1>
        <p>Each block streams its answer token by token, survives dropped connections and reloads, and can be cancelled.</p>
      </header>
      <div className="blocks">
        <AskDemo mode={mode} />
        <ExplainDemo mode={mode} />
        <QuizDemo mode={mode} />
        <DiagramDemo mode={mode} />
      </div>
    </main>
  );
}
