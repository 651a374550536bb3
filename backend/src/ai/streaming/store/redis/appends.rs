//! The ordinary appends (every event but a log's first and its terminal one) of
//! all the logs this process generates, joined: one task sends whatever appends
//! are waiting as one pipeline of `XADD`s, so a burst of tokens across many
//! streams is one write and one read, for Redis and for us, and still one
//! command per event. Each append learns its own outcome.
//!
//! Up to `IN_FLIGHT_LIMIT` pipelines go out before the first is answered, so an
//! append that arrives while one is on its way is sent at once, not a round trip
//! later. One connection keeps them in order, and their replies are settled in
//! that order.
//!
//! The same task publishes the announcements (`announce.rs`): the events that
//! landed, and whatever the other paths confirmed meanwhile, go out as one
//! `PUBLISH` at the head of the next pipeline, sent as soon as a pipeline may go
//! even if no append waits. An announcement costs no task hand-off and no round
//! trip of its own.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures::stream::{FuturesOrdered, StreamExt};
use redis::aio::ConnectionManager;
use tokio::sync::{mpsc, oneshot};

use super::announce::{self, MESSAGE_LIMIT};
use crate::ai::streaming::events::{EventRecord, StreamId};

/// Appends sent in one pipeline at most.
const PIPELINE_LIMIT: usize = 512;
/// Pipelines sent and not yet answered at most. More than one, so an append
/// waits for no earlier pipeline's round trip, and the landed events go out in
/// smaller, more frequent announcements; few, so a burst still joins up.
const IN_FLIGHT_LIMIT: usize = 3;

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

struct Pending {
    id: StreamId,
    log: Arc<str>,
    seq: u64,
    record: EventRecord,
    done: oneshot::Sender<Xadd>,
}

pub struct Appends {
    queue: mpsc::UnboundedSender<Pending>,
}

impl Appends {
    /// Starts the sending task, publishing on `channel` what `announced` hands
    /// over as well as its own appends. It ends when the store is dropped, not on
    /// a shutdown signal, so a draining generation can still append and announce.
    pub fn start(conn: ConnectionManager, channel: String, announced: mpsc::UnboundedReceiver<Bytes>) -> Self {
        let (queue, waiting) = mpsc::unbounded_channel();
        tokio::spawn(send_loop(conn, channel, waiting, announced));
        Self { queue }
    }

    /// Appends `record` at `seq` of `id`'s log (at key `log`), and announces it if it landed.
    pub async fn xadd(&self, id: &StreamId, log: &Arc<str>, seq: u64, record: &EventRecord) -> Xadd {
        let (done, outcome) = oneshot::channel();
        let pending = Pending { id: id.clone(), log: log.clone(), seq, record: record.clone(), done };
        if self.queue.send(pending).is_err() {
            return Xadd::Failed("the Redis store is shutting down".into());
        }
        outcome.await.unwrap_or_else(|_| Xadd::Failed("the Redis store is shutting down".into()))
    }
}

async fn send_loop(
    conn: ConnectionManager,
    channel: String,
    mut waiting: mpsc::UnboundedReceiver<Pending>,
    mut announced: mpsc::UnboundedReceiver<Bytes>,
) {
    let channel: Arc<str> = channel.into();
    let (mut batch, mut message) = (Vec::new(), BytesMut::new());
    let (mut appends_open, mut announced_open) = (true, true);
    let mut in_flight = FuturesOrdered::new();
    loop {
        let room = in_flight.len() < IN_FLIGHT_LIMIT;
        tokio::select! {
            biased;
            Some((sent, outcomes)) = in_flight.next() => settle(sent, outcomes, &mut message),
            n = waiting.recv_many(&mut batch, PIPELINE_LIMIT), if appends_open && room => appends_open = n > 0,
            first = announced.recv(), if announced_open && room => match first {
                Some(records) => message.extend_from_slice(&records),
                None => announced_open = false,
            },
            else => return,
        }
        if in_flight.len() >= IN_FLIGHT_LIMIT {
            continue;
        }
        // Appends first, then announcements: an event confirmed elsewhere before
        // an append was queued (a log's first event) is then surely published
        // with this write, ahead of the append's own announcement.
        while batch.len() < PIPELINE_LIMIT {
            let Ok(append) = waiting.try_recv() else { break };
            batch.push(append);
        }
        while message.len() < MESSAGE_LIMIT {
            let Ok(records) = announced.try_recv() else { break };
            message.extend_from_slice(&records);
        }
        if message.is_empty() && batch.is_empty() {
            continue;
        }
        let publishing = (!message.is_empty()).then(|| message.split().freeze());
        in_flight.push_back(send(conn.clone(), channel.clone(), publishing, std::mem::take(&mut batch)));
    }
}

