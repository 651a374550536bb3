// A failed block's notice: what went wrong in the learner's words, and Retry — held back, with
// a live countdown, until a limit the server named has passed (so nobody hammers a 429).
import { useEffect, useState } from "react";
import type { StreamError } from "@live-ai/client";
import { canRetryAt, errorText } from "./error-text.js";

export function ErrorNotice({ error, onRetry }: { error: StreamError; onRetry(): void }) {
  const now = useClock(error.retryAt);
  const ready = canRetryAt(error, now);
  return (
    <div className="error" role="alert" data-code={error.code}>
      <p>{errorText(error, now)}</p>
      {error.retryable && (
        <button type="button" onClick={onRetry} disabled={!ready}>
          Retry
        </button>
      )}
    </div>
  );
}

/** The current time, ticking each second until `until` (and not at all without one). */
function useClock(until: number | undefined): number {
  const [now, setNow] = useState(() => Date.now());
  useEffect(() => {
    setNow(Date.now());
    if (until === undefined || until <= Date.now()) return;
    const timer = setInterval(() => {
      const current = Date.now();
      setNow(current);
      if (current >= until) clearInterval(timer);
    }, 1000);
    return () => clearInterval(timer);
  }, [until]);
  return now;
}
