//! The ordinary appends (every event but a log's first and its terminal one) of
//! all the logs this process generates, joined: one task sends whatever appends
//! are waiting as one pipeline of `XADD`s, so a burst of tokens across many
//! streams is one write and one read, for Redis and for us, and still one
//! command per event. Each append learns its own outcome, in its log's slot
//! (`LogAppends`, made once with the log's writer, which also holds the start
//! of the log's `XADD`s, encoded once): an append costs no channel or
//! allocation of its own, and the pipelines' buffers and vectors are reused,
//! since every event passes here (bench/RESULTS.md).
//!
//! Before a pipeline goes out, the task yields once, so the generations already
//! woken add their appends to it: a burst of tokens across streams goes out in
//! fewer, larger pipelines (bench/RESULTS.md). Up to `IN_FLIGHT_LIMIT`
//! pipelines go out before the first is answered, so an append that arrives
//! while one is on its way is sent at once, not a round trip later. One
//! connection keeps them in order, and their replies are settled in that order.
//! The task owns that connection and speaks RESP on it itself (`wire.rs`): it
//! writes each pipeline and reads the replies as they come, with no client
//! library's task in between.
//!
//! The same task publishes the announcements (`announce.rs`): the events that
//! landed, and whatever the other paths confirmed meanwhile, go out as one
//! `PUBLISH` per following process (`routes.rs`, read as each batch settles)
//! at the head of the next pipeline, sent as soon as a pipeline may go even if
//! no append waits. An announcement costs no task hand-off and no round trip of
//! its own.
//!
//! Each pipeline must be answered within the command timeout. A connection that
//! fails or stays silent fails every append it carries (the generators retry,
//! and find their own entries if they had landed) and is replaced at once;
//! while Redis cannot be reached, an attempt is made every `RECONNECT_DELAY`.
//!
//! In a cluster (`REDIS_CLUSTER_URLS`) a pipeline cannot span slots, so the
//! appends go out one `XADD` each through redis-rs's cluster connection (which
//! routes each to its slot's node, multiplexes them per node and follows
//! `MOVED`/`ASK` and failovers); a batch's outcomes are still settled in order,
//! and its announcements go out in one `SPUBLISH` per following process after
//! it, each to its channel's node, from a publisher that sends one round of
//! messages at a time, so each channel's arrive in order.
//!
//! The task is supervised: should it panic, what it carried fails (the
//! generators retry), and it starts again on a fresh connection after
//! `RECONNECT_DELAY`. While it has no connection, or is restarting, the append
//! path is down and `Appends::is_up` says so (`/readyz` answers 503).

use std::collections::VecDeque;
use std::future::poll_fn;
use std::io;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};
use std::time::Duration;

use futures::FutureExt;

use bytes::BytesMut;
use redis::ConnectionInfo;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::announce::{Outbox, Outgoing, MESSAGE_LIMIT};
use super::routes::Routes;
use super::wire::{self, Link, Reply};
use crate::ai::streaming::events::{EventRecord, StreamId};
use crate::redis_connection::{self, RedisConn, RedisTarget, COMMAND_TIMEOUT};

/// Appends sent in one pipeline at most.
const PIPELINE_LIMIT: usize = 512;
/// Pipelines sent and not yet answered at most. More than one, so an append
/// waits for no earlier pipeline's round trip, and the landed events go out in
/// smaller, more frequent announcements; few, so a burst still joins up.
const IN_FLIGHT_LIMIT: usize = 3;
/// Least time between two attempts to connect while Redis cannot be reached:
/// appends meanwhile fail at once, and new streams work again soon after Redis.
const RECONNECT_DELAY: Duration = Duration::from_millis(250);
/// Room read into at once: many replies, one read.
const READ_SIZE: usize = 32 * 1024;

/// What an `XADD` at an explicit entry id did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Xadd {
    Appended,
    /// The log is gone (`NOMKSTREAM`): it is never re-created half empty.
    NoLog,
    /// An event is already at that seq or later.
    Conflict,
    Failed(String),
}

/// One log's ordinary appends: the names every one of its `XADD`s repeats,
/// encoded once, and the slot where each learns its outcome. Made with the
/// log's writer and shared with the task, so an append costs the task one
/// reference, not a channel of its own and copies of the stream's names.
pub struct LogAppends {
    id: StreamId,
    log: Arc<str>,
    /// `XADD <log> NOMKSTREAM` in RESP, the head of each of its commands.
    head: Box<[u8]>,
    outcome: Mutex<Slot>,
    /// Whether an append is using `outcome`; a concurrent one makes its own
    /// (the writer appends one event at a time, so that is never the case).
    busy: AtomicBool,
}

