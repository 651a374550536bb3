//! The scale-out event store: logs in Redis, shared by every `live-ai` process
//! behind any load balancer (key layout in `keys.rs`).
//!
//! - Append: one `XADD` at the event's entry id per event; the first and the
//!   terminal one are scripts (`scripts.rs`): the first checks the stream exists
//!   and sets the log's expiry, the terminal one finishes the log. An append
//!   retried after a lost reply finds its own entry and succeeds. Ordinary
//!   appends of all the process's logs go out together as one pipeline
//!   (`appends.rs`), on a connection that speaks RESP itself (`wire.rs`).
//! - Follow: every confirmed event is announced to the processes serving its
//!   stream's readers, on each one's own channel (`announce.rs`); that one
//!   subscription per process feeds local mirrors, which read the log itself
//!   only to catch up (`tail.rs`). The generating process's own mirror of a
//!   stream takes its events in place, through Redis not at all (`routes.rs`). A process says which streams it follows
//!   with follow and leave notices to their generators (`control.rs`), which
//!   keep each stream's followers (`routes.rs`): a process hears only the
//!   events of the streams it serves readers of.
//! - Leases: the generating process renews `lease` with its id (`SET … PX`,
//!   re-taken if it lapsed under a stall); a cancel from anywhere marks it
//!   `cancel` and publishes on `<prefix>:cancel` (the control channel,
//!   `control.rs`), so the generator learns of it on the next renewal even if
//!   the message is lost.
//! - Presence: every process serving a reader of a stream marks `readers`
//!   when the reader comes and refreshes it every other upkeep round (expiring
//!   after the resume grace plus `PRESENCE_SLACK`), so the generator abandons a
//!   stream only when no process anywhere had a reader for the whole grace
//!   (`upkeep.rs`).
//! - Every command has a timeout; Redis going away ends open streams with a
//!   retryable error within a few seconds, and the connections come back by
//!   themselves when it returns.
//! - One node (`REDIS_URL`) or a Redis Cluster (`REDIS_CLUSTER_URLS`): the
//!   same commands through `redis_connection::RedisConn`; in a cluster, sharded
//!   pub/sub and one `XADD` per append instead of one pipeline.
//!
//! Why a channel per following process, not per bucket of streams: readers
//! land on processes at random (any load balancer), so a process serving a
//! quarter of 1,000 streams' readers has one in nearly every bucket unless
//! there are more buckets than streams (for it to hear at most a third of the
//! events, about 600 buckets or more), and every bucket a batch of appends
//! touches costs a `PUBLISH`: about one per event, against the goal of at most
//! 1.5 commands per appended event in all. Routed by follower, a batch costs
//! one `PUBLISH` per process that follows any of its streams, however many
//! streams and readers, and a process receives exactly its streams' events.
//! The price is a notice per stream and process when its first reader comes
//! and when its last leaves. In a cluster the process channels, untagged,
//! spread over the nodes; a stream's channel could not sit on its stream's
//! slot anyway once it carries several streams.
//!
//! A slow process is never sent other processes' traffic, so it is never
//! disconnected for it. Its own subscription is bounded by Redis's
//! `client-output-buffer-limit pubsub`: past it Redis drops the connection,
//! the subscription comes back by itself and every mirror reads what it missed
//! from the log (`tail.rs`), as after any loss; readers see a delay, never a
//! gap (`a_process_too_slow_for_its_pubsub_buffer_is_dropped_by_redis_and_reads_what_it_missed_from_the_log`).
//!
//! The ordering rules, each held by a test (in `tests.rs` unless named):
//! 1. An event is announced only once Redis confirmed its append, each once,
//!    in append order (`appends.rs` `settle`), to other processes and to the
//!    generating process's own mirror alike:
//!    `every_confirmed_event_and_no_refused_one_is_announced_in_order`,
//!    `concurrent_streams_each_have_every_event_announced_once_in_order`,
//!    `a_process_reading_a_stream_it_generates_takes_every_event_in_place_and_publishes_nothing`.
//! 2. A mirror takes events only in seq order; one past a gap is held until
//!    the log has been read up to it (`tail.rs`):
//!    `an_announcement_past_a_gap_is_held_and_asks_for_one_catch_up` (tail.rs),
//!    `events_whose_announcements_were_lost_still_reach_readers_elsewhere`.
//! 3. A reader marks itself present before it reads, and presence marks only
//!    ever extend the key:
//!    `a_reader_attaching_where_the_stream_is_followed_already_marks_presence_at_once`,
//!    `a_leaving_reader_never_shortens_the_presence_another_process_marked`.
//! 4. A cancel mark is read at every lease renewal and removed only by the
//!    log's end: `a_cancel_whose_message_was_lost_reaches_the_generator_at_its_next_renewal_and_renewals_keep_the_mark`.
//! 5. The store's listeners stop when the store is dropped, after the HTTP
//!    drain and the generations' last events: the API test
//!    `sigterm_in_redis_mode_ends_its_generations_for_readers_everywhere_and_hands_other_readers_off`.
//! 6. A process is announced a stream's events only between its follow notice
//!    reaching the generator and its leave notice doing so; a mirror created
//!    before its generator knew of it reads the log after the generator's
//!    nudge, so it misses nothing, and its notices go out in the order its
//!    mirrors came and went:
//!    `a_process_without_readers_of_a_stream_receives_none_of_its_announcements`,
//!    `a_reader_arriving_while_its_follow_notice_is_on_its_way_gets_every_event_without_gap_or_duplicate`,
//!    `a_reader_arriving_later_on_a_process_gets_every_event_without_gap_or_duplicate`,
//!    `a_process_whose_last_reader_left_is_sent_nothing_more_of_that_stream`.
//! 7. A mirror whose log grew while no announcement came follows again:
//!    `a_follow_notice_lost_on_the_way_is_sent_again_once_the_log_seems_silent`.

