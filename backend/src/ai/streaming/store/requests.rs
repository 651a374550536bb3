//! The request index of coalescing: which shared generation answers a request
//! (a `coalesce::RequestKey` digest: scope, block, normalized input, provider,
//! model, prompt). A start claims a request key for its own generation, or
//! learns which generation holds it; the generation keeps it while it runs and
//! for the cache window after a complete answer, and gives it back otherwise.
//!
//! Every operation is one atomic decision in the store (with Redis, one command
//! or script on one key), so thirty starts spread over many processes agree on
//! one generation. Every entry expires by itself: a generation whose process
//! died leaves a key that lapses, and until then the starts that find its log
//! ended without a complete answer replace it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use super::StoreError;
use crate::ai::streaming::events::StreamId;

/// When a claim takes the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim<'a> {
    /// Only if no generation holds it.
    Vacant,
    /// If it is vacant or still names this generation, found unusable (ended
    /// without a complete answer, or its log is gone).
    Replacing(&'a StreamId),
    /// Whatever it names: a `fresh` start's new generation becomes the answer.
    Always,
}

#[async_trait]
pub trait RequestIndex: Send + Sync {
    /// Makes `key` name generation `id` for `ttl` when `claim` allows it
    /// (`Ok(None)`), atomically; otherwise returns the generation it names.
    async fn claim_request(&self, key: &str, id: &StreamId, ttl: Duration, claim: Claim<'_>) -> Result<Option<StreamId>, StoreError>;

    /// Keeps `key` naming `id` for `ttl` from now, if it still does (a complete
    /// answer, cached).
    async fn hold_request(&self, key: &str, id: &StreamId, ttl: Duration) -> Result<(), StoreError>;

    /// Removes `key` if it still names `id` (an answer not to be reused).
    async fn release_request(&self, key: &str, id: &StreamId) -> Result<(), StoreError>;
}

/// Request keys kept at most in memory; expired ones go first, then the
/// soonest to expire.
const MAX_REQUESTS: usize = 100_000;

/// The request index of one process (`STREAM_STORE=memory`).
#[derive(Default)]
pub struct RequestTable {
    entries: Mutex<HashMap<String, (StreamId, Instant)>>,
}

impl RequestTable {
    pub fn claim(&self, key: &str, id: &StreamId, ttl: Duration, claim: Claim<'_>) -> Option<StreamId> {
        let mut entries = self.entries.lock().unwrap();
        let now = Instant::now();
        if let Some((held, lapses)) = entries.get(key).filter(|(_, lapses)| *lapses > now) {
            let replaceable = match claim {
                Claim::Vacant => false,
                Claim::Replacing(stale) => held == stale,
                Claim::Always => true,
            };
            if !replaceable {
                let _ = lapses;
                return Some(held.clone());
            }
        }
        if entries.len() >= MAX_REQUESTS {
            entries.retain(|_, (_, lapses)| *lapses > now);
            if entries.len() >= MAX_REQUESTS {
                if let Some(soonest) = entries.iter().min_by_key(|(_, (_, lapses))| *lapses).map(|(k, _)| k.clone()) {
                    entries.remove(&soonest);
                }
            }
        }
        entries.insert(key.to_owned(), (id.clone(), now + ttl));
        None
    }

    pub fn hold(&self, key: &str, id: &StreamId, ttl: Duration) {
        if let Some((_, lapses)) = self.entries.lock().unwrap().get_mut(key).filter(|(held, _)| held == id) {
            *lapses = Instant::now() + ttl;
        }
    }

    pub fn release(&self, key: &str, id: &StreamId) {
        let mut entries = self.entries.lock().unwrap();
        if entries.get(key).is_some_and(|(held, _)| held == id) {
            entries.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(name: &str) -> StreamId {
        StreamId::parse(name).unwrap()
    }

    const TTL: Duration = Duration::from_secs(60);

    #[test]
    fn the_first_claim_takes_a_key_and_later_ones_learn_its_generation() {
        let table = RequestTable::default();
        assert_eq!(table.claim("k", &id("g1"), TTL, Claim::Vacant), None);
        assert_eq!(table.claim("k", &id("g2"), TTL, Claim::Vacant), Some(id("g1")));
        assert_eq!(table.claim("other", &id("g3"), TTL, Claim::Vacant), None);
    }

    #[test]
    fn a_replacement_takes_only_the_generation_it_found_unusable() {
        let table = RequestTable::default();
        table.claim("k", &id("g1"), TTL, Claim::Vacant);
        assert_eq!(table.claim("k", &id("g2"), TTL, Claim::Replacing(&id("g0"))), Some(id("g1")), "another start replaced it already");
        assert_eq!(table.claim("k", &id("g2"), TTL, Claim::Replacing(&id("g1"))), None);
        assert_eq!(table.claim("k", &id("g3"), TTL, Claim::Always), None, "a fresh start always takes it");
        assert_eq!(table.claim("k", &id("g4"), TTL, Claim::Vacant), Some(id("g3")));
    }

    #[test]
    fn only_the_named_generation_holds_or_releases_its_key() {
        let table = RequestTable::default();
        table.claim("k", &id("g1"), TTL, Claim::Vacant);
        table.release("k", &id("g0"));
        assert_eq!(table.claim("k", &id("g2"), TTL, Claim::Vacant), Some(id("g1")));
        table.hold("k", &id("g1"), Duration::ZERO);
        assert_eq!(table.claim("k", &id("g2"), TTL, Claim::Vacant), None, "a lapsed key is vacant");
        table.release("k", &id("g2"));
        assert_eq!(table.claim("k", &id("g3"), TTL, Claim::Vacant), None);
    }
}
