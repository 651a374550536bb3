//! The stream manager owns generations: it starts the engine for a block, appends
//! each event to the stream's log with the next seq, hands readers the store's
//! follower of the log (replay after a seq, then the live tail), cancels, and
//! watches for abandonment.
//!
//! Disconnect is not cancel: a generation with no reader attached here or in any
//! other process for the whole resume grace period is cancelled upstream
//! (`cancelled`/`abandoned`). Every generation ends with exactly one terminal event
//! in its log, whatever happens: completion, provider error, cancel, abandonment,
//! shutdown (`generation_lost`, retryable) or a panic in the pipeline
//! (`generation_lost`). An append is never abandoned half way: cancellation is
//! looked at between appends, so the terminal event always lands at the next seq.
//! The one exception is a store that stops answering: then the generation stops,
//! and readers learn it from their follower.
//!
//! A stream belongs to the principal that started it: to anyone else it does not
//! exist (`NotFound`, exactly as for an unknown id, so ids cannot be probed), and
//! idempotency keys are scoped per principal. A generation carries the limits
//! [`Reservation`] it was admitted with and settles it when it ends.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_stream::stream;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::events::{CancelReason, ErrorCode, EventBody, EventRecord, EventType, LoggedEvent, StreamId};
use super::polled_when_woken::PolledWhenWoken;
use super::store::{Appender, EventBatch, EventStore, FollowError, FollowFailure, KeyClaim, StoreError};
use crate::ai::blocks::BlockInput;
use crate::ai::runtime::engine::{Engine, GenerationFailed, WholeResponse};
use crate::limits::Reservation;
use crate::metrics::Metrics;

/// How long a cancel waits for the terminal event before answering `cancelling`.
const CANCEL_WAIT: Duration = Duration::from_secs(2);
/// How long an append keeps retrying a store that does not answer before the
/// generation gives up.
const APPEND_PATIENCE: Duration = Duration::from_secs(3);

#[derive(Debug, Clone)]
pub struct ManagerConfig {
    pub resume_grace: Duration,
    pub retention: Duration,
    pub max_concurrent_streams: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    #[error("the server is at its limit of concurrent streams")]
    AtCapacity,
    #[error("the server is shutting down")]
    ShuttingDown,
    #[error("this idempotency key was used for a different request")]
    IdempotencyConflict,
    /// Unknown, or expired: `next_seq` is a seq no event of it ever had, for the
    /// `stream_not_found` event a reader gets.
    #[error("no stream {stream_id}")]
    NotFound { stream_id: StreamId, next_seq: u64 },
    #[error("`after` ({after}) is beyond the last event of the stream (it has {len})")]
    AfterBeyondLog { after: u64, len: u64 },
    #[error(transparent)]
    Store(StoreError),
}

impl From<StoreError> for ManagerError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::NotFound(stream_id) => Self::NotFound { stream_id, next_seq: 0 },
            StoreError::Expired { stream_id, len, .. } => Self::NotFound { stream_id, next_seq: len },
            other => Self::Store(other),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Started {
    /// A new generation.
    New(StreamId),
    /// The idempotency key matched a generation that already exists.
    Existing(StreamId),
}

impl Started {
    pub fn stream_id(&self) -> &StreamId {
        match self {
            Self::New(id) | Self::Existing(id) => id,
        }
    }
}

/// What a reader gets when it opens a stream.
pub enum Opened {
    Events(EventReader),
    /// The stream finished and the reader already holds its terminal event.
    UpToDate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelOutcome {
    Cancelled,
    /// Signalled, but the terminal event has not been written yet.
    Cancelling,
    /// It had already ended.
    AlreadyFinished,
}

/// A reader's events, in batches of those that were ready together, ending after
/// the terminal one. Dropping it detaches the reader.
pub type EventReader = BoxStream<'static, EventBatch>;

struct Generation {
    cancel: CancellationToken,
    readers: watch::Sender<usize>,
}

struct Inner {
    store: Arc<dyn EventStore>,
    engine: Engine,
    config: ManagerConfig,
    metrics: Metrics,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    permits: Arc<Semaphore>,
    live: Mutex<HashMap<StreamId, Arc<Generation>>>,
}

#[derive(Clone)]
pub struct StreamManager {
    inner: Arc<Inner>,
}

impl StreamManager {
    pub fn new(store: Arc<dyn EventStore>, engine: Engine, config: ManagerConfig, metrics: Metrics, shutdown: CancellationToken) -> Self {
        let inner = Arc::new(Inner {
            store,
            engine,
            permits: Arc::new(Semaphore::new(config.max_concurrent_streams)),
            config,
            metrics,
            shutdown,
            tasks: TaskTracker::new(),
            live: Mutex::default(),
        });
        Self { inner }
    }

    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    /// Whether the store answers, for `/readyz`.
    pub async fn ready(&self) -> Result<(), StoreError> {
        self.inner.store.ready().await
    }

