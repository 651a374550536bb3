//! Following logs in Redis: one subscription per process, to its own channel,
//! feeds a local mirror of every log that has readers here (the logs generated
//! here are fed by the append path itself, `routes.rs`); readers follow the
//! mirror the way they follow a memory log (a `Notify` wakes them). A mirror
//! asks the stream's generator for its announcements when it is created and
//! tells it when its last reader leaves (`control.rs`), so the channel carries
//! only the events of the streams read here, and an appended event costs this
//! process one share of a message, whatever the number of its readers, and no
//! command at all.
//!
//! The log in Redis stays the truth; a mirror reads it with `XRANGE` (a
//! catch-up) only when it may have missed something:
//! - when it starts (the events from before its first announcement), and when
//!   its generator's nudge says the announcements now come (the events
//!   confirmed while the follow notice was on its way);
//! - on a gap (an announcement ahead of the next seq is held until the catch-up
//!   has filled in what came before it);
//! - while the subscription is down (every `WATCH_INTERVAL`), and once more when
//!   it is back;
//! - when its log has been silent for `SILENCE`; if the log had grown, the
//!   announcements are not coming (a follow notice was lost): it follows again.
//!   If not, its generator's lease is checked too: a log no process holds a lease on, and not generated here, is
//!   ended `generation_lost` (the `orphan` script); a log Redis no longer has
//!   fails (`LogLost`), one that ended and expired before the mirror read its
//!   end fails `Expired` (its readers get `stream_not_found`).
//!
//! A terminal event that retracts its stream is taken wherever it lands (the
//! log skips from `start` to it): the mirror then serves only those two, so a
//! reader behind the tail, or one attaching later, never reads the retracted
//! events from this process's copy either.
//!
//! A mirror whose reads have failed for `OUTAGE_LIMIT` (Redis unreachable) fails
//! (`Unreachable`), so readers never hang; one created once Redis answers again
//! works even before the subscription is back.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use async_stream::stream;
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::announce::{self, Record};
use super::entries::events_of;
use super::keys::entry_id;
use super::scripts::Finish;
use super::subscription::{Heard, Subscription};
use super::{Shared, PRESENCE_SLACK};
use crate::ai::streaming::events::{ErrorCode, EventBody, EventRecord, LoggedEvent, StreamId};
use crate::ai::streaming::store::{EventBatch, FollowError, FollowFailure, Follower, READ_BATCH};

/// How long Redis may stay unreachable before readers are told.
pub const OUTAGE_LIMIT: Duration = Duration::from_secs(3);
/// How long a log may stay silent before it is read and its generator's lease checked.
pub const SILENCE: Duration = Duration::from_secs(2);
/// How often mirrors are looked over for silence and outages.
pub const WATCH_INTERVAL: Duration = Duration::from_millis(250);
/// Pause after a failed catch-up.
const RETRY: Duration = Duration::from_millis(200);
/// Announcements held ahead of a gap per mirror; later ones are dropped and
/// read from the log by the catch-up.
const AHEAD_LIMIT: usize = 4096;

/// A local copy of one log from `base` on, shared by this process's readers.
struct Mirror {
    id: StreamId,
    log_key: String,
    base: u64,
    state: Mutex<MirrorState>,
    /// Told on every change, for readers waiting on the tail.
    changed: Notify,
    followers: AtomicUsize,
}

struct MirrorState {
    events: Vec<LoggedEvent>,
    /// Announced events past a gap, by seq.
    ahead: BTreeMap<u64, LoggedEvent>,
    /// When the newest event arrived.
    arrived_at: std::time::Instant,
    finished: bool,
    failed: Option<FollowFailure>,
    /// A catch-up is running; it looks at `ahead` before it stops.
    catching_up: bool,
    /// The seq of a terminal event that retracted the stream: `events` then
    /// holds only the log's first event (when mirrored) and that one.
    retracted_at: Option<u64>,
    last_news: Instant,
    checking: bool,
    /// When a reader's presence mark was last sent, of those Redis took.
    marked_at: Option<Instant>,
}

impl MirrorState {
    fn open(&self) -> bool {
        !self.finished && self.failed.is_none()
    }
}

