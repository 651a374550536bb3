"use client";
// The frame every AI block shares: title, live status, demo-model label, the label of an answer
// written for the whole class (a shared generation or a replayed one), cancel while
// streaming, error with retry, "paused" with resume after a detach, and the accessible
// plumbing: a polite announcement of status changes, the output marked aria-busy while it is
// written (its finished pieces are announced by the block's Announcer, never each token), ids
// unique per block (two blocks of one type on a page), and keyboard focus kept in the block.
import { useId, useRef, type FocusEvent, type ReactNode } from "react";
import { useIsomorphicLayoutEffect } from "./layout-effect.js";
import { isLoadingStatus, type StreamState } from "@live-ai/client";
import { Announcer } from "./a11y/Announcer.js";
import type { BlockLabels } from "./block-labels.js";
import { useBlockLabels } from "./BlockLabelsProvider.js";
import type { ErrorMessages } from "./error-text.js";
import { ErrorNotice } from "./ErrorNotice.js";

const STATUS_TEXT: Record<StreamState["status"], string> = {
  idle: "Ready",
  connecting: "Connecting…",
  streaming: "Streaming…",
  reconnecting: "Reconnecting…",
  complete: "Done",
  error: "Failed",
  cancelled: "Cancelled",
  detached: "Paused",
};

/** Whether a block's stream is under way (its submit button is then disabled and Cancel shown). */
export function isActive(status: StreamState["status"]): boolean {
  return isLoadingStatus(status);
}

interface BlockFrameProps {
  blockType: string;
  title: string;
  /** The block's stream: its state, and what the frame's buttons call. */
  stream: Omit<StreamState, "result" | "parts" | "blockType"> & { cancel(): void; retry(): unknown; resume?(): unknown };
  /** The block's input form. */
  form: ReactNode;
  /** Rewords error codes for this block (over an ErrorMessagesProvider's table). */
  errorMessages?: ErrorMessages;
  /** Rewords the block's labels (over a BlockLabelsProvider's table). */
  labels?: Partial<BlockLabels>;
  /** The block's output. */
  children?: ReactNode;
}

export function BlockFrame({ blockType, title, stream: state, form, errorMessages, labels, children }: BlockFrameProps) {
  const active = isActive(state.status);
  const words = useBlockLabels(labels);
  const headingId = `${useId()}-title`;
  const focus = useKeyboardFocusFlow(active);
  return (
    <section
      ref={focus.section}
      className={`block block-${blockType}`}
      aria-labelledby={headingId}
      data-status={state.status}
      data-stream-id={state.streamId}
      onFocus={focus.onFocusIn}
      onBlur={focus.onFocusOut}
    >
      <header className="block-header">
        <h2 id={headingId}>{title}</h2>
        {state.isDemo && (
          <span className="demo-label" title={state.model}>
            demo model
          </span>
        )}
        {/* Plain text, read in the header after the title: no live region, it is not news on its own. */}
        {(state.shared || state.cached) && <span className="shared-label">{words.sharedAnswer}</span>}
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
      {state.status === "detached" && (
        <p className="notice">
          You stopped following this answer; it is still being written.{" "}
          {state.resume && state.streamId !== undefined && (
            <button type="button" className="resume" onClick={() => state.resume?.()}>
              Resume
            </button>
          )}
        </p>
      )}
      {state.status === "error" && state.error && <ErrorNotice error={state.error} onRetry={state.retry} messages={errorMessages} />}
      {/* Status changes are announced on their own; the output's finished pieces by its Announcer. */}
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
 * Only when focus was in the block: a stream that starts by itself (a resume after a reload)
 * leaves focus wherever the learner has it.
 */
function useKeyboardFocusFlow(active: boolean) {
  const section = useRef<HTMLElement>(null);
  const cancel = useRef<HTMLButtonElement>(null);
  const cancelFocused = useRef(false);
  // Focus is (or, after its element was disabled under it, was last) inside the block.
  const focusInside = useRef(false);
  useIsomorphicLayoutEffect(() => {
    const focused = document.activeElement as HTMLElement | null;
    if (active) {
      const lost = !focused || focused === document.body;
      const onDisabledSubmit = focused instanceof HTMLButtonElement && focused.disabled && section.current?.contains(focused);
      if (focusInside.current && (lost || onDisabledSubmit)) cancel.current?.focus();
    } else if (cancelFocused.current) {
      cancelFocused.current = false;
      section.current?.querySelector<HTMLButtonElement>("form button[type=submit]")?.focus();
    }
  }, [active]);
  return {
    section,
    cancel,
    cancelFocused,
    onFocusIn: () => {
      focusInside.current = true;
    },
    onFocusOut: (event: FocusEvent) => {
      // Focus going nowhere (its element was disabled or removed) stays the block's.
      const next = event.relatedTarget as Node | null;
      if (next !== null && !section.current?.contains(next)) focusInside.current = false;
    },
  };
}

/**
 * The output region: marked busy while the block writes it, so assistive technology does not
 * read a half-written answer; `announce` lists the finished pieces to read out (see Announcer).
 */
export function LiveOutput({ busy, announce = [], children }: { busy: boolean; announce?: readonly string[]; children: ReactNode }) {
  return (
    <>
      <div className="output" aria-busy={busy} data-busy={busy}>
        {children}
      </div>
      <Announcer pieces={announce} />
    </>
  );
}
