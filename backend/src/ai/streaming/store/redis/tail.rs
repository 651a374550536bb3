//! Following logs in Redis: a few `XREAD` loops per process (`SHARDS`, each log
//! in one of them by its id) read every log that has readers here, whatever their
//! number, into a local mirror per log; readers follow the mirror the way they
//! follow a memory log (a `watch` wakes them). A reader that starts before the
//! mirror's first event reads that history with `XRANGE` once. So an appended
//! event costs this process one share of an `XREAD` (which carries the event
//! itself) however many readers it serves. Several loops keep each `XREAD` short
//! and let one's reply be parsed while another waits on Redis.
//!
//! The loop also notices trouble, so readers never hang:
//! - Redis unreachable for `OUTAGE_LIMIT`: every mirror fails (`Unreachable`);
//! - a log silent for `SILENCE` that no process holds a lease on, and that is
//!   not generated here: the mirror ends it `generation_lost` (the `orphan`
//!   script); a log Redis no longer has fails (`LogLost`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_stream::stream;
use futures::StreamExt;
use redis::aio::ConnectionManager;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::entries::{events_of, streams_of};
use super::keys::entry_id;
use super::scripts::Finish;
use super::Shared;
use crate::ai::streaming::events::{ErrorCode, EventBody, EventRecord, LoggedEvent, StreamId};
use crate::ai::streaming::store::{EventBatch, FollowError, FollowFailure, Follower, READ_BATCH};

/// `XREAD` loops per process, each on a connection of its own.
pub const SHARDS: usize = 4;
/// How long one `XREAD` blocks; a log that gains its first reader joins the loop
/// within this.
pub const BLOCK: Duration = Duration::from_millis(100);
/// How long Redis may stay unreachable before readers are told.
pub const OUTAGE_LIMIT: Duration = Duration::from_secs(3);
/// How long a log may stay silent before its generator's lease is checked.
pub const SILENCE: Duration = Duration::from_secs(2);
/// Pause after a failed `XREAD`.
const RETRY: Duration = Duration::from_millis(200);

/// A local copy of one log from `base` on, shared by this process's readers.
struct Mirror {
    id: StreamId,
    /// The loop that reads it.
    shard: usize,
    log_key: String,
    base: u64,
    state: Mutex<MirrorState>,
    /// Bumped on every change, for readers waiting on the tail.
    version: watch::Sender<u64>,
    followers: AtomicUsize,
}

struct MirrorState {
    events: Vec<LoggedEvent>,
    /// When the newest event arrived.
    arrived_at: std::time::Instant,
    finished: bool,
    failed: Option<FollowFailure>,
    last_news: Instant,
    checking: bool,
}

impl Mirror {
    fn new(id: StreamId, log_key: String, base: u64) -> Self {
        Self {
            shard: shard_of(&id),
            id,
            log_key,
            base,
            state: Mutex::new(MirrorState {
                events: Vec::new(),
                arrived_at: std::time::Instant::now(),
                finished: false,
                failed: None,
                last_news: Instant::now(),
                checking: false,
            }),
            version: watch::channel(0).0,
            followers: AtomicUsize::new(0),
        }
    }

    fn next(&self, state: &MirrorState) -> u64 {
        self.base + state.events.len() as u64
    }

    /// Events from `from` on (at most a batch); when there are none, the failure
    /// that ended the mirror, if any.
    fn read(&self, from: u64) -> (EventBatch, Option<FollowFailure>) {
        let state = self.state.lock().unwrap();
        let start = usize::try_from(from - self.base).unwrap_or(usize::MAX).min(state.events.len());
        let end = start.saturating_add(READ_BATCH).min(state.events.len());
        let events = state.events[start..end].to_vec();
        let failed = if events.is_empty() { state.failed } else { None };
        let tail_since = (end == state.events.len()).then_some(state.arrived_at);
        (EventBatch { events, tail_since }, failed)
    }

    /// Takes the events that continue the mirror; others (already held) are skipped.
    fn push(&self, events: Vec<LoggedEvent>) {
        let mut state = self.state.lock().unwrap();
        state.last_news = Instant::now();
        state.arrived_at = std::time::Instant::now();
        for event in events {
            if event.seq == self.next(&state) && !state.finished {
                state.finished = event.is_terminal();
                state.events.push(event);
            }
        }
        drop(state);
        self.version.send_modify(|v| *v += 1);
    }

    fn fail(&self, failure: FollowFailure) {
        let mut state = self.state.lock().unwrap();
        if state.finished || state.failed.is_some() {
            return;
        }
        state.failed = Some(failure);
        drop(state);
        self.version.send_modify(|v| *v += 1);
    }