/// The outcome of the append holding the ticket, once the task settled it.
#[derive(Default)]
struct Slot {
    ticket: u64,
    outcome: Option<Xadd>,
    waker: Option<Waker>,
}

impl LogAppends {
    pub fn new(id: StreamId, log: Arc<str>) -> Arc<Self> {
        let mut head = BytesMut::new();
        wire::command_head(&mut head, XADD_ARGS, &[b"XADD", log.as_bytes(), b"NOMKSTREAM"]);
        Arc::new(Self { id, log, head: head.to_vec().into_boxed_slice(), outcome: Mutex::default(), busy: AtomicBool::new(false) })
    }

    /// A fresh ticket: outcomes settled for earlier ones are ignored from now on.
    fn take_ticket(&self) -> u64 {
        let mut slot = self.outcome.lock().unwrap();
        slot.ticket += 1;
        slot.outcome = None;
        slot.ticket
    }

    fn settle(&self, ticket: u64, outcome: Xadd) {
        let mut slot = self.outcome.lock().unwrap();
        if slot.ticket != ticket {
            // Its append was dropped, and the slot has moved on.
            return;
        }
        slot.outcome = Some(outcome);
        let waker = slot.waker.take();
        drop(slot);
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    fn poll_outcome(&self, ticket: u64, waker: &Waker) -> Poll<Xadd> {
        let mut slot = self.outcome.lock().unwrap();
        if slot.ticket == ticket {
            if let Some(outcome) = slot.outcome.take() {
                return Poll::Ready(outcome);
            }
        }
        if !slot.waker.as_ref().is_some_and(|known| known.will_wake(waker)) {
            slot.waker = Some(waker.clone());
        }
        Poll::Pending
    }
}

/// Gives `LogAppends::busy` back when an append ends, or is dropped while it waits.
struct Release<'a>(&'a AtomicBool);

impl Drop for Release<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// An append on its way to the task.
struct Pending {
    to: Arc<LogAppends>,
    ticket: u64,
    seq: u64,
    record: EventRecord,
    /// Settled: dropping it unsettled (the task ending or panicking) fails it.
    done: bool,
}

impl Pending {
    fn settle(mut self, outcome: Xadd) {
        self.done = true;
        self.to.settle(self.ticket, outcome);
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if !self.done {
            self.to.settle(self.ticket, Xadd::Failed(SHUTTING_DOWN.into()));
        }
    }
}

const SHUTTING_DOWN: &str = "the Redis store is shutting down";

pub struct Appends {
    queue: mpsc::UnboundedSender<Pending>,
    /// Whether the task runs and holds a connection to Redis.
    up: Arc<AtomicBool>,
}

impl Appends {
    /// Connects to `target` and starts the sending task, publishing what
    /// `announced` hands over as well as its own appends, these to the channels
    /// `routes` names. The task ends when the store is dropped, not on a
    /// shutdown signal, so a draining generation can still append and announce.
    pub async fn start(target: &RedisTarget, routes: Arc<Routes>, announced: mpsc::UnboundedReceiver<Outgoing>) -> io::Result<Self> {
        let (queue, waiting) = mpsc::unbounded_channel();
        let up = Arc::new(AtomicBool::new(true));
        let url = match target {
            RedisTarget::Node(url) => url,
            RedisTarget::Cluster(_) => {
                let conn = redis_connection::open(target, COMMAND_TIMEOUT).await.map_err(io::Error::other)?;
                tokio::spawn(supervise_in_cluster(conn, routes, waiting, announced, up.clone()));
                return Ok(Self { queue, up });
            }
        };
        let info = redis::Client::open(url.as_str()).map_err(io::Error::other)?.get_connection_info().clone();
        let link = Link::connect(&info).await?;
        tokio::spawn(supervise(Connection::new(info, link, routes, up.clone()), waiting, announced));
        Ok(Self { queue, up })
    }

    /// Whether appends can go out now: the task runs and is connected.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Makes the task panic, as a bug would (tests of the supervision).
    #[cfg(test)]
    pub fn crash(&self) {
        let record = EventRecord::new(&crate::ai::streaming::events::EventBody::Chunk { token: String::new() });
        let to = LogAppends::new(StreamId::parse("crash").unwrap(), CRASH.into());
        let _ = self.queue.send(Pending { to, ticket: 0, seq: 0, record, done: false });
    }

