//! The names of everything `live-ai` keeps in Redis. Per stream, keys share a hash
//! tag (`{<id>}`), so a cluster keeps a stream's keys on one slot and its scripts
//! may touch them together:
//! - `<prefix>:{<id>}:log`: a Redis Stream, one entry per event, entry id
//!   `<seq>-1`, fields `t` (type) and `j` (the event's JSON members);
//! - `<prefix>:{<id>}:meta`: a hash, `state` (`live` or `finished`), `owner` (the
//!   principal that started the stream), once finished `len`, and `successor`
//!   when a first asker's cancel handed the answer over to a shared log
//!   (coalescing); it outlives the log so an expired stream's length and owner
//!   are known;
//! - `<prefix>:{<id>}:lease`: the generating process's id while it generates (or
//!   `cancel` once a cancel was asked for and not yet seen);
//! - `<prefix>:{<id>}:readers`: present while some process serves a reader, and
//!   for the resume grace after the last one left.
//!
//! Besides streams, `<prefix>:request:{<digest>}` names the generation
//! answering a request (coalescing), hash-tagged by its own digest.
//!
//! And two kinds of pub/sub channel (`routes.rs`):
//! - `<prefix>:events:<process id>`: one per process, the announcements of the
//!   streams it serves readers of; without a hash tag, so in a cluster the
//!   processes' channels spread over the nodes by their own slots;
//! - `<prefix>:cancel`: every process's control channel, cancels and which
//!   process follows which stream (named for what it first carried: processes
//!   of the previous release, during a rolling deploy, still cancel through it).

use std::sync::Arc;

use crate::ai::streaming::events::StreamId;

#[derive(Debug, Clone)]
pub struct Keys {
    prefix: Arc<str>,
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        Self { prefix: prefix.into() }
    }

    fn of(&self, id: &StreamId, part: &str) -> String {
        format!("{}:{{{id}}}:{part}", self.prefix)
    }

    pub fn log(&self, id: &StreamId) -> String {
        self.of(id, "log")
    }

    pub fn meta(&self, id: &StreamId) -> String {
        self.of(id, "meta")
    }

    pub fn lease(&self, id: &StreamId) -> String {
        self.of(id, "lease")
    }

    pub fn readers(&self, id: &StreamId) -> String {
        self.of(id, "readers")
    }

    pub fn idempotency(&self, key: &str) -> String {
        format!("{}:idempotency:{key}", self.prefix)
    }

    /// A request key of coalescing (`requests.rs`): its digest is its hash tag,
    /// so a cluster spreads requests over its slots; each is used alone.
    pub fn request(&self, digest: &str) -> String {
        format!("{}:request:{{{digest}}}", self.prefix)
    }

    /// Where the process `owner` is sent the announcements of the streams it
    /// follows (`announce.rs`).
    pub fn process_channel(&self, owner: &str) -> String {
        format!("{}:events:{owner}", self.prefix)
    }

    /// Cancels, and follow and leave notices (`control.rs`), heard by every process.
    pub fn control_channel(&self) -> String {
        format!("{}:cancel", self.prefix)
    }
}

/// The entry id of the event at `seq` (Redis refuses the id `0-0`).
pub fn entry_id(seq: u64) -> String {
    format!("{seq}-1")
}

/// The seq of an entry id.
pub fn entry_seq(entry_id: &[u8]) -> Option<u64> {
    let (seq, _) = std::str::from_utf8(entry_id).ok()?.split_once('-')?;
    seq.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_streams_keys_share_its_hash_tag() {
        let keys = Keys::new("live-ai");
        let id = StreamId::parse("abc").unwrap();
        assert_eq!(keys.log(&id), "live-ai:{abc}:log");
        assert_eq!(keys.lease(&id), "live-ai:{abc}:lease");
        assert_eq!(keys.readers(&id), "live-ai:{abc}:readers");
        assert_eq!(keys.process_channel("p1"), "live-ai:events:p1");
    }

    #[test]
    fn entry_ids_carry_the_seq() {
        assert_eq!(entry_id(0), "0-1");
        assert_eq!(entry_seq(entry_id(u64::MAX).as_bytes()), Some(u64::MAX));
        assert_eq!(entry_seq(b"12"), None);
    }
}