impl Mirror {
    fn new(id: StreamId, log_key: String, base: u64) -> Self {
        Self {
            id,
            log_key,
            base,
            state: Mutex::new(MirrorState {
                events: Vec::new(),
                ahead: BTreeMap::new(),
                arrived_at: std::time::Instant::now(),
                finished: false,
                failed: None,
                // The first catch-up starts with the mirror.
                catching_up: true,
                retracted_at: None,
                last_news: Instant::now(),
                checking: false,
                marked_at: None,
            }),
            changed: Notify::new(),
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
        if let Some(terminal) = state.retracted_at {
            let events = state.events.iter().filter(|e| e.seq >= from && (e.seq == 0 || e.seq == terminal)).cloned().collect();
            return (EventBatch::logged(events, Some(state.arrived_at)), None);
        }
        let start = usize::try_from(from - self.base).unwrap_or(usize::MAX).min(state.events.len());
        let end = start.saturating_add(READ_BATCH).min(state.events.len());
        let events = state.events[start..end].to_vec();
        let failed = if events.is_empty() { state.failed } else { None };
        let tail_since = (end == state.events.len()).then_some(state.arrived_at);
        (EventBatch::logged(events, tail_since), failed)
    }

    /// Whether a reader at `next` has something to read now: an event, or the
    /// failure that ended the mirror.
    fn changed_since(&self, next: u64) -> bool {
        let state = self.state.lock().unwrap();
        self.next(&state) > next || state.failed.is_some() || state.retracted_at.is_some()
    }

    /// Takes `event` if it continues the mirror, then whatever it held ahead
    /// that now does. Returns whether the mirror grew.
    fn extend(&self, state: &mut MirrorState, event: LoggedEvent) -> bool {
        if !state.open() {
            return false;
        }
        if event.seq >= self.next(state) && event.is_terminal() && event.retracts() {
            state.events.retain(|e| e.seq == 0);
            state.retracted_at = Some(event.seq);
            state.events.push(event);
            state.finished = true;
            state.ahead.clear();
            return true;
        }
        if event.seq != self.next(state) {
            return false;
        }
        state.finished = event.is_terminal();
        state.events.push(event);
        while state.open() {
            let Some(held) = state.ahead.remove(&self.next(state)) else { break };
            state.finished = held.is_terminal();
            state.events.push(held);
        }
        if !state.open() {
            state.ahead.clear();
        }
        true
    }

    /// Notes news, releases the lock, then wakes the readers if the mirror grew:
    /// each woken reader takes the lock at once.
    fn touched(&self, mut state: MutexGuard<'_, MirrorState>, grew: bool, now: Instant) {
        state.last_news = now;
        if grew {
            state.arrived_at = now.into_std();
            drop(state);
            self.changed.notify_waiters();
        }
    }

    #[cfg(test)]
    fn offer(&self, event: LoggedEvent) -> bool {
        self.offer_at(event, Instant::now())
    }

    /// An announced event, arrived `now` (read once per message, not per
    /// event). Returns whether a catch-up must start (a gap, and none running).
    fn offer_at(&self, event: LoggedEvent, now: Instant) -> bool {
        let mut state = self.state.lock().unwrap();
        if !state.open() || event.seq < self.next(&state) {
            return false;
        }
        if event.seq > self.next(&state) && !(event.is_terminal() && event.retracts()) {
            if state.ahead.len() < AHEAD_LIMIT {
                state.ahead.insert(event.seq, event);
            }
            let start = !state.catching_up;
            state.catching_up = true;
            return start;
        }
        let grew = self.extend(&mut state, event);
        self.touched(state, grew, now);
        false
    }

    /// Events read from the log, from the next seq on.
    fn absorb(&self, events: Vec<LoggedEvent>) {
        let mut state = self.state.lock().unwrap();
        let mut grew = false;
        for event in events {
            grew |= self.extend(&mut state, event);
        }
        self.touched(state, grew, Instant::now());
    }

    /// Whether the last reader leaving must mark the grace from now: unless a
    /// mark of its readers Redis took less than [`PRESENCE_SLACK`] ago keeps
    /// the key at least that long anyway (marks live a grace plus the slack).
    fn leaving_needs_a_mark(&self) -> bool {
        self.state.lock().unwrap().marked_at.is_none_or(|at| at.elapsed() >= PRESENCE_SLACK)
    }

    fn fail(&self, failure: FollowFailure) {
        let mut state = self.state.lock().unwrap();
        if !state.open() {
            return;
        }
        state.failed = Some(failure);
        state.ahead.clear();
        drop(state);
        self.changed.notify_waiters();
    }
}

/// This process's mirrors and the subscription that feeds them.
pub struct Tails {
    shared: Arc<Shared>,
    mirrors: Mutex<HashMap<StreamId, Arc<Mirror>>>,
    /// Since when the subscription has been down, if it is.
    outage_since: Mutex<Option<Instant>>,
}

impl Tails {
    /// Feeds the mirrors from `announcements` (the subscription to appended
    /// events), and watches over them, until `shutdown`.
    pub fn start(shared: Arc<Shared>, announcements: Subscription, shutdown: CancellationToken) -> Arc<Self> {
        let tails = Arc::new(Self { shared, mirrors: Mutex::default(), outage_since: Mutex::default() });
        tokio::spawn(listen(Arc::downgrade(&tails), announcements));
        tokio::spawn(watch_over(Arc::downgrade(&tails), shutdown));
        tails
    }