    /// The entry id the loop reads after, while the mirror still follows its log.
    fn cursor(&self) -> Option<String> {
        let state = self.state.lock().unwrap();
        if state.finished || state.failed.is_some() {
            return None;
        }
        Some(match self.next(&state) {
            0 => "0-0".to_owned(),
            next => entry_id(next - 1),
        })
    }
}

/// This process's mirrors and the loop that feeds them.
pub struct Tails {
    shared: Arc<Shared>,
    mirrors: Mutex<HashMap<StreamId, Arc<Mirror>>>,
    /// Per loop: a log gained its first reader here.
    wakes: Vec<Notify>,
}

/// The loop that reads `id`.
fn shard_of(id: &StreamId) -> usize {
    // FNV-1a: stable, and spreads random ids evenly.
    let hash = id.as_str().bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| (hash ^ u64::from(byte)).wrapping_mul(0x100_0000_01b3));
    (hash % SHARDS as u64) as usize
}

impl Tails {
    /// Starts a loop on each of `conns`, connections of their own (`XREAD` blocks them).
    pub fn start(shared: Arc<Shared>, conns: Vec<ConnectionManager>, shutdown: CancellationToken) -> Arc<Self> {
        assert_eq!(conns.len(), SHARDS, "one connection per loop");
        let wakes = (0..SHARDS).map(|_| Notify::new()).collect();
        let tails = Arc::new(Self { shared, mirrors: Mutex::default(), wakes });
        for (shard, conn) in conns.into_iter().enumerate() {
            tokio::spawn(tails.clone().run(shard, conn, shutdown.clone()));
        }
        tails
    }

    /// The logs with readers in this process, for the presence refresh.
    pub fn followed(&self) -> Vec<StreamId> {
        self.mirrors.lock().unwrap().keys().cloned().collect()
    }

    pub fn follow(self: &Arc<Self>, id: &StreamId, after: Option<u64>) -> Follower {
        let tails = self.clone();
        let id = id.clone();
        let first = after.map_or(0, |seq| seq.saturating_add(1));
        stream! {
            let guard = tails.attach(&id, first);
            let mirror = guard.mirror.clone();
            let mut version = mirror.version.subscribe();
            let mut next = first;
            loop {
                if next < mirror.base {
                    // History from before this process mirrored the log.
                    match tails.read_range(&mirror.log_key, next, mirror.base - 1).await {
                        Ok(events) if events.first().is_some_and(|e| e.seq == next) => {
                            next = events.last().expect("not empty").seq + 1;
                            let batch = EventBatch { events, tail_since: None };
                            let terminal = batch.is_terminal();
                            yield Ok(batch);
                            if terminal {
                                return;
                            }
                        }
                        Ok(_) => {
                            yield Err(FollowError { next_seq: next, cause: FollowFailure::LogLost });
                            return;
                        }
                        Err(_) => {
                            yield Err(FollowError { next_seq: next, cause: FollowFailure::Unreachable });
                            return;
                        }
                    }
                    continue;
                }
                version.borrow_and_update();
                let (batch, failed) = mirror.read(next);
                if let Some(last) = batch.events.last() {
                    next = last.seq + 1;
                    let terminal = last.is_terminal();
                    yield Ok(batch);
                    if terminal {
                        return;
                    }
                    continue;
                }
                if let Some(cause) = failed {
                    yield Err(FollowError { next_seq: next, cause });
                    return;
                }
                // The mirror lives as long as the guard, and its sender with it.
                let _ = version.changed().await;
            }
        }
        .boxed()
    }

    fn attach(self: &Arc<Self>, id: &StreamId, first: u64) -> MirrorGuard {
        let (mirror, first_follower) = {
            let mut mirrors = self.mirrors.lock().unwrap();
            let mirror = mirrors.entry(id.clone()).or_insert_with(|| Arc::new(Mirror::new(id.clone(), self.shared.keys.log(id), first)));
            (mirror.clone(), mirror.followers.fetch_add(1, Ordering::Relaxed) == 0)
        };
        if first_follower {
            self.shared.stamp_presence(id);
            self.wakes[shard_of(id)].notify_one();
        }
        MirrorGuard { tails: self.clone(), mirror }
    }

    async fn read_range(&self, log_key: &str, from: u64, to: u64) -> redis::RedisResult<Vec<LoggedEvent>> {
        let mut conn = self.shared.conn.clone();
        let reply: redis::Value = redis::cmd("XRANGE")
            .arg(log_key)
            .arg(entry_id(from))
            .arg(entry_id(to))
            .arg("COUNT")
            .arg(READ_BATCH)
            .query_async(&mut conn)
            .await?;
        events_of(reply).ok_or_else(|| malformed("XRANGE"))
    }

