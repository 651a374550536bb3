//! The stream manager owns generations: it starts the engine for a block, appends
//! each event to the stream's log with the next seq, hands readers the log (replay
//! after a seq, then the live tail), cancels, and watches for abandonment.
//!
//! Disconnect is not cancel: a generation with no reader attached keeps running for
//! the resume grace period, then is cancelled upstream (`cancelled`/`abandoned`).
//! Every generation ends with exactly one terminal event in its log, whatever
//! happens: completion, provider error, cancel, abandonment, shutdown
//! (`generation_lost`, retryable) or a panic in the pipeline (`generation_lost`).
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

use super::events::{CancelReason, ErrorCode, EventBody, EventType, LoggedEvent, StreamId};
use super::store::{EventStore, KeyClaim, StoreError};
use crate::ai::blocks::{BlockInput, BlockType};
use crate::ai::runtime::engine::{Engine, EventStream, GenerationFailed, WholeResponse};
use crate::limits::Reservation;
use crate::metrics::Metrics;

/// Events read from the store per round trip.
const READ_BATCH: usize = 512;
/// How long a reader waits on the tail before re-checking the log and whether its
/// generation is still alive somewhere.
const TAIL_WAIT: Duration = Duration::from_secs(2);
/// How often this process renews the leases of the generations it runs.
const LEASE_RENEWAL: Duration = Duration::from_secs(1);

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
    #[error("no stream {0}")]
    NotFound(StreamId),
    #[error(transparent)]
    Store(StoreError),
}

impl From<StoreError> for ManagerError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::NotFound(id) => Self::NotFound(id),
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

