//! Cancel requests from other processes, through one pub/sub subscription per
//! process, resubscribed when Redis comes back: each cancels the generation's
//! token if it runs here. A message lost while the subscription is down is not
//! lost for good: the request also marks the stream's meta, which the
//! generator reads at every lease renewal (`upkeep.rs`).

use std::sync::Weak;

use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use super::{subscription, Shared};
use crate::ai::streaming::events::StreamId;

/// Subscribes to the cancel channel and cancels each named generation that runs
/// here, until `shutdown`.
pub async fn listen(client: redis::Client, shared: Weak<Shared>, shutdown: CancellationToken) -> redis::RedisResult<()> {
    let Some(channel) = shared.upgrade().map(|s| s.keys.cancel_channel()) else { return Ok(()) };
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
                    let Some(shared) = shared.upgrade() else { return };
                    if let Some(id) = message.get_payload::<String>().ok().as_deref().and_then(StreamId::parse) {
                        shared.cancel_here(&id);
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