mod announce;
mod appends;
mod control;
mod entries;
mod keys;
mod requests;
mod routes;
mod scripts;
mod subscription;
mod tail;
#[cfg(test)]
#[allow(dead_code)] // shared with the integration tests, which use other parts
mod test_server;
mod trace;
mod upkeep;
mod wire;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use redis::AsyncCommands;
use tokio_util::sync::CancellationToken;

use self::announce::Announcer;
use self::appends::{Appends, LogAppends, Xadd};
use self::control::Notice;
use self::entries::events_of;
use self::keys::{entry_id, Keys};
use self::routes::{Followed, Routes};
use self::scripts::{Finish, FinishTarget, First, Scripts};
use self::subscription::Subscription;
use self::tail::Tails;
use super::{Appender, EventStore, Follower, KeyClaim, LogStatus, StoreError};
use crate::ai::streaming::events::{CancelReason, EventBody, EventRecord, LoggedEvent, StreamId};
use crate::redis_connection::{self, RedisConn, RedisTarget, COMMAND_TIMEOUT};

/// How long a lease lives without renewal; its process renews it every second,
/// so only a process that stopped (or stalled this long) loses it.
pub const LEASE_TTL: Duration = Duration::from_secs(5);
/// How long an unfinished log outlives the longest generation
/// (`GENERATION_TIMEOUT_SECONDS`), in case its process vanished: set once, at
/// the log's start, so it must outlast whatever the generation may still write.
const LIVE_TTL_MARGIN: Duration = Duration::from_secs(3600);
/// The longest expiry given to a live log, whatever the generation timeout.
const LIVE_TTL_MAX: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// How long a process's reader counts as present beyond the grace while it is
/// attached: room for late refreshes (every `upkeep::INTERVAL`), so only a
/// process that stopped (or stalled this long) stops counting. A generation may
/// outlive its last reader by up to this, never less than the grace.
pub const PRESENCE_SLACK: Duration = LEASE_TTL;
/// How long a finished stream's length outlives its log, so a late reader's
/// `stream_not_found` takes a seq no event of the log had.
const TOMBSTONE_TTL: Duration = Duration::from_secs(3600);
/// The meta field naming the log a stream's answer went on in (coalescing's
/// handover): in the stream's own slot, written before its terminal event.
const SUCCESSOR: &str = "successor";

