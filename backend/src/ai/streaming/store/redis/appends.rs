//! The ordinary appends (every event but a log's first and its terminal one) of
//! all the logs this process generates, joined: one task sends whatever appends
//! are waiting as one pipeline of `XADD`s, so a burst of tokens across many
//! streams is one write and one read, for Redis and for us, and still one
//! command per event. Each append learns its own outcome.

use std::sync::Arc;

use redis::aio::ConnectionManager;
use tokio::sync::{mpsc, oneshot};

use super::keys::entry_id;
use crate::ai::streaming::events::EventRecord;

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
    pub fn start(conn: ConnectionManager) -> Self {
        let (queue, waiting) = mpsc::unbounded_channel();
        tokio::spawn(send_loop(conn, waiting));
        Self { queue }
    }

    /// Appends `record` at `seq` of the log at key `log`.
    pub async fn xadd(&self, log: &Arc<str>, seq: u64, record: &EventRecord) -> Xadd {
        let (done, outcome) = oneshot::channel();
        let pending = Pending { log: log.clone(), seq, record: record.clone(), done };
        if self.queue.send(pending).is_err() {
            return Xadd::Failed("the Redis store is shutting down".into());
        }
        outcome.await.unwrap_or_else(|_| Xadd::Failed("the Redis store is shutting down".into()))
    }
}

async fn send_loop(mut conn: ConnectionManager, mut waiting: mpsc::UnboundedReceiver<Pending>) {
    let mut batch = Vec::new();
    while waiting.recv_many(&mut batch, PIPELINE_LIMIT).await > 0 {
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for append in &batch {
            pipe.cmd("XADD")
                .arg(&*append.log)
                .arg("NOMKSTREAM")
                .arg(entry_id(append.seq))
                .arg("t")
                .arg(append.record.event_type.as_str())
                .arg("j")
                .arg(&append.record.fields[..]);
        }
        match pipe.query_async::<Vec<redis::RedisResult<Option<String>>>>(&mut conn).await {
            Ok(replies) if replies.len() == batch.len() => {
                for (append, reply) in batch.drain(..).zip(replies) {
                    let _ = append.done.send(outcome(reply));
                }
            }
            Ok(replies) => {
                let error = format!("{} replies to {} appends", replies.len(), batch.len());
                for append in batch.drain(..) {
                    let _ = append.done.send(Xadd::Failed(error.clone()));
                }
            }
            Err(error) => {
                for append in batch.drain(..) {
                    let _ = append.done.send(Xadd::Failed(error.to_string()));
                }
            }
        }
    }
}

fn outcome(reply: redis::RedisResult<Option<String>>) -> Xadd {
    match reply {
        Ok(Some(_)) => Xadd::Appended,
        Ok(None) => Xadd::NoLog,
        // "The ID specified in XADD is equal or smaller than the target stream top item"
        Err(error) if error.to_string().contains("equal or smaller") => Xadd::Conflict,
        Err(error) => Xadd::Failed(error.to_string()),
    }
}
