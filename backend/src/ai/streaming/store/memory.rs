//! The embedded event store: logs in process memory.
//!
//! Each log keeps its events compactly: the JSON members of every event back to
//! back in one buffer, plus a small entry (type, end offset) per event, so a
//! chunk costs its token text and under 20 bytes. A `Notify` wakes the followers
//! waiting on the tail (one lock per append, however many there are), so fan-out
//! costs one wake-up per waiting reader and a slow reader never
//! makes the writer buffer anything: it re-reads the log at its own pace, a batch
//! at a time (one copy per batch, not per event). A follower and the writer hold
//! their log, so neither touches the global index per event, and eviction never
//! pulls a log from under a reader. Expiry runs in a background task; the byte
//! bound is enforced when a log finishes.
//!
//! A terminal event that retracts its stream (async moderation flagged it)
//! redacts the log as it lands, under the same lock: the bytes of every event
//! between the first (`start`) and it are dropped, and no reader, resume or
//! replay gets them from then on — a follower waiting in the middle jumps to
//! the terminal event.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_stream::stream;
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::requests::{Claim, RequestIndex, RequestTable};
use super::{Appender, EventBatch, EventStore, FollowError, FollowFailure, Follower, KeyClaim, LogStatus, StoreError, READ_BATCH};
use crate::ai::streaming::events::{EventRecord, EventType, LoggedEvent, StreamId};

/// One event's place in its log's buffer.
#[derive(Clone, Copy)]
struct Entry {
    /// Where its JSON members end in `LogData::fields`; they start where the
    /// previous entry's end. (`u32`: 8 bytes an entry; a log is kilobytes.)
    end: u32,
    event_type: EventType,
}

#[derive(Default)]
struct LogData {
    fields: Vec<u8>,
    entries: Vec<Entry>,
    /// When the newest event was appended.
    appended_at: Option<std::time::Instant>,
    /// The terminal event's index, when it retracted the events between the
    /// first and it.
    retracted_at: Option<usize>,
}

impl LogData {
    fn finished(&self) -> bool {
        self.entries.last().is_some_and(|e| e.event_type.is_terminal())
    }

    fn start_of(&self, index: usize) -> usize {
        index.checked_sub(1).map_or(0, |previous| self.entries[previous].end as usize)
    }

    /// Whether the event at `index` was redacted by a retraction.
    fn redacted(&self, index: usize) -> bool {
        self.retracted_at.is_some_and(|terminal| index > 0 && index < terminal)
    }

    /// Drops the bytes of the events between the first and the terminal one at
    /// `terminal`; their entries stay (empty) so indexes stay seqs.
    fn redact(&mut self, terminal: usize) {
        let first_end = self.entries.first().map_or(0, |e| e.end as usize);
        let terminal_start = self.start_of(terminal);
        self.fields.drain(first_end..terminal_start);
        for entry in &mut self.entries[1..terminal] {
            entry.end = first_end as u32;
        }
        let removed = (terminal_start - first_end) as u32;
        self.entries[terminal].end -= removed;
        self.retracted_at = Some(terminal);
    }

    /// Events `from..to` that are not redacted, sharing one copy of their bytes.
    fn events(&self, from: usize, to: usize) -> Vec<LoggedEvent> {
        if from >= to {
            return Vec::new();
        }
        let base = self.start_of(from);
        let bytes = Bytes::copy_from_slice(&self.fields[base..self.entries[to - 1].end as usize]);
        (from..to)
            .filter(|index| !self.redacted(*index))
            .map(|index| {
                let entry = self.entries[index];
                LoggedEvent {
                    seq: index as u64,
                    event_type: entry.event_type,
                    fields: bytes.slice(self.start_of(index) - base..entry.end as usize - base),
                }
            })
            .collect()
    }

    /// Bytes the log holds.
    fn size(&self) -> usize {
        self.fields.capacity() + self.entries.capacity() * std::mem::size_of::<Entry>() + std::mem::size_of::<Log>()
    }
}

struct Log {
    owner: Arc<str>,
    data: Mutex<LogData>,
    /// Told after every append, for followers waiting on the live tail.
    appended: Notify,
    /// Its generation's cancel signal.
    cancel: CancellationToken,
    /// The log its answer went on in (coalescing's handover), set before its end.
    successor: Mutex<Option<StreamId>>,
}

impl Log {
    fn status(&self) -> LogStatus {
        let data = self.data.lock().unwrap();
        LogStatus { len: data.entries.len() as u64, finished: data.finished(), owner: self.owner.clone() }
    }
}