fn unavailable(error: redis::RedisError) -> StoreError {
    StoreError::Unavailable(error.to_string())
}

/// Whether a presence mark expects to find the key: a stream's first reader
/// here mostly does not, a refresh mostly does.
#[derive(Debug, Clone, Copy)]
enum Presence {
    LikelyAbsent,
    LikelyThere,
}

/// A log's meta hash as `status` reads it: `state`, `len`, `owner`.
type MetaFields = (Option<String>, Option<u64>, Option<String>);

/// What the store's parts share: the connection, key names, and this process's
/// identity and leases.
struct Shared {
    conn: RedisConn,
    target: RedisTarget,
    keys: Keys,
    scripts: Scripts,
    appends: Appends,
    announcer: Announcer,
    /// Where the announcements of the streams generated here go.
    routes: Arc<Routes>,
    /// This process's channel: the announcements of the streams it follows.
    channel: Arc<str>,
    /// Follow and leave notices, sent in order (`control.rs`).
    notices: control::Notices,
    /// This process's id, the value of the leases it holds.
    owner: String,
    retention: Duration,
    grace: Duration,
    /// How long an unfinished log is kept: past the longest generation.
    live_ttl: Duration,
    /// The logs this process generates, each with its generation's cancel signal.
    leases: Mutex<HashMap<StreamId, CancellationToken>>,
}

impl Shared {
    fn holds_lease(&self, id: &StreamId) -> bool {
        self.leases.lock().unwrap().contains_key(id)
    }

    /// Has the announcements of `id` sent to this process from now on: at once,
    /// and into its mirror in place, when it is generated here; else through a
    /// notice to its generator.
    fn follow_here(&self, id: &StreamId) {
        if self.routes.follow_here(id) == Followed::Unknown {
            self.notices.send(Notice::Follow(id.clone()));
        }
    }

    /// Stops the announcements of `id` to this process: at once when it is (or
    /// was) generated here, else through a notice to its generator.
    fn leave_here(&self, id: &StreamId) {
        if self.routes.knows(id) {
            self.routes.leave_here(id);
        } else {
            self.notices.send(Notice::Leave(id.clone()));
        }
    }

    /// Cancels the generation of `id` if it runs here; whether it does.
    fn cancel_here(&self, id: &StreamId) -> bool {
        let token = self.leases.lock().unwrap().get(id).cloned();
        token.inspect(CancellationToken::cancel).is_some()
    }

    /// Marks a reader of `id` present in this process now: the stream's
    /// presence key lives at least a grace plus [`PRESENCE_SLACK`] more, so a
    /// reader that stays is counted however late the next refresh comes.
    async fn mark_reading(&self, id: &StreamId) -> redis::RedisResult<()> {
        self.extend_presence(id, self.grace + PRESENCE_SLACK, Presence::LikelyAbsent).await
    }

    /// Refreshes the mark of a stream this process serves readers of (`upkeep.rs`).
    async fn refresh_reading(&self, id: &StreamId) -> redis::RedisResult<()> {
        self.extend_presence(id, self.grace + PRESENCE_SLACK, Presence::LikelyThere).await
    }

    /// Marks that this process's last reader of `id` left now: the key lives
    /// at least the grace more. In the background (a reader's drop cannot wait).
    fn mark_left(self: &Arc<Self>, id: &StreamId) {
        let (shared, id) = (self.clone(), id.clone());
        tokio::spawn(async move {
            let _ = shared.extend_presence(&id, shared.grace, Presence::LikelyThere).await;
        });
    }