    /// Starts a generation for `owner` (a principal id) under its admitted
    /// `reservation`, or with a known idempotency key of the same owner returns the
    /// one it started (in any process sharing the store; the reservation is then
    /// given back).
    pub async fn start(
        &self,
        input: BlockInput,
        key: Option<String>,
        owner: &str,
        reservation: Reservation,
    ) -> Result<Started, ManagerError> {
        if self.inner.shutdown.is_cancelled() {
            return Err(ManagerError::ShuttingDown);
        }
        let id = StreamId::generate();
        let key = key.map(|key| scoped_key(owner, &key));
        if let Some(key) = &key {
            let claim = KeyClaim { stream_id: id.clone(), fingerprint: input.fingerprint() };
            if let Some(held) = self.inner.store.claim_key(key, claim.clone(), self.inner.config.retention).await? {
                if held.fingerprint != claim.fingerprint {
                    return Err(ManagerError::IdempotencyConflict);
                }
                return Ok(Started::Existing(held.stream_id));
            }
        }
        let started = self.launch(id.clone(), input, owner, reservation).await;
        if let (Err(_), Some(key)) = (&started, &key) {
            // Nothing started under this key: a retry may start afresh.
            let _ = self.inner.store.release_key(key, &id).await;
        }
        started
    }

    async fn launch(&self, id: StreamId, input: BlockInput, owner: &str, reservation: Reservation) -> Result<Started, ManagerError> {
        let permit = self.inner.permits.clone().try_acquire_owned().map_err(|_| ManagerError::AtCapacity)?;
        let cancel = self.inner.shutdown.child_token();
        let appender = self.inner.store.create(&id, owner, cancel.clone()).await?;
        let generation = Arc::new(Generation { cancel, readers: watch::channel(0).0 });
        self.inner.live.lock().unwrap().insert(id.clone(), generation.clone());
        let span = tracing::info_span!("generation", stream_id = %id, block = input.block_type().as_str());
        let writer = LogWriter { appender, next_seq: 0 };
        let run = run_generation(self.inner.clone(), id.clone(), input, generation, writer, permit, reservation);
        self.inner.tasks.spawn(run.instrument(span));
        Ok(Started::New(id))
    }

