//! Cancel requests from any process, through one pub/sub subscription per
//! process, resubscribed when Redis comes back. A message lost while the
//! subscription is down is not lost for good: the request also marks the lease,
//! which the generator reads on its next renewal (`upkeep.rs`).

use std::time::Duration;

use futures::StreamExt;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::ai::streaming::events::StreamId;

/// Longest pause between resubscription attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// Subscribes to `channel` and forwards each stream id to `cancels` until `shutdown`.
pub async fn listen(
    client: redis::Client,
    channel: String,
    cancels: broadcast::Sender<StreamId>,
    shutdown: CancellationToken,
) -> redis::RedisResult<()> {
    let mut pubsub = client.get_async_pubsub().await?;
    pubsub.subscribe(&channel).await?;
    tokio::spawn(async move {
        loop {
            {
                let mut messages = pubsub.on_message();
                loop {
                    let message = tokio::select! {
                        _ = shutdown.cancelled() => return,
                        message = messages.next() => message,
                    };
                    let Some(message) = message else { break };
                    if let Some(id) = message.get_payload::<String>().ok().as_deref().and_then(StreamId::parse) {
                        let _ = cancels.send(id);
                    }
                }
            }
            tracing::warn!("lost the Redis cancel subscription; resubscribing");
            let mut backoff = Duration::from_millis(100);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                let fresh = tokio::time::timeout(Duration::from_secs(2), async {
                    let mut fresh = client.get_async_pubsub().await?;
                    fresh.subscribe(&channel).await?;
                    redis::RedisResult::Ok(fresh)
                });
                if let Ok(Ok(fresh)) = fresh.await {
                    pubsub = fresh;
                    break;
                }
            }
        }
    });
    Ok(())
}
