// The demo page: the four AI blocks, each streaming from the live-ai server that serves it.
// `?transport=sse|websocket|whole` overrides the server's choice; `?bench` counts renders.
import type { DeliveryMode } from "./ai/streamClient";
import { AskQuestionBlock } from "./components/blocks/AskQuestionBlock";
import { DiagramBlock } from "./components/blocks/DiagramBlock";
import { ExplainELI10Block } from "./components/blocks/ExplainELI10Block";
import { QuizBlock } from "./components/blocks/QuizBlock";
import { enableBenchCounters } from "./bench-probe";

const MODES: readonly DeliveryMode[] = ["sse", "websocket", "whole"];

function pageOptions(search: string) {
  const params = new URLSearchParams(search);
  const transport = params.get("transport") as DeliveryMode | null;
  return {
    mode: transport && MODES.includes(transport) ? transport : undefined,
    bench: params.has("bench"),
  };
}

export function App({ search = window.location.search }: { search?: string }) {
  const { mode, bench } = pageOptions(search);
  const options = mode ? { mode } : undefined;
  if (bench) enableBenchCounters();
  return (
    <main>
      <header className="page-header">
        <h1>Live AI Blocks</h1>
        <p>Each block streams its answer token by token, survives dropped connections, and can be cancelled.</p>
      </header>
      <div className="blocks">
        <AskQuestionBlock options={options} initialQuestion="Why is the sky blue?" />
        <ExplainELI10Block options={options} initialTopic="volcanoes" />
        <QuizBlock options={options} initialTopic="volcanoes" />
        <DiagramBlock options={options} initialDescription="How rain forms" />
      </div>
    </main>
  );
}