    /// Opens a reader on `owner`'s stream: the events after `after` (all when
    /// `None`), then the live tail, ending after the terminal event. An `after` the
    /// stream has no event at is refused, except the terminal event's own
    /// (`UpToDate`).
    pub async fn open(&self, id: &StreamId, after: Option<u64>, owner: &str) -> Result<Opened, ManagerError> {
        let status = match self.inner.store.status(id).await {
            Ok(status) if *status.owner == *owner => status,
            Err(StoreError::Expired { len, owner: expired_owner, .. }) if *expired_owner == *owner => {
                if let Some(after) = after.filter(|after| *after >= len) {
                    return Err(ManagerError::AfterBeyondLog { after, len });
                }
                return Err(ManagerError::NotFound { stream_id: id.clone(), next_seq: len });
            }
            // Someone else's stream is answered exactly as one that never existed.
            Ok(_) | Err(StoreError::NotFound(_) | StoreError::Expired { .. }) => {
                // The seq after the client's is one no event of it can take.
                let next_seq = match after {
                    None => 0,
                    Some(after) => after.checked_add(1).ok_or(ManagerError::AfterBeyondLog { after, len: 0 })?,
                };
                return Err(ManagerError::NotFound { stream_id: id.clone(), next_seq });
            }
            Err(other) => return Err(other.into()),
        };
        if let Some(after) = after {
            if after >= status.len {
                return Err(ManagerError::AfterBeyondLog { after, len: status.len });
            }
            if status.finished && after + 1 == status.len {
                return Ok(Opened::UpToDate);
            }
        }
        let guard = self.inner.live.lock().unwrap().get(id).map(|g| ReaderGuard::attach(g.clone(), &self.inner.metrics));
        // A generation running here ends with a terminal event on shutdown; a
        // reader of one running elsewhere is handed what this process has, then
        // ends without one, so its client resumes on another process.
        let generated_here = guard.is_some();
        let shutdown = self.inner.shutdown.clone();
        let mut follower = self.inner.store.follow(id, after);
        Ok(Opened::Events(
            stream! {
                let _guard = guard;
                loop {
                    let next = if generated_here {
                        follower.next().await
                    } else {
                        tokio::select! {
                            biased;
                            next = follower.next() => next,
                            () = shutdown.cancelled() => {
                                while let Some(Some(Ok(batch))) = follower.next().now_or_never() {
                                    yield batch;
                                }
                                return;
                            }
                        }
                    };
                    match next {
                        Some(Ok(batch)) => yield batch,
                        Some(Err(error)) => {
                            yield EventBatch { events: vec![follow_failure_event(&error)], tail_since: None, unlogged: true };
                            return;
                        }
                        None => return,
                    }
                }
            }
            .boxed(),
        ))
    }

    /// Cancels `owner`'s generation, wherever it runs; waits briefly for its
    /// terminal event.
    pub async fn cancel(&self, id: &StreamId, owner: &str) -> Result<CancelOutcome, ManagerError> {
        let status = self.inner.store.status(id).await?;
        if *status.owner != *owner {
            return Err(ManagerError::NotFound { stream_id: id.clone(), next_seq: 0 });
        }
        if status.finished {
            return Ok(CancelOutcome::AlreadyFinished);
        }
        // Through the store, wherever the generation runs: one way for every cancel.
        self.inner.store.request_cancel(id).await?;
        let mut follower = self.inner.store.follow(id, status.len.checked_sub(1));
        let terminal = tokio::time::timeout(CANCEL_WAIT, async {
            while let Some(Ok(batch)) = follower.next().await {
                if let Some(last) = batch.events.last().filter(|e| e.is_terminal()) {
                    return Some(last.event_type);
                }
            }
            None
        });
        Ok(match terminal.await {
            Ok(Some(EventType::Cancelled)) => CancelOutcome::Cancelled,
            Ok(Some(_)) => CancelOutcome::AlreadyFinished,
            Ok(None) | Err(_) => CancelOutcome::Cancelling,
        })
    }

    /// Whole-response mode, within the same concurrency bound as streams.
    pub async fn respond(&self, input: BlockInput) -> Result<Result<WholeResponse, GenerationFailed>, ManagerError> {
        if self.inner.shutdown.is_cancelled() {
            return Err(ManagerError::ShuttingDown);
        }
        let _permit = self.inner.permits.clone().try_acquire_owned().map_err(|_| ManagerError::AtCapacity)?;
        let block = input.block_type();
        let response = self.inner.engine.respond(input).await;
        let outcome = match &response {
            Ok(_) => "complete",
            Err(failed) => failed.code.as_str(),
        };
        let provider = self.inner.engine.provider().name().to_owned();
        self.inner.metrics.outcomes.with_label_values(&[block.as_str(), &provider, outcome]).inc();
        Ok(response)
    }

    /// Stops accepting streams and waits (up to `timeout`) for every running
    /// generation to write its terminal event.
    pub async fn drain(&self, timeout: Duration) {
        self.inner.shutdown.cancel();
        self.inner.tasks.close();
        if tokio::time::timeout(timeout, self.inner.tasks.wait()).await.is_err() {
            tracing::warn!("generations still running after {timeout:?}; exiting anyway");
        }
    }

