//! The body of an SSE response: hyper polls the stream's reader through it
//! directly, so an event costs no task of its own and no channel between the log
//! and the socket. Events that are ready together become one write; while the
//! stream is idle the body sends keep-alive comments.
//!
//! A client that goes away makes hyper drop the body, and with it the reader, so
//! the resume grace starts at once. A client that stays connected but stops
//! reading makes hyper stop polling once its write buffer is full; the [`Readers`]
//! reaper notices that the body handed over bytes and was not asked for more
//! within the send timeout, and drops its reader (the generation goes on, for the
//! grace, like any other disconnect); the connection itself, whose writes made no
//! progress for as long, is closed by the server (`server::socket`). A slow
//! reader never slows others nor grows memory: it re-reads the log at its own pace.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;

use super::sse_wire;
use crate::ai::streaming::events::{EventType, StreamId};
use crate::ai::streaming::stream_manager::EventReader;
use crate::metrics::Metrics;

/// One response's reader, shared with the reaper.
struct Slot {
    reader: Mutex<Option<EventReader>>,
    /// When the body last handed hyper bytes without being asked for more since
    /// (milliseconds after [`Readers::epoch`]); 0 while hyper keeps asking.
    owed_since: AtomicU64,
}

/// The SSE readers of this process, and the reaper that drops the stuck ones.
pub struct Readers {
    slots: Mutex<Vec<Weak<Slot>>>,
    epoch: Instant,
    send_timeout: Duration,
    keep_alive: Duration,
    metrics: Metrics,
}

impl Readers {
    /// Starts the reaper; it stops with `shutdown`.
    pub fn start(send_timeout: Duration, keep_alive: Duration, metrics: Metrics, shutdown: CancellationToken) -> Arc<Self> {
        let readers = Arc::new(Self { slots: Mutex::default(), epoch: Instant::now(), send_timeout, keep_alive, metrics });
        let weak = Arc::downgrade(&readers);
        let every = (send_timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let Some(readers) = weak.upgrade() else { return };
                readers.reap();
            }
        });
        readers
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    /// Drops the readers of clients that stopped reading.
    fn reap(&self) {
        let now = self.now();
        let limit = self.send_timeout.as_millis() as u64;
        let mut stuck = Vec::new();
        self.slots.lock().unwrap().retain(|slot| {
            let Some(slot) = slot.upgrade() else { return false };
            let owed = slot.owed_since.load(Ordering::Relaxed);
            if owed != 0 && now.saturating_sub(owed) > limit {
                stuck.push(slot);
                return false;
            }
            true
        });
        for slot in stuck {
            let reader = slot.reader.lock().unwrap().take();
            if reader.is_some() {
                self.metrics.readers_dropped.with_label_values(&["send_timeout"]).inc();
                tracing::info!("dropping an SSE reader that stopped reading");
            }
        }
    }

    /// The body of a response that sends `preamble`, then `reader`'s events.
    pub fn body(self: &Arc<Self>, stream_id: StreamId, preamble: Bytes, reader: EventReader) -> SseBody {
        let slot = Arc::new(Slot { reader: Mutex::new(Some(reader)), owed_since: AtomicU64::new(0) });
        self.slots.lock().unwrap().push(Arc::downgrade(&slot));
        SseBody {
            readers: self.clone(),
            stream_id,
            slot,
            preamble: Some(preamble),
            keep_alive: Box::pin(tokio::time::sleep(self.keep_alive)),
            idle_since: Instant::now(),
        }
    }
}

pub struct SseBody {
    readers: Arc<Readers>,
    stream_id: StreamId,
    slot: Arc<Slot>,
    preamble: Option<Bytes>,
    keep_alive: Pin<Box<Sleep>>,
    /// When the body last sent something; a keep-alive is due an interval later.
    idle_since: Instant,
}

impl SseBody {
    fn hand_over(&mut self, bytes: Bytes) -> Poll<Option<Result<Bytes, Infallible>>> {
        self.slot.owed_since.store(self.readers.now(), Ordering::Relaxed);
        Poll::Ready(Some(Ok(bytes)))
    }
}

