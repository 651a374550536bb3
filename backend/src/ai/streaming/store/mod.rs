//! Where event logs live, and who follows them. The trait's semantics fit Redis
//! Streams: append at an explicit seq, follow a log from a seq (replay, then the
//! live tail), leases on the logs a process generates, reader presence, a cancel
//! channel, expiry. The memory store is the embedded default.
//!
//! Following a tail is the store's job, as expiring keys is mini-redis's `Db`'s:
//! the manager asks for a stream of events and decides lifecycles; how readers
//! are woken (a `Notify` per log in memory, one pub/sub subscription per process
//! with Redis) stays behind this trait.

pub mod memory;
pub mod redis;
pub mod requests;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;
use tokio_util::sync::CancellationToken;

use super::events::{EventRecord, LoggedEvent, StreamId};
pub use requests::{Claim, RequestIndex};

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StoreError {
    #[error("no log for stream {0}")]
    NotFound(StreamId),
    /// The log existed, held `len` events, belonged to `owner`, and has expired since.
    #[error("the log of stream {stream_id} expired")]
    Expired { stream_id: StreamId, len: u64, owner: Arc<str> },
    #[error("stream {stream_id}: expected seq {expected}, got {got}")]
    OutOfOrder { stream_id: StreamId, expected: u64, got: u64 },
    #[error("stream {0} is already finished")]
    Finished(StreamId),
    /// The store did not answer (in time). The text is for logs, never for clients.
    #[error("the stream store is unavailable: {0}")]
    Unavailable(String),
}

/// Where a log stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogStatus {
    /// Number of events; the next seq.
    pub len: u64,
    /// A terminal event has been appended.
    pub finished: bool,
    /// The principal that started the stream.
    pub owner: Arc<str>,
}

/// Why a follower stopped before its log's terminal event. `next_seq` is the seq
/// the store would have given the next event: a reader's own closing event takes
/// it, so it never names an event the reader was sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FollowError {
    pub next_seq: u64,
    pub cause: FollowFailure,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FollowFailure {
    /// The store stopped answering.
    Unreachable,
    /// The store answers but no longer has the log (e.g. Redis restarted without persistence).
    LogLost,
    /// The log ended with `len` events and its retention ran out while it was
    /// read: the reader learns what a new request would (`stream_not_found`).
    Expired { len: u64 },
}

/// Events that were ready together, in seq order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventBatch {
    pub events: Vec<LoggedEvent>,
    /// When the last of them reached this process (appended here, or read from
    /// Redis), if it was the newest event of its log then: the start of the
    /// delay the server adds to the live tail.
    pub tail_since: Option<std::time::Instant>,
    /// Its events are in no log: a reader's own closing event (its store
    /// failed). Its seq is only the one the log would have given next, which
    /// a generator elsewhere may still log, so it must never name a position
    /// to resume from: SSE frames it without an `id:` line.
    pub unlogged: bool,
}

impl EventBatch {
    /// Events read from a log.
    pub fn logged(events: Vec<LoggedEvent>, tail_since: Option<std::time::Instant>) -> Self {
        Self { events, tail_since, unlogged: false }
    }

    pub fn is_terminal(&self) -> bool {
        self.events.last().is_some_and(LoggedEvent::is_terminal)
    }
}

/// A log's events after a seq: replayed, then the live tail, in batches; the
/// stream ends after the batch holding the terminal event, or with one error.
pub type Follower = BoxStream<'static, Result<EventBatch, FollowError>>;

/// The writer of one log, held by its generation.
#[async_trait]
pub trait Appender: Send + Sync {
    /// Appends `record` at `seq`, which must be the log's length; nothing follows
    /// a terminal event. Retrying an append whose outcome was not learned is safe:
    /// finding the very same record at `seq` counts as success.
    async fn append(&self, seq: u64, record: &EventRecord) -> Result<(), StoreError>;
}

/// Logs, and the request index of coalescing ([`RequestIndex`]), which lives
/// where the logs do so every process sharing them agrees on it.
#[async_trait]
pub trait EventStore: RequestIndex + Send + Sync + 'static {
    /// Creates an empty log of `owner`'s stream whose generator is this process,
    /// and its writer: the store holds the log's lease (renewing it where several
    /// processes share the store) until the terminal event or
    /// [`EventStore::release`]. Until then a cancel request for the stream, made
    /// through any process, cancels `cancel`: the one way a cancel travels.
    async fn create(&self, id: &StreamId, owner: &str, cancel: CancellationToken) -> Result<Box<dyn Appender>, StoreError>;

    async fn status(&self, id: &StreamId) -> Result<LogStatus, StoreError>;

    /// Follows a log from the event after `after` (from the first when `None`).
    fn follow(&self, id: &StreamId, after: Option<u64>) -> Follower;

    /// Asks whichever process generates the stream (this one included) to
    /// cancel it: the `cancel` token given to [`EventStore::create`] is
    /// cancelled there. A stream that no process generates any more (its
    /// generator died) ends `cancelled` here.
    async fn request_cancel(&self, id: &StreamId) -> Result<(), StoreError>;

    /// How much longer some process sharing the store (this one included)
    /// counts a reader of the stream as present: one attached now, or one
    /// that left less than the resume grace ago. `None`: nobody, anywhere.
    async fn reader_presence(&self, id: &StreamId) -> Result<Option<Duration>, StoreError>;

    /// Gives up this process's lease on a log it could not finish.
    fn release(&self, id: &StreamId);

    /// Records that the answer in `id`'s log goes on in `successor`'s log from
    /// the seq at which `id`'s ends (coalescing's handover); written before
    /// `id`'s terminal event, so a reader that meets that event finds it.
    async fn set_successor(&self, id: &StreamId, successor: &StreamId) -> Result<(), StoreError>;

    /// The log `id`'s answer went on in, if it was handed over.
    async fn successor(&self, id: &StreamId) -> Result<Option<StreamId>, StoreError>;

    /// Claims an idempotency key for stream `id` for `ttl`, atomically. When another
    /// start holds it, returns that claim instead.
    async fn claim_key(&self, key: &str, claim: KeyClaim, ttl: Duration) -> Result<Option<KeyClaim>, StoreError>;

    /// Keeps a claim for `ttl` from now (its stream exists), if it is still `id`'s.
    async fn hold_key(&self, key: &str, id: &StreamId, ttl: Duration) -> Result<(), StoreError>;

    /// Gives a claim back (its start failed), if it is still `id`'s.
    async fn release_key(&self, key: &str, id: &StreamId) -> Result<(), StoreError>;

    /// Whether the store answers, for `/readyz`.
    async fn ready(&self) -> Result<(), StoreError>;

    /// Keeps the generator's W3C `traceparent` with the stream's metadata, for a
    /// reader in another process to link its span to (tracing only). A store of
    /// one process keeps nothing: its readers find the generation itself.
    async fn set_traceparent(&self, _id: &StreamId, _traceparent: &str) -> Result<(), StoreError> {
        Ok(())
    }

    /// The generator's `traceparent`, when one was kept.
    async fn traceparent(&self, _id: &StreamId) -> Result<Option<String>, StoreError> {
        Ok(None)
    }
}

/// Who holds an idempotency key: the stream it started and the request's
/// fingerprint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyClaim {
    pub stream_id: StreamId,
    pub fingerprint: String,
}

/// Events read from a log per batch.
pub const READ_BATCH: usize = 512;
