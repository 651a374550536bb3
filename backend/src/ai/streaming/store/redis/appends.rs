//! The ordinary appends (every event but a log's first and its terminal one) of
//! all the logs this process generates, joined: one task sends whatever appends
//! are waiting as one pipeline of `XADD`s, so a burst of tokens across many
//! streams is one write and one read, for Redis and for us, and still one
//! command per event. Each append learns its own outcome, and the ones that
//! landed are announced from here, together (`announce.rs`).

use std::sync::Arc;

use bytes::BytesMut;
use redis::aio::ConnectionManager;
use tokio::sync::{mpsc, oneshot};

use super::announce::{self, Announcer};
use crate::ai::streaming::events::{EventRecord, StreamId};

/// Appends sent in one pipeline at most.
const PIPELINE_LIMIT: usize = 512;

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
    /// Starts the sending task; it ends when the store is dropped, not on a
    /// shutdown signal, so a draining generation can still append.
    pub fn start(conn: ConnectionManager, announcer: Announcer) -> Self {
        let (queue, waiting) = mpsc::unbounded_channel();
        tokio::spawn(send_loop(conn, announcer, waiting));
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

async fn send_loop(mut conn: ConnectionManager, announcer: Announcer, mut waiting: mpsc::UnboundedReceiver<Pending>) {
    let mut batch = Vec::new();
    while waiting.recv_many(&mut batch, PIPELINE_LIMIT).await > 0 {
        let mut pipe = redis::Pipeline::with_capacity(batch.len());
        pipe.ignore_errors();
        for append in &batch {
            pipe.add_command(xadd(append));
        }
        let outcomes: Vec<Xadd> = match pipe.query_async::<Vec<redis::Value>>(&mut conn).await {
            Ok(replies) if replies.len() == batch.len() => replies.into_iter().map(outcome).collect(),
            Ok(replies) => vec![Xadd::Failed(format!("{} replies to {} appends", replies.len(), batch.len())); batch.len()],
            Err(error) => vec![Xadd::Failed(error.to_string()); batch.len()],
        };
        // Announced before anyone hears back, so a stream's next event (its
        // terminal one, announced by another path) is never announced first.
        let mut landed = BytesMut::new();
        for (append, outcome) in batch.iter().zip(&outcomes) {
            if *outcome == Xadd::Appended {
                announce::encode(&mut landed, &append.id, append.seq, &append.record);
            }
        }
        if !landed.is_empty() {
            announcer.announce_encoded(landed.freeze());
        }
        for (append, outcome) in batch.drain(..).zip(outcomes) {
            let _ = append.done.send(outcome);
        }
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