    /// As if the subscription had been down since `since` (tests).
    #[cfg(test)]
    pub fn lost_subscription_at(&self, since: Instant) {
        *self.outage_since.lock().unwrap() = Some(since);
    }

    /// The logs with readers in this process, for the presence refresh.
    /// The streams this process follows that `wanted` picks.
    pub fn followed(&self, wanted: impl Fn(&StreamId) -> bool) -> Vec<StreamId> {
        self.mirrors.lock().unwrap().keys().filter(|id| wanted(id)).cloned().collect()
    }

    pub fn follow(self: &Arc<Self>, id: &StreamId, after: Option<u64>) -> Follower {
        let tails = self.clone();
        let id = id.clone();
        let first = after.map_or(0, |seq| seq.saturating_add(1));
        stream! {
            let guard = tails.attach(&id, first);
            // Every reader marks itself present, also on a mirror that has
            // readers already (whose last refresh may be a second old), before
            // it reads: a generator looking now counts it.
            let sent_at = Instant::now();
            match tails.shared.mark_reading(&id).await {
                Ok(()) => {
                    let mut state = guard.mirror.state.lock().unwrap();
                    state.marked_at = state.marked_at.max(Some(sent_at));
                }
                Err(error) => tracing::debug!(stream_id = %id, %error, "could not mark a reader present"),
            }
            let mirror = guard.mirror.clone();
            let mut next = first;
            loop {
                if next < mirror.base {
                    // History from before this process mirrored the log (the
                    // rest comes from the mirror), or its retraction.
                    match tails.read_range(&mirror.log_key, next).await {
                        Ok(events) if events.first().is_some_and(|e| e.seq != next && e.is_terminal() && e.retracts()) => {
                            yield Ok(EventBatch::logged(events[..1].to_vec(), None));
                            return;
                        }
                        Ok(mut events) if events.first().is_some_and(|e| e.seq == next) => {
                            events.retain(|e| e.seq < mirror.base);
                            next = events.last().expect("the first is before the base").seq + 1;
                            let batch = EventBatch::logged(events, None);
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
                // Registered before looking again, so a change in between is not
                // missed; the mirror lives as long as the guard.
                let changed = mirror.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                if !mirror.changed_since(next) {
                    changed.await;
                }
            }
        }
        .boxed()
    }

    fn attach(self: &Arc<Self>, id: &StreamId, first: u64) -> MirrorGuard {
        let (mirror, created) = {
            let mut mirrors = self.mirrors.lock().unwrap();
            let mut created = false;
            let mirror = mirrors
                .entry(id.clone())
                .or_insert_with(|| {
                    created = true;
                    Arc::new(Mirror::new(id.clone(), self.shared.keys.log(id), first))
                })
                .clone();
            mirror.followers.fetch_add(1, Ordering::Relaxed);
            if created {
                // Asked for first, under the lock, so the notice is queued
                // after the leave of a mirror this one replaces: what the
                // catch-up below does not read yet is announced, or read after
                // the generator's nudge.
                self.shared.follow_here(id);
            }
            (mirror, created)
        };
        if created {
            // Whatever the log holds from `first` on, announced before the mirror existed.
            tokio::spawn(self.clone().catch_up(mirror.clone()));
        }
        MirrorGuard { tails: self.clone(), mirror }
    }

    /// At most a batch of the log's events from `from` on.
    async fn read_range(&self, log_key: &str, from: u64) -> redis::RedisResult<Vec<LoggedEvent>> {
        let mut conn = self.shared.conn.clone();
        let reply: redis::Value =
            redis::cmd("XRANGE").arg(log_key).arg(entry_id(from)).arg("+").arg("COUNT").arg(READ_BATCH).query_async(&mut conn).await?;
        events_of(reply).ok_or_else(|| malformed("XRANGE"))
    }

    /// Events confirmed here, of streams generated and followed here, to
    /// their mirrors: the announcements this process makes to itself
    /// (`routes.rs`), taken like any other.
    pub fn offer_confirmed(self: &Arc<Self>, events: Vec<(StreamId, LoggedEvent)>) {
        let (mut gaps, now) = (Vec::new(), Instant::now());
        {
            let mirrors = self.mirrors.lock().unwrap();
            for (id, event) in events {
                if let Some(mirror) = mirrors.get(&id) {
                    if mirror.offer_at(event, now) {
                        gaps.push(mirror.clone());
                    }
                }
            }
        }
        for mirror in gaps {
            tokio::spawn(self.clone().catch_up(mirror));
        }
    }

    /// Announcements of one message, to the mirrors of their logs.
    fn deliver(self: &Arc<Self>, message: Bytes) {
        let (mut gaps, now) = (Vec::new(), Instant::now());
        {
            let mirrors = self.mirrors.lock().unwrap();
            let of = |id: &Bytes| std::str::from_utf8(id).ok().and_then(|id| mirrors.get(id));
            for record in announce::decode(message) {
                match record {
                    Some(Record::Event(id, event)) => {
                        if let Some(mirror) = of(&id) {
                            if mirror.offer_at(event, now) {
                                gaps.push(mirror.clone());
                            }
                        }
                    }
                    Some(Record::Nudge(id)) => {
                        if let Some(mirror) = of(&id) {
                            if !std::mem::replace(&mut mirror.state.lock().unwrap().catching_up, true) {
                                gaps.push(mirror.clone());
                            }
                        }
                    }
                    None => {
                        tracing::error!("malformed announcement of appended events");
                        break;
                    }
                }
            }
        }
        for mirror in gaps {
            tokio::spawn(self.clone().catch_up(mirror));
        }
    }

    /// Reads `mirror`'s log from its next seq until it has everything announced
    /// so far. Runs with `catching_up` set; clears it when done.
    async fn catch_up(self: Arc<Self>, mirror: Arc<Mirror>) {
        let mut failing_since: Option<Instant> = None;
        loop {
            let (from, gap_before) = {
                let state = mirror.state.lock().unwrap();
                if !state.open() {
                    drop(state);
                    mirror.state.lock().unwrap().catching_up = false;
                    return;
                }
                (mirror.next(&state), state.ahead.keys().next().copied())
            };
            let read = self.read_range(&mirror.log_key, from).await;
            let events = match read {
                Ok(events) => events,
                Err(error) => {
                    let since = *failing_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= OUTAGE_LIMIT {
                        tracing::warn!(stream_id = %mirror.id, %error, "cannot read a stream's log from Redis");
                        mirror.fail(FollowFailure::Unreachable);
                    } else {
                        tokio::time::sleep(RETRY).await;
                    }
                    continue;
                }
            };
            failing_since = None;
            let full = events.len() >= READ_BATCH;
            let starts_at_from = events.first().map(|e| e.seq == from || (e.is_terminal() && e.retracts()));
            if starts_at_from == Some(false) {
                // The log no longer has the seq the mirror needs next.
                mirror.fail(FollowFailure::LogLost);
                continue;
            }
            mirror.absorb(events);
            if full {
                continue;
            }
            let mut state = mirror.state.lock().unwrap();
            let gap_now = state.ahead.keys().next().copied();
            match gap_now {
                // A gap seen before this read, and the read found nothing at
                // `from`: the events before it are not in the log any more.
                Some(_) if gap_before.is_some() && starts_at_from.is_none() && state.open() => {
                    drop(state);
                    mirror.fail(FollowFailure::LogLost);
                }
                Some(_) if state.open() => {}
                _ => {
                    state.catching_up = false;
                    return;
                }
            }
        }
    }

    /// Reads a silent log, and if it stays silent, checks its generator.
    async fn check_silent(self: Arc<Self>, mirror: Arc<Mirror>) {
        let before = mirror.state.lock().unwrap().events.len();
        let catching_up = std::mem::replace(&mut mirror.state.lock().unwrap().catching_up, true);
        if !catching_up {
            self.clone().catch_up(mirror.clone()).await;
        }
        let grew = mirror.state.lock().unwrap().events.len() > before;
        if grew {
            // Events came, their announcements did not: the generator does not
            // know this process follows the stream.
            let mirrors = self.mirrors.lock().unwrap();
            if mirrors.get(&mirror.id).is_some_and(|m| Arc::ptr_eq(m, &mirror)) {
                self.shared.follow_here(&mirror.id);
            }
        } else {
            self.check_generator(&mirror).await;
        }
        let mut state = mirror.state.lock().unwrap();
        state.checking = false;
        state.last_news = Instant::now();
    }

    async fn check_generator(self: &Arc<Self>, mirror: &Arc<Mirror>) {
        // A process never declares its own running generation lost.
        if self.shared.holds_lease(&mirror.id) {
            return;
        }
        let lost =
            EventRecord::new(&EventBody::error(ErrorCode::GenerationLost, "the process generating this stream stopped; start again", true));
        match self.shared.finish(&mirror.id, None, &lost).await {
            Ok(Finish::Appended { len }) => {
                tracing::warn!(stream_id = %mirror.id, seq = len - 1, "generation lost: its process stopped renewing its lease");
                mirror.absorb(vec![lost.at(len - 1)]);
            }
            Ok(Finish::Unknown) => {
                tracing::warn!(stream_id = %mirror.id, "Redis no longer has this stream's log");
                mirror.fail(FollowFailure::LogLost);
            }
            // The rest of a finished log expired before this mirror read it.
            Ok(Finish::Expired { len }) => mirror.fail(FollowFailure::Expired { len }),
            // Ended meanwhile, by another process (which announces it to nobody
            // when it does not generate it): read the end now.
            Ok(Finish::AlreadyFinished { .. }) => {
                if !std::mem::replace(&mut mirror.state.lock().unwrap().catching_up, true) {
                    tokio::spawn(self.clone().catch_up(mirror.clone()));
                }
            }
            Ok(_) => {}
            Err(error) => tracing::debug!(stream_id = %mirror.id, %error, "could not check a silent stream's generator"),
        }
    }

    /// After the subscription came back: every mirror reads what it may have missed.
    fn catch_up_all(self: &Arc<Self>) {
        let mirrors: Vec<Arc<Mirror>> = self.mirrors.lock().unwrap().values().cloned().collect();
        for mirror in mirrors {
            let start = !std::mem::replace(&mut mirror.state.lock().unwrap().catching_up, true);
            if start {
                tokio::spawn(self.clone().catch_up(mirror));
            }
        }
    }
}

/// Feeds announcements to the mirrors; while the subscription is lost the
/// mirrors poll their logs, and once it is back each reads what it missed.
async fn listen(tails: Weak<Tails>, mut announcements: Subscription) {
    while let Some(heard) = announcements.next().await {
        let Some(tails) = tails.upgrade() else { return };
        match heard {
            Heard::Message(message) => tails.deliver(message),
            Heard::Lost => {
                tracing::warn!("lost the Redis subscription to appended events; resubscribing");
                tails.outage_since.lock().unwrap().get_or_insert_with(Instant::now);
            }
            Heard::Back => {
                if let Some(since) = tails.outage_since.lock().unwrap().take() {
                    tracing::info!(down_for_ms = since.elapsed().as_millis() as u64, "resubscribed to appended events");
                }
                tails.catch_up_all();
            }
        }
    }
}

/// While the subscription is down, has every mirror read its log instead (a
/// catch-up fails its mirror once Redis has not answered for `OUTAGE_LIMIT`);
/// otherwise checks the logs that have been silent.
async fn watch_over(tails: Weak<Tails>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(WATCH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Some(tails) = tails.upgrade() else { return };
        let mirrors: Vec<Arc<Mirror>> = tails.mirrors.lock().unwrap().values().cloned().collect();
        let subscribed = tails.outage_since.lock().unwrap().is_none();
        for mirror in mirrors {
            let mut state = mirror.state.lock().unwrap();
            if !state.open() {
                continue;
            }
            if !subscribed {
                // No announcements: poll the log. Redis may well answer commands
                // (the subscription reconnects on its own schedule).
                if !std::mem::replace(&mut state.catching_up, true) {
                    drop(state);
                    tokio::spawn(tails.clone().catch_up(mirror));
                }
                continue;
            }
            if state.checking || state.last_news.elapsed() < SILENCE {
                continue;
            }
            state.checking = true;
            drop(state);
            tokio::spawn(tails.clone().check_silent(mirror));
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
                // Under the lock: queued before the follow of a mirror that replaces this one.
                self.tails.shared.leave_here(&self.mirror.id);
            }
            drop(mirrors);
            if self.mirror.leaving_needs_a_mark() {
                self.tails.shared.mark_left(&self.mirror.id);
            }
        }
    }
}

fn malformed(command: &str) -> redis::RedisError {
    redis::RedisError::from((redis::ErrorKind::Parse, "malformed reply", command.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ai::streaming::events::CancelReason;

    fn chunk(seq: u64) -> LoggedEvent {
        LoggedEvent::new(seq, &EventBody::Chunk { token: format!("t{seq}") })
    }

    fn held(mirror: &Mirror) -> (Vec<u64>, Vec<u64>, bool) {
        let state = mirror.state.lock().unwrap();
        (state.events.iter().map(|e| e.seq).collect(), state.ahead.keys().copied().collect(), state.catching_up)
    }

    fn mirror_from(base: u64) -> Mirror {
        let mirror = Mirror::new(StreamId::parse("m1").unwrap(), "log".into(), base);
        // As after the first catch-up.
        mirror.state.lock().unwrap().catching_up = false;
        mirror
    }

    #[test]
    fn an_announcement_past_a_gap_is_held_and_asks_for_one_catch_up() {
        let mirror = mirror_from(5);
        assert!(!mirror.offer(chunk(5)));
        assert!(mirror.offer(chunk(7)), "the first gap starts a catch-up");
        assert!(!mirror.offer(chunk(8)), "one catch-up at a time");
        assert!(!mirror.offer(chunk(5)), "a repeat is dropped");
        assert_eq!(held(&mirror), (vec![5], vec![7, 8], true));
        // The catch-up reads 6 (and 7 again) from the log: the held ones follow.
        mirror.absorb(vec![chunk(6), chunk(7)]);
        assert_eq!(held(&mirror).0, [5, 6, 7, 8]);
        assert!(held(&mirror).1.is_empty());
    }

    #[test]
    fn a_last_reader_leaving_marks_the_grace_only_when_no_recent_mark_outlasts_it() {
        let mirror = mirror_from(0);
        assert!(mirror.leaving_needs_a_mark(), "never marked");
        mirror.state.lock().unwrap().marked_at = Some(Instant::now());
        assert!(!mirror.leaving_needs_a_mark(), "marked just now: the key outlives the grace");
        mirror.state.lock().unwrap().marked_at = Instant::now().checked_sub(PRESENCE_SLACK);
        assert!(mirror.leaving_needs_a_mark(), "marked a slack ago: the key may lapse within the grace");
    }

    #[test]
    fn nothing_is_taken_past_the_terminal_event_or_a_failure() {
        let mirror = mirror_from(0);
        mirror.offer(chunk(0));
        mirror.offer(chunk(3));
        mirror.absorb(vec![chunk(1), LoggedEvent::new(2, &EventBody::Cancelled { reason: CancelReason::Requested })]);
        assert_eq!(held(&mirror).0, [0, 1, 2]);
        assert!(held(&mirror).1.is_empty(), "what was held past the end is dropped");
        mirror.offer(chunk(3));
        assert_eq!(held(&mirror).0, [0, 1, 2]);

        let failed = mirror_from(0);
        failed.fail(FollowFailure::Unreachable);
        failed.offer(chunk(0));
        assert!(held(&failed).0.is_empty());
        assert_eq!(failed.read(0).1, Some(FollowFailure::Unreachable));
    }
}
