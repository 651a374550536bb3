"use client";
// A failed block's notice: what went wrong in the learner's words, and Retry — held back, with
// a live countdown, until a limit the server named has passed (so nobody hammers a 429).
//
// The sentence is announced once, as an alert, when the error appears. A countdown ticks in a
// separate, silent paragraph: inside the alert, every second's new text would be announced
// again, for minutes.
import { useEffect, useMemo, useState } from "react";
import type { StreamError } from "@live-ai/client";
import { canRetryAt, errorAction, errorText, type ErrorMessages } from "./error-text.js";
import { useErrorMessages } from "./ErrorMessagesProvider.js";

export function ErrorNotice({ error, onRetry, messages }: { error: StreamError; onRetry(): void; messages?: ErrorMessages }) {
  const table = useErrorMessages(messages);
  const now = useClock(error.retryAt);
  // When this error appeared: the announced sentence is the one of that moment.
  const arrivedAt = useMemo(() => Date.now(), [error]);
  const ready = canRetryAt(error, now);
  const ticking = error.retryAt !== undefined && error.retryAt > arrivedAt;
  const sentence = errorText(error, now, table);
  return (
    <div className="error" data-code={error.code}>
      {ticking ? (
        <>
          <p className="visually-hidden" role="alert">
            {errorText(error, arrivedAt, table)}
          </p>
          <p className="error-text">{sentence}</p>
        </>
      ) : (
        <p className="error-text" role="alert">
          {sentence}
        </p>
      )}
      {error.retryable && (
        <button type="button" onClick={onRetry} disabled={!ready}>
          {errorAction(error, table)}
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
