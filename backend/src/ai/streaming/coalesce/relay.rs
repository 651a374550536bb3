//! The relay: a learner's own events, made of a shared generation's log.
//!
//! Yields the learner's own `start` first, then every event of the shared log
//! from its first (replay, then the live tail; a finished log at full speed),
//! except the shared log's own `start` at seq 0 (a log that does not begin with
//! one has every event relayed). The manager appends what it yields at the
//! learner's own seqs, so the learner's log is contiguous from 0 and the
//! learner resumes it like any stream. A shared generation that was cancelled
//! (its last reader left just as this one joined) reaches the learner as
//! `generation_lost`, retryable: the learner cancelled nothing, and a new start
//! generates anew. It ends after the terminal event; a
//! shared log whose reading ended without one (its store failed) ends with the
//! closing event its reader got, and a reader that ended silently (a process
//! handing its readers off at shutdown) leaves the manager to end the stream.

use async_stream::stream;
use futures::StreamExt;

use crate::ai::runtime::engine::EventStream;
use crate::ai::streaming::events::{ErrorCode, EventBody, EventType};
use crate::ai::streaming::stream_manager::EventReader;

/// The learner's events: `start`, then the shared log's. Each complete answer
/// relayed adds its provider tokens to `saved` (a stream that joined or
/// replayed, which cost the provider nothing).
pub fn relayed(start: EventBody, mut shared: EventReader, saved: Option<prometheus::IntCounter>) -> EventStream {
    Box::pin(stream! {
        yield start;
        while let Some(batch) = shared.next().await {
            for event in batch.events {
                if event.seq == 0 && event.event_type == EventType::Start {
                    continue;
                }
                let Some(body) = event.body() else {
                    yield EventBody::error(ErrorCode::GenerationLost, "the shared answer could not be read; start again", true);
                    return;
                };
                if let (EventBody::Complete { usage, .. }, Some(saved)) = (&body, &saved) {
                    saved.inc_by(usage.total_tokens);
                }
                if let EventBody::Cancelled { .. } = body {
                    yield EventBody::error(ErrorCode::GenerationLost, "the shared answer stopped before this stream began; start again", true);
                    return;
                }
                let terminal = body.event_type().is_terminal();
                yield body;
                if terminal {
                    return;
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use crate::ai::blocks::BlockType;
    use crate::ai::streaming::events::{CancelReason, FinishReason, LoggedEvent, Usage};
    use crate::ai::streaming::store::EventBatch;

    use super::*;

    fn start(shared: bool) -> EventBody {
        EventBody::Start { block_type: BlockType::Quiz, provider: "demo".into(), model: "m".into(), shared, cached: false }
    }

    fn log(bodies: &[EventBody]) -> EventReader {
        let events: Vec<LoggedEvent> = bodies.iter().enumerate().map(|(seq, body)| LoggedEvent::new(seq as u64, body)).collect();
        // In two batches, as a replay and a live tail would come.
        let (replayed, live) = events.split_at(events.len() / 2);
        let batches = vec![EventBatch::logged(replayed.to_vec(), None), EventBatch::logged(live.to_vec(), None)];
        futures::stream::iter(batches).boxed()
    }

    #[tokio::test]
    async fn the_learner_gets_their_own_start_then_the_shared_events_after_its_start() {
        let chunk = |t: &str| EventBody::Chunk { token: t.into() };
        let complete = EventBody::Complete {
            finish_reason: FinishReason::Stop,
            usage: Usage { prompt_tokens: 5, completion_tokens: 2, total_tokens: 7 },
            result: serde_json::json!({"markdown": "ab"}),
            ttft_ms: 1,
            duration_ms: 2,
        };
        let saved = prometheus::IntCounter::new("saved", "test").unwrap();
        let shared = log(&[start(false), chunk("a"), chunk("b"), complete.clone()]);
        let events: Vec<EventBody> = relayed(start(true), shared, Some(saved.clone())).collect().await;
        assert_eq!(events, vec![start(true), chunk("a"), chunk("b"), complete]);
        assert_eq!(saved.get(), 7, "the complete answer's provider tokens");
    }

    #[tokio::test]
    async fn a_shared_log_without_a_start_has_every_event_relayed_and_nothing_after_its_end() {
        let flagged = EventBody::error(ErrorCode::InputFlagged, "flagged", false);
        let shared = log(&[flagged.clone(), EventBody::Cancelled { reason: CancelReason::Requested }]);
        let events: Vec<EventBody> = relayed(start(false), shared, None).collect().await;
        assert_eq!(events, vec![start(false), flagged]);
    }

    #[tokio::test]
    async fn a_shared_generation_cancelled_under_a_joiner_is_lost_for_it_not_cancelled() {
        let shared = log(&[start(false), EventBody::Cancelled { reason: CancelReason::Abandoned }]);
        let events: Vec<EventBody> = relayed(start(true), shared, None).collect().await;
        assert!(matches!(&events[1], EventBody::Error { code: ErrorCode::GenerationLost, retryable: true, .. }), "{events:?}");
        assert_eq!(events.len(), 2);
    }
}
