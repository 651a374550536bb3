//! The relay: a learner's own events, made of the log of the generation that
//! answers their request (the first asker's own stream, or a shared log).
//!
//! Yields the learner's own `start` first, then every event of the source log
//! from its first (replay, then the live tail; a finished log at full speed),
//! except the source's own `start` at seq 0 (a log that does not begin with
//! one has every event relayed). The manager appends what it yields at the
//! learner's own seqs, so the learner's log is contiguous from 0 and the
//! learner resumes it like any stream.
//!
//! A source log that ends `cancelled` was either handed over or stopped:
//! - handed over (its first asker cancelled while others read it): the store
//!   names its successor, a shared log holding the same events at the same
//!   seqs, and the relay goes on reading it from the seq of the `cancelled`
//!   event, so nothing is lost or repeated;
//! - stopped (no successor: a shared generation whose last reader left just as
//!   this one joined, or a first asker's cancel that no join had reached yet):
//!   it reaches the learner as `generation_lost`, retryable — the learner
//!   cancelled nothing, and a new start generates anew.
//!
//! It ends after the terminal event; a source log whose reading ended without
//! one (its store failed) ends with the closing event its reader got, and a
//! reader that ended silently (a process handing its readers off at shutdown)
//! leaves the manager to end the stream.

use async_stream::stream;
use futures::future::BoxFuture;
use futures::StreamExt;

use crate::ai::runtime::engine::EventStream;
use crate::ai::streaming::events::{ErrorCode, EventBody, EventType, StreamId};
use crate::ai::streaming::stream_manager::EventReader;

/// Where a handed-over source goes on: given the source's id and the seq of
/// its `cancelled` event, its successor's id and a reader of it from that seq,
/// or `None` when it was not handed over (or its successor cannot be read).
pub type Successor = Box<dyn Fn(StreamId, u64) -> BoxFuture<'static, Option<(StreamId, EventReader)>> + Send + Sync>;

/// The learner's events: `start`, then the events of `source`'s log read by
/// `reader`, and of its successors'. Each complete answer relayed adds its
/// provider tokens to `saved` (a stream that joined or replayed, which cost the
/// provider nothing).
pub fn relayed(
    start: EventBody,
    source: StreamId,
    reader: EventReader,
    saved: Option<prometheus::IntCounter>,
    successor: Successor,
) -> EventStream {
    Box::pin(stream! {
        yield start;
        let (mut source, mut reader) = (source, reader);
        'source: loop {
            while let Some(batch) = reader.next().await {
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
                        if let Some((next, next_reader)) = successor(source.clone(), event.seq).await {
                            (source, reader) = (next, next_reader);
                            continue 'source;
                        }
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
            return;
        }
    })
}

#[cfg(test)]
mod tests {
    use futures::FutureExt;

    use crate::ai::blocks::BlockType;
    use crate::ai::streaming::events::{CancelReason, FinishReason, LoggedEvent, Usage};
    use crate::ai::streaming::store::EventBatch;

    use super::*;

    fn start(shared: bool) -> EventBody {
        EventBody::Start { block_type: BlockType::Quiz, provider: "demo".into(), model: "m".into(), shared, cached: false }
    }

    fn log(bodies: &[EventBody]) -> EventReader {
        log_from(0, bodies)
    }

    /// A log's events from `first` on.
    fn log_from(first: u64, bodies: &[EventBody]) -> EventReader {
        let events: Vec<LoggedEvent> = bodies.iter().enumerate().map(|(n, body)| LoggedEvent::new(first + n as u64, body)).collect();
        // In two batches, as a replay and a live tail would come.
        let (replayed, live) = events.split_at(events.len() / 2);
        let batches = vec![EventBatch::logged(replayed.to_vec(), None), EventBatch::logged(live.to_vec(), None)];
        futures::stream::iter(batches).boxed()
    }

    fn id(name: &str) -> StreamId {
        StreamId::parse(name).unwrap()
    }

    /// No source is ever handed over.
    fn none() -> Successor {
        Box::new(|_, _| async { None }.boxed())
    }

    fn chunk(token: &str) -> EventBody {
        EventBody::Chunk { token: token.into() }
    }

    fn complete() -> EventBody {
        EventBody::Complete {
            finish_reason: FinishReason::Stop,
            usage: Usage { prompt_tokens: 5, completion_tokens: 2, total_tokens: 7 },
            result: serde_json::json!({"markdown": "ab"}),
            ttft_ms: 1,
            duration_ms: 2,
        }
    }

    #[tokio::test]
    async fn the_learner_gets_their_own_start_then_the_shared_events_after_its_start() {
        let saved = prometheus::IntCounter::new("saved", "test").unwrap();
        let shared = log(&[start(false), chunk("a"), chunk("b"), complete()]);
        let events: Vec<EventBody> = relayed(start(true), id("l1"), shared, Some(saved.clone()), none()).collect().await;
        assert_eq!(events, vec![start(true), chunk("a"), chunk("b"), complete()]);
        assert_eq!(saved.get(), 7, "the complete answer's provider tokens");
    }

    #[tokio::test]
    async fn a_shared_log_without_a_start_has_every_event_relayed_and_nothing_after_its_end() {
        let flagged = EventBody::error(ErrorCode::InputFlagged, "flagged", false);
        let shared = log(&[flagged.clone(), EventBody::Cancelled { reason: CancelReason::Requested }]);
        let events: Vec<EventBody> = relayed(start(false), id("l1"), shared, None, none()).collect().await;
        assert_eq!(events, vec![start(false), flagged]);
    }

    #[tokio::test]
    async fn a_shared_generation_cancelled_under_a_joiner_is_lost_for_it_not_cancelled() {
        let shared = log(&[start(false), EventBody::Cancelled { reason: CancelReason::Abandoned }]);
        let events: Vec<EventBody> = relayed(start(true), id("s1"), shared, None, none()).collect().await;
        assert!(matches!(&events[1], EventBody::Error { code: ErrorCode::GenerationLost, retryable: true, .. }), "{events:?}");
        assert_eq!(events.len(), 2);
    }

    #[tokio::test]
    async fn a_source_handed_over_goes_on_in_its_successor_from_the_seq_of_its_cancel_without_gap_or_duplicate() {
        let cancelled = EventBody::Cancelled { reason: CancelReason::Requested };
        let first_asker = log(&[start(false), chunk("a"), chunk("b"), cancelled]);
        let asked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let successor: Successor = Box::new({
            let asked = asked.clone();
            move |of: StreamId, from: u64| {
                asked.lock().unwrap().push((of.to_string(), from));
                // The shared log has the first asker's events at the same seqs; read from `from`.
                let next = (of == id("l1")).then(|| (id("s1"), log_from(from, &[chunk("c"), complete()])));
                async move { next }.boxed()
            }
        });
        let events: Vec<EventBody> = relayed(start(true), id("l1"), first_asker, None, successor).collect().await;
        assert_eq!(events, vec![start(true), chunk("a"), chunk("b"), chunk("c"), complete()]);
        assert_eq!(*asked.lock().unwrap(), [("l1".to_owned(), 3)], "asked once, for the seq of the cancel");
    }
}