/// Idempotency keys kept at most; the oldest go first.
const MAX_KEYS: usize = 100_000;
/// Lengths of evicted logs remembered, so a late reader's `stream_not_found`
/// takes a seq no event of that log ever had.
const MAX_TOMBSTONES: usize = 100_000;
/// How often expired logs are swept.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Default)]
struct Index {
    logs: HashMap<StreamId, Arc<Log>>,
    /// Finished logs in finishing order, with their size.
    finished: VecDeque<(Instant, StreamId, usize)>,
    finished_bytes: usize,
    /// Length and owner of evicted logs.
    tombstones: HashMap<StreamId, (u64, Arc<str>)>,
    tombstone_order: VecDeque<StreamId>,
    /// Each claim and when it lapses.
    keys: HashMap<String, (KeyClaim, Instant)>,
}

/// What the store and the writers of its logs share.
struct Shared {
    index: Mutex<Index>,
    retention: Duration,
    max_finished_bytes: usize,
    /// Mirrors `finished_bytes` for `/metrics`.
    retained_bytes: prometheus::IntGauge,
}

impl Shared {
    /// Counts a log that just finished towards the retention bound.
    fn finished(&self, id: &StreamId, bytes: usize) {
        let mut index = self.index.lock().unwrap();
        index.finished.push_back((Instant::now(), id.clone(), bytes));
        index.finished_bytes += bytes;
        if index.finished_bytes > self.max_finished_bytes {
            evict(&mut index, self.retention, self.max_finished_bytes);
        }
        self.retained_bytes.set(index.finished_bytes as i64);
    }
}

pub struct MemoryStore {
    shared: Arc<Shared>,
    requests: RequestTable,
}

/// The writer of one memory log.
struct MemoryAppender {
    id: StreamId,
    log: Arc<Log>,
    shared: Arc<Shared>,
}

#[async_trait]
impl Appender for MemoryAppender {
    async fn append(&self, seq: u64, record: &EventRecord) -> Result<(), StoreError> {
        let terminal = record.is_terminal();
        let bytes = {
            let mut data = self.log.data.lock().unwrap();
            if data.finished() {
                return Err(StoreError::Finished(self.id.clone()));
            }
            let expected = data.entries.len() as u64;
            if seq != expected {
                return Err(StoreError::OutOfOrder { stream_id: self.id.clone(), expected, got: seq });
            }
            let Ok(end) = u32::try_from(data.fields.len() + record.fields.len()) else {
                return Err(StoreError::Unavailable(format!("the log of {} outgrew 4 GiB", self.id)));
            };
            data.fields.extend_from_slice(&record.fields);
            data.entries.push(Entry { end, event_type: record.event_type });
            data.appended_at = Some(std::time::Instant::now());
            if terminal && record.retracts() {
                let at = data.entries.len() - 1;
                data.redact(at);
            }
            if terminal {
                data.fields.shrink_to_fit();
                data.entries.shrink_to_fit();
            }
            data.size()
        };
        self.log.appended.notify_waiters();
        if terminal {
            self.shared.finished(&self.id, bytes);
        }
        Ok(())
    }
}

impl MemoryStore {
    /// A store whose finished logs live `retention` within `max_finished_bytes`.
    /// Starts its sweeper on the current Tokio runtime; it stops with the store.
    pub fn new(retention: Duration, max_finished_bytes: usize, retained_bytes: prometheus::IntGauge) -> Self {
        let shared = Arc::new(Shared { index: Mutex::default(), retention, max_finished_bytes, retained_bytes });
        let store = Self { shared, requests: RequestTable::default() };
        store.sweep_in_background();
        store
    }

    fn sweep_in_background(&self) {
        let shared = Arc::downgrade(&self.shared);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SWEEP_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(shared) = Weak::upgrade(&shared) else { return };
                let mut index = shared.index.lock().unwrap();
                evict(&mut index, shared.retention, shared.max_finished_bytes);
                shared.retained_bytes.set(index.finished_bytes as i64);
            }
        });
    }

    fn log(&self, id: &StreamId) -> Result<Arc<Log>, StoreError> {
        let index = self.shared.index.lock().unwrap();
        match index.logs.get(id) {
            Some(log) => Ok(log.clone()),
            None => Err(match index.tombstones.get(id) {
                Some((len, owner)) => StoreError::Expired { stream_id: id.clone(), len: *len, owner: owner.clone() },
                None => StoreError::NotFound(id.clone()),
            }),
        }
    }

    /// Bytes held by finished logs, for tests and metrics.
    pub fn finished_bytes(&self) -> usize {
        self.shared.index.lock().unwrap().finished_bytes
    }

    pub fn log_count(&self) -> usize {
        self.shared.index.lock().unwrap().logs.len()
    }
}