    /// Appends `record` at `seq` of `to`'s log, and announces it if it landed.
    pub async fn xadd(&self, to: &Arc<LogAppends>, seq: u64, record: &EventRecord) -> Xadd {
        let own;
        let to = if to.busy.swap(true, Ordering::Acquire) {
            own = LogAppends::new(to.id.clone(), to.log.clone());
            own.busy.store(true, Ordering::Relaxed);
            &own
        } else {
            to
        };
        let _release = Release(&to.busy);
        let ticket = to.take_ticket();
        let pending = Pending { to: to.clone(), ticket, seq, record: record.clone(), done: false };
        if let Err(unsent) = self.queue.send(pending) {
            let mut unsent = unsent.0;
            unsent.done = true;
            return Xadd::Failed(SHUTTING_DOWN.into());
        }
        poll_fn(|cx| to.poll_outcome(ticket, cx.waker())).await
    }
}

/// The log key that makes the task panic, in tests only.
#[cfg(test)]
const CRASH: &str = "\u{0}crash-the-append-task";

/// Runs the task; after a panic, fails what was on its way and starts it again.
/// Ends when the store is dropped (both queues closed).
async fn supervise(mut conn: Connection, mut waiting: mpsc::UnboundedReceiver<Pending>, mut announced: mpsc::UnboundedReceiver<Outgoing>) {
    loop {
        let run = AssertUnwindSafe(send_loop(&mut conn, &mut waiting, &mut announced)).catch_unwind().await;
        if run.is_ok() {
            return;
        }
        tracing::error!("the Redis append task panicked; restarting it on a fresh connection");
        conn.up.store(false, Ordering::Relaxed);
        let error = io::Error::other("the append task restarted");
        conn.fail(&error, &mut Outbox::default());
        conn.unreachable = Some((error.to_string(), Instant::now() + RECONNECT_DELAY));
        tokio::time::sleep(RECONNECT_DELAY).await;
    }
}

async fn send_loop(
    conn: &mut Connection,
    waiting: &mut mpsc::UnboundedReceiver<Pending>,
    announced: &mut mpsc::UnboundedReceiver<Outgoing>,
) {
    let (mut batch, mut message) = (Vec::new(), Outbox::default());
    let (mut appends_open, mut announced_open) = (true, true);
    let answer_by = tokio::time::sleep(COMMAND_TIMEOUT);
    tokio::pin!(answer_by);
    loop {
        let room = conn.in_flight.len() < IN_FLIGHT_LIMIT;
        let answering = match conn.in_flight.front() {
            Some(oldest) => {
                // Moved only when the oldest pipeline changes, not per reply.
                if answer_by.deadline() != oldest.at + COMMAND_TIMEOUT {
                    answer_by.as_mut().reset(oldest.at + COMMAND_TIMEOUT);
                }
                true
            }
            None => false,
        };
        let retry_at = conn.retry_at();
        tokio::select! {
            biased;
            read = conn.read(), if answering => match read.and_then(|()| conn.answered(&mut message)) {
                Ok(()) => {}
                Err(error) => conn.fail(&error, &mut message),
            },
            () = &mut answer_by, if answering => {
                let error = io::Error::new(io::ErrorKind::TimedOut, "Redis did not answer an append pipeline in time");
                conn.fail(&error, &mut message);
            }
            // No connection: make one, so the path is up again (and `/readyz`
            // says so) without waiting for an append to try.
            () = tokio::time::sleep_until(retry_at.unwrap_or_else(Instant::now)), if retry_at.is_some() && (appends_open || announced_open) => {
                let _ = conn.connect().await;
                continue;
            }
            n = waiting.recv_many(&mut batch, PIPELINE_LIMIT), if appends_open && room => appends_open = n > 0,
            first = announced.recv(), if announced_open && room => match first {
                Some(records) => message.push_outgoing(&records),
                None => announced_open = false,
            },
            else => return,
        }
        if conn.in_flight.len() >= IN_FLIGHT_LIMIT {
            continue;
        }
        if !batch.is_empty() && batch.len() < PIPELINE_LIMIT {
            // Let the generations that are ready run first (a yield is woken
            // once the worker has run a round of what was waiting), so that a
            // burst of tokens goes out in fewer, larger pipelines. Yielding
            // again until a round brings nothing was tried: no better.
            tokio::task::yield_now().await;
        }
        // Appends first, then announcements: an event confirmed elsewhere before
        // an append was queued (a log's first event) is then surely published
        // with this write, ahead of the append's own announcement.
        while batch.len() < PIPELINE_LIMIT {
            let Ok(append) = waiting.try_recv() else { break };
            batch.push(append);
        }
        while message.bytes() < MESSAGE_LIMIT {
            let Ok(records) = announced.try_recv() else { break };
            message.push_outgoing(&records);
        }
        if message.is_empty() && batch.is_empty() {
            continue;
        }
        #[cfg(test)]
        if batch.iter().any(|append| &*append.to.log == CRASH) {
            panic!("asked to crash");
        }
        let sending = std::mem::replace(&mut batch, conn.spare_batches.pop().unwrap_or_default());
        conn.send(&mut message, sending).await;
    }
}