impl Stream for SseBody {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        // Asked for more: what was handed over before has been taken.
        self.slot.owed_since.store(0, Ordering::Relaxed);
        if let Some(preamble) = self.preamble.take() {
            return self.hand_over(preamble);
        }
        let slot = self.slot.clone();
        let mut reader = slot.reader.lock().unwrap();
        // Reaped: the client had stopped reading.
        let Some(events) = reader.as_mut() else { return Poll::Ready(None) };
        match events.poll_next_unpin(cx) {
            Poll::Ready(Some(batch)) => {
                drop(reader);
                let metrics = &self.readers.metrics;
                metrics.events_sent_sse.inc_by(batch.events.len() as u64);
                if let (Some(since), Some(EventType::Chunk)) = (batch.tail_since, batch.events.last().map(|e| e.event_type)) {
                    metrics.chunk_delivery.observe(since.elapsed().as_secs_f64());
                }
                self.idle_since = Instant::now();
                let frames = if batch.unlogged {
                    sse_wire::frames_without_id(&self.stream_id, &batch.events)
                } else {
                    sse_wire::frames(&self.stream_id, &batch.events)
                };
                self.hand_over(frames)
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                drop(reader);
                // The timer is moved only when the body would wait, not per event.
                let due = self.idle_since + self.readers.keep_alive;
                if self.keep_alive.deadline() != due {
                    self.keep_alive.as_mut().reset(due);
                }
                match self.keep_alive.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        self.idle_since = Instant::now();
                        self.hand_over(Bytes::from_static(sse_wire::KEEP_ALIVE))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use futures::FutureExt;

    use super::*;
    use crate::ai::streaming::events::{EventBody, LoggedEvent};
    use crate::ai::streaming::store::EventBatch;

    fn dropped(metrics: &Metrics) -> u64 {
        metrics.readers_dropped.with_label_values(&["send_timeout"]).get()
    }

    /// A body over a reader fed by hand, and whether that reader still exists.
    fn body(readers: &Arc<Readers>) -> (SseBody, futures::channel::mpsc::UnboundedSender<EventBatch>) {
        let (events, reader) = futures::channel::mpsc::unbounded();
        (readers.body(StreamId::parse("s").unwrap(), Bytes::from_static(b"retry: 1\n\n"), reader.boxed()), events)
    }

    fn chunk(seq: u64) -> EventBatch {
        EventBatch::logged(vec![LoggedEvent::new(seq, &EventBody::Chunk { token: "hi".into() })], None)
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_not_asked_for_more_within_the_send_timeout_loses_its_reader() {
        let metrics = Metrics::new();
        let readers = Readers::start(Duration::from_secs(1), Duration::from_secs(15), metrics.clone(), CancellationToken::new());
        let (mut stuck, stuck_events) = body(&readers);
        let (mut reading, reading_events) = body(&readers);
        for body in [&mut stuck, &mut reading] {
            assert!(body.next().await.is_some(), "the preamble");
        }
        // One client keeps asking (its events are taken); the other never asks again.
        for seq in 0..30 {
            reading_events.unbounded_send(chunk(seq)).unwrap();
            let _ = stuck_events.unbounded_send(chunk(seq));
            assert!(reading.next().await.is_some());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(stuck_events.is_closed(), "the stuck client's reader was dropped");
        assert!(!reading_events.is_closed(), "the reading client's was not");
        assert_eq!(dropped(&metrics), 1);
        assert_eq!(stuck.next().await, None, "the stuck response ends if it is ever asked again");
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_body_keeps_its_reader_and_sends_keep_alives() {
        let metrics = Metrics::new();
        let readers = Readers::start(Duration::from_secs(1), Duration::from_secs(15), metrics.clone(), CancellationToken::new());
        let (mut idle, events) = body(&readers);
        assert!(idle.next().await.is_some(), "the preamble");
        // Nothing to send for a long while: hyper waits on the body, nothing is owed.
        assert!(idle.next().now_or_never().is_none());
        tokio::time::sleep(Duration::from_secs(14)).await;
        assert!(!events.is_closed());
        assert_eq!(idle.next().await, Some(Ok(Bytes::from_static(sse_wire::KEEP_ALIVE))));
        assert_eq!(dropped(&metrics), 0);
    }
}