    /// Makes the presence key live at least `ttl` more, never less than any
    /// process asked before: marks are only ever extended, so no process's
    /// mark (a leave here) shortens another's (a reader there), in whatever
    /// order they land. `SET … NX` makes a missing key, `PEXPIRE … GT` extends
    /// one; the likelier to do it goes first, and the other only if it did not.
    async fn extend_presence(&self, id: &StreamId, ttl: Duration, presence: Presence) -> redis::RedisResult<()> {
        let (key, ttl) = (self.keys.readers(id), ttl.as_millis().max(1) as u64);
        let mut conn = self.conn.clone();
        let mut make = redis::cmd("SET");
        make.arg(&key).arg(1).arg("PX").arg(ttl).arg("NX");
        let mut extend = redis::cmd("PEXPIRE");
        extend.arg(&key).arg(ttl).arg("GT");
        match presence {
            Presence::LikelyAbsent => {
                let made: Option<String> = make.query_async(&mut conn).await?;
                if made.is_none() {
                    extend.query_async::<i64>(&mut conn).await?;
                }
            }
            Presence::LikelyThere => {
                let extended: i64 = extend.query_async(&mut conn).await?;
                if extended == 0 {
                    make.query_async::<Option<String>>(&mut conn).await?;
                }
            }
        }
        Ok(())
    }

    async fn finish(&self, id: &StreamId, seq: Option<u64>, record: &EventRecord) -> redis::RedisResult<Finish> {
        let (log, meta, lease) = (self.keys.log(id), self.keys.meta(id), self.keys.lease(id));
        let target = FinishTarget {
            log: &log,
            meta: &meta,
            lease: &lease,
            retention_ms: self.retention.as_millis() as u64,
            tombstone_ms: (self.retention + TOMBSTONE_TTL).as_millis() as u64,
        };
        let finished = self.scripts.finish(&mut self.conn.clone(), target, seq, record).await?;
        if let Finish::Appended { len } = finished {
            self.announcer.announce(id, len - 1, record);
        }
        Ok(finished)
    }

    async fn status(&self, id: &StreamId) -> Result<LogStatus, StoreError> {
        let mut conn = self.conn.clone();
        let ((state, len, owner), top): (MetaFields, redis::Value) = redis::pipe()
            .cmd("HMGET")
            .arg(self.keys.meta(id))
            .arg("state")
            .arg("len")
            .arg("owner")
            .cmd("XREVRANGE")
            .arg(self.keys.log(id))
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        let Some(state) = state else { return Err(StoreError::NotFound(id.clone())) };
        let owner: Arc<str> = owner.unwrap_or_default().into();
        let top = events_of(top).ok_or_else(|| StoreError::Unavailable(format!("malformed log entry of {id}")))?;
        match top.first() {
            Some(last) => Ok(LogStatus { len: last.seq + 1, finished: last.is_terminal(), owner }),
            None if state == "finished" => Err(StoreError::Expired { stream_id: id.clone(), len: len.unwrap_or(0), owner }),
            None => Ok(LogStatus { len: 0, finished: false, owner }),
        }
    }

    async fn read_at(&self, id: &StreamId, seq: u64) -> Result<Option<LoggedEvent>, StoreError> {
        let mut conn = self.conn.clone();
        let reply: redis::Value = redis::cmd("XRANGE")
            .arg(self.keys.log(id))
            .arg(entry_id(seq))
            .arg(entry_id(seq))
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        let events = events_of(reply).ok_or_else(|| StoreError::Unavailable(format!("malformed log entry of {id}")))?;
        Ok(events.into_iter().next())
    }
}

pub struct RedisStore {
    shared: Arc<Shared>,
    tails: Arc<Tails>,
    /// Stops the background tasks when the store goes.
    stop: CancellationToken,
}