/// A pipeline on its way: its appends, and their outcomes as replies arrive.
struct Sent {
    batch: Vec<Pending>,
    /// How many replies to the `PUBLISH`es at its head are still to come.
    publishing: usize,
    outcomes: Vec<Xadd>,
    at: Instant,
}

impl Sent {
    fn is_answered(&self) -> bool {
        self.publishing == 0 && self.outcomes.len() == self.batch.len()
    }

    fn take(&mut self, reply: Reply) {
        if self.publishing > 0 {
            self.publishing -= 1;
            if let Reply::Error(error) = reply {
                // Lost announcements only make readers read the log: no retry.
                tracing::debug!(%error, "could not announce appended events");
            }
            return;
        }
        self.outcomes.push(outcome(reply));
    }

    /// Fails whatever has no outcome yet.
    fn fail(mut self, error: &io::Error, message: &mut Outbox, routes: &Routes) {
        let why = Xadd::Failed(format!("Redis: {error}"));
        self.outcomes.resize(self.batch.len(), why);
        settle(&mut self, message, routes);
    }
}

/// The append connection, its buffers and its pipelines on their way.
struct Connection {
    info: ConnectionInfo,
    routes: Arc<Routes>,
    link: Option<Link>,
    read: BytesMut,
    write: BytesMut,
    in_flight: VecDeque<Sent>,
    /// The emptied vectors of settled pipelines, for the next ones: a pipeline
    /// then costs no allocation, nor any growing.
    spare_batches: Vec<Vec<Pending>>,
    spare_outcomes: Vec<Vec<Xadd>>,
    /// While Redis cannot be reached: why, and when to try again.
    unreachable: Option<(String, Instant)>,
    up: Arc<AtomicBool>,
}

impl Connection {
    fn new(info: ConnectionInfo, link: Link, routes: Arc<Routes>, up: Arc<AtomicBool>) -> Self {
        Self {
            info,
            routes,
            link: Some(link),
            read: BytesMut::with_capacity(READ_SIZE),
            write: BytesMut::new(),
            in_flight: VecDeque::new(),
            spare_batches: Vec::new(),
            spare_outcomes: Vec::new(),
            unreachable: None,
            up,
        }
    }

    /// When to try to connect, while there is no connection.
    fn retry_at(&self) -> Option<Instant> {
        match (&self.link, &self.unreachable) {
            (Some(_), _) => None,
            (None, Some((_, at))) => Some(*at),
            (None, None) => Some(Instant::now()),
        }
    }

    /// Writes one pipeline: a `PUBLISH` of each message waiting in
    /// `announcements`, then the `XADD`s of `batch`. If it cannot go out, its
    /// appends (and any on their way) fail.
    async fn send(&mut self, announcements: &mut Outbox, batch: Vec<Pending>) {
        self.write.clear();
        let publishing = announcements.publish_into(&mut self.write);
        for append in &batch {
            xadd(&mut self.write, append);
        }
        let outcomes = self.spare_outcomes.pop().unwrap_or_default();
        let sent = Sent { outcomes, batch, publishing, at: Instant::now() };
        if let Err(error) = self.connect().await {
            return sent.fail(&error, announcements, &self.routes);
        }
        let link = self.link.as_mut().expect("connected above");
        match tokio::time::timeout(COMMAND_TIMEOUT, link.send(&self.write)).await {
            Ok(Ok(())) => self.in_flight.push_back(sent),
            Ok(Err(error)) => {
                self.fail(&error, announcements);
                sent.fail(&error, announcements, &self.routes);
            }
            Err(_) => {
                let error = io::Error::new(io::ErrorKind::TimedOut, "Redis did not take an append pipeline in time");
                self.fail(&error, announcements);
                sent.fail(&error, announcements, &self.routes);
            }
        }
    }