/// One pipeline: `PUBLISH` of `message` (if any), then the `XADD`s of `batch`.
/// Returns the batch with each append's outcome.
async fn send(mut conn: ConnectionManager, channel: Arc<str>, message: Option<Bytes>, batch: Vec<Pending>) -> (Vec<Pending>, Vec<Xadd>) {
    let mut pipe = redis::Pipeline::with_capacity(batch.len() + 1);
    pipe.ignore_errors();
    if let Some(message) = &message {
        pipe.cmd("PUBLISH").arg(&*channel).arg(&message[..]);
    }
    for append in &batch {
        pipe.add_command(xadd(append));
    }
    let publishing = message.is_some();
    let expected = batch.len() + usize::from(publishing);
    let outcomes = match pipe.query_async::<Vec<redis::Value>>(&mut conn).await {
        Ok(replies) if replies.len() == expected => {
            let mut replies = replies.into_iter();
            if publishing {
                if let Some(redis::Value::ServerError(error)) = replies.next() {
                    // Lost announcements only make readers read the log: no retry.
                    tracing::debug!(?error, "could not announce appended events");
                }
            }
            replies.map(outcome).collect()
        }
        Ok(replies) => vec![Xadd::Failed(format!("{} replies to {} commands", replies.len(), expected)); batch.len()],
        Err(error) => vec![Xadd::Failed(error.to_string()); batch.len()],
    };
    (batch, outcomes)
}

/// Queues the announcements of what landed, then tells each append's generator
/// its outcome: in that order, so a stream's next event (its terminal one,
/// announced through the queue) is never announced first.
fn settle(sent: Vec<Pending>, outcomes: Vec<Xadd>, message: &mut BytesMut) {
    for (append, outcome) in sent.iter().zip(&outcomes) {
        if *outcome == Xadd::Appended {
            announce::encode(message, &append.id, append.seq, &append.record);
        }
    }
    for (append, outcome) in sent.into_iter().zip(outcomes) {
        let _ = append.done.send(outcome);
    }
}

/// `XADD <log> NOMKSTREAM <seq>-1 t <type> j <fields>`, built in one allocation.
fn xadd(append: &Pending) -> redis::Cmd {
    let mut id = itoa::Buffer::new();
    let id = id.format(append.seq);
    let size = 40 + append.log.len() + id.len() + append.record.fields.len();
    let mut cmd = redis::Cmd::with_capacity(8, size);
    cmd.arg("XADD")
        .arg(&*append.log)
        .arg("NOMKSTREAM")
        .arg(&[id.as_bytes(), b"-1"].concat()[..])
        .arg("t")
        .arg(append.record.event_type.as_str())
        .arg("j")
        .arg(&append.record.fields[..]);
    cmd
}

fn outcome(reply: redis::Value) -> Xadd {
    match reply {
        redis::Value::BulkString(_) | redis::Value::SimpleString(_) => Xadd::Appended,
        redis::Value::Nil => Xadd::NoLog,
        // "The ID specified in XADD is equal or smaller than the target stream top item"
        redis::Value::ServerError(error) if error.details().is_some_and(|d| d.contains("equal or smaller")) => Xadd::Conflict,
        redis::Value::ServerError(error) => Xadd::Failed(format!("{error:?}")),
        other => Xadd::Failed(format!("unexpected reply to XADD: {other:?}")),
    }
}
