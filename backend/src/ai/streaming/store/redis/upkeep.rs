//! Once a second for each stream: this process renews the leases of the logs
//! it generates (`SET … PX`, which also re-takes a lease that lapsed during a
//! stall) and reads their cancel marks (`HGET meta cancel`: only the log's end
//! removes a mark, so a renewal whose reply is lost reads it again next time),
//! and refreshes the presence key of the logs it serves readers of. The cost
//! is per stream per second, not per event. It also forgets the routes of
//! logs that ended here a while ago (`routes.rs`).
//!
//! The streams are spread over [`SLICES`] rounds a second, each stream always
//! in the same one (by a hash of its id). All at once, the hundreds of streams
//! a class starts together put hundreds of commands in one burst, once a
//! second, ahead of the events' appends in Redis's queue and on this process's
//! threads; spread, a round carries about a tenth of them. (The stores
//! benchmark's streams last under three seconds, too few rounds to show a
//! difference in lag: bench/RESULTS.md, issue 22.)
//!
//! What was just written is not written again: a lease is renewed from the
//! first of its rounds after the one that found it new (it was taken with its
//! log, at most a round ago, for [`LEASE_TTL`]), and a presence key every other
//! round, from the second after its mirror came (its first reader marked it for
//! the grace plus [`PRESENCE_SLACK`](super::PRESENCE_SLACK)), so a key still
//! has the grace and at least two rounds to live when it is refreshed. Short
//! streams, most of a class's, then cost few renewals or none.

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures::future::join_all;
use tokio_util::sync::CancellationToken;

use super::tail::Tails;
use super::{Shared, LEASE_TTL};
use crate::ai::streaming::events::StreamId;

/// How often each stream's round comes.
pub const INTERVAL: Duration = Duration::from_secs(1);
/// Rounds an `INTERVAL`, each for the streams of one slice.
pub const SLICES: usize = 10;

/// The slice `id` is renewed in: the same in every round and every process.
fn slice_of(id: &StreamId) -> usize {
    (BuildHasherDefault::<DefaultHasher>::default().hash_one(id.as_str()) % SLICES as u64) as usize
}

pub fn start(shared: Arc<Shared>, tails: Weak<Tails>, shutdown: CancellationToken) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(INTERVAL / SLICES as u32);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Per slice: rounds since each lease and each followed stream was first seen.
        let mut lease_rounds: [Rounds; SLICES] = Default::default();
        let mut presence_rounds: [Rounds; SLICES] = Default::default();
        for slice in (0..SLICES).cycle() {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let Some(tails) = tails.upgrade() else { return };
            if slice == 0 {
                shared.routes.purge();
            }
            let in_slice = |id: &StreamId| slice_of(id) == slice;
            let leased: Vec<StreamId> = shared.leases.lock().unwrap().keys().filter(|id| in_slice(id)).cloned().collect();
            let followed = tails.followed(in_slice);
            drop(tails);
            let leased = lease_rounds[slice].next(leased, |rounds| rounds >= 1);
            let followed = presence_rounds[slice].next(followed, |rounds| rounds >= 2 && rounds.is_multiple_of(2));
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
            // Extended, never shortened (see `Shared::extend_presence`).
            let refreshes = followed.iter().map(|id| shared.refresh_reading(id));
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

/// How many rounds each stream has been seen in, so far.
#[derive(Default)]
struct Rounds(HashMap<StreamId, u32>);

impl Rounds {
    /// Counts this round's `ids` (forgetting the streams no longer among them)
    /// and keeps those whose count of earlier rounds `due` accepts.
    fn next(&mut self, ids: Vec<StreamId>, due: impl Fn(u32) -> bool) -> Vec<StreamId> {
        let mut seen = HashMap::with_capacity(ids.len());
        let mut kept = Vec::new();
        for id in ids {
            let rounds = self.0.get(&id).copied().unwrap_or(0);
            if due(rounds) {
                kept.push(id.clone());
            }
            seen.insert(id, rounds + 1);
        }
        self.0 = seen;
        kept
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_is_due_by_the_rounds_it_was_seen_in_before_and_forgotten_once_gone() {
        let (a, b) = (StreamId::parse("a1").unwrap(), StreamId::parse("b2").unwrap());
        let mut rounds = Rounds::default();
        let every_other = |n: u32| n >= 2 && n.is_multiple_of(2);
        assert!(rounds.next(vec![a.clone()], every_other).is_empty(), "new: just written");
        assert!(rounds.next(vec![a.clone(), b.clone()], every_other).is_empty());
        assert_eq!(rounds.next(vec![a.clone(), b.clone()], every_other), vec![a.clone()]);
        assert_eq!(rounds.next(vec![a.clone(), b.clone()], every_other), vec![b.clone()]);
        assert_eq!(rounds.next(vec![a.clone()], every_other), vec![a.clone()]);
        assert!(rounds.next(vec![b.clone()], every_other).is_empty(), "b was forgotten when it went: new again");
    }

    #[test]
    fn streams_spread_over_every_slice_and_each_stays_in_its_own() {
        let ids: Vec<StreamId> = (0..1_000).map(|_| StreamId::generate()).collect();
        let mut per_slice = [0usize; SLICES];
        for id in &ids {
            per_slice[slice_of(id)] += 1;
            assert_eq!(slice_of(id), slice_of(&StreamId::parse(id.as_str()).unwrap()), "the same id, the same slice");
        }
        // 100 a slice expected; a burst is at most about a fifth of the streams.
        assert!(per_slice.iter().all(|&n| (40..=200).contains(&n)), "{per_slice:?}");
    }
}