    /// Keeps the open link, or opens one unless an attempt failed just now.
    async fn connect(&mut self) -> io::Result<()> {
        if self.link.is_some() {
            return Ok(());
        }
        if let Some((why, retry_at)) = &self.unreachable {
            if Instant::now() < *retry_at {
                return Err(io::Error::new(io::ErrorKind::NotConnected, why.clone()));
            }
        }
        match Link::connect(&self.info).await {
            Ok(link) => {
                self.link = Some(link);
                self.unreachable = None;
                self.up.store(true, Ordering::Relaxed);
                Ok(())
            }
            Err(error) => {
                self.unreachable = Some((error.to_string(), Instant::now() + RECONNECT_DELAY));
                self.up.store(false, Ordering::Relaxed);
                Err(error)
            }
        }
    }

    /// Reads what Redis sent; pending while there is no link.
    async fn read(&mut self) -> io::Result<()> {
        let Some(link) = &mut self.link else { return std::future::pending().await };
        self.read.reserve(READ_SIZE);
        match link.reader.read_buf(&mut self.read).await? {
            0 => Err(io::Error::new(io::ErrorKind::ConnectionAborted, "Redis closed the connection")),
            _ => Ok(()),
        }
    }

    /// Settles, oldest first, every pipeline whose replies have all arrived.
    fn answered(&mut self, announcements: &mut Outbox) -> io::Result<()> {
        while let Some(oldest) = self.in_flight.front_mut() {
            if oldest.is_answered() {
                let mut sent = self.in_flight.pop_front().expect("looked at above");
                settle(&mut sent, announcements, &self.routes);
                self.recycle(sent);
                continue;
            }
            match wire::take_reply(&mut self.read).map_err(|_| wire::not_resp())? {
                Some(reply) => oldest.take(reply),
                None => break,
            }
        }
        if !self.read.is_empty() && self.in_flight.is_empty() {
            return Err(wire::not_resp());
        }
        Ok(())
    }

    /// Keeps a settled pipeline's vectors for the next ones.
    fn recycle(&mut self, sent: Sent) {
        if self.spare_batches.len() <= IN_FLIGHT_LIMIT {
            self.spare_batches.push(sent.batch);
            self.spare_outcomes.push(sent.outcomes);
        }
    }

    /// Drops the link and fails every pipeline on its way.
    fn fail(&mut self, error: &io::Error, announcements: &mut Outbox) {
        tracing::warn!(%error, pipelines = self.in_flight.len(), "lost the Redis append connection");
        self.link = None;
        self.up.store(false, Ordering::Relaxed);
        self.read.clear();
        for sent in std::mem::take(&mut self.in_flight) {
            sent.fail(error, announcements, &self.routes);
        }
    }
}

/// Queues the announcements of what landed, each for the other processes
/// following its stream now, and hands this process's mirrors the events of
/// the streams it follows itself; then tells each append's generator its
/// outcome: in that order, so a stream's next event (its terminal one,
/// announced by its generator) is never announced first. Leaves `sent`'s
/// vectors empty, for reuse.
fn settle(sent: &mut Sent, message: &mut Outbox, routes: &Routes) {
    let mut here = Vec::new();
    {
        let routes = routes.lock();
        for (append, outcome) in sent.batch.iter().zip(&sent.outcomes) {
            if *outcome != Xadd::Appended {
                continue;
            }
            if let Some(route) = routes.get(&append.to.id) {
                message.push_event(&route.readers, &append.to.id, append.seq, &append.record);
                if route.here {
                    here.push((append.to.id.clone(), append.record.clone().at(append.seq)));
                }
            }
        }
    }
    // Outside the routes' lock: the mirrors' lock is taken before it elsewhere.
    routes.deliver_here(here);
    for (append, outcome) in sent.batch.drain(..).zip(sent.outcomes.drain(..)) {
        append.settle(outcome);
    }
}

/// The cluster's send loop, run again after a panic (as `supervise` does).
async fn supervise_in_cluster(
    conn: RedisConn,
    routes: Arc<Routes>,
    mut waiting: mpsc::UnboundedReceiver<Pending>,
    mut announced: mpsc::UnboundedReceiver<Outgoing>,
    up: Arc<AtomicBool>,
) {
    let (publish, to_publish) = mpsc::unbounded_channel();
    tokio::spawn(publish_in_order(conn.clone(), to_publish));
    loop {
        let run = AssertUnwindSafe(send_in_cluster(&conn, &routes, &mut waiting, &mut announced, &publish)).catch_unwind().await;
        if run.is_ok() {
            return;
        }
        tracing::error!("the Redis append task panicked; restarting it");
        up.store(false, Ordering::Relaxed);
        tokio::time::sleep(RECONNECT_DELAY).await;
        up.store(true, Ordering::Relaxed);
    }
}