    pub fn live_count(&self) -> usize {
        self.inner.live.lock().unwrap().len()
    }
}

/// An idempotency key as the store keeps it: scoped to its principal (the length
/// prefix keeps `owner` and `key` apart whatever they contain), hashed when long.
fn scoped_key(owner: &str, key: &str) -> String {
    use sha2::Digest;
    let scoped = format!("{}:{owner}:{key}", owner.len());
    if scoped.len() <= 200 {
        scoped
    } else {
        format!("sha256:{}", hex::encode(sha2::Sha256::digest(scoped.as_bytes())))
    }
}

/// The closing event of a reader whose follower failed, at the seq the log would
/// have given its next event.
fn follow_failure_event(error: &FollowError) -> LoggedEvent {
    let message = match error.cause {
        FollowFailure::Unreachable => "the stream store (Redis) stopped answering; start again",
        FollowFailure::LogLost => "the stream store (Redis) no longer has this stream's log; start again",
    };
    LoggedEvent::new(error.next_seq, &EventBody::error(ErrorCode::GenerationLost, message, true))
}

/// Counts a reader on a live generation for as long as it is held.
struct ReaderGuard {
    generation: Arc<Generation>,
    gauge: prometheus::IntGauge,
}

impl ReaderGuard {
    fn attach(generation: Arc<Generation>, metrics: &Metrics) -> Self {
        generation.readers.send_modify(|n| *n += 1);
        metrics.attached_readers.inc();
        Self { generation, gauge: metrics.attached_readers.clone() }
    }
}

impl Drop for ReaderGuard {
    fn drop(&mut self) {
        self.generation.readers.send_modify(|n| *n -= 1);
        self.gauge.dec();
    }
}

/// Why an append did not land.
enum AppendFailed {
    /// Someone else ended the log (a reader elsewhere declared this generation
    /// lost while its lease had lapsed).
    Ended,
    Store(StoreError),
}

/// Appends events to one log with contiguous seq. The seq advances only once the
/// store confirmed the append; a store that does not answer is retried for a
/// while, which is safe because the store recognises an append that did land.
struct LogWriter {
    appender: Box<dyn Appender>,
    next_seq: u64,
}

impl LogWriter {
    async fn append(&mut self, body: &EventBody) -> Result<(), AppendFailed> {
        let record = EventRecord::new(body);
        // Set at the first failure: the clock is not read per event.
        let mut deadline = None;
        let mut pause = Duration::from_millis(50);
        loop {
            match self.appender.append(self.next_seq, &record).await {
                Ok(()) => {
                    self.next_seq += 1;
                    return Ok(());
                }
                Err(StoreError::Unavailable(_))
                    if Instant::now() + pause < *deadline.get_or_insert_with(|| Instant::now() + APPEND_PATIENCE) =>
                {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(500));
                }
                Err(StoreError::Finished(_)) => return Err(AppendFailed::Ended),
                Err(other) => return Err(AppendFailed::Store(other)),
            }
        }
    }
}

/// Resolves once no reader has been attached, here or in any other process, for
/// a whole grace period.
async fn abandoned(store: Arc<dyn EventStore>, id: StreamId, mut readers: watch::Receiver<usize>, grace: Duration) {
    loop {
        if readers.wait_for(|n| *n == 0).await.is_err() {
            return futures::future::pending().await;
        }
        let mut quiet_until = Instant::now() + grace;
        loop {
            if tokio::time::timeout_at(quiet_until, readers.wait_for(|n| *n > 0)).await.is_ok() {
                break;
            }
            match store.reader_presence(&id).await {
                Ok(None) => return,
                Ok(Some(left)) => quiet_until = Instant::now() + left,
                // Never abandon on a guess: ask again soon.
                Err(_) => quiet_until = Instant::now() + Duration::from_secs(1),
            }
        }
    }
}

