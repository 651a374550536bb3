//! The moderation stage: wraps a generation's events and decides what may pass.
//!
//! - `start` passes at once (it holds no answer). The learner's input is
//!   checked while the provider is already working, so a clean request waits
//!   for nothing; no chunk or part passes before the input did. Flagged: the
//!   stream ends `input_flagged` and the provider stream is dropped, which
//!   closes its request.
//! - `buffered`: chunks and parts are held until the window holding their text
//!   passed; a chunk that straddles a window's end is split there. The engine's
//!   terminal event waits for the final, partial window. A flagged window ends
//!   the stream `output_flagged`, and the text never was in the log.
//! - `async`: chunks and parts pass once the input did; windows are checked
//!   behind them. A flagged window ends the stream `output_flagged` with
//!   `retract: true`, which makes the store redact the log down to `start` and
//!   that event. The final window is still checked before `complete`.
//! - A check that fails (after its retries): `closed` ends the stream
//!   `moderation_unavailable` (retryable; in `async` mode retracting what was
//!   shown, since it was never checked); `open` lets the text through, logged
//!   and counted.
//!
//! Checks of consecutive windows run while the provider keeps streaming (they
//! overlap, and pass in order); the held text is bounded by the block's
//! `max_tokens`.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use async_stream::stream;
use futures::stream::FuturesOrdered;
use futures::StreamExt;
use tokio::time::Instant;

use super::moderator::{Check, ModerationError, Stage, Verdict};
use super::window::{Window, Windows};
use super::{Exchange, Inner};
use crate::ai::runtime::engine::EventStream;
use crate::ai::streaming::events::{ErrorCode, EventBody};
use crate::config::moderation::{FailMode, OutputMode};

type Pending<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// An event waiting to pass, with the output offset its text ends at.
struct Held {
    body: EventBody,
    end: usize,
}

/// What a check decided for the stage.
enum Decision {
    Pass,
    /// End the stream with this event.
    Stop(EventBody),
}

pub(super) fn guard(inner: Arc<Inner>, events: EventStream, exchange: Exchange, mode: OutputMode) -> EventStream {
    Box::pin(stream! {
        // The engine's `start` goes first, whatever the checks decide: an
        // instant verdict (the local filter) must not end a stream that never
        // began, which a reader would take for a gap.
        let mut events = events;
        match events.next().await {
            Some(body @ EventBody::Start { .. }) => yield body,
            Some(other) => events = Box::pin(futures::stream::iter([other]).chain(events)),
            None => return,
        }
        let check_output = inner.stages.output();
        let mut input_check: Option<Pending<Result<Verdict, ModerationError>>> =
            inner.stages.input().then(|| check(&inner, Stage::Input, exchange.input.to_string(), &exchange));
        let mut input_passed = input_check.is_none();
        let mut windows = Windows::new(inner.window_chars);
        let mut output_checks: FuturesOrdered<Pending<(Result<Verdict, ModerationError>, Window)>> = FuturesOrdered::new();
        let mut held: VecDeque<Held> = VecDeque::new();
        // Output offsets (bytes): produced by the engine, passed by the checks.
        let (mut produced, mut passed) = (0usize, 0usize);
        let mut shown = false;
        let mut terminal: Option<EventBody> = None;
        loop {
            let visible = match (input_passed, mode, check_output) {
                (false, _, _) => 0,
                (true, OutputMode::Buffered, true) => passed,
                _ => usize::MAX,
            };
            while let Some(front) = held.front_mut() {
                if front.end <= visible {
                    let Held { body, .. } = held.pop_front().expect("front exists");
                    shown = true;
                    yield body;
                } else if let EventBody::Chunk { token } = &mut front.body {
                    // Straddles the end of what passed: the passed part goes now.
                    let start = front.end - token.len();
                    if visible <= start {
                        break;
                    }
                    let rest = token.split_off(visible - start);
                    let part = std::mem::replace(token, rest);
                    shown = true;
                    yield EventBody::Chunk { token: part };
                    break;
                } else {
                    break;
                }
            }
            if terminal.is_some() && input_passed && output_checks.is_empty() && held.is_empty() {
                yield terminal.take().expect("checked");
                return;
            }
            tokio::select! {
                biased;
                outcome = async { input_check.as_mut().expect("guarded").await }, if input_check.is_some() => {
                    input_check = None;
                    match decide(&inner, &exchange, Stage::Input, outcome, &exchange.input, false) {
                        Decision::Pass => input_passed = true,
                        Decision::Stop(event) => {
                            yield event;
                            return;
                        }
                    }
                }
                Some((outcome, window)) = output_checks.next(), if !output_checks.is_empty() => {
                    let retract = mode == OutputMode::Async && shown;
                    match decide(&inner, &exchange, Stage::Output, outcome, &window.text, retract) {
                        Decision::Pass => passed = window.end,
                        Decision::Stop(event) => {
                            yield event;
                            return;
                        }
                    }
                }
                next = events.next(), if terminal.is_none() => {
                    let Some(body) = next else {
                        // The engine ended without a terminal event: the manager reports it.
                        return;
                    };
                    match body {
                        EventBody::Start { .. } => yield body,
                        EventBody::Chunk { ref token } => {
                            produced += token.len();
                            if check_output {
                                windows.push(token);
                                while let Some(window) = windows.next_window() {
                                    output_checks.push_back(check_window(&inner, window, &exchange));
                                }
                            }
                            held.push_back(Held { body, end: produced });
                        }
                        EventBody::Part { .. } => held.push_back(Held { body, end: produced }),
                        EventBody::Complete { .. } | EventBody::Error { .. } | EventBody::Cancelled { .. } => {
                            if check_output {
                                if let Some(window) = windows.rest() {
                                    output_checks.push_back(check_window(&inner, window, &exchange));
                                }
                            }
                            terminal = Some(body);
                        }
                    }
                }
            }
        }
    })
}

