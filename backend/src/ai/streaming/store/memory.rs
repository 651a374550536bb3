//! The embedded event store: logs in process memory.
//!
//! Each log is a `Vec` indexed by seq plus a `watch` of its length that readers wait
//! on, so fan-out costs one wake-up per reader and a slow reader never makes the
//! writer buffer anything: it re-reads the log at its own pace. Finished logs are
//! kept for the retention period within a byte bound, oldest evicted first.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;
use futures::StreamExt;
use tokio::sync::{broadcast, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::BroadcastStream;

use super::{EventStore, KeyClaim, LogStatus, StoreError};
use crate::ai::streaming::events::{LoggedEvent, StreamId};

struct Log {
    owner: String,
    events: Mutex<Vec<LoggedEvent>>,
    /// Length of `events`, for readers waiting on the live tail.
    len: watch::Sender<u64>,
}

/// Idempotency keys kept at most; the oldest go first.
const MAX_KEYS: usize = 100_000;

#[derive(Default)]
struct Index {
    logs: HashMap<StreamId, Arc<Log>>,
    /// Finished logs in finishing order, with their size.
    finished: VecDeque<(Instant, StreamId, usize)>,
    finished_bytes: usize,
    keys: HashMap<String, (KeyClaim, Instant)>,
}

pub struct MemoryStore {
    index: Mutex<Index>,
    retention: Duration,
    max_finished_bytes: usize,
    cancels: broadcast::Sender<StreamId>,
    /// Mirrors `finished_bytes` for `/metrics`.
    retained_bytes: prometheus::IntGauge,
}

impl MemoryStore {
    pub fn new(retention: Duration, max_finished_bytes: usize, retained_bytes: prometheus::IntGauge) -> Self {
        Self { index: Mutex::default(), retention, max_finished_bytes, cancels: broadcast::channel(1024).0, retained_bytes }
    }

    fn log(&self, id: &StreamId) -> Result<Arc<Log>, StoreError> {
        let mut index = self.index.lock().unwrap();
        self.evict(&mut index);
        index.logs.get(id).cloned().ok_or_else(|| StoreError::NotFound(id.clone()))
    }

    fn evict(&self, index: &mut Index) {
        let now = Instant::now();
        while let Some((finished_at, _, bytes)) = index.finished.front() {
            let expired = now.duration_since(*finished_at) >= self.retention;
            if !expired && index.finished_bytes <= self.max_finished_bytes {
                break;
            }
            let bytes = *bytes;
            let (_, id, _) = index.finished.pop_front().expect("front exists");
            index.logs.remove(&id);
            index.finished_bytes -= bytes;
        }
        self.retained_bytes.set(index.finished_bytes as i64);
    }

    /// Bytes held by finished logs, for tests and metrics.
    pub fn finished_bytes(&self) -> usize {
        self.index.lock().unwrap().finished_bytes
    }

    pub fn log_count(&self) -> usize {
        self.index.lock().unwrap().logs.len()
    }
}

#[async_trait]
impl EventStore for MemoryStore {
    async fn create(&self, id: &StreamId, owner: &str) -> Result<(), StoreError> {
        let log = Arc::new(Log { owner: owner.to_owned(), events: Mutex::default(), len: watch::channel(0).0 });
        let mut index = self.index.lock().unwrap();
        self.evict(&mut index);
        index.logs.insert(id.clone(), log);
        Ok(())
    }

    async fn append(&self, id: &StreamId, event: LoggedEvent) -> Result<(), StoreError> {
        let log = self.log(id)?;
        let terminal = event.is_terminal();
        let (len, bytes) = {
            let mut events = log.events.lock().unwrap();
            if events.last().is_some_and(LoggedEvent::is_terminal) {
                return Err(StoreError::Finished(id.clone()));
            }
            let expected = events.len() as u64;
            if event.seq != expected {
                return Err(StoreError::OutOfOrder { stream_id: id.clone(), expected, got: event.seq });
            }
            events.push(event);
            let bytes = if terminal { events.iter().map(LoggedEvent::size).sum() } else { 0 };
            (events.len() as u64, bytes)
        };
        log.len.send_replace(len);
        if terminal {
            let mut index = self.index.lock().unwrap();
            index.finished.push_back((Instant::now(), id.clone(), bytes));
            index.finished_bytes += bytes;
            self.evict(&mut index);
        }
        Ok(())
    }

    async fn read_after(&self, id: &StreamId, after: Option<u64>, limit: usize) -> Result<Vec<LoggedEvent>, StoreError> {
        let log = self.log(id)?;
        let events = log.events.lock().unwrap();
        let from = after.map_or(0, |seq| usize::try_from(seq).unwrap_or(usize::MAX).saturating_add(1)).min(events.len());
        let to = from.saturating_add(limit).min(events.len());
        Ok(events[from..to].to_vec())
    }

    async fn wait_after(&self, id: &StreamId, after: Option<u64>, wait: Duration) -> Result<(), StoreError> {
        let mut len = self.log(id)?.len.subscribe();
        let wanted = after.map_or(1, |seq| seq.saturating_add(2));
        // Timing out is an answer too: the caller re-checks and waits again.
        let _ = tokio::time::timeout(wait, len.wait_for(|len| *len >= wanted)).await;
        Ok(())
    }

    async fn status(&self, id: &StreamId) -> Result<LogStatus, StoreError> {
        let log = self.log(id)?;
        let events = log.events.lock().unwrap();
        Ok(LogStatus { len: events.len() as u64, finished: events.last().is_some_and(LoggedEvent::is_terminal), owner: log.owner.clone() })
    }

    async fn request_cancel(&self, id: &StreamId) -> Result<(), StoreError> {
        self.log(id)?;
        // No receiver only means no generation runs here to cancel.
        let _ = self.cancels.send(id.clone());
        Ok(())
    }

    fn cancel_requests(&self) -> BoxStream<'static, StreamId> {
        BroadcastStream::new(self.cancels.subscribe()).filter_map(|r| async move { r.ok() }).boxed()
    }

    async fn renew_leases(&self, _ids: &[StreamId]) -> Result<(), StoreError> {
        // One process: every unfinished log is being generated here.
        Ok(())
    }

    async fn is_generating(&self, id: &StreamId) -> Result<bool, StoreError> {
        Ok(!self.status(id).await?.finished)
    }

    async fn claim_key(&self, key: &str, claim: KeyClaim, ttl: Duration) -> Result<Option<KeyClaim>, StoreError> {
        let mut index = self.index.lock().unwrap();
        let keys = &mut index.keys;
        if let Some((held, at)) = keys.get(key) {
            if at.elapsed() < ttl {
                return Ok(Some(held.clone()));
            }
        }
        if keys.len() >= MAX_KEYS {
            keys.retain(|_, (_, at)| at.elapsed() < ttl);
            if keys.len() >= MAX_KEYS {
                if let Some(oldest) = keys.iter().min_by_key(|(_, (_, at))| *at).map(|(k, _)| k.clone()) {
                    keys.remove(&oldest);
                }
            }
        }
        keys.insert(key.to_owned(), (claim, Instant::now()));
        Ok(None)
    }

    async fn release_key(&self, key: &str, id: &StreamId) -> Result<(), StoreError> {
        let mut index = self.index.lock().unwrap();
        if index.keys.get(key).is_some_and(|(held, _)| &held.stream_id == id) {
            index.keys.remove(key);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ai::streaming::events::{CancelReason, EventBody};

    fn gauge() -> prometheus::IntGauge {
        prometheus::IntGauge::new("retained", "test").unwrap()
    }

    fn id(n: u32) -> StreamId {
        StreamId::parse(&format!("s{n}")).unwrap()
    }

    fn chunk(stream: &StreamId, seq: u64) -> LoggedEvent {
        LoggedEvent::new(stream, seq, EventBody::Chunk { token: "token ".repeat(10) })
    }

    fn end(stream: &StreamId, seq: u64) -> LoggedEvent {
        LoggedEvent::new(stream, seq, EventBody::Cancelled { reason: CancelReason::Requested })
    }

    #[tokio::test]
    async fn seq_must_be_contiguous_and_nothing_follows_a_terminal() {
        let store = MemoryStore::new(Duration::from_secs(60), 1 << 20, gauge());
        let s = id(1);
        store.create(&s, "owner").await.unwrap();
        store.append(&s, chunk(&s, 0)).await.unwrap();
        assert!(matches!(store.append(&s, chunk(&s, 2)).await, Err(StoreError::OutOfOrder { expected: 1, .. })));
        store.append(&s, end(&s, 1)).await.unwrap();
        assert!(matches!(store.append(&s, chunk(&s, 2)).await, Err(StoreError::Finished(_))));
        assert_eq!(store.status(&s).await.unwrap(), LogStatus { len: 2, finished: true, owner: "owner".into() });
    }

    #[tokio::test]
    async fn reads_start_after_the_given_seq() {
        let store = MemoryStore::new(Duration::from_secs(60), 1 << 20, gauge());
        let s = id(1);
        store.create(&s, "owner").await.unwrap();
        for seq in 0..5 {
            store.append(&s, chunk(&s, seq)).await.unwrap();
        }
        let seqs = |events: Vec<LoggedEvent>| events.iter().map(|e| e.seq).collect::<Vec<_>>();
        assert_eq!(seqs(store.read_after(&s, None, 2).await.unwrap()), [0, 1]);
        assert_eq!(seqs(store.read_after(&s, Some(2), 10).await.unwrap()), [3, 4]);
        assert!(store.read_after(&s, Some(4), 10).await.unwrap().is_empty());
        assert!(store.read_after(&s, Some(99), 10).await.unwrap().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_resolves_when_the_tail_grows() {
        let store = Arc::new(MemoryStore::new(Duration::from_secs(60), 1 << 20, gauge()));
        let s = id(1);
        store.create(&s, "owner").await.unwrap();
        let waiter = tokio::spawn({
            let (store, s) = (store.clone(), s.clone());
            async move { store.wait_after(&s, None, Duration::from_secs(3600)).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        store.append(&s, chunk(&s, 0)).await.unwrap();
        waiter.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn the_first_claim_of_a_key_wins_until_it_is_released() {
        let store = MemoryStore::new(Duration::from_secs(60), 1 << 20, gauge());
        let claim = |n| KeyClaim { stream_id: id(n), fingerprint: "f".into() };
        let ttl = Duration::from_secs(60);
        assert_eq!(store.claim_key("k", claim(1), ttl).await.unwrap(), None);
        assert_eq!(store.claim_key("k", claim(2), ttl).await.unwrap(), Some(claim(1)));
        store.release_key("k", &id(2)).await.unwrap();
        assert_eq!(store.claim_key("k", claim(3), ttl).await.unwrap(), Some(claim(1)), "only the holder releases");
        store.release_key("k", &id(1)).await.unwrap();
        assert_eq!(store.claim_key("k", claim(3), ttl).await.unwrap(), None);
    }

    #[tokio::test]
    async fn finished_logs_stay_within_the_byte_bound_oldest_first() {
        let one_log = {
            let s = id(0);
            chunk(&s, 0).size() + end(&s, 1).size()
        };
        let store = MemoryStore::new(Duration::from_secs(60), one_log * 3, gauge());
        for n in 0..10 {
            let s = id(n);
            store.create(&s, "owner").await.unwrap();
            store.append(&s, chunk(&s, 0)).await.unwrap();
            store.append(&s, end(&s, 1)).await.unwrap();
            assert!(store.finished_bytes() <= one_log * 3);
        }
        assert_eq!(store.log_count(), 3);
        assert!(matches!(store.status(&id(6)).await, Err(StoreError::NotFound(_))));
        assert!(store.status(&id(9)).await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn finished_logs_expire_after_the_retention_period_but_live_ones_do_not() {
        let store = MemoryStore::new(Duration::from_secs(300), usize::MAX, gauge());
        let (done, live) = (id(1), id(2));
        for s in [&done, &live] {
            store.create(s, "owner").await.unwrap();
            store.append(s, chunk(s, 0)).await.unwrap();
        }
        store.append(&done, end(&done, 1)).await.unwrap();
        tokio::time::advance(Duration::from_secs(301)).await;
        assert!(matches!(store.status(&done).await, Err(StoreError::NotFound(_))));
        assert!(store.status(&live).await.is_ok());
    }
}
