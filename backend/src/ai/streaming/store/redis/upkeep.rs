//! Once a second, all at once: this process renews the leases of the logs it
//! generates (`SET … PX`, which also re-takes a lease that lapsed during a
//! stall) and reads their cancel marks (`HGET meta cancel`: only the log's end
//! removes a mark, so a renewal whose reply is lost reads it again next time),
//! and refreshes the presence key of every log it serves readers of. The cost
//! is per stream per second, not per event. It also forgets the routes of
//! logs that ended here a while ago (`routes.rs`).

use std::sync::{Arc, Weak};
use std::time::Duration;

use futures::future::join_all;
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
            shared.routes.purge();
            let leased: Vec<StreamId> = shared.leases.lock().unwrap().keys().cloned().collect();
            let followed = tails.followed();
            drop(tails);
            if leased.is_empty() && followed.is_empty() {
                continue;
            }
            // One small pipeline per stream (its keys share a slot, as a cluster
            // requires), all sent at once: the multiplexed connection writes them
            // together, and a cluster connection sends each to its node.
            let renewals = leased.iter().map(|id| {
                let mut conn = shared.conn.clone();
                let mut pipe = redis::pipe();
                pipe.cmd("SET").arg(shared.keys.lease(id)).arg(&shared.owner).arg("PX").arg(LEASE_TTL.as_millis() as u64).ignore();
                pipe.cmd("HGET").arg(shared.keys.meta(id)).arg("cancel");
                async move { (id, pipe.query_async::<(Option<String>,)>(&mut conn).await) }
            });
            let refreshes = followed.iter().map(|id| {
                let mut conn = shared.conn.clone();
                // Extended, never shortened (see `Shared::extend_presence`).
                let (key, ttl) = (shared.keys.readers(id), (shared.grace + PRESENCE_SLACK).as_millis() as u64);
                let mut pipe = redis::pipe();
                pipe.cmd("SET").arg(&key).arg(1).arg("PX").arg(ttl).arg("NX").ignore();
                pipe.cmd("PEXPIRE").arg(&key).arg(ttl).arg("GT").ignore();
                async move { pipe.query_async::<()>(&mut conn).await }
            });
            let (renewed, refreshed) = futures::future::join(join_all(renewals), join_all(refreshes)).await;
            let mut failed = None;
            for (id, renewal) in renewed {
                match renewal {
                    Ok((Some(_),)) => {
                        shared.cancel_here(id);
                    }
                    Ok((None,)) => {}
                    Err(error) => failed = Some(error),
                }
            }
            if let Some(error) = failed.or(refreshed.into_iter().find_map(Result::err)) {
                tracing::warn!(%error, "could not renew leases and reader presence in Redis");
            }
        }
    });
}