/// Sends each waiting append as its own `XADD` (up to `IN_FLIGHT_LIMIT`
/// batches on their way), settles each batch in order, and hands what landed
/// to the publisher.
async fn send_in_cluster(
    conn: &RedisConn,
    routes: &Routes,
    waiting: &mut mpsc::UnboundedReceiver<Pending>,
    announced: &mut mpsc::UnboundedReceiver<Outgoing>,
    publish: &mpsc::UnboundedSender<Outbox>,
) {
    use futures::stream::{FuturesOrdered, StreamExt};
    let mut in_flight = FuturesOrdered::new();
    let (mut batch, mut open) = (Vec::new(), true);
    loop {
        tokio::select! {
            biased;
            Some(sent) = in_flight.next(), if !in_flight.is_empty() => {
                let (batch, outcomes): (Vec<Pending>, Vec<Xadd>) = sent;
                let mut message = Outbox::default();
                settle(&mut Sent { batch, publishing: 0, outcomes, at: Instant::now() }, &mut message, routes);
                if !message.is_empty() {
                    let _ = publish.send(message);
                }
            }
            Some(records) = announced.recv() => {
                let mut message = Outbox::default();
                message.push_outgoing(&records);
                let _ = publish.send(message);
            }
            n = waiting.recv_many(&mut batch, PIPELINE_LIMIT), if open && in_flight.len() < IN_FLIGHT_LIMIT => {
                if n == 0 {
                    open = false;
                    continue;
                }
                #[cfg(test)]
                if batch.iter().any(|append| &*append.to.log == CRASH) {
                    panic!("asked to crash");
                }
                let sending = std::mem::take(&mut batch);
                let conn = conn.clone();
                in_flight.push_back(async move {
                    let outcomes = futures::future::join_all(sending.iter().map(|append| {
                        let mut conn = conn.clone();
                        let command = xadd_command(append);
                        async move {
                            let reply = tokio::time::timeout(COMMAND_TIMEOUT, command.query_async::<redis::Value>(&mut conn)).await;
                            match reply {
                                Ok(Ok(redis::Value::Nil)) => Xadd::NoLog,
                                Ok(Ok(_)) => Xadd::Appended,
                                Ok(Err(error)) if error.to_string().contains("equal or smaller") => Xadd::Conflict,
                                Ok(Err(error)) => Xadd::Failed(format!("Redis: {error}")),
                                Err(_) => Xadd::Failed("Redis did not answer an append in time".into()),
                            }
                        }
                    }))
                    .await;
                    (sending, outcomes)
                });
            }
            else => return,
        }
    }
}

/// Publishes the announcements handed over a round at a time (joining what
/// waits meanwhile): one `SPUBLISH` per channel, all at once, each to its
/// channel's node; the next round waits for them, so each channel's messages
/// arrive in order.
async fn publish_in_order(conn: RedisConn, mut to_publish: mpsc::UnboundedReceiver<Outbox>) {
    let mut ready = Vec::new();
    while to_publish.recv_many(&mut ready, 64).await > 0 {
        let mut round = Outbox::default();
        for mut outbox in ready.drain(..) {
            for (channel, records) in outbox.take() {
                round.push(&channel, &records);
            }
        }
        let sends = round.take().into_iter().map(|(channel, message)| {
            let mut conn = conn.clone();
            async move { redis::cmd("SPUBLISH").arg(&*channel).arg(&message[..]).query_async::<()>(&mut conn).await }
        });
        for sent in futures::future::join_all(sends).await {
            if let Err(error) = sent {
                // Lost announcements only make readers read the log: no retry.
                tracing::debug!(%error, "could not announce appended events");
            }
        }
    }
}

/// The `XADD` of `append` as a redis-rs command, for the cluster.
fn xadd_command(append: &Pending) -> redis::Cmd {
    let mut command = redis::cmd("XADD");
    command
        .arg(&*append.to.log)
        .arg("NOMKSTREAM")
        .arg(format!("{}-1", append.seq))
        .arg("t")
        .arg(append.record.event_type.as_str())
        .arg("j")
        .arg(&append.record.fields[..]);
    command
}

/// Arguments of an append's `XADD`.
const XADD_ARGS: usize = 8;