enum Ending {
    /// The engine's own terminal event landed; the outcome it recorded.
    Finished(&'static str),
    Cancelled(CancelReason),
    Shutdown,
    Failed(String),
    /// The log was ended by someone else.
    Preempted,
    /// The store stopped answering; nothing more can be written.
    StoreLost(StoreError),
}

async fn run_generation(
    inner: Arc<Inner>,
    id: StreamId,
    input: BlockInput,
    generation: Arc<Generation>,
    mut writer: LogWriter,
    _permit: OwnedSemaphorePermit,
    reservation: Reservation,
) {
    let block = input.block_type();
    let provider = inner.engine.provider().name().to_owned();
    inner.metrics.active_streams.inc();
    let started = Instant::now();
    let mut events = reservation.meter(inner.engine.stream(input));
    // Made once, not per event (each would register with its token and leave it
    // again), and polled only once they woke the task, not at every event.
    let mut abandoned =
        PolledWhenWoken::new(abandoned(inner.store.clone(), id.clone(), generation.readers.subscribe(), inner.config.resume_grace));
    let mut cancelled = PolledWhenWoken::new(generation.cancel.clone().cancelled_owned());
    let mut first_chunk = true;
    let ending = loop {
        let next = tokio::select! {
            biased;
            _ = &mut cancelled => {
                break if inner.shutdown.is_cancelled() { Ending::Shutdown } else { Ending::Cancelled(CancelReason::Requested) };
            }
            _ = &mut abandoned => break Ending::Cancelled(CancelReason::Abandoned),
            next = AssertUnwindSafe(events.next()).catch_unwind() => next,
        };
        let body = match next {
            Ok(Some(body)) => body,
            Ok(None) => break Ending::Failed("the engine ended without a terminal event".into()),
            Err(_) => break Ending::Failed("the generation crashed".into()),
        };
        if first_chunk && body.event_type() == EventType::Chunk {
            first_chunk = false;
            inner.metrics.time_to_first_token.with_label_values(&[block.as_str(), &provider]).observe(started.elapsed().as_secs_f64());
        }
        let outcome = match &body {
            EventBody::Complete { .. } => Some("complete"),
            EventBody::Error { code, .. } => Some(code.as_str()),
            _ => None,
        };
        match writer.append(&body).await {
            Ok(()) => {
                if let Some(outcome) = outcome {
                    break Ending::Finished(outcome);
                }
            }
            Err(AppendFailed::Ended) => break Ending::Preempted,
            Err(AppendFailed::Store(error)) => break Ending::StoreLost(error),
        }
    };
    // Dropping the engine's stream closes the provider request.
    drop(events);
    let (terminal, outcome) = match ending {
        Ending::Finished(outcome) => (None, outcome.to_owned()),
        Ending::Cancelled(reason) => (
            Some(EventBody::Cancelled { reason }),
            format!("cancelled_{}", if reason == CancelReason::Requested { "requested" } else { "abandoned" }),
        ),
        Ending::Shutdown => {
            (Some(EventBody::error(ErrorCode::GenerationLost, "the server is shutting down; start again", true)), "generation_lost".into())
        }
        Ending::Failed(message) => {
            tracing::error!(stream_id = %id, %message, "generation failed");
            (
                Some(EventBody::error(ErrorCode::GenerationLost, "the generation failed on the server; start again", true)),
                "generation_lost".into(),
            )
        }
        Ending::Preempted => {
            tracing::warn!(stream_id = %id, "another process ended this stream (its lease had lapsed); stopping");
            (None, "generation_lost".into())
        }
        Ending::StoreLost(error) => {
            tracing::error!(stream_id = %id, %error, "the stream store failed; stopping the generation");
            (None, "store_unavailable".into())
        }
    };
    if let Some(terminal) = terminal {
        match writer.append(&terminal).await {
            Ok(()) | Err(AppendFailed::Ended) => {}
            Err(AppendFailed::Store(error)) => tracing::error!(stream_id = %id, %error, "could not write the terminal event"),
        }
    }
    inner.store.release(&id);
    reservation.settle().await;
    inner.metrics.outcomes.with_label_values(&[block.as_str(), &provider, &outcome]).inc();
    inner.live.lock().unwrap().remove(&id);
    inner.metrics.active_streams.dec();
    tracing::info!(stream_id = %id, block = block.as_str(), %outcome, elapsed_ms = started.elapsed().as_millis() as u64, "generation ended");
}