/// The store's listeners (subscriptions, leases, presence) stop when the store
/// is dropped, never on the process's shutdown signal: that is when the HTTP
/// server has drained and every generation has written its last event, each of
/// which may still need them (mini-redis's `shutdown_complete`, dropped last).
impl Drop for RedisStore {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// How the store keeps logs: names, and how long.
#[derive(Debug, Clone)]
pub struct RedisStoreConfig {
    pub prefix: String,
    /// How long finished logs stay resumable.
    pub retention: Duration,
    /// The resume grace period.
    pub grace: Duration,
    /// The longest a generation may run (`GENERATION_TIMEOUT_SECONDS`).
    pub generation_timeout: Duration,
}

impl RedisStore {
    /// Connects; its background tasks (following, leases and presence, cancel
    /// requests) run until the store is dropped.
    pub async fn connect(target: &RedisTarget, config: RedisStoreConfig) -> Result<Self, StoreError> {
        let stop = CancellationToken::new();
        let RedisStoreConfig { prefix, retention, grace, generation_timeout } = config;
        let prefix = prefix.as_str();
        let conn = redis_connection::open(target, COMMAND_TIMEOUT).await.map_err(unavailable)?;
        let keys = Keys::new(prefix);
        // The hot path gets a connection of its own, so a once-a-second round of
        // lease and presence renewals never holds an append up behind it.
        let routes = Arc::new(Routes::default());
        let (announcer, announced) = Announcer::new(routes.clone());
        let appends =
            Appends::start(target, routes.clone(), announced).await.map_err(|error| StoreError::Unavailable(error.to_string()))?;
        let owner = uuid::Uuid::new_v4().simple().to_string();
        let notices = control::send(conn.clone(), target, keys.control_channel(), owner.clone());
        let shared = Arc::new(Shared {
            appends,
            announcer,
            routes,
            channel: keys.process_channel(&owner).into(),
            notices,
            conn,
            target: target.clone(),
            keys,
            scripts: Scripts::default(),
            owner,
            retention,
            grace,
            live_ttl: (generation_timeout + LIVE_TTL_MARGIN).min(LIVE_TTL_MAX),
            leases: Mutex::default(),
        });
        let control = Subscription::open(target, &shared.keys.control_channel(), stop.clone()).await.map_err(unavailable)?;
        control::listen(control, Arc::downgrade(&shared));
        let announcements = Subscription::open(target, &shared.channel, stop.clone()).await.map_err(unavailable)?;
        let tails = Tails::start(shared.clone(), announcements, stop.clone());
        shared.routes.set_mirrors(Arc::downgrade(&tails));
        upkeep::start(shared.clone(), Arc::downgrade(&tails), stop.clone());
        Ok(Self { shared, tails, stop })
    }
}

/// The writer of one log, with its keys named once.
struct RedisAppender {
    shared: Arc<Shared>,
    id: StreamId,
    log: Arc<str>,
    meta: String,
    appends: Arc<LogAppends>,
}

#[async_trait]
impl Appender for RedisAppender {
    async fn append(&self, seq: u64, record: &EventRecord) -> Result<(), StoreError> {
        if record.is_terminal() {
            self.append_terminal(seq, record).await
        } else {
            self.append_event(seq, record).await
        }
    }
}

impl RedisAppender {
    /// Appends at `seq` when another event may already be there: one we sent
    /// whose reply was lost (success), or a terminal event someone else wrote.
    async fn settle_conflict(&self, seq: u64, record: &EventRecord) -> Result<(), StoreError> {
        let id = &self.id;
        match self.shared.read_at(id, seq).await? {
            Some(found) if found.event_type == record.event_type && found.fields == record.fields => {
                // Ours, landed with its reply lost: announced now (a repeat is harmless).
                self.shared.announcer.announce(id, seq, record);
                Ok(())
            }
            Some(found) if found.is_terminal() => Err(StoreError::Finished(id.clone())),
            _ => {
                let status = self.shared.status(id).await?;
                if status.finished {
                    return Err(StoreError::Finished(id.clone()));
                }
                Err(StoreError::OutOfOrder { stream_id: id.clone(), expected: status.len, got: seq })
            }
        }
    }

