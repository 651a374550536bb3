//! Cancel requests from any process, through one pub/sub subscription per
//! process, resubscribed when Redis comes back. A message lost while the
//! subscription is down is not lost for good: the request also marks the lease,
//! which the generator reads on its next renewal (`upkeep.rs`).

use futures::StreamExt;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::subscription;
use crate::ai::streaming::events::StreamId;

/// Subscribes to `channel` and forwards each stream id to `cancels` until `shutdown`.
pub async fn listen(
    client: redis::Client,
    channel: String,
    cancels: broadcast::Sender<StreamId>,
    shutdown: CancellationToken,
) -> redis::RedisResult<()> {
    let mut pubsub = subscription::subscribe(&client, &channel).await?;
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
            let Some(fresh) = subscription::resubscribe(&client, &channel, &shutdown).await else { return };
            pubsub = fresh;
        }
    });
    Ok(())
}
