"use client";
// Renders Mermaid source that is still arriving: it draws each version that parses, keeps
// the last good drawing while the source is incomplete, and shows the source when the final
// version does not parse. Mermaid is loaded on first use (it is large). The drawing carries a
// text alternative: what the drawn source says, in words (diagram-text.ts).
import { useEffect, useId, useMemo, useRef, useState } from "react";
import { diagramDescription } from "./diagram-text.js";

type MermaidApi = (typeof import("mermaid"))["default"];

/** Drawing is Mermaid's costly step (tens of ms of main thread): at most this often mid-stream. */
const MIN_DRAW_INTERVAL_MS = 200;
let mermaidLoad: Promise<MermaidApi> | undefined;

function loadMermaid(): Promise<MermaidApi> {
  mermaidLoad ??= import("mermaid").then(({ default: mermaid }) => {
    // "strict" makes Mermaid sanitize labels and refuse click handlers from the model's source.
    mermaid.initialize({ startOnLoad: false, securityLevel: "strict", theme: "neutral" });
    return mermaid;
  });
  return mermaidLoad;
}

/**
 * Gives the main thread back (input, frames of the other blocks) between Mermaid's steps:
 * its promises resolve as microtasks, so without this a parse and a draw run as one long task.
 */
function yieldToMainThread(): Promise<void> {
  const scheduler = (globalThis as { scheduler?: { yield?: () => Promise<void> } }).scheduler;
  if (scheduler?.yield) return scheduler.yield();
  return new Promise((resolve) => setTimeout(resolve, 0));
}

/** Strips a ```mermaid fence a model may wrap the source in. */
export function mermaidSource(text: string): string {
  return text
    .replace(/^\s*(```|~~~)\s*mermaid[^\n]*\n?/i, "")
    .replace(/\n?\s*(```|~~~)\s*$/, "")
    .trim();
}

interface MermaidDiagramProps {
  source: string;
  /** The source is final (the stream completed): a parse failure is now an error to show. */
  final: boolean;
}

export function MermaidDiagram({ source, final }: MermaidDiagramProps) {
  const [svg, setSvg] = useState<string | null>(null);
  const [failed, setFailed] = useState<string | null>(null);
  // Which sources were last tried and last drawn, on the element: tests (and curious hosts)
  // can await "this version was tried" instead of guessing how long Mermaid takes.
  const [tried, setTried] = useState<string | null>(null);
  const [drawn, setDrawn] = useState<string | null>(null);
  const baseId = `mermaid-${useId().replace(/[^a-zA-Z0-9_-]/g, "")}`;
  const renders = useRef(0);
  // Renders run one at a time; while one runs, only the newest pending source is kept.
  const queue = useRef<{ running: boolean; next: { source: string; final: boolean } | null }>({ running: false, next: null });
  const mounted = useRef(true);

  useEffect(() => {
    mounted.current = true;
    return () => {
      mounted.current = false;
    };
  }, []);

  useEffect(() => {
    if (source.trim() === "") {
      setSvg(null);
      setFailed(null);
      setTried(null);
      setDrawn(null);
      return;
    }
    queue.current.next = { source, final };
    if (queue.current.running) return;
    // A function, so TypeScript does not keep the narrowing from `next = null` across awaits.
    const nextIsFinal = () => queue.current.next?.final === true;
    queue.current.running = true;
    void (async () => {
      const mermaid = await loadMermaid();
      while (queue.current.next && mounted.current) {
        await yieldToMainThread();
        const job = queue.current.next;
        if (!job) break;
        queue.current.next = null;
        const parsed = await mermaid.parse(job.source, { suppressErrors: true });
        if (!mounted.current) break;
        if (parsed === false) {
          if (job.final) setFailed("This diagram could not be drawn; here is its source.");
          setTried(job.source);
          continue;
        }
        await yieldToMainThread();
        if (!mounted.current) break;
        try {
          const { svg: drawing } = await mermaid.render(`${baseId}-${renders.current++}`, job.source);
          if (!mounted.current) break;
          setSvg(drawing);
          setDrawn(job.source);
          setFailed(null);
        } catch (error) {
          if (job.final) setFailed(error instanceof Error ? error.message : String(error));
        }
        setTried(job.source);
        // Mid-stream, let newer source accumulate instead of drawing every version.
        if (!job.final && !nextIsFinal()) {
          await new Promise((resolve) => setTimeout(resolve, MIN_DRAW_INTERVAL_MS));
        }
      }
      queue.current.running = false;
    })();
  }, [source, final, baseId]);

  const description = useMemo(() => (drawn === null ? "" : diagramDescription(drawn)), [drawn]);
  return (
    <div className="diagram" data-tried-source={tried ?? undefined} data-drawn-source={drawn ?? undefined}>
      {/* Mermaid's strict mode sanitizes its SVG output. */}
      {svg && <div className="diagram-svg" role="img" aria-label={description} dangerouslySetInnerHTML={{ __html: svg }} />}
      {!svg && !failed && source !== "" && <p className="diagram-pending">Drawing as soon as the diagram parses…</p>}
      {failed && (
        <div className="diagram-error">
          <p role="alert">{failed}</p>
          <pre>
            <code>{source}</code>
          </pre>
        </div>
      )}
    </div>
  );
}
