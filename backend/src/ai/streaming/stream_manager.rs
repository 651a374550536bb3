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
//! idempotency keys are scoped per principal. A stream carries the limits
//! [`Reservation`] it was admitted with and settles it when it ends.
//!
//! With coalescing (`super::coalesce`), a start whose request may be shared
//! either claims it, and then generates as any stream does (its stream is the
//! answer's source, its generation counted as the request's), or gets a
//! stream fed by a relay of the generation that answers it — joined while it
//! runs, or replayed once complete — instead of a generation of its own. The
//! relay runs exactly as a generation does here (same cancel, grace, terminal
//! and settlement rules); only its events come from the source's log instead
//! of the engine. A relay is a reader of its source, so a first asker's
//! generation runs to its end while others read it, whatever its own reader
//! does, unless the first asker cancels it: then, if the request index says
//! it was joined, the rest of the answer is handed over to a shared log
//! before the first asker's `cancelled` lands (`hand_over`; ordering in the
//! `coalesce` module doc), and goes on there, in the same task.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_stream::stream;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::coalesce::{self, CoalesceConfig, RequestKey, Sharing, Source, SHARED_OWNER};
use super::events::{CancelReason, ErrorCode, EventBody, EventRecord, EventType, LoggedEvent, StreamId};
use super::polled_when_woken::PolledWhenWoken;
use super::store::{Appender, EventBatch, EventStore, FollowError, FollowFailure, KeyClaim, StoreError};
use crate::ai::blocks::BlockInput;
use crate::ai::moderation::{Exchange, Moderation};
use crate::ai::runtime::engine::{Engine, EventStream, GenerationFailed, WholeResponse};
use crate::limits::Reservation;
use crate::metrics::Metrics;
use crate::telemetry::generation::{self as trace, GenerationTrace};

/// How long a cancel waits for the terminal event before answering `cancelling`.
const CANCEL_WAIT: Duration = Duration::from_secs(2);
/// How long an append keeps retrying a store that does not answer before the
/// generation gives up.
const APPEND_PATIENCE: Duration = Duration::from_secs(3);
/// How long an idempotency key stays claimed by a start that has not created its
/// stream yet: bounds how long a start that died half way blocks the key.
pub const PENDING_KEY: Duration = Duration::from_secs(10);
/// How long a stream waits for its first reader at least, whatever the grace:
/// a `POST` answers before its learner's reader connects.
pub const FIRST_READER_WAIT: Duration = Duration::from_secs(5);
/// How often a retry looks again at a key whose stream is being created.
const KEY_FOLLOW_PAUSE: Duration = Duration::from_millis(20);