/// A reader's events, ending after the terminal one. Dropping it detaches the reader.
pub type EventReader = BoxStream<'static, LoggedEvent>;

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
        let manager = Self { inner };
        manager.listen_for_cancel_requests();
        manager.renew_leases();
        manager
    }

    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    /// Cancel requests arriving through the store (from any process) reach the
    /// generations running here.
    fn listen_for_cancel_requests(&self) {
        let weak = Arc::downgrade(&self.inner);
        let mut requests = self.inner.store.cancel_requests();
        let shutdown = self.inner.shutdown.clone();
        tokio::spawn(async move {
            loop {
                let id = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    id = requests.next() => match id { Some(id) => id, None => return },
                };
                let Some(inner) = weak.upgrade() else { return };
                let generation = inner.live.lock().unwrap().get(&id).cloned();
                if let Some(generation) = generation {
                    generation.cancel.cancel();
                }
            }
        });
    }

    /// Keeps the generations running here marked as alive in the store, so readers
    /// in other processes can tell a slow generation from a dead one.
    fn renew_leases(&self) {
        let weak = Arc::downgrade(&self.inner);
        let shutdown = self.inner.shutdown.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(LEASE_RENEWAL);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let Some(inner) = weak.upgrade() else { return };
                let ids: Vec<StreamId> = inner.live.lock().unwrap().keys().cloned().collect();
                if let Err(error) = inner.store.renew_leases(&ids).await {
                    tracing::warn!(%error, "could not renew generation leases");
                }
            }
        });
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
        self.inner.store.create(&id, owner).await?;
        let generation = Arc::new(Generation { cancel: self.inner.shutdown.child_token(), readers: watch::channel(0).0 });
        self.inner.live.lock().unwrap().insert(id.clone(), generation.clone());
        let span = tracing::info_span!("generation", stream_id = %id, block = input.block_type().as_str());
        let run = run_generation(self.inner.clone(), id.clone(), input, generation, permit, reservation);
        self.inner.tasks.spawn(run.instrument(span));
        Ok(Started::New(id))
    }

    /// Opens a reader on `owner`'s stream: the events after `after` (all when
    /// `None`), then the live tail, ending after the terminal event.
    pub async fn open(&self, id: &StreamId, after: Option<u64>, owner: &str) -> Result<Opened, ManagerError> {
        let status = self.inner.store.status(id).await?;
        if status.owner != owner {
            return Err(ManagerError::NotFound(id.clone()));
        }
        if status.finished && after.is_some_and(|seq| seq.saturating_add(1) >= status.len) {
            return Ok(Opened::UpToDate);
        }
        let guard = self.inner.live.lock().unwrap().get(id).map(|g| ReaderGuard::attach(g.clone(), &self.inner.metrics));
        let store = self.inner.store.clone();
        let id = id.clone();
        Ok(Opened::Events(
            stream! {
                let _guard = guard;
                let mut cursor = after;
                loop {
                    let batch = match store.read_after(&id, cursor, READ_BATCH).await {
                        Ok(batch) => batch,
                        Err(error) => {
                            yield lost_log(&id, cursor, &error);
                            return;
                        }
                    };
                    if batch.is_empty() {
                        if let Err(error) = store.wait_after(&id, cursor, TAIL_WAIT).await {
                            yield lost_log(&id, cursor, &error);
                            return;
                        }
                        end_if_abandoned_by_its_process(store.as_ref(), &id).await;
                        continue;
                    }
                    for event in batch {
                        cursor = Some(event.seq);
                        let terminal = event.is_terminal();
                        yield event;
                        if terminal {
                            return;
                        }
                    }
                }
            }
            .boxed(),
        ))
    }

    /// Cancels `owner`'s generation; waits briefly for its terminal event.
    pub async fn cancel(&self, id: &StreamId, owner: &str) -> Result<CancelOutcome, ManagerError> {
        let status = self.inner.store.status(id).await?;
        if status.owner != owner {
            return Err(ManagerError::NotFound(id.clone()));
        }
        if status.finished {
            return Ok(CancelOutcome::AlreadyFinished);
        }
        let local = self.inner.live.lock().unwrap().get(id).map(|g| g.cancel.clone());
        match local {
            Some(token) => token.cancel(),
            None => self.inner.store.request_cancel(id).await?,
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            let status = self.inner.store.status(id).await?;
            if status.finished {
                return Ok(CancelOutcome::Cancelled);
            }
            let _ = self.inner.store.wait_after(id, status.len.checked_sub(1), deadline - Instant::now()).await;
        }
        Ok(CancelOutcome::Cancelling)
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

/// Ends a stream whose generating process died (its lease lapsed) with
/// `generation_lost`, so its readers stop waiting. Any reader may do it; the log's
/// seq check lets exactly one succeed.
async fn end_if_abandoned_by_its_process(store: &dyn EventStore, id: &StreamId) {
    let Ok(status) = store.status(id).await else { return };
    if status.finished || !matches!(store.is_generating(id).await, Ok(false)) {
        return;
    }
    let body = EventBody::error(ErrorCode::GenerationLost, "the process generating this stream stopped; start again", true);
    if store.append(id, LoggedEvent::new(id, status.len, body)).await.is_ok() {
        tracing::warn!(stream_id = %id, "generation lost: its process stopped renewing its lease");
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

/// The event a reader gets when the log vanished under it (expired or evicted).
fn lost_log(id: &StreamId, cursor: Option<u64>, error: &StoreError) -> LoggedEvent {
    let (code, message) = match error {
        StoreError::NotFound(_) => (ErrorCode::StreamNotFound, "the stream's log expired before it was read".to_owned()),
        other => {
            // The store's own words (addresses, Redis errors) stay in the logs.
            tracing::warn!(stream_id = %id, error = %other, "a reader lost the stream's log");
            (ErrorCode::GenerationLost, "the stream's log cannot be read: the store is unavailable".to_owned())
        }
    };
    LoggedEvent::new(id, cursor.map_or(0, |seq| seq.saturating_add(1)), EventBody::error(code, message, true))
}

/// Appends events to one log with contiguous seq.
struct LogWriter {
    store: Arc<dyn EventStore>,
    id: StreamId,
    next_seq: u64,
}

impl LogWriter {
    async fn append(&mut self, body: EventBody) -> Result<(), StoreError> {
        let event = LoggedEvent::new(&self.id, self.next_seq, body);
        self.store.append(&self.id, event).await?;
        self.next_seq += 1;
        Ok(())
    }
}

/// Resolves when no reader has been attached for a whole grace period.
async fn abandoned(mut readers: watch::Receiver<usize>, grace: Duration) {
    loop {
        if readers.wait_for(|n| *n == 0).await.is_err() {
            return futures::future::pending().await;
        }
        if tokio::time::timeout(grace, readers.wait_for(|n| *n > 0)).await.is_err() {
            return;
        }
    }
}

enum Ending {
    /// The engine wrote its own terminal event; the outcome it recorded.
    Finished(&'static str),
    Cancelled(CancelReason),
    Shutdown,
    Failed(String),
}

async fn run_generation(
    inner: Arc<Inner>,
    id: StreamId,
    input: BlockInput,
    generation: Arc<Generation>,
    _permit: OwnedSemaphorePermit,
    reservation: Reservation,
) {
    let block = input.block_type();
    let provider = inner.engine.provider().name().to_owned();
    inner.metrics.active_streams.inc();
    let started = Instant::now();
    let mut writer = LogWriter { store: inner.store.clone(), id: id.clone(), next_seq: 0 };
    let events = reservation.meter(inner.engine.stream(input));
    let ending = {
        let drive = AssertUnwindSafe(drive(&inner, &mut writer, events, block, &provider, started)).catch_unwind();
        tokio::select! {
            biased;
            _ = generation.cancel.cancelled() => {
                if inner.shutdown.is_cancelled() { Ending::Shutdown } else { Ending::Cancelled(CancelReason::Requested) }
            }
            _ = abandoned(generation.readers.subscribe(), inner.config.resume_grace) => Ending::Cancelled(CancelReason::Abandoned),
            driven = drive => match driven {
                Ok(Ok(outcome)) => Ending::Finished(outcome),
                Ok(Err(error)) => Ending::Failed(format!("the event log failed: {error}")),
                Err(_) => Ending::Failed("the generation crashed".into()),
            },
        }
    };
    // The engine (and with it the provider request) is dropped by now.
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
    };
    if let Some(terminal) = terminal {
        if let Err(error) = writer.append(terminal).await {
            tracing::error!(stream_id = %id, %error, "could not write the terminal event");
        }
        inner.metrics.outcomes.with_label_values(&[block.as_str(), &provider, &outcome]).inc();
    }
    reservation.settle().await;
    inner.live.lock().unwrap().remove(&id);
    inner.metrics.active_streams.dec();
    tracing::info!(stream_id = %id, block = block.as_str(), %outcome, elapsed_ms = started.elapsed().as_millis() as u64, "generation ended");
}

/// Appends the engine's events to the log until its terminal event; returns the
/// outcome recorded for it.
async fn drive(
    inner: &Inner,
    writer: &mut LogWriter,
    mut events: EventStream,
    block: BlockType,
    provider: &str,
    started: Instant,
) -> Result<&'static str, StoreError> {
    let mut first_chunk = true;
    while let Some(body) = events.next().await {
        let event_type = body.event_type();
        if event_type == EventType::Chunk && first_chunk {
            first_chunk = false;
            inner.metrics.time_to_first_token.with_label_values(&[block.as_str(), provider]).observe(started.elapsed().as_secs_f64());
        }
        let outcome = match &body {
            EventBody::Complete { .. } => Some("complete"),
            EventBody::Error { code, .. } => Some(code.as_str()),
            _ => None,
        };
        writer.append(body).await?;
        if let Some(outcome) = outcome {
            inner.metrics.outcomes.with_label_values(&[block.as_str(), provider, outcome]).inc();
            return Ok(outcome);
        }
    }
    Err(StoreError::Unavailable("the engine ended without a terminal event".into()))
}
