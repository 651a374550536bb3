//! Coalescing: a class asks at once, the model answers once.
//!
//! Identical requests (the [`RequestKey`]: block, normalized input, provider,
//! model, prompt and its parameters) in one scope (a class, from the JWT claim
//! `COALESCE_SCOPE_CLAIM`; otherwise the principal alone) share one generation,
//! and a finished, complete answer is served again for `COALESCE_CACHE_SECONDS`.
//!
//! The shape, chosen so that nothing else about a stream changes, and so that
//! the common case — a question nobody else asks — costs what it costs with
//! coalescing off (one log, one append per event):
//! - The first asker's own stream is the source. Their start claims the
//!   request key for their own stream id ([`find_or_claim`]), and their stream
//!   is an ordinary generation (their permit, reservation, grace, cancel),
//!   which also keeps the key for the cache window once complete, and gives it
//!   back otherwise. The request index (`store::requests`) names it while it
//!   runs, and for the cache window once it completed.
//! - Every later learner's stream is an ordinary stream too (own id, read
//!   token, idempotency, resume, cancel, grace), whose events come from a relay
//!   ([`relayed`]) of the source's log from its first event: replay, then the
//!   live tail, re-appended at the learner's own seqs. Its `start` is its own
//!   (`shared: true` when it joined, `cached: true` when it replays a finished
//!   answer). The relay reads the source as the request index named it, not as
//!   the source's owner: no client can read another principal's stream.
//! - A relay is a reader of its source, so the first asker's generation runs to
//!   its end while anyone reads it, whether or not the first asker still does:
//!   it is the class's answer.
//! - The first asker may cancel: the one event of their log that is theirs and
//!   not the answer's (limits only meter; a shutdown's `generation_lost` is
//!   everyone's; a generation read by a relay is never abandoned). If the
//!   request was joined, the answer is handed over: the rest of it goes on in a
//!   shared log owned by no principal ([`SHARED_OWNER`]), which stops as soon
//!   as no relay reads it (its first readers given a moment to come over). If
//!   not, it is an ordinary cancel, and the key is given back.
//! - Moderation runs once, on the first asker's generation; each learner is
//!   charged (limits) for their own stream as if they had generated it alone:
//!   what they were sent, and for an answer that did not complete at least what
//!   the provider had produced (a count the handed-over log shares).
//!
//! The handover's ordering rules, each held by a test:
//! 1. A join is marked in the request index's entry in the same atomic step
//!    as the claim that is given the running generation (one Lua script on the
//!    one key in Redis, one lock in memory); a `fresh` claim marks nothing.
//!    A first asker whose cancel finds no mark ends as any cancelled stream and
//!    gives the key back; a join racing that cancel (marked after it looked)
//!    gets a retryable `generation_lost`, exactly as a join racing the end of a
//!    shared generation always has, and the next start generates anew.
//! 2. The shared log holds the first asker's events at their own seqs before
//!    the index names it, so a start joining it reads the answer from its first
//!    event.
//! 3. The index is handed over (only if it still names the first asker's
//!    stream) before the first asker's log records its successor (a field of
//!    the log's own metadata, so in Redis Cluster the same slot as the log),
//!    and the successor is recorded before the first asker's `cancelled`
//!    lands: a relay that meets that `cancelled` always finds the successor,
//!    and reads it from the `cancelled` event's seq — no gap, no duplicate.
//! 4. The first asker's reservation is settled and their permit freed when
//!    their stream ends; the shared log holds neither, and its end keeps or
//!    releases the key as the first asker's would have.
//!
//! Tests: `store::requests` and `store::redis::requests` (rule 1),
//! `relay` (rule 3's reading), `stream_manager` and the API tests in
//! `tests/api/coalesce.rs` (every rule, in one process and across processes).

pub mod relay;
pub mod request_key;
pub mod source;

use std::time::Duration;

pub use relay::relayed;
pub use request_key::RequestKey;
pub use source::{find_or_claim, Source};

use crate::auth::Principal;

/// The owner of every shared generation's log: no principal id has this form
/// (they are `jwt:…`, `key:…` or `ip:…`), so a shared log is nobody's stream.
pub const SHARED_OWNER: &str = "coalesced";

/// How the manager coalesces (from `COALESCE*`).
#[derive(Debug, Clone)]
pub struct CoalesceConfig {
    pub enabled: bool,
    /// How long a complete answer is served again (0: never).
    pub cache: Duration,
    /// How long a request key names a running generation at most: past the
    /// longest generation, so it lapses by itself if its process died.
    pub live_ttl: Duration,
}

/// With whom a start may share, and whether it wants a new answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sharing {
    /// See [`Principal::sharing_scope`].
    pub scope: String,
    /// Generate anew: join nothing, replay nothing (the new answer then serves
    /// the requests that follow).
    pub fresh: bool,
}

impl Sharing {
    pub fn of(principal: &Principal, fresh: bool) -> Self {
        Self { scope: principal.sharing_scope(), fresh }
    }
}
