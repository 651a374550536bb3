//! The control channel every process hears (`<prefix>:cancel`, one
//! subscription per process, `subscription.rs`):
//! - a cancel request, the stream id alone: cancels the generation's token if
//!   it runs here. A message lost while the subscription is down is not lost
//!   for good: the request also marks the stream's meta, which the generator
//!   reads at every lease renewal (`upkeep.rs`).
//! - follow and leave notices, lines `follow <stream id> <process id>` and
//!   `leave <stream id> <process id>`: a process tells the generator of a
//!   stream that it now serves readers of it, or no longer does, and the
//!   generator routes the stream's announcements accordingly (`routes.rs`);
//!   to a follower it answers with a nudge (`announce.rs`), after which the
//!   follower reads the log, so what was confirmed before the generator knew
//!   is not missed. A process of the previous release ignores the notices
//!   (they are not stream ids).
//!
//! A process sends its notices from one task, in the order its mirrors came
//! and went, joined into one message per round, so a generator never sees a
//! leave overtake the follow after it. A notice lost on the way leaves the
//! follower without announcements: its mirror then finds its log silent,
//! reads it, and follows again (`tail.rs`).

use std::sync::{Arc, Weak};

use tokio::sync::mpsc;

use super::routes::Followed;
use super::subscription::{Heard, Subscription};
use super::Shared;
use crate::ai::streaming::events::StreamId;
use crate::redis_connection::{RedisConn, RedisTarget};

/// Notices joined into one message at most.
const NOTICES_PER_MESSAGE: usize = 1024;

/// What a process tells the generator of a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    Follow(StreamId),
    Leave(StreamId),
}

/// The queue of this process's notices.
pub struct Notices {
    queue: mpsc::UnboundedSender<Notice>,
    /// Notices kept back instead of sent, while a test holds them.
    #[cfg(test)]
    held: std::sync::Mutex<Option<Vec<Notice>>>,
}

impl Notices {
    pub fn send(&self, notice: Notice) {
        #[cfg(test)]
        if let Some(held) = self.held.lock().unwrap().as_mut() {
            held.push(notice);
            return;
        }
        let _ = self.queue.send(notice);
    }

    /// Keeps notices back from now on, as if they were slow on their way.
    #[cfg(test)]
    pub fn hold(&self) {
        *self.held.lock().unwrap() = Some(Vec::new());
    }

    /// Sends the notices held back (`deliver`), or drops them as if lost, and
    /// sends the next ones at once.
    #[cfg(test)]
    pub fn release(&self, deliver: bool) {
        let held = self.held.lock().unwrap().take().unwrap_or_default();
        for notice in held.into_iter().filter(|_| deliver) {
            let _ = self.queue.send(notice);
        }
    }
}

/// Hears the control channel on `subscription` until its shutdown.
pub fn listen(mut subscription: Subscription, shared: Weak<Shared>) {
    tokio::spawn(async move {
        while let Some(heard) = subscription.next().await {
            let Some(shared) = shared.upgrade() else { return };
            match heard {
                Heard::Message(payload) => heard_message(&shared, &payload),
                Heard::Lost => tracing::warn!("lost the Redis control subscription; resubscribing"),
                Heard::Back => {}
            }
        }
    });
}

fn heard_message(shared: &Shared, payload: &[u8]) {
    let Ok(text) = std::str::from_utf8(payload) else { return };
    if let Some(id) = StreamId::parse(text) {
        shared.cancel_here(&id);
        return;
    }
    for line in text.lines() {
        let mut words = line.split(' ');
        let (Some(kind), Some(id), Some(owner), None) = (words.next(), words.next().and_then(StreamId::parse), words.next(), words.next())
        else {
            continue;
        };
        let channel: Arc<str> = shared.keys.process_channel(owner).into();
        match kind {
            "follow" => match shared.routes.follow(&id, &channel) {
                Followed::Added | Followed::Closed => shared.announcer.nudge(channel, &id),
                Followed::Unknown => {}
            },
            "leave" => shared.routes.leave(&id, &channel),
            _ => {}
        }
    }
}

/// Sends this process's notices, in order, until the store is dropped.
pub fn send(conn: RedisConn, target: &RedisTarget, channel: String, owner: String) -> Notices {
    let (notices, mut waiting) = mpsc::unbounded_channel::<Notice>();
    let publish = target.publish_command();
    tokio::spawn(async move {
        let mut ready = Vec::new();
        while waiting.recv_many(&mut ready, NOTICES_PER_MESSAGE).await > 0 {
            let mut message = String::new();
            for notice in ready.drain(..) {
                let (kind, id) = match &notice {
                    Notice::Follow(id) => ("follow", id),
                    Notice::Leave(id) => ("leave", id),
                };
                message.push_str(&format!("{kind} {id} {owner}\n"));
            }
            let sent = redis::cmd(publish).arg(&channel).arg(message).query_async::<()>(&mut conn.clone()).await;
            if let Err(error) = sent {
                // The mirrors find their logs silent and follow again.
                tracing::debug!(%error, "could not send follow notices");
            }
        }
    });
    Notices {
        queue: notices,
        #[cfg(test)]
        held: std::sync::Mutex::default(),
    }
}
