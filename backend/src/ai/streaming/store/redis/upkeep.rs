//! Once a second, in one pipeline: this process renews the leases of the logs it
//! generates (`SET … PX`, which also re-takes a lease that lapsed during a
//! stall) and reads their cancel marks (`HGET meta cancel`: only the log's end
//! removes a mark, so a renewal whose reply is lost reads it again next time),
//! and refreshes the presence key of every log it serves readers of. The cost
//! is per stream per second, not per event.

use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::tail::Tails;
use super::{Shared, LEASE_TTL, PRESENCE_SLACK};
use crate::ai::streaming::events::StreamId;

pub const INTERVAL: Duration = Duration::from_secs(1);

pub fn start(shared: Arc<Shared>, tails: Weak<Tails>, shutdown: CancellationToken) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let Some(tails) = tails.upgrade() else { return };
            let leased: Vec<StreamId> = shared.leases.lock().unwrap().keys().cloned().collect();
            let followed = tails.followed();
            drop(tails);
            if leased.is_empty() && followed.is_empty() {
                continue;
            }
            let mut pipe = redis::pipe();
            for id in &leased {
                pipe.cmd("SET").arg(shared.keys.lease(id)).arg(&shared.owner).arg("PX").arg(LEASE_TTL.as_millis() as u64).ignore();
                pipe.cmd("HGET").arg(shared.keys.meta(id)).arg("cancel");
            }
            for id in &followed {
                // Extended, never shortened (see `Shared::extend_presence`).
                let (key, ttl) = (shared.keys.readers(id), (shared.grace + PRESENCE_SLACK).as_millis() as u64);
                pipe.cmd("SET").arg(&key).arg(1).arg("PX").arg(ttl).arg("NX").ignore();
                pipe.cmd("PEXPIRE").arg(&key).arg(ttl).arg("GT").ignore();
            }
            let mut conn = shared.conn.clone();
            match pipe.query_async::<Vec<Option<String>>>(&mut conn).await {
                Ok(marks) => {
                    for (id, mark) in leased.into_iter().zip(marks) {
                        if mark.is_some() {
                            shared.cancel_here(&id);
                        }
                    }
                }
                Err(error) => tracing::warn!(%error, "could not renew leases and reader presence in Redis"),
            }
        }
    });
}
