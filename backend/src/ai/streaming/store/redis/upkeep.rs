//! Once a second, in one pipeline: this process renews the leases of the logs it
//! generates (`SET … PX … GET`, which also re-takes a lease that lapsed during a
//! stall and reveals a cancel mark left on it), and refreshes the presence key
//! of every log it serves readers of. The cost is per stream per second, not
//! per event.

use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::tail::Tails;
use super::{Shared, LEASE_TTL};
use crate::ai::streaming::events::StreamId;

pub const INTERVAL: Duration = Duration::from_secs(1);

pub fn start(shared: Arc<Shared>, tails: Weak<Tails>, cancels: broadcast::Sender<StreamId>, shutdown: CancellationToken) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let Some(tails) = tails.upgrade() else { return };
            let leased: Vec<StreamId> = shared.leases.lock().unwrap().iter().cloned().collect();
            let followed = tails.followed();
            drop(tails);
            if leased.is_empty() && followed.is_empty() {
                continue;
            }
            let mut pipe = redis::pipe();
            for id in &leased {
                pipe.cmd("SET").arg(shared.keys.lease(id)).arg(&shared.owner).arg("PX").arg(LEASE_TTL.as_millis() as u64).arg("GET");
            }
            for id in &followed {
                pipe.cmd("SET").arg(shared.keys.readers(id)).arg(1).arg("PX").arg(shared.presence_ttl_ms()).ignore();
            }
            let mut conn = shared.conn.clone();
            match pipe.query_async::<Vec<Option<String>>>(&mut conn).await {
                Ok(previous) => {
                    for (id, previous) in leased.into_iter().zip(previous) {
                        if previous.as_deref() == Some("cancel") {
                            let _ = cancels.send(id);
                        }
                    }
                }
                Err(error) => tracing::warn!(%error, "could not renew leases and reader presence in Redis"),
            }
        }
    });
}
