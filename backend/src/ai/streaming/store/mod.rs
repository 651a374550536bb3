//! Where event logs live. The trait's semantics fit Redis Streams (append with an
//! explicit seq, read after a seq, block for the live tail, a cancel channel,
//! expiry); the memory store is the embedded default.

pub mod memory;

use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;

use super::events::{LoggedEvent, StreamId};

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StoreError {
    #[error("no log for stream {0}")]
    NotFound(StreamId),
    #[error("stream {stream_id}: expected seq {expected}, got {got}")]
    OutOfOrder { stream_id: StreamId, expected: u64, got: u64 },
    #[error("stream {0} is already finished")]
    Finished(StreamId),
    #[error("store unavailable: {0}")]
    Unavailable(String),
}

/// Where a log stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogStatus {
    /// Number of events; the next seq.
    pub len: u64,
    /// A terminal event has been appended.
    pub finished: bool,
}

#[async_trait]
pub trait EventStore: Send + Sync + 'static {
    /// Creates an empty log.
    async fn create(&self, id: &StreamId) -> Result<(), StoreError>;

    /// Appends an event; its seq must be the log's length. A terminal event
    /// finishes the log, which then stays readable for the retention period.
    async fn append(&self, id: &StreamId, event: LoggedEvent) -> Result<(), StoreError>;

    /// Up to `limit` events with seq greater than `after` (all when `None`).
    async fn read_after(&self, id: &StreamId, after: Option<u64>, limit: usize) -> Result<Vec<LoggedEvent>, StoreError>;

    /// Resolves once the log holds an event after `after`, or when `wait` passes.
    async fn wait_after(&self, id: &StreamId, after: Option<u64>, wait: Duration) -> Result<(), StoreError>;

    async fn status(&self, id: &StreamId) -> Result<LogStatus, StoreError>;

    /// Asks whichever process runs the generation to cancel it.
    async fn request_cancel(&self, id: &StreamId) -> Result<(), StoreError>;

    /// Cancel requests, for the generations this process runs.
    fn cancel_requests(&self) -> BoxStream<'static, StreamId>;
}