/// Up to a batch of `log`'s events from `next` on; when they reach its tail, also
/// when the newest was appended.
fn read(log: &Log, next: u64) -> (Vec<LoggedEvent>, Option<std::time::Instant>) {
    let data = log.data.lock().unwrap();
    let len = data.entries.len();
    let mut from = usize::try_from(next).unwrap_or(usize::MAX).min(len);
    if data.redacted(from) {
        from = data.retracted_at.expect("redacted implies retracted");
    }
    let to = from.saturating_add(READ_BATCH).min(len);
    let tail_since = if to == len { data.appended_at } else { None };
    (data.events(from, to), tail_since)
}

/// Drops finished logs past the retention period, then the oldest while over the
/// byte bound; each leaves a tombstone with its length.
fn evict(index: &mut Index, retention: Duration, max_bytes: usize) {
    let now = Instant::now();
    while let Some((finished_at, _, bytes)) = index.finished.front() {
        if now.duration_since(*finished_at) < retention && index.finished_bytes <= max_bytes {
            break;
        }
        let bytes = *bytes;
        let (_, id, _) = index.finished.pop_front().expect("front exists");
        index.finished_bytes -= bytes;
        if let Some(log) = index.logs.remove(&id) {
            let tombstone = (log.data.lock().unwrap().entries.len() as u64, log.owner.clone());
            if index.tombstone_order.len() >= MAX_TOMBSTONES {
                if let Some(oldest) = index.tombstone_order.pop_front() {
                    index.tombstones.remove(&oldest);
                }
            }
            index.tombstones.insert(id.clone(), tombstone);
            index.tombstone_order.push_back(id);
        }
    }
}

#[async_trait]
impl RequestIndex for MemoryStore {
    async fn claim_request(&self, key: &str, id: &StreamId, ttl: Duration, claim: Claim<'_>) -> Result<Option<StreamId>, StoreError> {
        Ok(self.requests.claim(key, id, ttl, claim))
    }

    async fn hold_request(&self, key: &str, id: &StreamId, ttl: Duration) -> Result<(), StoreError> {
        self.requests.hold(key, id, ttl);
        Ok(())
    }

    async fn release_request(&self, key: &str, id: &StreamId) -> Result<(), StoreError> {
        self.requests.release(key, id);
        Ok(())
    }

    async fn request_joined(&self, key: &str, id: &StreamId) -> Result<bool, StoreError> {
        Ok(self.requests.joined(key, id))
    }

    async fn hand_over_request(&self, key: &str, from: &StreamId, to: &StreamId, ttl: Duration) -> Result<bool, StoreError> {
        Ok(self.requests.hand_over(key, from, to, ttl))
    }
}

#[async_trait]
impl EventStore for MemoryStore {
    async fn create(&self, id: &StreamId, owner: &str, cancel: CancellationToken) -> Result<Box<dyn Appender>, StoreError> {
        let log =
            Arc::new(Log { owner: owner.into(), data: Mutex::default(), appended: Notify::new(), cancel, successor: Mutex::default() });
        self.shared.index.lock().unwrap().logs.insert(id.clone(), log.clone());
        Ok(Box::new(MemoryAppender { id: id.clone(), log, shared: self.shared.clone() }))
    }

    async fn status(&self, id: &StreamId) -> Result<LogStatus, StoreError> {
        Ok(self.log(id)?.status())
    }

    fn follow(&self, id: &StreamId, after: Option<u64>) -> Follower {
        let log = self.log(id);
        let first = after.map_or(0, |seq| seq.saturating_add(1));
        stream! {
            let Ok(log) = log else {
                yield Err(FollowError { next_seq: first, cause: FollowFailure::LogLost });
                return;
            };
            let mut next = first;
            loop {
                let (batch, tail_since) = read(&log, next);
                let Some(last) = batch.last() else {
                    // Registered before looking again, so an append in between
                    // is not missed; the log lives as long as we hold it.
                    let appended = log.appended.notified();
                    tokio::pin!(appended);
                    appended.as_mut().enable();
                    if (log.data.lock().unwrap().entries.len() as u64) <= next {
                        appended.await;
                    }
                    continue;
                };
                next = last.seq + 1;
                let terminal = last.is_terminal();
                yield Ok(EventBatch::logged(batch, tail_since));
                if terminal {
                    return;
                }
            }
        }
        .boxed()
    }

