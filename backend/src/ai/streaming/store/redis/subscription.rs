//! A pub/sub subscription to one channel that comes back by itself, and tells
//! its reader when it was lost and when it is back (so the reader can look at
//! what it may have missed). Shared by the cancel channel (`cancels.rs`) and the
//! announcements of appended events (`tail.rs`).
//!
//! - One node: `SUBSCRIBE` on a connection of its own; after losing it, a fresh
//!   one is tried with backoff until Redis answers again.
//! - A cluster: sharded pub/sub (`SSUBSCRIBE`, Redis 7), so a message travels
//!   only to the node of its channel's slot. redis-rs's cluster client speaks
//!   RESP3, receives the messages as pushes, and subscribes again by itself
//!   after a disconnection, a failover or a slot's move; its `Disconnection`
//!   push says the subscription was lost, the `ssubscribe` confirmation that
//!   follows says it is back.

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use redis::aio::PubSub;
use redis::PushKind;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::redis_connection::{self, RedisTarget};

/// First pause before resubscribing; it doubles up to `MAX_BACKOFF`.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Longest pause between resubscription attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// Bound on one attempt, so a Redis that accepts but does not answer is retried.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);

/// What a subscription heard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Heard {
    Message(Bytes),
    /// The subscription was lost: messages may be missed until it is back.
    Lost,
    /// Subscribed again after a loss.
    Back,
}

pub struct Subscription {
    channel: String,
    shutdown: CancellationToken,
    source: Source,
}

// Two subscriptions per process: the size of a node's client does not matter.
#[allow(clippy::large_enum_variant)]
enum Source {
    Node { client: redis::Client, pubsub: Option<PubSub> },
    Cluster { pushes: mpsc::UnboundedReceiver<redis::PushInfo>, _conn: redis::cluster_async::ClusterConnection, lost: bool },
}

impl Subscription {
    /// Subscribes to `channel`; the subscription lives until `shutdown`.
    pub async fn open(target: &RedisTarget, channel: &str, shutdown: CancellationToken) -> redis::RedisResult<Self> {
        let source = match target {
            RedisTarget::Node(url) => {
                let client = redis::Client::open(url.as_str())?;
                let pubsub = subscribe(&client, channel).await?;
                Source::Node { client, pubsub: Some(pubsub) }
            }
            RedisTarget::Cluster(urls) => {
                let (push, pushes) = mpsc::unbounded_channel();
                let mut conn = redis_connection::cluster_client(urls, Some(push))?.get_async_connection().await?;
                conn.ssubscribe(channel).await?;
                Source::Cluster { pushes, _conn: conn, lost: false }
            }
        };
        Ok(Self { channel: channel.to_owned(), shutdown, source })
    }

    /// What it heard next; `None` once `shutdown` is signalled.
    pub async fn next(&mut self) -> Option<Heard> {
        let shutdown = self.shutdown.clone();
        tokio::select! {
            _ = shutdown.cancelled() => None,
            heard = self.hear() => heard,
        }
    }

    async fn hear(&mut self) -> Option<Heard> {
        match &mut self.source {
            Source::Node { client, pubsub } => match pubsub {
                Some(open) => {
                    let message = open.on_message().next().await;
                    match message {
                        Some(message) => Some(Heard::Message(Bytes::copy_from_slice(message.get_payload_bytes()))),
                        None => {
                            *pubsub = None;
                            Some(Heard::Lost)
                        }
                    }
                }
                None => {
                    *pubsub = Some(resubscribe(client, &self.channel).await);
                    Some(Heard::Back)
                }
            },
            Source::Cluster { pushes, lost, .. } => loop {
                let push = pushes.recv().await?;
                match push.kind {
                    PushKind::SMessage | PushKind::Message => match push.data.into_iter().nth(1) {
                        Some(redis::Value::BulkString(payload)) => return Some(Heard::Message(Bytes::from(payload))),
                        _ => continue,
                    },
                    PushKind::Disconnection if !*lost => {
                        *lost = true;
                        return Some(Heard::Lost);
                    }
                    PushKind::SSubscribe if *lost => {
                        *lost = false;
                        return Some(Heard::Back);
                    }
                    _ => continue,
                }
            },
        }
    }
}

/// A subscription to `channel` on a connection of its own.
pub async fn subscribe(client: &redis::Client, channel: &str) -> redis::RedisResult<PubSub> {
    let mut pubsub = client.get_async_pubsub().await?;
    pubsub.subscribe(channel).await?;
    Ok(pubsub)
}

/// Subscribes to `channel` again, retrying with backoff until it works (the
/// caller's `select!` on shutdown ends the wait).
async fn resubscribe(client: &redis::Client, channel: &str) -> PubSub {
    let mut backoff = FIRST_BACKOFF;
    loop {
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
        if let Ok(Ok(fresh)) = tokio::time::timeout(ATTEMPT_TIMEOUT, subscribe(client, channel)).await {
            return fresh;
        }
    }
}
