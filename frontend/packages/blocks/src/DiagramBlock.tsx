"use client";
// Generate a Mermaid diagram from a description and draw it while it streams.
import { useMemo, useState, type FormEvent } from "react";
import { diagramDescription } from "./diagram-text.js";
import type { DiagramKind } from "@live-ai/client";
import { useBlockStreamOf, type BlockProps } from "./block-stream.js";
import { BlockFrame, isActive, LiveOutput } from "./BlockFrame.js";
import { MermaidDiagram, mermaidSource } from "./MermaidDiagram.js";

export function DiagramBlock(props: BlockProps<"diagram"> & { initialDescription?: string }) {
  const stream = useBlockStreamOf("diagram", props);
  const [description, setDescription] = useState(props.initialDescription ?? "");
  const [kind, setKind] = useState<DiagramKind>("flowchart");
  const submit = (event: FormEvent) => {
    event.preventDefault();
    stream.start({ description, kind });
  };
  const active = isActive(stream.status);
  // The complete event carries the final, server-validated source.
  const source = stream.result?.source ?? mermaidSource(stream.text);
  const announced = useMemo(() => (stream.status === "complete" ? [diagramDescription(source)] : []), [stream.status, source]);
  return (
    <BlockFrame
      blockType="diagram"
      title="Diagram"
      stream={stream}
      errorMessages={props.errorMessages}
      labels={props.labels}
      form={
        <form onSubmit={submit}>
          <label>
            Description
            <textarea value={description} onChange={(e) => setDescription(e.target.value)} required maxLength={4000} rows={2} />
          </label>
          <label>
            Kind
            <select value={kind} onChange={(e) => setKind(e.target.value as DiagramKind)}>
              <option value="flowchart">flowchart</option>
              <option value="sequence">sequence</option>
              <option value="mindmap">mindmap</option>
            </select>
          </label>
          <button type="submit" disabled={active || description.trim() === ""}>
            Draw
          </button>
        </form>
      }
    >
      <LiveOutput busy={active} announce={announced}>
        <MermaidDiagram source={source} final={stream.status === "complete"} />
      </LiveOutput>
      {/* The source is code, so it stays out of the live region rather than being read out token by token. */}
      {active && source !== "" && (
        <pre className="diagram-live-source" aria-label="Mermaid source so far">
          <code>{source}</code>
        </pre>
      )}
      {!active && source !== "" && (
        <details className="diagram-source">
          <summary>Mermaid source</summary>
          <pre>
            <code>{source}</code>
          </pre>
        </details>
      )}
    </BlockFrame>
  );
}