    async fn run(self: Arc<Self>, shard: usize, mut conn: ConnectionManager, shutdown: CancellationToken) {
        let weak = Arc::downgrade(&self);
        drop(self);
        let mut outage_since: Option<Instant> = None;
        loop {
            let Some(tails) = weak.upgrade() else { return };
            let wanted: Vec<(Arc<Mirror>, String)> = tails
                .mirrors
                .lock()
                .unwrap()
                .values()
                .filter(|mirror| mirror.shard == shard)
                .filter_map(|mirror| Some((mirror.clone(), mirror.cursor()?)))
                .collect();
            if wanted.is_empty() {
                let wake = async { tails.wakes[shard].notified().await };
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = wake => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                continue;
            }
            let mut xread = redis::cmd("XREAD");
            xread.arg("COUNT").arg(READ_BATCH).arg("BLOCK").arg(BLOCK.as_millis() as u64).arg("STREAMS");
            for (mirror, _) in &wanted {
                xread.arg(&mirror.log_key);
            }
            for (_, cursor) in &wanted {
                xread.arg(cursor);
            }
            let reply = tokio::select! {
                _ = shutdown.cancelled() => return,
                reply = xread.query_async::<redis::Value>(&mut conn) => reply,
            };
            match reply.map(streams_of) {
                Ok(Some(streams)) => {
                    outage_since = None;
                    let by_key: HashMap<&[u8], &Arc<Mirror>> = wanted.iter().map(|(m, _)| (m.log_key.as_bytes(), m)).collect();
                    for (key, events) in streams {
                        if let Some(mirror) = by_key.get(&key[..]) {
                            mirror.push(events);
                        }
                    }
                }
                Ok(None) => tracing::error!("malformed XREAD reply"),
                Err(error) => {
                    let since = *outage_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= OUTAGE_LIMIT {
                        if since.elapsed() < OUTAGE_LIMIT + RETRY * 2 {
                            tracing::error!(%error, "Redis unreachable: ending the streams read here");
                        }
                        for (mirror, _) in &wanted {
                            mirror.fail(FollowFailure::Unreachable);
                        }
                    }
                    tokio::time::sleep(RETRY).await;
                }
            }
            tails.check_silent(&wanted);
        }
    }

    /// Checks the generators of logs that have been silent too long.
    fn check_silent(self: &Arc<Self>, wanted: &[(Arc<Mirror>, String)]) {
        for (mirror, _) in wanted {
            {
                let mut state = mirror.state.lock().unwrap();
                if state.checking || state.last_news.elapsed() < SILENCE {
                    continue;
                }
                state.checking = true;
            }
            let (tails, mirror) = (self.clone(), mirror.clone());
            tokio::spawn(async move {
                tails.check_generator(&mirror).await;
                let mut state = mirror.state.lock().unwrap();
                state.checking = false;
                state.last_news = Instant::now();
            });
        }
    }

    async fn check_generator(&self, mirror: &Mirror) {
        // A process never declares its own running generation lost.
        if self.shared.holds_lease(&mirror.id) {
            return;
        }
        let lost =
            EventRecord::new(&EventBody::error(ErrorCode::GenerationLost, "the process generating this stream stopped; start again", true));
        match self.shared.finish(&mirror.id, None, &lost).await {
            Ok(Finish::Appended { len }) => {
                tracing::warn!(stream_id = %mirror.id, seq = len - 1, "generation lost: its process stopped renewing its lease");
            }
            Ok(Finish::Unknown) => {
                tracing::warn!(stream_id = %mirror.id, "Redis no longer has this stream's log");
                mirror.fail(FollowFailure::LogLost);
            }
            Ok(_) => {}
            Err(error) => tracing::debug!(stream_id = %mirror.id, %error, "could not check a silent stream's generator"),
        }
    }
}

/// A reader of a mirror; the last one to leave removes it.
struct MirrorGuard {
    tails: Arc<Tails>,
    mirror: Arc<Mirror>,
}

impl Drop for MirrorGuard {
    fn drop(&mut self) {
        let mut mirrors = self.tails.mirrors.lock().unwrap();
        if self.mirror.followers.fetch_sub(1, Ordering::Relaxed) == 1 {
            if mirrors.get(&self.mirror.id).is_some_and(|m| Arc::ptr_eq(m, &self.mirror)) {
                mirrors.remove(&self.mirror.id);
            }
            drop(mirrors);
            // The grace starts now, not at the last refresh.
            self.tails.shared.stamp_presence(&self.mirror.id);
        }
    }
}

fn malformed(command: &str) -> redis::RedisError {
    redis::RedisError::from((redis::ErrorKind::Parse, "malformed reply", command.to_owned()))
}
