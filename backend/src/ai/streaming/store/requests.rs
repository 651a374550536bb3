//! The request index of coalescing: which generation answers a request (a
//! `coalesce::RequestKey` digest: scope, block, normalized input, provider,
//! model, prompt). A start claims a request key for its own stream, or learns
//! which generation holds it; the generation keeps it while it runs and for the
//! cache window after a complete answer, and gives it back otherwise.
//!
//! An entry also says whether it was joined: a claim that is given the
//! generation an entry names (a start that will read it, not a `fresh` one)
//! marks it, in the same atomic step. The first asker who cancels reads the mark
//! to decide whether the answer must go on for others (`coalesce` module doc:
//! the handover), and hands the entry over to the answer's new log only if it
//! still names theirs. A `fresh` start that takes the key from a joined
//! generation keeps that generation's mark in the entry ([`REPLACED_KEPT`] at
//! most, the newest): its joiners still read it, and its first asker's cancel
//! must still hand it over to them. The mark goes with the entry, so a key
//! released or lapsed since has none.
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
    /// (`Ok(None)`), atomically; otherwise returns the generation it names,
    /// and marks the entry joined unless the claim is [`Claim::Always`].
    async fn claim_request(&self, key: &str, id: &StreamId, ttl: Duration, claim: Claim<'_>) -> Result<Option<StreamId>, StoreError>;

    /// Whether `id` was joined while `key` named it: `key` names it and was
    /// joined, or a `fresh` claim took `key` from it after it was joined.
    async fn request_joined(&self, key: &str, id: &StreamId) -> Result<bool, StoreError>;

    /// Makes `key` name `to` for `ttl` instead of `from`, only if it still
    /// names `from`; whether it did. (A `from` that a `fresh` claim replaced
    /// loses its mark instead: the key stays the fresh generation's.)
    async fn hand_over_request(&self, key: &str, from: &StreamId, to: &StreamId, ttl: Duration) -> Result<bool, StoreError>;

    /// Keeps `key` naming `id` for `ttl` from now, if it still does (a complete
    /// answer, cached).
    async fn hold_request(&self, key: &str, id: &StreamId, ttl: Duration) -> Result<(), StoreError>;

    /// Removes `key` if it still names `id` (an answer not to be reused).
    async fn release_request(&self, key: &str, id: &StreamId) -> Result<(), StoreError>;
}

/// Request keys kept at most in memory; expired ones go first, then the
/// soonest to expire.
const MAX_REQUESTS: usize = 100_000;

/// Joined generations a `fresh` claim took a key from that an entry keeps
/// (the newest): thirty learners asking afresh one after another must not make
/// an entry grow without bound.
pub const REPLACED_KEPT: usize = 8;

/// What a request key names, until when, whether it was joined, and the joined
/// generations `fresh` claims took it from (newest first).
struct Entry {
    id: StreamId,
    lapses: Instant,
    joined: bool,
    replaced: Vec<StreamId>,
}

/// The request index of one process (`STREAM_STORE=memory`).
#[derive(Default)]
pub struct RequestTable {
    entries: Mutex<HashMap<String, Entry>>,
}

impl RequestTable {
    pub fn claim(&self, key: &str, id: &StreamId, ttl: Duration, claim: Claim<'_>) -> Option<StreamId> {
        let mut entries = self.entries.lock().unwrap();
        let now = Instant::now();
        let mut replaced = Vec::new();
        if let Some(entry) = entries.get_mut(key).filter(|entry| entry.lapses > now) {
            let replaceable = match claim {
                Claim::Vacant => false,
                Claim::Replacing(stale) => entry.id == *stale,
                Claim::Always => true,
            };
            if !replaceable {
                entry.joined = true;
                return Some(entry.id.clone());
            }
            // A fresh claim keeps a joined generation's mark; a generation found
            // unusable has no first asker left to hand it over.
            if claim == Claim::Always && entry.joined {
                replaced.push(entry.id.clone());
            }
            replaced.append(&mut entry.replaced);
            replaced.truncate(REPLACED_KEPT);
        }
        if entries.len() >= MAX_REQUESTS {
            entries.retain(|_, entry| entry.lapses > now);
            if entries.len() >= MAX_REQUESTS {
                if let Some(soonest) = entries.iter().min_by_key(|(_, entry)| entry.lapses).map(|(k, _)| k.clone()) {
                    entries.remove(&soonest);
                }
            }
        }
        entries.insert(key.to_owned(), Entry { id: id.clone(), lapses: now + ttl, joined: false, replaced });
        None
    }

