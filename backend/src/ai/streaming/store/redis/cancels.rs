//! Cancel requests from other processes, through one subscription per process
//! (`subscription.rs`): each cancels the generation's token if it runs here. A
//! message lost while the subscription is down is not lost for good: the
//! request also marks the stream's meta, which the generator reads at every
//! lease renewal (`upkeep.rs`).

use std::sync::Weak;

use super::subscription::{Heard, Subscription};
use super::Shared;
use crate::ai::streaming::events::StreamId;

/// Cancels each generation named on `subscription` that runs here, until the
/// subscription's shutdown.
pub fn listen(mut subscription: Subscription, shared: Weak<Shared>) {
    tokio::spawn(async move {
        while let Some(heard) = subscription.next().await {
            let Some(shared) = shared.upgrade() else { return };
            match heard {
                Heard::Message(payload) => {
                    if let Some(id) = std::str::from_utf8(&payload).ok().and_then(StreamId::parse) {
                        shared.cancel_here(&id);
                    }
                }
                Heard::Lost => tracing::warn!("lost the Redis cancel subscription; resubscribing"),
                Heard::Back => {}
            }
        }
    });
}