/// `XADD <log> NOMKSTREAM <seq>-1 t <type> j <fields>`: the log's head as
/// encoded once, then the rest. Every event passes here: few, larger copies.
fn xadd(out: &mut BytesMut, append: &Pending) {
    let mut digits = itoa::Buffer::new();
    let digits = digits.format(append.seq).as_bytes();
    // At most 20 digits, then `-1`.
    let mut entry = [0u8; 22];
    entry[..digits.len()].copy_from_slice(digits);
    entry[digits.len()..digits.len() + 2].copy_from_slice(b"-1");
    let entry = &entry[..digits.len() + 2];
    let event_type = append.record.event_type.as_str().as_bytes();
    let fields = &append.record.fields[..];
    out.reserve(append.to.head.len() + entry.len() + event_type.len() + fields.len() + 64);
    out.extend_from_slice(&append.to.head);
    wire::bulk(out, entry);
    out.extend_from_slice(b"$1\r\nt\r\n");
    wire::bulk(out, event_type);
    out.extend_from_slice(b"$1\r\nj\r\n");
    wire::bulk(out, fields);
}

fn outcome(reply: Reply) -> Xadd {
    match reply {
        Reply::Value => Xadd::Appended,
        Reply::Nil => Xadd::NoLog,
        // "The ID specified in XADD is equal or smaller than the target stream top item"
        Reply::Error(error) if error.contains("equal or smaller") => Xadd::Conflict,
        Reply::Error(error) => Xadd::Failed(error),
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use bytes::Bytes;

    use super::super::announce;
    use super::super::test_server::TestServer;
    use super::*;
    use crate::ai::streaming::events::EventBody;

    const CHANNEL: &str = "appended";
    /// A bound on what must end, so a broken timeout fails the test instead of hanging it.
    const PATIENCE: Duration = Duration::from_secs(15);

    async fn xadd_within(appends: &Appends, id: &StreamId, log: &Arc<str>, seq: u64) -> Xadd {
        let to = LogAppends::new(id.clone(), log.clone());
        tokio::time::timeout(PATIENCE, appends.xadd(&to, seq, &chunk(seq))).await.expect("every append learns its outcome")
    }

    fn chunk(n: u64) -> EventRecord {
        EventRecord::new(&EventBody::Chunk { token: format!("t{n} ") })
    }

    /// The pipeline on `redis`, announcing stream `s1` on `CHANNEL`, and a client to look with.
    async fn appends_on(redis: &TestServer) -> (Appends, redis::Client, mpsc::UnboundedSender<Outgoing>) {
        let client = redis::Client::open(redis.url()).unwrap();
        let (announcer, announced) = mpsc::unbounded_channel();
        let routes = Arc::new(Routes::default());
        let s1 = StreamId::parse("s1").unwrap();
        routes.open(&s1);
        routes.follow(&s1, &CHANNEL.into());
        let appends = Appends::start(&RedisTarget::Node(redis.url()), routes, announced).await.unwrap();
        (appends, client, announcer)
    }

    /// A log holding its first event, as the `first` script leaves it.
    async fn new_log(client: &redis::Client, log: &str) {
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let _: String =
            redis::cmd("XADD").arg(log).arg("0-1").arg("t").arg("chunk").arg("j").arg("{}").query_async(&mut conn).await.unwrap();
    }

    #[tokio::test]
    async fn appends_land_are_announced_fail_while_redis_is_down_and_land_again_once_it_is_back() {
        let mut redis = TestServer::start(&[]).await;
        let (appends, client, _announcer) = appends_on(&redis).await;
        let (id, log): (StreamId, Arc<str>) = (StreamId::parse("s1").unwrap(), "log".into());
        new_log(&client, &log).await;
        let mut pubsub = client.get_async_pubsub().await.unwrap();
        pubsub.subscribe(CHANNEL).await.unwrap();

        assert_eq!(xadd_within(&appends, &id, &log, 1).await, Xadd::Appended);
        assert_eq!(xadd_within(&appends, &id, &log, 1).await, Xadd::Conflict);
        assert_eq!(xadd_within(&appends, &StreamId::parse("s2").unwrap(), &"nolog".into(), 1).await, Xadd::NoLog);
        let message = pubsub.on_message().next().await.unwrap();
        let announced: Vec<_> = announce::decode(Bytes::copy_from_slice(message.get_payload_bytes())).collect::<Option<_>>().unwrap();
        assert_eq!(announced, vec![announce::Record::Event(Bytes::from_static(b"s1"), chunk(1).at(1))]);

        redis.stop().await;
        match xadd_within(&appends, &id, &log, 2).await {
            Xadd::Failed(why) => assert!(why.starts_with("Redis: "), "{why}"),
            other => panic!("appended to a stopped Redis: {other:?}"),
        }
        redis.restart().await;
        new_log(&client, &log).await;
        // Reconnected by the next pipeline once the reconnect delay has passed.
        let mut tries = 0;
        loop {
            match xadd_within(&appends, &id, &log, 1).await {
                Xadd::Appended => break,
                Xadd::Failed(_) if tries < 100 => tries += 1,
                other => panic!("after {tries} tries: {other:?}"),
            }
            tokio::time::sleep(RECONNECT_DELAY / 5).await;
        }
    }

    #[tokio::test]
    async fn a_panicking_append_task_is_down_then_restarted_and_appends_land_again() {
        let redis = TestServer::start(&[]).await;
        let (appends, client, _announcer) = appends_on(&redis).await;
        let (id, log): (StreamId, Arc<str>) = (StreamId::parse("s1").unwrap(), "log".into());
        new_log(&client, &log).await;
        assert!(appends.is_up());
        // An append on its way when the task dies learns that it failed, not nothing.
        let one = chunk(1);
        let to = LogAppends::new(id.clone(), log.clone());
        let mut waiting = Box::pin(appends.xadd(&to, 1, &one));
        // Polled once, so it is queued ahead of the crash.
        assert!(futures::poll!(&mut waiting).is_pending());
        appends.crash();
        let outcome = tokio::time::timeout(PATIENCE, waiting).await.expect("the append learns its outcome");
        assert!(matches!(outcome, Xadd::Appended | Xadd::Failed(_)), "{outcome:?}");
        let deadline = Instant::now() + PATIENCE;
        while appends.is_up() {
            assert!(Instant::now() < deadline, "the append path is reported down while the task restarts");
            tokio::task::yield_now().await;
        }
        while !appends.is_up() {
            assert!(Instant::now() < deadline, "the task is restarted");
            tokio::time::sleep(RECONNECT_DELAY / 5).await;
        }
        let retried = xadd_within(&appends, &id, &log, 1).await;
        assert!(matches!(retried, Xadd::Appended | Xadd::Conflict), "{retried:?}");
        assert_eq!(xadd_within(&appends, &id, &log, 2).await, Xadd::Appended);
    }

    #[tokio::test]
    async fn a_pipeline_redis_does_not_answer_fails_after_the_command_timeout_and_the_next_goes_through() {
        let redis = TestServer::start(&[]).await;
        let (appends, client, _announcer) = appends_on(&redis).await;
        let (id, log): (StreamId, Arc<str>) = (StreamId::parse("s1").unwrap(), "log".into());
        new_log(&client, &log).await;
        assert_eq!(xadd_within(&appends, &id, &log, 1).await, Xadd::Appended);

        redis.pause(true);
        match xadd_within(&appends, &id, &log, 2).await {
            Xadd::Failed(why) => assert!(why.contains("did not answer"), "{why}"),
            other => panic!("a paused Redis answered: {other:?}"),
        }
        redis.pause(false);
        // The unanswered append may have landed once Redis woke: a retry finds it.
        let retried = xadd_within(&appends, &id, &log, 2).await;
        assert!(matches!(retried, Xadd::Appended | Xadd::Conflict), "{retried:?}");
        assert_eq!(xadd_within(&appends, &id, &log, 3).await, Xadd::Appended);
    }

    #[tokio::test]
    async fn appends_of_one_log_at_once_each_learn_their_own_outcome() {
        let redis = TestServer::start(&[]).await;
        let (appends, client, _announcer) = appends_on(&redis).await;
        let (id, log): (StreamId, Arc<str>) = (StreamId::parse("s1").unwrap(), "log".into());
        new_log(&client, &log).await;
        let to = LogAppends::new(id, log);
        let (one, two, again) = (chunk(1), chunk(2), chunk(1));
        let both = futures::future::join3(appends.xadd(&to, 1, &one), appends.xadd(&to, 2, &two), appends.xadd(&to, 1, &again));
        let outcomes = tokio::time::timeout(PATIENCE, both).await.expect("every append learns its outcome");
        assert_eq!(outcomes, (Xadd::Appended, Xadd::Appended, Xadd::Conflict));
    }

    #[test]
    fn an_outcome_for_an_append_given_up_on_is_not_taken_by_the_next() {
        let to = LogAppends::new(StreamId::parse("s1").unwrap(), "log".into());
        let waker = futures::task::noop_waker();
        let dropped = to.take_ticket();
        let next = to.take_ticket();
        to.settle(dropped, Xadd::Appended);
        assert_eq!(to.poll_outcome(next, &waker), Poll::Pending);
        to.settle(next, Xadd::Conflict);
        assert_eq!(to.poll_outcome(next, &waker), Poll::Ready(Xadd::Conflict));
    }
}