    async fn request_cancel(&self, id: &StreamId) -> Result<(), StoreError> {
        // A finished log's generation has ended: cancelling it changes nothing.
        self.log(id)?.cancel.cancel();
        Ok(())
    }

    async fn reader_presence(&self, _id: &StreamId) -> Result<Option<Duration>, StoreError> {
        // One process: the manager counts its own readers.
        Ok(None)
    }

    fn release(&self, _id: &StreamId) {}

    async fn set_successor(&self, id: &StreamId, successor: &StreamId) -> Result<(), StoreError> {
        *self.log(id)?.successor.lock().unwrap() = Some(successor.clone());
        Ok(())
    }

    async fn successor(&self, id: &StreamId) -> Result<Option<StreamId>, StoreError> {
        match self.log(id) {
            Ok(log) => Ok(log.successor.lock().unwrap().clone()),
            // An evicted log's answer is gone with it.
            Err(StoreError::NotFound(_) | StoreError::Expired { .. }) => Ok(None),
            Err(other) => Err(other),
        }
    }

    async fn claim_key(&self, key: &str, claim: KeyClaim, ttl: Duration) -> Result<Option<KeyClaim>, StoreError> {
        let mut index = self.shared.index.lock().unwrap();
        let keys = &mut index.keys;
        let now = Instant::now();
        if let Some((held, lapses)) = keys.get(key) {
            if *lapses > now {
                return Ok(Some(held.clone()));
            }
        }
        if keys.len() >= MAX_KEYS {
            keys.retain(|_, (_, lapses)| *lapses > now);
            if keys.len() >= MAX_KEYS {
                if let Some(oldest) = keys.iter().min_by_key(|(_, (_, lapses))| *lapses).map(|(k, _)| k.clone()) {
                    keys.remove(&oldest);
                }
            }
        }
        keys.insert(key.to_owned(), (claim, now + ttl));
        Ok(None)
    }

    async fn hold_key(&self, key: &str, id: &StreamId, ttl: Duration) -> Result<(), StoreError> {
        let mut index = self.shared.index.lock().unwrap();
        if let Some((_, lapses)) = index.keys.get_mut(key).filter(|(held, _)| &held.stream_id == id) {
            *lapses = Instant::now() + ttl;
        }
        Ok(())
    }

    async fn release_key(&self, key: &str, id: &StreamId) -> Result<(), StoreError> {
        let mut index = self.shared.index.lock().unwrap();
        if index.keys.get(key).is_some_and(|(held, _)| &held.stream_id == id) {
            index.keys.remove(key);
        }
        Ok(())
    }

