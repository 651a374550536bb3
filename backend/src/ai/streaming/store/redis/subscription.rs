//! Pub/sub subscriptions that come back: after the connection is lost, a fresh
//! one is tried with backoff until Redis answers again. Shared by the cancel
//! channel (`cancels.rs`) and the announcements of appended events (`tail.rs`).

use std::time::Duration;

use redis::aio::PubSub;
use tokio_util::sync::CancellationToken;

/// First pause before resubscribing; it doubles up to `MAX_BACKOFF`.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Longest pause between resubscription attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// Bound on one attempt, so a Redis that accepts but does not answer is retried.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);

/// A subscription to `channel` on a connection of its own.
pub async fn subscribe(client: &redis::Client, channel: &str) -> redis::RedisResult<PubSub> {
    let mut pubsub = client.get_async_pubsub().await?;
    pubsub.subscribe(channel).await?;
    Ok(pubsub)
}

/// Subscribes to `channel` again, retrying with backoff until it works; `None`
/// once `shutdown` is signalled.
pub async fn resubscribe(client: &redis::Client, channel: &str, shutdown: &CancellationToken) -> Option<PubSub> {
    let mut backoff = FIRST_BACKOFF;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
        if let Ok(Ok(fresh)) = tokio::time::timeout(ATTEMPT_TIMEOUT, subscribe(client, channel)).await {
            return Some(fresh);
        }
    }
}