    /// The live entry of `key` if it names `id`.
    fn named<'a>(entries: &'a mut HashMap<String, Entry>, key: &str, id: &StreamId) -> Option<&'a mut Entry> {
        Self::live(entries, key).filter(|entry| entry.id == *id)
    }

    fn live<'a>(entries: &'a mut HashMap<String, Entry>, key: &str) -> Option<&'a mut Entry> {
        let now = Instant::now();
        entries.get_mut(key).filter(|entry| entry.lapses > now)
    }

    pub fn hold(&self, key: &str, id: &StreamId, ttl: Duration) {
        if let Some(entry) = Self::named(&mut self.entries.lock().unwrap(), key, id) {
            entry.lapses = Instant::now() + ttl;
        }
    }

    pub fn release(&self, key: &str, id: &StreamId) {
        let mut entries = self.entries.lock().unwrap();
        if entries.get(key).is_some_and(|entry| entry.id == *id) {
            entries.remove(key);
        }
    }

    pub fn joined(&self, key: &str, id: &StreamId) -> bool {
        Self::live(&mut self.entries.lock().unwrap(), key)
            .is_some_and(|entry| (entry.id == *id && entry.joined) || entry.replaced.contains(id))
    }

    pub fn hand_over(&self, key: &str, from: &StreamId, to: &StreamId, ttl: Duration) -> bool {
        let mut entries = self.entries.lock().unwrap();
        let Some(entry) = Self::live(&mut entries, key) else { return false };
        if entry.id != *from {
            // Handed over while a fresh generation holds the key: its mark goes.
            entry.replaced.retain(|replaced| replaced != from);
            return false;
        }
        entry.id = to.clone();
        entry.lapses = Instant::now() + ttl;
        true
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

    #[test]
    fn a_claim_given_the_held_generation_marks_it_joined_and_a_fresh_one_does_not() {
        let table = RequestTable::default();
        table.claim("k", &id("g1"), TTL, Claim::Vacant);
        assert!(!table.joined("k", &id("g1")), "claimed, not joined");
        table.claim("k", &id("g0"), TTL, Claim::Always);
        assert!(!table.joined("k", &id("g0")), "a fresh claim takes the key and joins nothing");
        assert_eq!(table.claim("k", &id("g2"), TTL, Claim::Vacant), Some(id("g0")));
        assert!(table.joined("k", &id("g0")));
        assert!(!table.joined("k", &id("g1")), "only the generation the key names");
        table.claim("other", &id("g3"), TTL, Claim::Vacant);
        assert_eq!(table.claim("other", &id("g4"), TTL, Claim::Replacing(&id("g9"))), Some(id("g3")));
        assert!(table.joined("other", &id("g3")), "a replacement given the held generation joins it too");
    }

    #[test]
    fn a_fresh_claim_keeps_the_mark_of_the_joined_generation_it_replaced_until_that_one_is_handed_over() {
        let table = RequestTable::default();
        table.claim("k", &id("g1"), TTL, Claim::Vacant);
        table.claim("k", &id("g2"), TTL, Claim::Vacant);
        assert_eq!(table.claim("k", &id("f1"), TTL, Claim::Always), None, "a fresh start takes the key");
        assert!(table.joined("k", &id("g1")), "g1's joiners still read it");
        assert!(!table.joined("k", &id("f1")));
        assert_eq!(table.claim("k", &id("g3"), TTL, Claim::Vacant), Some(id("f1")), "new starts get the fresh answer");
        assert!(!table.hand_over("k", &id("g1"), &id("s1"), TTL), "the key stays the fresh generation's");
        assert!(!table.joined("k", &id("g1")), "handed over once");
        assert_eq!(table.claim("k", &id("g4"), TTL, Claim::Vacant), Some(id("f1")));
        // A generation nobody joined leaves no mark; the marks kept are bounded.
        table.claim("k", &id("f2"), TTL, Claim::Always);
        assert!(!table.joined("k", &id("g3")) && table.joined("k", &id("f1")));
        for n in 0..REPLACED_KEPT + 2 {
            table.claim("k", &id("j"), TTL, Claim::Vacant);
            table.claim("k", &id(&format!("f{}", n + 3)), TTL, Claim::Always);
        }
        assert!(table.joined("k", &id(&format!("f{}", REPLACED_KEPT + 3))), "the newest replaced are kept");
        assert!(!table.joined("k", &id("f1")), "the oldest went");
    }

    #[test]
    fn a_key_is_handed_over_only_from_the_generation_it_still_names() {
        let table = RequestTable::default();
        table.claim("k", &id("g1"), TTL, Claim::Vacant);
        assert!(!table.hand_over("k", &id("g0"), &id("s1"), TTL), "not g0's");
        assert!(table.hand_over("k", &id("g1"), &id("s1"), TTL));
        assert_eq!(table.claim("k", &id("g2"), TTL, Claim::Vacant), Some(id("s1")), "the key names the new log");
        assert!(!table.hand_over("k", &id("g1"), &id("s2"), TTL), "g1 no longer holds it");
        assert!(!table.hand_over("vacant", &id("g1"), &id("s2"), TTL));
        assert_eq!(table.claim("vacant", &id("g5"), TTL, Claim::Vacant), None);
    }
}