    async fn ready(&self) -> Result<(), StoreError> {
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

    fn chunk() -> EventRecord {
        EventRecord::new(&EventBody::Chunk { token: "token ".repeat(10) })
    }

    fn end() -> EventRecord {
        EventRecord::new(&EventBody::Cancelled { reason: CancelReason::Requested })
    }

    fn store(retention: Duration, max_bytes: usize) -> MemoryStore {
        MemoryStore::new(retention, max_bytes, gauge())
    }

    async fn seqs(follower: Follower) -> Vec<u64> {
        follower.map(|batch| batch.unwrap().events).concat().await.iter().map(|e| e.seq).collect()
    }

    #[tokio::test]
    async fn seq_must_be_contiguous_and_nothing_follows_a_terminal() {
        let store = store(Duration::from_secs(60), 1 << 20);
        let s = id(1);
        let log = store.create(&s, "owner", CancellationToken::new()).await.unwrap();
        log.append(0, &chunk()).await.unwrap();
        assert!(matches!(log.append(2, &chunk()).await, Err(StoreError::OutOfOrder { expected: 1, .. })));
        log.append(1, &end()).await.unwrap();
        assert!(matches!(log.append(2, &chunk()).await, Err(StoreError::Finished(_))));
        assert_eq!(store.status(&s).await.unwrap(), LogStatus { len: 2, finished: true, owner: "owner".into() });
    }

    #[tokio::test]
    async fn a_follower_starts_after_the_given_seq_and_ends_after_the_terminal_event() {
        let store = store(Duration::from_secs(60), 1 << 20);
        let s = id(1);
        let log = store.create(&s, "owner", CancellationToken::new()).await.unwrap();
        for seq in 0..5 {
            log.append(seq, &chunk()).await.unwrap();
        }
        log.append(5, &end()).await.unwrap();
        assert_eq!(seqs(store.follow(&s, None)).await, [0, 1, 2, 3, 4, 5]);
        assert_eq!(seqs(store.follow(&s, Some(2))).await, [3, 4, 5]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_follower_waits_for_the_tail_to_grow() {
        let store = Arc::new(store(Duration::from_secs(60), 1 << 20));
        let s = id(1);
        let log = store.create(&s, "owner", CancellationToken::new()).await.unwrap();
        let mut follower = store.follow(&s, None);
        let next = tokio::spawn(async move { follower.next().await });
        tokio::task::yield_now().await;
        assert!(!next.is_finished());
        log.append(0, &chunk()).await.unwrap();
        let batch = next.await.unwrap().unwrap().unwrap().events;
        assert_eq!(batch.iter().map(|e| e.seq).collect::<Vec<_>>(), [0]);
    }

    #[tokio::test]
    async fn following_an_unknown_log_ends_with_a_lost_log_at_the_next_seq() {
        let store = store(Duration::from_secs(60), 1 << 20);
        let mut follower = store.follow(&id(7), Some(3));
        assert_eq!(follower.next().await, Some(Err(FollowError { next_seq: 4, cause: FollowFailure::LogLost })));
        assert_eq!(follower.next().await, None);
    }

    fn retraction() -> EventRecord {
        let mut body = EventBody::error(crate::ai::streaming::events::ErrorCode::OutputFlagged, "flagged", false);
        if let EventBody::Error { retract, .. } = &mut body {
            *retract = true;
        }
        EventRecord::new(&body)
    }

    #[tokio::test]
    async fn a_retraction_leaves_only_the_first_and_the_terminal_event_for_every_reader() {
        let store = store(Duration::from_secs(60), 1 << 20);
        let s = id(1);
        let log = store.create(&s, "owner", CancellationToken::new()).await.unwrap();
        for seq in 0..6 {
            log.append(seq, &chunk()).await.unwrap();
        }
        let waiting = store.follow(&s, Some(3));
        log.append(6, &retraction()).await.unwrap();
        assert_eq!(seqs(store.follow(&s, None)).await, [0, 6], "a replay");
        assert_eq!(seqs(store.follow(&s, Some(1))).await, [6], "a resume in the middle");
        assert_eq!(seqs(waiting).await, [6], "a reader waiting at the tail");
        assert_eq!(store.status(&s).await.unwrap(), LogStatus { len: 7, finished: true, owner: "owner".into() });
        let events: Vec<LoggedEvent> = store.follow(&s, None).map(|b| b.unwrap().events).concat().await;
        assert_eq!(events[0].fields, chunk().fields);
        assert_eq!(events[1].fields, retraction().fields);
        let held = store.shared.index.lock().unwrap().logs[&s].data.lock().unwrap().fields.len();
        assert_eq!(held, chunk().fields.len() + retraction().fields.len(), "the redacted bytes are gone");
    }

    #[tokio::test]
    async fn the_first_claim_of_a_key_wins_until_it_is_released() {
        let store = store(Duration::from_secs(60), 1 << 20);
        let claim = |n| KeyClaim { stream_id: id(n), fingerprint: "f".into() };
        let ttl = Duration::from_secs(60);
        assert_eq!(store.claim_key("k", claim(1), ttl).await.unwrap(), None);
        assert_eq!(store.claim_key("k", claim(2), ttl).await.unwrap(), Some(claim(1)));
        store.release_key("k", &id(2)).await.unwrap();
        assert_eq!(store.claim_key("k", claim(3), ttl).await.unwrap(), Some(claim(1)), "only the holder releases");
        store.release_key("k", &id(1)).await.unwrap();
        assert_eq!(store.claim_key("k", claim(3), ttl).await.unwrap(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_claim_lapses_after_its_ttl_unless_its_holder_keeps_it() {
        let store = store(Duration::from_secs(60), 1 << 20);
        let claim = |n| KeyClaim { stream_id: id(n), fingerprint: "f".into() };
        assert_eq!(store.claim_key("held", claim(1), Duration::from_secs(10)).await.unwrap(), None);
        assert_eq!(store.claim_key("left", claim(2), Duration::from_secs(10)).await.unwrap(), None);
        store.hold_key("held", &id(1), Duration::from_secs(300)).await.unwrap();
        store.hold_key("left", &id(9), Duration::from_secs(300)).await.unwrap();
        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!(store.claim_key("held", claim(3), Duration::from_secs(10)).await.unwrap(), Some(claim(1)), "kept");
        assert_eq!(store.claim_key("left", claim(4), Duration::from_secs(10)).await.unwrap(), None, "lapsed: only its holder keeps it");
    }

    #[tokio::test]
    async fn a_log_names_the_successor_recorded_for_it_and_an_unknown_one_has_none() {
        let store = store(Duration::from_secs(60), 1 << 20);
        let log = store.create(&id(1), "owner", CancellationToken::new()).await.unwrap();
        assert_eq!(store.successor(&id(1)).await.unwrap(), None);
        store.set_successor(&id(1), &id(2)).await.unwrap();
        log.append(0, &end()).await.unwrap();
        assert_eq!(store.successor(&id(1)).await.unwrap(), Some(id(2)), "kept past the log's end");
        assert_eq!(store.successor(&id(9)).await.unwrap(), None);
        assert!(matches!(store.set_successor(&id(9), &id(2)).await, Err(StoreError::NotFound(_))));
    }

    /// The bytes a finished log of one chunk holds.
    async fn one_log() -> usize {
        let store = store(Duration::from_secs(60), usize::MAX);
        let log = store.create(&id(0), "owner", CancellationToken::new()).await.unwrap();
        log.append(0, &chunk()).await.unwrap();
        log.append(1, &end()).await.unwrap();
        store.finished_bytes()
    }

    #[tokio::test]
    async fn a_chunk_costs_its_text_and_a_few_bytes() {
        let store = store(Duration::from_secs(60), usize::MAX);
        let log = store.create(&id(1), "owner", CancellationToken::new()).await.unwrap();
        let events = 1000;
        let token = "word ";
        for seq in 0..events {
            log.append(seq, &EventRecord::new(&EventBody::Chunk { token: token.into() })).await.unwrap();
        }
        log.append(events, &end()).await.unwrap();
        let per_chunk = store.finished_bytes() / events as usize;
        assert!(per_chunk <= token.len() + 40, "{per_chunk} bytes per chunk of {} bytes of text", token.len());
    }

    #[tokio::test]
    async fn finished_logs_stay_within_the_byte_bound_oldest_first_and_leave_their_length() {
        let one_log = one_log().await;
        let store = store(Duration::from_secs(60), one_log * 3);
        for n in 0..10 {
            let s = id(n);
            let log = store.create(&s, "owner", CancellationToken::new()).await.unwrap();
            log.append(0, &chunk()).await.unwrap();
            log.append(1, &end()).await.unwrap();
            assert!(store.finished_bytes() <= one_log * 3);
        }
        assert_eq!(store.log_count(), 3);
        assert!(matches!(store.status(&id(6)).await, Err(StoreError::Expired { len: 2, .. })));
        assert!(store.status(&id(9)).await.is_ok());
    }

    #[tokio::test]
    async fn a_follower_keeps_reading_a_log_evicted_under_it() {
        let one_log = one_log().await;
        let store = store(Duration::from_secs(60), one_log);
        let s = id(1);
        let log = store.create(&s, "owner", CancellationToken::new()).await.unwrap();
        log.append(0, &chunk()).await.unwrap();
        let follower = store.follow(&s, None);
        log.append(1, &end()).await.unwrap();
        for n in 2..4 {
            let other = store.create(&id(n), "owner", CancellationToken::new()).await.unwrap();
            other.append(0, &chunk()).await.unwrap();
            other.append(1, &end()).await.unwrap();
        }
        assert!(matches!(store.status(&s).await, Err(StoreError::Expired { .. })));
        assert_eq!(seqs(follower).await, [0, 1]);
    }

    #[tokio::test(start_paused = true)]
    async fn finished_logs_expire_after_the_retention_period_but_live_ones_do_not() {
        let store = store(Duration::from_secs(300), usize::MAX);
        let (done, live) = (id(1), id(2));
        let (done_log, live_log) = (
            store.create(&done, "owner", CancellationToken::new()).await.unwrap(),
            store.create(&live, "owner", CancellationToken::new()).await.unwrap(),
        );
        for log in [&done_log, &live_log] {
            log.append(0, &chunk()).await.unwrap();
        }
        done_log.append(1, &end()).await.unwrap();
        tokio::time::sleep(Duration::from_secs(302)).await;
        assert!(matches!(store.status(&done).await, Err(StoreError::Expired { len: 2, .. })));
        assert!(store.status(&live).await.is_ok());
    }
}
