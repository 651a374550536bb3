//! Coalescing: a class asks at once, the model answers once.
//!
//! Identical requests (the [`RequestKey`]: block, normalized input, provider,
//! model, prompt and its parameters) in one scope (a class, from the JWT claim
//! `COALESCE_SCOPE_CLAIM`; otherwise the principal alone) share one generation,
//! and a finished, complete answer is served again for `COALESCE_CACHE_SECONDS`.
//!
//! The shape, chosen so that nothing else about a stream changes:
//! - The shared generation writes a log of its own, owned by no principal
//!   ([`SHARED_OWNER`]), so no learner can read, resume or cancel it directly.
//!   The request index (`store::requests`) names it while it runs, and for the
//!   cache window once it completed.
//! - Every learner's stream is an ordinary stream (own id, read token,
//!   idempotency, resume, cancel, grace), whose events come from a relay
//!   ([`relayed`]) of the shared log from its first event: replay, then the live
//!   tail, re-appended at the learner's own seqs. Its `start` is its own
//!   (`shared: true` when it joined, `cached: true` when it replays a finished
//!   answer).
//! - The relay is a reader of the shared generation, so the generation runs as
//!   long as some learner's stream runs, and is abandoned by the usual grace
//!   once every learner's stream ended (cancelled or abandoned): then its
//!   upstream request is closed.
//! - Moderation runs once, on the shared generation; each learner is charged
//!   (limits) for their own stream as if they had generated it alone.

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