    async fn append_event(&self, seq: u64, record: &EventRecord) -> Result<(), StoreError> {
        let id = &self.id;
        if seq == 0 {
            let live_ttl = self.shared.live_ttl.as_millis() as u64;
            let mut conn = self.shared.conn.clone();
            return match self.shared.scripts.first(&mut conn, &self.log, &self.meta, live_ttl, record).await.map_err(unavailable)? {
                First::Appended => {
                    self.shared.announcer.announce(id, seq, record);
                    Ok(())
                }
                First::Taken => self.settle_conflict(seq, record).await,
                First::Unknown => Err(StoreError::NotFound(id.clone())),
            };
        }
        match self.shared.appends.xadd(&self.appends, seq, record).await {
            Xadd::Appended => Ok(()),
            Xadd::NoLog => Err(StoreError::NotFound(id.clone())),
            Xadd::Conflict => self.settle_conflict(seq, record).await,
            Xadd::Failed(error) => Err(StoreError::Unavailable(error)),
        }
    }

    async fn append_terminal(&self, seq: u64, record: &EventRecord) -> Result<(), StoreError> {
        let id = &self.id;
        let appended = match self.shared.finish(id, Some(seq), record).await.map_err(unavailable)? {
            Finish::Appended { .. } => Ok(()),
            Finish::Unknown => Err(StoreError::NotFound(id.clone())),
            Finish::AlreadyFinished { len } if len == seq + 1 => self.settle_conflict(seq, record).await,
            Finish::AlreadyFinished { .. } | Finish::Expired { .. } | Finish::Leased => Err(StoreError::Finished(id.clone())),
            Finish::OutOfOrder { len } => Err(StoreError::OutOfOrder { stream_id: id.clone(), expected: len, got: seq }),
        };
        if appended.is_ok() {
            self.shared.leases.lock().unwrap().remove(id);
            self.shared.routes.close(id);
        }
        appended
    }
}

#[async_trait]
impl EventStore for RedisStore {
    async fn create(&self, id: &StreamId, owner: &str, cancel: CancellationToken) -> Result<Box<dyn Appender>, StoreError> {
        let mut conn = self.shared.conn.clone();
        let meta = self.shared.keys.meta(id);
        redis::pipe()
            .atomic()
            .hset_multiple(&meta, &[("state", "live"), ("owner", owner)])
            .ignore()
            .pexpire(&meta, self.shared.live_ttl.as_millis() as i64)
            .ignore()
            .pset_ex(self.shared.keys.lease(id), &self.shared.owner, LEASE_TTL.as_millis() as u64)
            .ignore()
            .query_async::<()>(&mut conn)
            .await
            .map_err(unavailable)?;
        self.shared.leases.lock().unwrap().insert(id.clone(), cancel);
        self.shared.routes.open(id);
        let shared = self.shared.clone();
        let log: Arc<str> = shared.keys.log(id).into();
        let appends = LogAppends::new(id.clone(), log.clone());
        Ok(Box::new(RedisAppender { id: id.clone(), log, meta: meta.clone(), shared, appends }))
    }

    async fn set_traceparent(&self, id: &StreamId, traceparent: &str) -> Result<(), StoreError> {
        trace::set(&self.shared, id, traceparent).await
    }

    async fn traceparent(&self, id: &StreamId) -> Result<Option<String>, StoreError> {
        trace::get(&self.shared, id).await
    }

    async fn status(&self, id: &StreamId) -> Result<LogStatus, StoreError> {
        self.shared.status(id).await
    }

    fn follow(&self, id: &StreamId, after: Option<u64>) -> Follower {
        self.tails.follow(id, after)
    }

    async fn request_cancel(&self, id: &StreamId) -> Result<(), StoreError> {
        if self.shared.cancel_here(id) {
            return Ok(());
        }
        let mut conn = self.shared.conn.clone();
        // Marks a leased stream's meta, which its generator reads at every lease
        // renewal and nothing but the log's end removes, so a lost message below
        // only delays the cancel.
        let (meta, lease) = (self.shared.keys.meta(id), self.shared.keys.lease(id));
        let marked = self.shared.scripts.mark_cancel(&mut conn, &meta, &lease).await.map_err(unavailable)?;
        if !marked {
            // Nobody generates it: end it here, unless it ended already.
            let cancelled = EventRecord::new(&EventBody::Cancelled { reason: CancelReason::Requested });
            match self.shared.finish(id, None, &cancelled).await.map_err(unavailable)? {
                Finish::Unknown => return Err(StoreError::NotFound(id.clone())),
                Finish::Leased => {}
                _ => return Ok(()),
            }
        }
        redis::cmd(self.shared.target.publish_command())
            .arg(self.shared.keys.control_channel())
            .arg(id.as_str())
            .query_async::<()>(&mut conn)
            .await
            .map_err(unavailable)
    }

