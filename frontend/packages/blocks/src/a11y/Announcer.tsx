"use client";
// Reads new pieces of a block's output to screen readers politely, each once: finished
// paragraphs, questions as they arrive, never the text token by token. The region holds only
// the newest pieces (what changed is what is read); the output itself stays out of any live
// region, marked aria-busy while it is being written.
import { useRef } from "react";

export function Announcer({ pieces }: { pieces: readonly string[] }) {
  // What was already read, and what the region says now. Updated during render, idempotently,
  // so a render that is repeated (StrictMode) or thrown away announces nothing twice.
  const read = useRef({ count: 0, text: "" });
  if (pieces.length < read.current.count) read.current = { count: 0, text: "" };
  if (pieces.length > read.current.count) {
    read.current = { count: pieces.length, text: pieces.slice(read.current.count).join("\n") };
  }
  return (
    <div className="visually-hidden" aria-live="polite" aria-atomic="true" data-testid="announcer">
      {read.current.text}
    </div>
  );
}
