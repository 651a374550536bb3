// The frame every AI block shares: title, live status, demo-model label, cancel while
// streaming, error with retry, and a polite screen-reader announcement of status changes.
import { useLayoutEffect, useRef, type ReactNode } from "react";
import type { StreamState } from "@live-ai/client";
import { ErrorNotice } from "./ErrorNotice.js";

const STATUS_TEXT: Record<StreamState["status"], string> = {
  idle: "Ready",
  connecting: "Connecting…",
  streaming: "Streaming…",
  reconnecting: "Reconnecting…",
  complete: "Done",
  error: "Failed",
  cancelled: "Cancelled",
};

export function isActive(status: StreamState["status"]): boolean {
  return status === "connecting" || status === "streaming" || status === "reconnecting";
}

interface BlockFrameProps {
  blockType: string;
  title: string;
  /** The block's stream: its state, and the cancel and retry the frame's buttons call. */
  stream: Omit<StreamState, "result" | "parts" | "blockType"> & { cancel(): void; retry(): unknown };
  /** The block's input form. */
  form: ReactNode;
  /** The block's output. */
  children?: ReactNode;
}

export function BlockFrame({ blockType, title, stream: state, form, children }: BlockFrameProps) {
  const active = isActive(state.status);
  const headingId = `${blockType}-title`;
  const focus = useKeyboardFocusFlow(active);
  return (
    <section
      ref={focus.section}
      className={`block block-${blockType}`}
      aria-labelledby={headingId}
      data-status={state.status}
      data-stream-id={state.streamId}
    >
      <header className="block-header">
        <h2 id={headingId}>{title}</h2>
        {state.isDemo && (
          <span className="demo-label" title={state.model}>
            demo model
          </span>
        )}
        <span className={`status status-${state.status}`} data-testid="status">
          {STATUS_TEXT[state.status]}
        </span>
      </header>
      {form}
      {active && (
        <button
          ref={focus.cancel}
          type="button"
          className="cancel"
          onClick={state.cancel}
          onFocus={() => (focus.cancelFocused.current = true)}
          onBlur={() => (focus.cancelFocused.current = false)}
        >
          Cancel
        </button>
      )}
      {state.status === "reconnecting" && (
        <p className="notice">Connection lost — reconnecting… your answer will pick up where it left off.</p>
      )}
      {state.status === "error" && state.error && <ErrorNotice error={state.error} onRetry={state.retry} />}
      {/* Status changes are announced on their own; the output region announces new text. */}
      <p className="visually-hidden" role="status">
        {state.status === "idle" ? "" : `${title}: ${STATUS_TEXT[state.status]}`}
      </p>
      {children}
    </section>
  );
}

/**
 * Keeps keyboard users inside the block: starting disables the submit button (which drops
 * focus), so focus moves to Cancel; when Cancel goes away, focus returns to the submit button.
 */
function useKeyboardFocusFlow(active: boolean) {
  const section = useRef<HTMLElement>(null);
  const cancel = useRef<HTMLButtonElement>(null);
  const cancelFocused = useRef(false);
  useLayoutEffect(() => {
    const focused = document.activeElement as HTMLElement | null;
    if (active) {
      const lost = !focused || focused === document.body;
      const onDisabledSubmit = focused instanceof HTMLButtonElement && focused.disabled && section.current?.contains(focused);
      if (lost || onDisabledSubmit) cancel.current?.focus();
    } else if (cancelFocused.current) {
      cancelFocused.current = false;
      section.current?.querySelector<HTMLButtonElement>("form button[type=submit]")?.focus();
    }
  }, [active]);
  return { section, cancel, cancelFocused };
}

/** The output region: new content is read out politely as it arrives. */
export function LiveOutput({ busy, children }: { busy: boolean; children: ReactNode }) {
  return (
    <div className="output" aria-live="polite" aria-atomic="false" aria-relevant="additions text" data-busy={busy}>
      {children}
    </div>
  );
}