    async fn reader_presence(&self, id: &StreamId) -> Result<Option<Duration>, StoreError> {
        let mut conn = self.shared.conn.clone();
        let left: i64 = conn.pttl(self.shared.keys.readers(id)).await.map_err(unavailable)?;
        Ok((left > 0).then(|| Duration::from_millis(left as u64)))
    }

    fn release(&self, id: &StreamId) {
        self.shared.leases.lock().unwrap().remove(id);
        self.shared.routes.close(id);
    }

    async fn set_successor(&self, id: &StreamId, successor: &StreamId) -> Result<(), StoreError> {
        let mut conn = self.shared.conn.clone();
        conn.hset::<_, _, _, ()>(self.shared.keys.meta(id), SUCCESSOR, successor.as_str()).await.map_err(unavailable)
    }

    async fn successor(&self, id: &StreamId) -> Result<Option<StreamId>, StoreError> {
        let mut conn = self.shared.conn.clone();
        let successor: Option<String> = conn.hget(self.shared.keys.meta(id), SUCCESSOR).await.map_err(unavailable)?;
        Ok(successor.as_deref().and_then(StreamId::parse))
    }

    async fn claim_key(&self, key: &str, claim: KeyClaim, ttl: Duration) -> Result<Option<KeyClaim>, StoreError> {
        let mut conn = self.shared.conn.clone();
        let name = self.shared.keys.idempotency(key);
        let value = format!("{} {}", claim.stream_id, claim.fingerprint);
        let options = redis::SetOptions::default()
            .conditional_set(redis::ExistenceCheck::NX)
            .get(true)
            .with_expiration(redis::SetExpiry::PX(ttl.as_millis().max(1) as u64));
        // SET NX GET: the previous holder when the key was taken, nothing when we got it.
        let held: Option<String> = conn.set_options(&name, value, options).await.map_err(unavailable)?;
        Ok(held.and_then(|held| {
            let (id, fingerprint) = held.split_once(' ')?;
            Some(KeyClaim { stream_id: StreamId::parse(id)?, fingerprint: fingerprint.to_owned() })
        }))
    }

    async fn hold_key(&self, key: &str, id: &StreamId, ttl: Duration) -> Result<(), StoreError> {
        let mut conn = self.shared.conn.clone();
        let hold = redis::Script::new(
            "local v = redis.call('GET', KEYS[1]) if v and string.sub(v, 1, #ARGV[1] + 1) == ARGV[1] .. ' ' then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0",
        );
        hold.key(self.shared.keys.idempotency(key))
            .arg(id.as_str())
            .arg(ttl.as_millis().max(1) as u64)
            .invoke_async::<i64>(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn release_key(&self, key: &str, id: &StreamId) -> Result<(), StoreError> {
        let mut conn = self.shared.conn.clone();
        let release = redis::Script::new(
            "local v = redis.call('GET', KEYS[1]) if v and string.sub(v, 1, #ARGV[1] + 1) == ARGV[1] .. ' ' then redis.call('DEL', KEYS[1]) end return 0",
        );
        release.key(self.shared.keys.idempotency(key)).arg(id.as_str()).invoke_async::<i64>(&mut conn).await.map_err(unavailable)?;
        Ok(())
    }

    async fn ready(&self) -> Result<(), StoreError> {
        if !self.shared.appends.is_up() {
            return Err(StoreError::Unavailable("the append connection to Redis is down".into()));
        }
        let mut conn = self.shared.conn.clone();
        redis::cmd("PING").query_async::<()>(&mut conn).await.map_err(unavailable)
    }
}

#[cfg(test)]
mod tests;