/// A check of `text`, timed and counted.
fn check(inner: &Arc<Inner>, stage: Stage, text: String, exchange: &Exchange) -> Pending<Result<Verdict, ModerationError>> {
    let (inner, context) = (inner.clone(), exchange.input.clone());
    Box::pin(async move {
        let started = Instant::now();
        let outcome = inner.checker.check(Check { stage, text, context }).await;
        inner.metrics.moderation_check_seconds.with_label_values(&[stage.as_str()]).observe(started.elapsed().as_secs_f64());
        outcome
    })
}

fn check_window(inner: &Arc<Inner>, window: Window, exchange: &Exchange) -> Pending<(Result<Verdict, ModerationError>, Window)> {
    let checking = check(inner, Stage::Output, window.text.clone(), exchange);
    Box::pin(async move { (checking.await, window) })
}

/// What a check's outcome means for the stream; reports flags and failures.
fn decide(
    inner: &Inner,
    exchange: &Exchange,
    stage: Stage,
    outcome: Result<Verdict, ModerationError>,
    text: &str,
    retract: bool,
) -> Decision {
    let checks = &inner.metrics.moderation_checks;
    match outcome {
        Ok(Verdict::Allowed) => {
            checks.with_label_values(&[stage.as_str(), "allowed"]).inc();
            Decision::Pass
        }
        Ok(Verdict::Flagged(flag)) => {
            checks.with_label_values(&[stage.as_str(), "flagged"]).inc();
            inner.report(exchange, stage, &flag, text);
            let (code, message) = match stage {
                Stage::Input => (ErrorCode::InputFlagged, "moderation flagged the learner's input; nothing was answered"),
                Stage::Output => (ErrorCode::OutputFlagged, "moderation flagged the model's answer; it was stopped"),
            };
            Decision::Stop(EventBody::Error {
                code,
                message: message.into(),
                retryable: false,
                retry_after_ms: None,
                raw_output: None,
                categories: Some(flag.categories),
                retract,
            })
        }
        Err(error) if inner.fail_mode == FailMode::Open => {
            checks.with_label_values(&[stage.as_str(), "failed_open"]).inc();
            tracing::warn!(stream_id = exchange.stream_id.as_ref().map(|id| id.as_str()), stage = stage.as_str(), %error, "moderation failed; letting the text through (MODERATION_FAIL_MODE=open)");
            Decision::Pass
        }
        Err(error) => {
            checks.with_label_values(&[stage.as_str(), "failed_closed"]).inc();
            tracing::error!(stream_id = exchange.stream_id.as_ref().map(|id| id.as_str()), stage = stage.as_str(), %error, "moderation failed; ending the stream (MODERATION_FAIL_MODE=closed)");
            Decision::Stop(EventBody::Error {
                code: ErrorCode::ModerationUnavailable,
                message: "the answer could not be checked for safety just now; try again".into(),
                retryable: true,
                retry_after_ms: None,
                raw_output: None,
                categories: None,
                retract,
            })
        }
    }
}