#[derive(Debug, Clone)]
pub struct ManagerConfig {
    pub resume_grace: Duration,
    pub retention: Duration,
    pub max_concurrent_streams: usize,
    pub coalesce: CoalesceConfig,
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

/// Why a start did not start: its admission refused it, or the manager could not.
#[derive(Debug)]
pub enum StartError<E> {
    Refused(E),
    Manager(ManagerError),
}

impl<E> From<ManagerError> for StartError<E> {
    fn from(error: ManagerError) -> Self {
        Self::Manager(error)
    }
}

impl<E> From<StoreError> for StartError<E> {
    fn from(error: StoreError) -> Self {
        Self::Manager(error.into())
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
    /// Cancelled once its answer's source is dropped: for a generation, its
    /// provider request is closed. A handed-over answer's two logs share it.
    upstream_closed: CancellationToken,
    /// Output tokens its provider produced so far, held back by moderation or
    /// not (counted for generations answering a coalesced request: what their
    /// joiners here are charged when the answer does not complete). A
    /// handed-over answer's two logs share the count.
    produced: Arc<std::sync::atomic::AtomicU64>,
    /// Its log is no learner's (`SHARED_OWNER`): the rest of an answer its
    /// first asker handed over, read by relays only.
    shared: bool,
    /// The log its answer went on in, once handed over.
    successor: OnceLock<(StreamId, Arc<Generation>)>,
    /// Its span's context and the resumes its span reports (OpenTelemetry).
    trace: GenerationTrace,
}

struct Inner {
    store: Arc<dyn EventStore>,
    engine: Engine,
    moderation: Moderation,
    config: ManagerConfig,
    metrics: Metrics,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    permits: Arc<Semaphore>,
    live: Mutex<HashMap<StreamId, Arc<Generation>>>,
}

impl Inner {
    /// Creates the log of stream `id` and registers its generation here, with
    /// the span its task runs in. The log a handed-over answer goes on in
    /// (`handed_over_from` the first asker's generation) shares its provider
    /// request and its count of produced tokens.
    async fn create(
        &self,
        id: &StreamId,
        block: crate::ai::blocks::BlockType,
        owner: &str,
        handed_over_from: Option<&Generation>,
    ) -> Result<(Arc<Generation>, LogWriter, tracing::Span), ManagerError> {
        let cancel = self.shutdown.child_token();
        let appender = self.store.create(id, owner, cancel.clone()).await?;
        let (span, trace) = trace::span(id, block, owner);
        let generation = Arc::new(Generation {
            cancel,
            readers: watch::channel(0).0,
            upstream_closed: handed_over_from.map_or_else(CancellationToken::new, |from| from.upstream_closed.clone()),
            produced: handed_over_from.map_or_else(Default::default, |from| from.produced.clone()),
            shared: handed_over_from.is_some(),
            successor: OnceLock::new(),
            trace,
        });
        trace::publish(self.store.as_ref(), id, &generation.trace).await;
        self.live.lock().unwrap().insert(id.clone(), generation.clone());
        Ok((generation, LogWriter { appender, next_seq: 0 }, span))
    }
}

#[derive(Clone)]
pub struct StreamManager {
    inner: Arc<Inner>,
}

impl StreamManager {
    pub fn new(
        store: Arc<dyn EventStore>,
        engine: Engine,
        moderation: Moderation,
        config: ManagerConfig,
        metrics: Metrics,
        shutdown: CancellationToken,
    ) -> Self {
        let inner = Arc::new(Inner {
            store,
            engine,
            moderation,
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

    pub fn moderation(&self) -> &Moderation {
        &self.inner.moderation
    }

    /// Whether the store answers, for `/readyz`.
    pub async fn ready(&self) -> Result<(), StoreError> {
        self.inner.store.ready().await
    }

    /// Starts a generation for `owner` (a principal id), admitted by `admit` (the
    /// limits) just before it launches.
    ///
    /// With an idempotency `key`, the key is looked up first: a key this owner
    /// already used returns the stream it started (in any process sharing the
    /// store), and `admit` is never asked — a retry costs nothing, whatever the
    /// limits. Otherwise the key is claimed before admitting, for a short
    /// [`PENDING_KEY`] while the stream is created, then held for the retention;
    /// a refused or failed start gives it back. A concurrent retry that finds the
    /// key claimed follows the claim until its stream exists (or the key is given
    /// back, and it starts itself), so it never answers with an id that does not
    /// exist yet.
    ///
    /// `sharing` says with whom the answer may be shared (coalescing); a
    /// shared start is admitted like any other.
    pub async fn start<E, F>(
        &self,
        input: BlockInput,
        key: Option<String>,
        owner: &str,
        sharing: &Sharing,
        admit: impl FnOnce() -> F,
    ) -> Result<Started, StartError<E>>
    where
        F: std::future::Future<Output = Result<Reservation, E>>,
    {
        if self.inner.shutdown.is_cancelled() {
            return Err(ManagerError::ShuttingDown.into());
        }
        let id = StreamId::generate();
        let Some(key) = key.map(|key| scoped_key(owner, &key)) else {
            let reservation = admit().await.map_err(StartError::Refused)?;
            return Ok(self.launch(id, input, owner, sharing, reservation).await?);
        };
        let claim = KeyClaim { stream_id: id.clone(), fingerprint: input.fingerprint() };
        if let Some(existing) = self.follow_key(&key, &claim).await? {
            return Ok(Started::Existing(existing));
        }
        // The key is ours until the start is decided: given back if it is dropped.
        let pending = PendingKey { store: Some(self.inner.store.clone()), key, id: id.clone() };
        let reservation = admit().await.map_err(StartError::Refused)?;
        let started = self.launch(id, input, owner, sharing, reservation).await?;
        pending.hold(self.inner.config.retention).await;
        Ok(started)
    }

    /// Where `key` stands for a start holding `claim`: `Some` stream this owner
    /// started with it, or `None` once `claim` holds the key. A claim whose start
    /// is still creating its stream is followed until the stream exists, or until
    /// the key is given back or lapses (then `claim` takes it).
    async fn follow_key(&self, key: &str, claim: &KeyClaim) -> Result<Option<StreamId>, ManagerError> {
        let store = &self.inner.store;
        // A safety net only: a pending claim lapses well before it.
        let deadline = Instant::now() + PENDING_KEY * 2;
        loop {
            let Some(held) = store.claim_key(key, claim.clone(), PENDING_KEY).await? else { return Ok(None) };
            if held.fingerprint != claim.fingerprint {
                return Err(ManagerError::IdempotencyConflict);
            }
            match store.status(&held.stream_id).await {
                // An expired stream is still the one this key started: its readers
                // learn it expired (`stream_not_found`).
                Ok(_) | Err(StoreError::Expired { .. }) => return Ok(Some(held.stream_id)),
                Err(StoreError::NotFound(_)) if Instant::now() < deadline => tokio::time::sleep(KEY_FOLLOW_PAUSE).await,
                Err(StoreError::NotFound(_)) => {
                    return Err(ManagerError::Store(StoreError::Unavailable(format!(
                        "the start holding idempotency key of stream {} never created it",
                        held.stream_id
                    ))))
                }
                Err(other) => return Err(other.into()),
            }
        }
    }

    /// Starts stream `id`: a generation of its own, or, when coalescing is on
    /// and the request may be shared, a relay of the generation already
    /// answering it. A start that claims the request generates as any stream
    /// does, and its stream is then the one later identical starts relay.
    async fn launch(
        &self,
        id: StreamId,
        input: BlockInput,
        owner: &str,
        sharing: &Sharing,
        reservation: Reservation,
    ) -> Result<Started, ManagerError> {
        let coalesce = &self.inner.config.coalesce;
        let request = coalesce.enabled.then(|| RequestKey::of(&sharing.scope, &input, self.inner.engine.provider())).flatten();
        let permit = self.inner.permits.clone().try_acquire_owned().map_err(|_| ManagerError::AtCapacity)?;
        let block = input.block_type();
        let (relay, answers) = match request {
            None => (None, None),
            Some(request) => match self.coalesced(&id, block, &request, sharing.fresh).await? {
                Some(relay) => (Some(relay), None),
                // Claimed: this stream's own generation answers the request.
                None => (None, Some(request)),
            },
        };
        let work = match relay {
            Some(relay) => relay,
            None => Work::Generate { exchange: exchange_of(&id, &input, owner), input, answers },
        };
        let (generation, writer, span) = match self.inner.create(&id, block, owner, None).await {
            Ok(created) => created,
            Err(error) => {
                if let Work::Generate { answers: Some(request), .. } = &work {
                    let _ = self.inner.store.release_request(request.as_str(), &id).await;
                }
                return Err(error);
            }
        };
        if let Work::Generate { answers: Some(_), .. } = &work {
            self.inner.metrics.shared_generations.with_label_values(&[block.as_str()]).inc();
        }
        let traced = generation.clone();
        let run = run(self.inner.clone(), id.clone(), work, generation, writer, permit, reservation);
        self.inner.tasks.spawn(trace::within(&traced.trace, run).instrument(span));
        Ok(Started::New(id))
    }

    /// Where `learner`'s coalesced start gets its answer: `None` when it
    /// claimed the request for its own stream (it generates), else a relay of
    /// the generation answering it, joined or replayed.
    async fn coalesced(
        &self,
        learner: &StreamId,
        block: crate::ai::blocks::BlockType,
        request: &RequestKey,
        fresh: bool,
    ) -> Result<Option<Work>, ManagerError> {
        let inner = &self.inner;
        // A second look only when the log found went away before it was read
        // (its retention ran out in between): the index then gets replaced.
        let mut looks = 0;
        loop {
            looks += 1;
            let live_ttl = inner.config.coalesce.live_ttl;
            let (source, shared, cached, counter) =
                match coalesce::find_or_claim(inner.store.as_ref(), request, learner, fresh, live_ttl).await? {
                    Source::Claimed(_) => return Ok(None),
                    Source::Joined(id) => (id, true, false, &inner.metrics.coalesce_joins),
                    Source::Cached(id) => (id, false, true, &inner.metrics.coalesce_cache_hits),
                };
            let reader = match self.read_source(&source, None).await {
                Ok(reader) => reader,
                Err(ManagerError::NotFound { .. }) if looks < 2 => continue,
                Err(error) => return Err(error),
            };
            counter.with_label_values(&[block.as_str()]).inc();
            tracing::debug!(%source, joined = shared, cached, "coalesced start");
            return Ok(Some(self.relay(block, source, reader, shared, cached)));
        }
    }

    /// A relay's reader of the log of `id`, the generation answering its
    /// request, after `after`: whoever owns the log, since the request index
    /// (scoped to the learner's class) named it. No client reads it this way.
    async fn read_source(&self, id: &StreamId, after: Option<u64>) -> Result<EventReader, ManagerError> {
        match self.open_as(id, after, Reading::Relay).await? {
            Opened::Events(reader) => Ok(reader),
            // A log whose terminal event the relay had: it ended, nothing to go on with.
            Opened::UpToDate => Err(ManagerError::NotFound { stream_id: id.clone(), next_seq: after.map_or(0, |after| after + 1) }),
        }
    }

    /// A learner's stream made of the log of `source`, the generation
    /// answering their request, and of the log its answer goes on in if its
    /// first asker hands it over.
    fn relay(&self, block: crate::ai::blocks::BlockType, source: StreamId, reader: EventReader, shared: bool, cached: bool) -> Work {
        let (provider, metrics) = (self.inner.engine.provider(), &self.inner.metrics);
        let start = EventBody::Start {
            block_type: block,
            provider: provider.name().to_owned(),
            model: provider.model().to_owned(),
            shared,
            cached,
        };
        let saved = (shared || cached).then(|| metrics.coalesce_tokens_saved.with_label_values(&[block.as_str()]));
        let generation = self.inner.live.lock().unwrap().get(&source).map(|generation| (source.clone(), generation.clone()));
        let manager = self.clone();
        let successor: coalesce::relay::Successor = Box::new(move |of, from| {
            let manager = manager.clone();
            async move { manager.successor_reader(&of, from).await }.boxed()
        });
        Work::Relay { block, events: coalesce::relayed(start, source, reader, saved, successor), generation }
    }

    /// A relay's reader of the log the answer of `of` went on in, from `from`
    /// (the seq of `of`'s `cancelled` event), if its first asker handed it over.
    async fn successor_reader(&self, of: &StreamId, from: u64) -> Option<(StreamId, EventReader)> {
        let next = match self.inner.store.successor(of).await {
            Ok(next) => next?,
            Err(error) => {
                tracing::warn!(stream_id = %of, %error, "could not learn whether a cancelled answer was handed over");
                return None;
            }
        };
        match self.read_source(&next, from.checked_sub(1)).await {
            Ok(reader) => Some((next, reader)),
            Err(error) => {
                tracing::warn!(stream_id = %of, successor = %next, %error, "could not read the log a cancelled answer went on in");
                None
            }
        }
    }

    /// Opens a reader on `owner`'s stream: the events after `after` (all when
    /// `None`), then the live tail, ending after the terminal event. An `after` the
    /// stream has no event at is refused, except the terminal event's own
    /// (`UpToDate`).
    pub async fn open(&self, id: &StreamId, after: Option<u64>, owner: &str) -> Result<Opened, ManagerError> {
        self.open_as(id, after, Reading::Client { owner }).await
    }

    /// [`open`](Self::open), for a client (of its own stream only) or for a
    /// relay (of the log the request index named; it keeps that generation
    /// going like any reader, but is no client in the metrics).
    async fn open_as(&self, id: &StreamId, after: Option<u64>, reading: Reading<'_>) -> Result<Opened, ManagerError> {
        let readable = |owner: &str| match reading {
            Reading::Client { owner: reader } => owner == reader,
            Reading::Relay => true,
        };
        let status = match self.inner.store.status(id).await {
            Ok(status) if readable(&status.owner[..]) => status,
            Err(StoreError::Expired { len, owner, .. }) if readable(&owner[..]) => {
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
        let gauge = matches!(reading, Reading::Client { .. }).then(|| self.inner.metrics.attached_readers.clone());
        let guard = self.inner.live.lock().unwrap().get(id).map(|g| ReaderGuard::attach(g.clone(), gauge));
        if after.is_some() {
            trace::resumed(&self.inner.metrics, self.inner.store.as_ref(), id, guard.as_ref().map(|g| &g.generation.trace)).await;
        }
        // A generation running here ends with a terminal event on shutdown; a
        // reader of one running elsewhere is handed what this process has, then
        // ends without one, so its client resumes on another process.
        let generated_here = guard.is_some();
        let shutdown = self.inner.shutdown.clone();
        let mut follower = self.inner.store.follow(id, after);
        let id = id.clone();
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
                            // A log that expired ends as a request for it now would, at
                            // its length: a seq no event of it took, so it may carry an id.
                            let unlogged = !matches!(error.cause, FollowFailure::Expired { .. });
                            yield EventBatch { events: vec![follow_failure_event(&id, &error)], tail_since: None, unlogged };
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

    /// Whole-response mode for `owner`, within the same concurrency bound as
    /// streams, moderated like a stream (the answer is returned only once
    /// checked). The `reservation` settles to what was produced, also when the
    /// call fails or its client leaves (dropping this future drops the
    /// reservation, which settles).
    pub async fn respond(
        &self,
        input: BlockInput,
        owner: &str,
        reservation: Reservation,
    ) -> Result<Result<WholeResponse, GenerationFailed>, ManagerError> {
        if self.inner.shutdown.is_cancelled() {
            return Err(ManagerError::ShuttingDown);
        }
        let _permit = self.inner.permits.clone().try_acquire_owned().map_err(|_| ManagerError::AtCapacity)?;
        let block = input.block_type();
        let exchange = Exchange { stream_id: None, principal: owner.to_owned(), block, input: input.learner_text().into() };
        // Metered before moderation: charged what the provider produced.
        let events = reservation.meter(self.inner.engine.stream(input), self.inner.engine.token_counter());
        let response = Engine::collect(self.inner.moderation.guard_whole(events, exchange)).await;
        reservation.settle().await;
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

/// An idempotency key claimed by a start still being decided. Held for good once
/// the stream exists; given back otherwise — also when the start is dropped half
/// way (its client left), so a retry may start afresh.
struct PendingKey {
    store: Option<Arc<dyn EventStore>>,
    key: String,
    id: StreamId,
}

impl PendingKey {
    /// The stream exists: the key names it for `ttl`.
    async fn hold(mut self, ttl: Duration) {
        let store = self.store.take().expect("held once");
        if let Err(error) = store.hold_key(&self.key, &self.id, ttl).await {
            // The pending claim lapses early: a late retry then starts anew.
            tracing::warn!(stream_id = %self.id, %error, "could not hold an idempotency key");
        }
    }
}

impl Drop for PendingKey {
    fn drop(&mut self) {
        let Some(store) = self.store.take() else { return };
        let (key, id) = (std::mem::take(&mut self.key), self.id.clone());
        // Nothing started under this key: a retry may start afresh. Without a
        // runtime (shutting down) the claim simply lapses.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = store.release_key(&key, &id).await;
            });
        }
    }
}

/// The closing event of a reader whose follower failed, at the seq the log would
/// have given its next event.
fn follow_failure_event(id: &StreamId, error: &FollowError) -> LoggedEvent {
    let message = match error.cause {
        FollowFailure::Unreachable => "the stream store (Redis) stopped answering; start again",
        FollowFailure::LogLost => "the stream store (Redis) no longer has this stream's log; start again",
        FollowFailure::Expired { len } => {
            let body = EventBody::error(ErrorCode::StreamNotFound, format!("no stream {id}; it may have expired: start again"), true);
            return LoggedEvent::new(len, &body);
        }
    };
    LoggedEvent::new(error.next_seq, &EventBody::error(ErrorCode::GenerationLost, message, true))
}

/// A shared generation that ended: a complete answer is served again for the
/// cache window; any other end (error, flagged, cancelled, lost) never is.
async fn keep_or_release(inner: &Inner, request: &RequestKey, id: &StreamId, complete: bool) {
    let cache = inner.config.coalesce.cache;
    let kept = if complete && !cache.is_zero() {
        inner.store.hold_request(request.as_str(), id, cache).await
    } else {
        inner.store.release_request(request.as_str(), id).await
    };
    if let Err(error) = kept {
        // The key lapses by itself; until then starts find this log and judge it.
        tracing::warn!(stream_id = %id, %error, "could not update the request index");
    }
}

/// Who reads a stream.
#[derive(Clone, Copy)]
enum Reading<'a> {
    /// A client (SSE or WebSocket) of `owner`, counted in `attached_readers`:
    /// only `owner`'s streams exist for it.
    Client { owner: &'a str },
    /// A coalesced stream's relay of the generation answering its request.
    Relay,
}

/// Counts a reader on a live generation for as long as it is held (and, for a
/// client, in `gauge`).
struct ReaderGuard {
    generation: Arc<Generation>,
    gauge: Option<prometheus::IntGauge>,
}

impl ReaderGuard {
    fn attach(generation: Arc<Generation>, gauge: Option<prometheus::IntGauge>) -> Self {
        generation.readers.send_modify(|n| *n += 1);
        if let Some(gauge) = &gauge {
            gauge.inc();
        }
        Self { generation, gauge }
    }
}

impl Drop for ReaderGuard {
    fn drop(&mut self) {
        self.generation.readers.send_modify(|n| *n -= 1);
        if let Some(gauge) = &self.gauge {
            gauge.dec();
        }
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
        self.append_record(&EventRecord::new(body)).await
    }

    async fn append_record(&mut self, record: &EventRecord) -> Result<(), AppendFailed> {
        // Set at the first failure: the clock is not read per event.
        let mut deadline = None;
        let mut pause = Duration::from_millis(50);
        loop {
            match self.appender.append(self.next_seq, record).await {
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
/// a whole grace period; a stream no reader has come to yet (started by `POST`,
/// its reader on its way; or the shared log of a handed-over answer, its
/// relays coming over from the first asker's log) is given at least
/// [`FIRST_READER_WAIT`], so a short grace (even 0) does not end it before its
/// readers could come.
async fn abandoned(store: Arc<dyn EventStore>, id: StreamId, mut readers: watch::Receiver<usize>, grace: Duration) {
    let mut wait = if *readers.borrow() > 0 { grace } else { grace.max(FIRST_READER_WAIT) };
    loop {
        if readers.wait_for(|n| *n == 0).await.is_err() {
            return futures::future::pending().await;
        }
        let mut quiet_until = Instant::now() + wait;
        wait = grace;
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

/// Passes the events of a generation answering a coalesced request through,
/// counting the output tokens its provider produced into `produced`.
fn counted(events: EventStream, produced: Arc<std::sync::atomic::AtomicU64>, counter: crate::ai::providers::TokenCounter) -> EventStream {
    Box::pin(events.inspect(move |body| {
        if let EventBody::Chunk { token } = body {
            produced.fetch_add(counter.chunk(token), std::sync::atomic::Ordering::Relaxed);
        }
    }))
}

/// What an exchange with moderation names for stream `id`.
fn exchange_of(id: &StreamId, input: &BlockInput, principal: &str) -> Exchange {
    Exchange { stream_id: Some(id.clone()), principal: principal.to_owned(), block: input.block_type(), input: input.learner_text().into() }
}

/// Where a stream's events come from.
enum Work {
    /// The engine, through moderation. A generation that `answers` a request
    /// key (coalescing: its start claimed it) keeps it for the cache window
    /// when it completes, and gives it back otherwise.
    Generate { input: BlockInput, exchange: Exchange, answers: Option<RequestKey> },
    /// A relay of the generation answering a coalesced request, already
    /// moderated there; the `generation`'s own state when it runs in this
    /// process.
    Relay { block: crate::ai::blocks::BlockType, events: EventStream, generation: Option<(StreamId, Arc<Generation>)> },
    /// The rest of an answer its first asker handed over: the same engine
    /// stream, already moderated and counted, going on in a shared log.
    Continue { block: crate::ai::blocks::BlockType, events: EventStream, answers: RequestKey },
}

impl Work {
    fn block(&self) -> crate::ai::blocks::BlockType {
        match self {
            Self::Generate { input, .. } => input.block_type(),
            Self::Relay { block, .. } | Self::Continue { block, .. } => *block,
        }
    }
}

/// The shared log an answer goes on in once its first asker cancelled, and
/// the writer that has copied the first asker's events into it.
struct HandedOver {
    id: StreamId,
    generation: Arc<Generation>,
    writer: LogWriter,
    span: tracing::Span,
}

/// Runs one stream into its log until its terminal event, and, when its first
/// asker handed its answer over, the answer's rest into the shared log it goes
/// on in (in the same task: the tasks a drain waits for are the same).
async fn run(
    inner: Arc<Inner>,
    id: StreamId,
    work: Work,
    generation: Arc<Generation>,
    writer: LogWriter,
    permit: OwnedSemaphorePermit,
    reservation: Reservation,
) {
    let mut handed_over = run_generation(inner.clone(), id, work, generation, writer, Some(permit), Some(reservation)).await;
    while let Some((HandedOver { id, generation, writer, span }, work)) = handed_over.take() {
        let traced = generation.clone();
        let rest = run_generation(inner.clone(), id, work, generation, writer, None, None);
        handed_over = trace::within(&traced.trace, rest).instrument(span).await;
    }
}

/// Runs one stream into its log until its terminal event. The permit and the
/// reservation are a learner's stream's; a shared log holds neither. Returns
/// the shared log, and the work, of an answer handed over at its end.
async fn run_generation(
    inner: Arc<Inner>,
    id: StreamId,
    work: Work,
    generation: Arc<Generation>,
    mut writer: LogWriter,
    _permit: Option<OwnedSemaphorePermit>,
    reservation: Option<Reservation>,
) -> Option<(HandedOver, Work)> {
    let block = work.block();
    let provider = inner.engine.provider().name().to_owned();
    // Metrics of generations count what reached the provider: a relay is none,
    // and an answer handed over is the one generation it began as.
    let begins = matches!(work, Work::Generate { .. });
    if begins {
        inner.metrics.active_streams.inc();
    }
    let started = Instant::now();
    let meter = |events: EventStream| match &reservation {
        Some(reservation) => reservation.meter(events, inner.engine.token_counter()),
        None => events,
    };
    let (mut events, answers, source) = match work {
        // Metered before moderation: the learner is charged what the provider
        // produced, held back or not.
        Work::Generate { input, exchange, answers } => {
            let mut produced = inner.engine.stream(input);
            if answers.is_some() {
                produced = counted(produced, generation.produced.clone(), inner.engine.token_counter());
            }
            (inner.moderation.guard(meter(produced), exchange), answers, None)
        }
        // A relay's learner is charged what they were sent, as if they had
        // generated it alone.
        Work::Relay { events, generation, .. } => (meter(events), None, generation),
        // Moderated, counted and metered (its first asker's share) already.
        Work::Continue { events, answers, .. } => (events, Some(answers), None),
    };
    // A shared log's readers are learners' relays, which each outlive their
    // learner's last reader by the grace already: once none is left, no
    // learner can come back to it, so it stops at once (its upstream closed as
    // a cancel of a stream of one's own would). Its first readers are given
    // `FIRST_READER_WAIT` to come over from the first asker's log.
    let grace = if generation.shared { Duration::ZERO } else { inner.config.resume_grace };
    // Made once, not per event (each would register with its token and leave it
    // again), and polled only once they woke the task, not at every event.
    let mut abandoned = PolledWhenWoken::new(abandoned(inner.store.clone(), id.clone(), generation.readers.subscribe(), grace));
    let mut cancelled = PolledWhenWoken::new(generation.cancel.clone().cancelled_owned());
    let mut first_chunk = begins;
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
    // The first asker cancelled an answer others read: it goes on for them in
    // a shared log, before this stream's own `cancelled` lands.
    let handed_over = match (&ending, &answers) {
        (Ending::Cancelled(CancelReason::Requested), Some(request)) if !generation.shared => {
            hand_over(&inner, &id, block, request, &generation, writer.next_seq).await
        }
        _ => None,
    };
    let (events, answers) = match (handed_over.is_some(), answers) {
        (true, Some(request)) => (Some(events), Some(request)),
        (_, answers) => {
            // Dropping the engine's stream closes the provider request; dropping a
            // relay's, its reader of the generation it relays.
            drop(events);
            generation.upstream_closed.cancel();
            (None, answers)
        }
    };
    if let (Ending::Cancelled(_), Some((source_id, source))) = (&ending, &source) {
        // The last learner reading a shared log here: it stops now, and its
        // provider request is closed by the time this cancel is answered, as a
        // stream's own generation's would be. (Where other processes may read
        // it, the store counts their readers for a grace more: not waited
        // for. A first asker's own stream lives by its own grace.)
        let (mut source_id, mut source) = (source_id.clone(), source.clone());
        while let Some((next_id, next)) = source.successor.get().cloned() {
            (source_id, source) = (next_id, next);
        }
        let unread = *source.readers.borrow() == 0;
        if source.shared && unread && matches!(inner.store.reader_presence(&source_id).await, Ok(None)) {
            let _ = tokio::time::timeout(CANCEL_WAIT, source.upstream_closed.cancelled()).await;
        }
    }
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
    if let (Some(request), None) = (&answers, &events) {
        keep_or_release(&inner, request, &id, outcome == "complete").await;
    }
    if let Some(reservation) = reservation {
        match &source {
            // A learner of a shared answer that did not complete is charged
            // what the provider produced until then, as if they had generated
            // it alone, not only what moderation let through to them. (A
            // generation in another process: what they were sent.)
            Some((_, shared)) if outcome != "complete" => {
                let produced = shared.produced.load(std::sync::atomic::Ordering::Relaxed);
                let used = reservation.used().max(produced);
                reservation.settle_to(used).await;
            }
            _ => reservation.settle().await,
        }
    }
    trace::ended(&outcome, &generation.trace);
    if (begins || generation.shared) && events.is_none() {
        inner.metrics.outcomes.with_label_values(&[block.as_str(), &provider, &outcome]).inc();
        inner.metrics.active_streams.dec();
    }
    inner.live.lock().unwrap().remove(&id);
    tracing::info!(stream_id = %id, block = block.as_str(), %outcome, elapsed_ms = started.elapsed().as_millis() as u64, "generation ended");
    match (handed_over, events, answers) {
        (Some(handed_over), Some(events), Some(answers)) => Some((handed_over, Work::Continue { block, events, answers })),
        _ => None,
    }
}

/// Hands the answer of the first asker's stream `from`, cancelled with `len`
/// events in its log, over to a shared log when others joined it: creates the
/// log, copies the events into it at the same seqs, points the request index
/// at it (only if it still names `from`) and records it as `from`'s successor.
/// `None` when nobody joined, or the handover failed: `from` then ends as any
/// cancelled stream, and whoever reads it gets `generation_lost`.
async fn hand_over(
    inner: &Arc<Inner>,
    from: &StreamId,
    block: crate::ai::blocks::BlockType,
    request: &RequestKey,
    generation: &Arc<Generation>,
    len: u64,
) -> Option<HandedOver> {
    match inner.store.request_joined(request.as_str(), from).await {
        Ok(true) => {}
        Ok(false) => return None,
        Err(error) => {
            tracing::warn!(stream_id = %from, %error, "could not learn whether a cancelled answer was joined; it ends");
            return None;
        }
    }
    let to = StreamId::generate();
    let (successor, mut writer, span) = match inner.create(&to, block, SHARED_OWNER, Some(generation.as_ref())).await {
        Ok(created) => created,
        Err(error) => {
            tracing::warn!(stream_id = %from, %error, "could not create the log a cancelled answer would go on in; it ends");
            return None;
        }
    };
    let moved = tokio::time::timeout(APPEND_PATIENCE, async {
        copy_log(inner.store.as_ref(), from, len, &mut writer).await?;
        let live_ttl = inner.config.coalesce.live_ttl;
        // Its joiners read on whatever the index names now: a fresh start may
        // have taken the key since (the new log then answers them only).
        if !inner.store.hand_over_request(request.as_str(), from, &to, live_ttl).await.map_err(|error| error.to_string())? {
            tracing::debug!(stream_id = %from, successor = %to, "the request index names a fresher answer; the handed-over one serves its joiners only");
        }
        inner.store.set_successor(from, &to).await.map_err(|error| error.to_string())
    })
    .await
    .unwrap_or_else(|_| Err("the store took too long".to_owned()));
    if let Err(error) = moved {
        tracing::warn!(stream_id = %from, successor = %to, %error, "could not hand a cancelled answer over; it ends");
        // Nobody reads the new log: it ends at once, and names no answer.
        let _ = writer.append(&EventBody::Cancelled { reason: CancelReason::Abandoned }).await;
        inner.store.release(&to);
        let _ = inner.store.release_request(request.as_str(), &to).await;
        inner.live.lock().unwrap().remove(&to);
        return None;
    }
    let _ = generation.successor.set((to.clone(), successor.clone()));
    tracing::info!(stream_id = %from, successor = %to, "the first asker cancelled; the answer goes on for the others");
    Some(HandedOver { id: to, generation: successor, writer, span })
}

/// Copies the first `len` events of `from`'s log into `writer`'s, at the same seqs.
async fn copy_log(store: &dyn EventStore, from: &StreamId, len: u64, writer: &mut LogWriter) -> Result<(), String> {
    let mut follower = store.follow(from, None);
    while writer.next_seq < len {
        let batch = match follower.next().await {
            Some(Ok(batch)) => batch,
            Some(Err(error)) => return Err(format!("its log could not be read ({:?})", error.cause)),
            None => return Err("its log ended early".to_owned()),
        };
        for event in batch.events.iter().take_while(|event| event.seq < len) {
            if event.seq != writer.next_seq {
                return Err(format!("its log has no event {}", writer.next_seq));
            }
            writer.append_record(&EventRecord::of(event)).await.map_err(|failed| match failed {
                AppendFailed::Ended => "the new log was ended".to_owned(),
                AppendFailed::Store(error) => error.to_string(),
            })?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use async_trait::async_trait;
    use tokio::sync::Notify;

    use super::*;
    use crate::ai::blocks::BlockType;
    use crate::ai::providers::demo::DemoProvider;
    use crate::ai::runtime::engine::EngineConfig;
    use crate::ai::streaming::store::memory::MemoryStore;
    use crate::ai::streaming::store::{Follower, LogStatus};
    use crate::auth::Principal;
    use crate::config::settings::{DemoSettings, LimitSettings};
    use crate::limits::memory::MemoryLimitStore;
    use crate::limits::{LimitError, Limits};

    /// The memory store, whose `create` waits until the test lets it through: the
    /// moment between a start claiming its key and its stream existing.
    struct SlowCreate {
        store: MemoryStore,
        entered: Notify,
        proceed: Notify,
    }

    #[async_trait]
    impl crate::ai::streaming::store::RequestIndex for SlowCreate {
        async fn claim_request(
            &self,
            key: &str,
            id: &StreamId,
            ttl: Duration,
            claim: crate::ai::streaming::store::Claim<'_>,
        ) -> Result<Option<StreamId>, StoreError> {
            self.store.claim_request(key, id, ttl, claim).await
        }
        async fn hold_request(&self, key: &str, id: &StreamId, ttl: Duration) -> Result<(), StoreError> {
            self.store.hold_request(key, id, ttl).await
        }
        async fn release_request(&self, key: &str, id: &StreamId) -> Result<(), StoreError> {
            self.store.release_request(key, id).await
        }
        async fn request_joined(&self, key: &str, id: &StreamId) -> Result<bool, StoreError> {
            self.store.request_joined(key, id).await
        }
        async fn hand_over_request(&self, key: &str, from: &StreamId, to: &StreamId, ttl: Duration) -> Result<bool, StoreError> {
            self.store.hand_over_request(key, from, to, ttl).await
        }
    }

    #[async_trait]
    impl EventStore for SlowCreate {
        async fn create(&self, id: &StreamId, owner: &str, cancel: CancellationToken) -> Result<Box<dyn Appender>, StoreError> {
            self.entered.notify_one();
            self.proceed.notified().await;
            self.store.create(id, owner, cancel).await
        }
        async fn status(&self, id: &StreamId) -> Result<LogStatus, StoreError> {
            self.store.status(id).await
        }
        fn follow(&self, id: &StreamId, after: Option<u64>) -> Follower {
            self.store.follow(id, after)
        }
        async fn request_cancel(&self, id: &StreamId) -> Result<(), StoreError> {
            self.store.request_cancel(id).await
        }
        async fn reader_presence(&self, id: &StreamId) -> Result<Option<Duration>, StoreError> {
            self.store.reader_presence(id).await
        }
        fn release(&self, id: &StreamId) {
            self.store.release(id)
        }
        async fn set_successor(&self, id: &StreamId, successor: &StreamId) -> Result<(), StoreError> {
            self.store.set_successor(id, successor).await
        }
        async fn successor(&self, id: &StreamId) -> Result<Option<StreamId>, StoreError> {
            self.store.successor(id).await
        }
        async fn claim_key(&self, key: &str, claim: KeyClaim, ttl: Duration) -> Result<Option<KeyClaim>, StoreError> {
            self.store.claim_key(key, claim, ttl).await
        }
        async fn hold_key(&self, key: &str, id: &StreamId, ttl: Duration) -> Result<(), StoreError> {
            self.store.hold_key(key, id, ttl).await
        }
        async fn release_key(&self, key: &str, id: &StreamId) -> Result<(), StoreError> {
            self.store.release_key(key, id).await
        }
        async fn ready(&self) -> Result<(), StoreError> {
            Ok(())
        }
    }

    fn manager(store: Arc<dyn EventStore>) -> StreamManager {
        // Coalescing off: these tests are about one learner's starts.
        let coalesce = CoalesceConfig { enabled: false, cache: Duration::ZERO, live_ttl: Duration::from_secs(60) };
        manager_with(store, DemoSettings::unpaced(), coalesce)
    }

    /// A manager whose learners share answers (answers cached 300 s), with the
    /// demo model at `tokens_per_second`.
    fn coalescing(store: Arc<dyn EventStore>, tokens_per_second: f64) -> StreamManager {
        let coalesce = CoalesceConfig { enabled: true, cache: Duration::from_secs(300), live_ttl: Duration::from_secs(60) };
        manager_with(store, DemoSettings { tokens_per_second, ..DemoSettings::unpaced() }, coalesce)
    }

    fn manager_with(store: Arc<dyn EventStore>, demo: DemoSettings, coalesce: CoalesceConfig) -> StreamManager {
        let config = EngineConfig {
            idle_timeout: Duration::from_secs(5),
            max_duration: Duration::from_secs(60),
            max_retries: 0,
            retry_base: Duration::ZERO,
        };
        let engine = Engine::new(Arc::new(DemoProvider::new(demo)), config);
        let config = ManagerConfig {
            resume_grace: Duration::from_secs(30),
            retention: Duration::from_secs(300),
            max_concurrent_streams: 10,
            coalesce,
        };
        // The manager's own behaviour, without moderation's (tested in ai::moderation and the API tests).
        let vars = [("MODERATION".to_owned(), "off".to_owned())].into_iter().collect();
        let settings = crate::config::settings::Settings::from_map(&vars).expect("valid settings");
        let moderation = crate::ai::moderation::Moderation::new(&settings.moderation, 0, None, Metrics::new());
        StreamManager::new(store, engine, moderation, config, Metrics::new(), CancellationToken::new())
    }

    fn limits() -> Limits {
        let quotas = LimitSettings { concurrent_streams: None, starts_per_minute: None, tokens_per_day: None, streams_per_socket: 8 };
        Limits::new(Arc::new(MemoryLimitStore::new(quotas.clone())), quotas, CancellationToken::new())
    }

    fn eli10() -> BlockInput {
        BlockInput::parse(BlockType::ExplainEli10, serde_json::json!({"topic": "tides"}).as_object().unwrap()).unwrap()
    }

    fn memory() -> MemoryStore {
        MemoryStore::new(Duration::from_secs(300), 1 << 20, prometheus::IntGauge::new("retained", "test").unwrap())
    }

    #[tokio::test]
    async fn a_concurrent_retry_waits_for_the_stream_its_key_names_to_exist() {
        let store = Arc::new(SlowCreate { store: memory(), entered: Notify::new(), proceed: Notify::new() });
        let manager = manager(store.clone());
        let (limits, ada) = (limits(), Principal::learner("ada"));
        let first = {
            let (manager, limits, ada) = (manager.clone(), limits.clone(), ada.clone());
            tokio::spawn(async move {
                manager.start(eli10(), Some("k".into()), ada.id(), &Sharing::of(&ada, false), || limits.admit(&ada, 400)).await
            })
        };
        // The first start holds the key and is creating its stream.
        tokio::time::timeout(Duration::from_secs(5), store.entered.notified()).await.expect("the first start creates its stream");
        let retry = {
            let (manager, limits, ada) = (manager.clone(), limits.clone(), ada.clone());
            tokio::spawn(async move {
                manager.start(eli10(), Some("k".into()), ada.id(), &Sharing::of(&ada, false), || limits.admit(&ada, 400)).await
            })
        };
        // While no stream exists, the retry has no id to give.
        tokio::time::sleep(KEY_FOLLOW_PAUSE * 10).await;
        assert!(!retry.is_finished(), "the retry answered before its stream existed");
        store.proceed.notify_one();
        let first = first.await.unwrap().map_err(|_| "first start failed").unwrap();
        let retry = tokio::time::timeout(Duration::from_secs(5), retry).await.expect("the retry answers").unwrap();
        let retry = retry.map_err(|_| "retry failed").unwrap();
        assert!(matches!(first, Started::New(_)));
        assert_eq!(retry, Started::Existing(first.stream_id().clone()));
        assert!(store.status(retry.stream_id()).await.is_ok(), "the id the retry got exists");
    }

    #[tokio::test]
    async fn a_known_key_is_answered_without_asking_admission_and_a_refused_start_frees_its_key() {
        let manager = manager(Arc::new(memory()));
        let refuse = || async { Err::<Reservation, _>(LimitError::Unavailable("refused in this test".into())) };
        let alone = Sharing { scope: "principal:jwt:ada".into(), fresh: false };
        let refused = manager.start(eli10(), Some("k".into()), "jwt:ada", &alone, refuse).await;
        assert!(matches!(refused, Err(StartError::Refused(_))));
        let (limits, ada) = (limits(), Principal::learner("ada"));
        let started = manager
            .start(eli10(), Some("k".into()), ada.id(), &Sharing::of(&ada, false), || limits.admit(&ada, 400))
            .await
            .map_err(|_| ())
            .unwrap();
        assert!(matches!(started, Started::New(_)), "the refused start gave its key back");
        let again = manager.start(eli10(), Some("k".into()), ada.id(), &alone, refuse).await.map_err(|_| ()).unwrap();
        assert_eq!(again, Started::Existing(started.stream_id().clone()), "the limits were not asked");
    }

    /// Learners of one class.
    fn class() -> Sharing {
        Sharing { scope: "class:7b".into(), fresh: false }
    }

    /// Starts `learner`'s stream of the class's question.
    async fn ask(manager: &StreamManager, limits: &Limits, learner: &str) -> StreamId {
        let principal = Principal::learner(learner);
        let started = manager.start(eli10(), None, principal.id(), &class(), || limits.admit(&principal, 400)).await;
        started.map_err(|_| "the start failed").unwrap().stream_id().clone()
    }

    /// `learner`'s reader of their stream `id`, from its first event.
    async fn reader(manager: &StreamManager, learner: &str, id: &StreamId) -> EventReader {
        match manager.open(id, None, Principal::learner(learner).id()).await {
            Ok(Opened::Events(reader)) => reader,
            _ => panic!("{learner} reads their stream"),
        }
    }

    /// A reader's next `n` events.
    async fn take(reader: &mut EventReader, n: usize) -> Vec<LoggedEvent> {
        let mut events = Vec::new();
        while events.len() < n {
            let batch = tokio::time::timeout(Duration::from_secs(10), reader.next()).await.expect("events in time").expect("more events");
            events.extend(batch.events);
        }
        events
    }

    /// A reader's events up to its end.
    async fn rest(reader: EventReader) -> Vec<LoggedEvent> {
        let batches: Vec<EventBatch> =
            tokio::time::timeout(Duration::from_secs(10), reader.collect()).await.expect("the stream ends in time");
        batches.into_iter().flat_map(|batch| batch.events).collect()
    }

    fn bodies(events: &[LoggedEvent]) -> Vec<EventBody> {
        events.iter().map(|event| event.body().expect("a valid event")).collect()
    }

    fn text(events: &[EventBody]) -> String {
        events.iter().filter_map(|body| if let EventBody::Chunk { token } = body { Some(token.as_str()) } else { None }).collect()
    }

    /// The `shared` and `cached` marks of a stream's `start`.
    fn marks(events: &[EventBody]) -> (bool, bool) {
        match events.first() {
            Some(EventBody::Start { shared, cached, .. }) => (*shared, *cached),
            other => panic!("a stream begins with its start: {other:?}"),
        }
    }

    fn assert_contiguous(events: &[LoggedEvent]) {
        let seqs: Vec<u64> = events.iter().map(|event| event.seq).collect();
        assert_eq!(seqs, (0..events.len() as u64).collect::<Vec<_>>(), "no gap, no duplicate");
        assert_eq!(events.iter().filter(|event| event.is_terminal()).count(), 1, "one terminal event");
        assert!(events.last().unwrap().is_terminal());
    }

    /// Once every stream of `manager` has ended (its last event read, its task finishing).
    async fn settled(manager: &StreamManager) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while manager.live_count() > 0 {
            assert!(Instant::now() < deadline, "every stream ends");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn outcomes(manager: &StreamManager, outcome: &str) -> u64 {
        manager.inner.metrics.outcomes.with_label_values(&["explain-eli10", "demo", outcome]).get()
    }

    #[tokio::test]
    async fn a_coalescible_stream_nobody_joins_writes_its_own_log_only_and_is_the_answer_served_next() {
        let store = Arc::new(memory());
        let (manager, limits) = (coalescing(store.clone(), 0.0), limits());
        let ada = ask(&manager, &limits, "ada").await;
        let events = rest(reader(&manager, "ada", &ada).await).await;
        assert_contiguous(&events);
        let ada_events = bodies(&events);
        assert_eq!((marks(&ada_events), events.last().unwrap().event_type), ((false, false), EventType::Complete));
        assert_eq!(store.log_count(), 1, "one log: the learner's own, no shared one beside it");
        assert_eq!(&*store.status(&ada).await.unwrap().owner, Principal::learner("ada").id());
        // Her stream is the class's answer: the next identical start replays it.
        let bo = ask(&manager, &limits, "bo").await;
        let bo_events = bodies(&rest(reader(&manager, "bo", &bo).await).await);
        assert_eq!((marks(&bo_events), text(&bo_events)), ((false, true), text(&ada_events)));
    }

    #[tokio::test]
    async fn a_first_asker_who_cancels_while_another_reads_hands_the_answer_over_whole_and_it_is_served_next() {
        let store = Arc::new(memory());
        let (manager, limits) = (coalescing(store.clone(), 100.0), limits());
        let ada = ask(&manager, &limits, "ada").await;
        let bo = ask(&manager, &limits, "bo").await;
        let (mut ada_reader, mut bo_reader) = (reader(&manager, "ada", &ada).await, reader(&manager, "bo", &bo).await);
        let mut bo_events = take(&mut bo_reader, 3).await;
        let mut ada_events = take(&mut ada_reader, 3).await;
        assert_eq!(manager.cancel(&ada, Principal::learner("ada").id()).await.unwrap(), CancelOutcome::Cancelled);
        ada_events.extend(rest(ada_reader).await);
        assert_contiguous(&ada_events);
        assert!(
            matches!(bodies(&ada_events).last(), Some(EventBody::Cancelled { reason: CancelReason::Requested })),
            "the first asker's own stream ends cancelled: {:?}",
            bodies(&ada_events)
        );
        // The count of what the provider produced follows the answer: the
        // shared log's starts with what the first asker's had counted.
        let counter = manager.engine().token_counter();
        let before: u64 =
            bodies(&ada_events).iter().map(|body| if let EventBody::Chunk { token } = body { counter.chunk(token) } else { 0 }).sum();
        let shared = manager.inner.live.lock().unwrap().values().find(|generation| generation.shared).cloned();
        let produced = shared.expect("the answer goes on in a shared log").produced.load(std::sync::atomic::Ordering::Relaxed);
        assert!(before > 0 && produced >= before, "{produced} produced, {before} before the handover");
        // A learner asking now joins the answer where it goes on, from its first event.
        let dee = ask(&manager, &limits, "dee").await;
        let dee_reader = reader(&manager, "dee", &dee).await;
        bo_events.extend(rest(bo_reader).await);
        assert_contiguous(&bo_events);
        let bo_bodies = bodies(&bo_events);
        let Some(EventBody::Complete { result, .. }) = bo_bodies.last() else { panic!("the joiner gets the whole answer: {bo_bodies:?}") };
        assert_eq!(marks(&bo_bodies), (true, false));
        assert!(!text(&bo_bodies).is_empty());
        assert_eq!(result["markdown"], text(&bo_bodies), "every chunk once, across the handover");
        let dee_events = bodies(&rest(dee_reader).await);
        assert_eq!((marks(&dee_events), text(&dee_events)), ((true, false), text(&bo_bodies)));
        assert_eq!(store.log_count(), 4, "ada's, bo's, dee's, and the shared log the answer went on in");
        // The answer, whole, is what the class is served next.
        let cy = ask(&manager, &limits, "cy").await;
        let cy_events = bodies(&rest(reader(&manager, "cy", &cy).await).await);
        assert_eq!((marks(&cy_events), text(&cy_events)), ((false, true), text(&bo_bodies)));
        settled(&manager).await;
        assert_eq!((outcomes(&manager, "complete"), outcomes(&manager, "cancelled_requested")), (1, 0), "one generation, which completed");
    }

    #[tokio::test]
    async fn a_first_asker_who_cancels_an_answer_nobody_joined_ends_it_and_gives_its_key_back() {
        let store = Arc::new(memory());
        let (manager, limits) = (coalescing(store.clone(), 100.0), limits());
        let ada = ask(&manager, &limits, "ada").await;
        let mut ada_reader = reader(&manager, "ada", &ada).await;
        take(&mut ada_reader, 3).await;
        assert_eq!(manager.cancel(&ada, Principal::learner("ada").id()).await.unwrap(), CancelOutcome::Cancelled);
        let ada_events = bodies(&rest(ada_reader).await);
        assert!(matches!(ada_events.last(), Some(EventBody::Cancelled { reason: CancelReason::Requested })), "{ada_events:?}");
        assert_eq!(store.log_count(), 1, "no shared log");
        let bo = ask(&manager, &limits, "bo").await;
        let mut bo_reader = reader(&manager, "bo", &bo).await;
        assert_eq!(marks(&bodies(&take(&mut bo_reader, 1).await)), (false, false), "the next start generates anew");
    }
}
