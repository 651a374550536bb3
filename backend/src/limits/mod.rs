//! Limits per principal: generations at once (`LIMIT_CONCURRENT_STREAMS`), starts
//! per minute (`LIMIT_STARTS_PER_MINUTE`) and output tokens per UTC day
//! (`LIMIT_TOKENS_PER_DAY`).
//!
//! A start is one decision, taken atomically by the [`LimitStore`]: check all three,
//! and if they allow it, take a concurrency slot, count the start and reserve the
//! block's `max_tokens` — before any provider call. The [`Reservation`] travels with
//! the generation, which settles it once at its end: the slot is freed and the
//! reservation becomes the tokens really used — the `complete` event's
//! `usage.completion_tokens`, or, for a generation that ends without one (failed,
//! cancelled, abandoned, or a whole-response call whose client left), the tokens
//! of the chunks it produced, counted by the model's [`TokenCounter`]. A
//! reservation dropped unsettled (a start that failed, a request dropped mid-way)
//! settles the same way.
//!
//! Slots are leases: held slots are renewed every few seconds, and a slot whose
//! process died lapses after [`SLOT_TTL`], its reservation counted as spent (the
//! provider may have been paid). With `STREAM_STORE=redis` the store is Redis,
//! so the limits hold across every process of a deployment.

pub mod memory;
pub mod redis;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::ai::providers::TokenCounter;
use crate::ai::runtime::engine::EventStream;
use crate::ai::streaming::events::EventBody;
use crate::auth::Principal;
use crate::config::settings::LimitSettings;

/// How long a concurrency slot outlives its last renewal.
pub const SLOT_TTL: Duration = Duration::from_secs(30);
/// How often held slots are renewed.
const RENEWAL: Duration = Duration::from_secs(10);
/// What a client is told to wait when all its slots are busy: no one knows when a
/// generation ends, so a short, honest retry interval.
pub const CONCURRENCY_RETRY: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitKind {
    Concurrency,
    StartRate,
    TokenBudget,
}

/// A start that a limit refused, with what a client needs to wait it out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub kind: LimitKind,
    pub limit: u64,
    pub remaining: u64,
    pub retry_after: Duration,
}

impl Refusal {
    /// The contract's code: `budget_exhausted` for tokens, `rate_limited` otherwise.
    pub fn code(&self) -> &'static str {
        match self.kind {
            LimitKind::TokenBudget => "budget_exhausted",
            LimitKind::Concurrency | LimitKind::StartRate => "rate_limited",
        }
    }

    pub fn retry_after_ms(&self) -> u64 {
        self.retry_after.as_millis().try_into().unwrap_or(u64::MAX).max(1)
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.kind {
            LimitKind::Concurrency => write!(f, "you already run {} generations at once; wait for one to end", self.limit),
            LimitKind::StartRate => write!(f, "more than {} starts in a minute; try again shortly", self.limit),
            LimitKind::TokenBudget => {
                write!(
                    f,
                    "today's budget of {} output tokens would be exceeded ({} left); it resets at midnight UTC",
                    self.limit, self.remaining
                )
            }
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum LimitError {
    #[error("{0}")]
    Refused(Refusal),
    /// The store could not decide; the text is for logs, never for clients.
    #[error("the limit store is unavailable: {0}")]
    Unavailable(String),
}

/// One start asking to be admitted.
#[derive(Debug, Clone)]
pub struct Admission<'a> {
    pub principal: &'a str,
    /// Names the concurrency slot the start would take.
    pub slot: &'a str,
    /// Output tokens to reserve: the block's `max_tokens`.
    pub tokens: u64,
}

/// A principal's standing, for `GET /api/usage`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Standing {
    pub active_streams: u64,
    pub tokens_used_today: u64,
    pub tokens_reserved: u64,
}

#[async_trait]
pub trait LimitStore: Send + Sync + 'static {
    /// Admits or refuses a start, atomically (across processes sharing the store).
    async fn admit(&self, admission: &Admission<'_>) -> Result<(), LimitError>;
    /// Frees a slot and turns its reservation into `used` tokens.
    async fn settle(&self, principal: &str, slot: &str, used: u64) -> Result<(), LimitError>;
    /// Keeps these `(principal, slot)` pairs held for another [`SLOT_TTL`].
    async fn renew(&self, slots: &[(String, String)]) -> Result<(), LimitError>;
    async fn standing(&self, principal: &str) -> Result<Standing, LimitError>;
    /// Whether the store answers, for `/readyz`.
    async fn ready(&self) -> Result<(), LimitError>;
}

struct Inner {
    store: Arc<dyn LimitStore>,
    quotas: LimitSettings,
    /// Slots held by this process, slot → principal, renewed until settled.
    held: Mutex<HashMap<String, String>>,
    /// Counts refusals by code (`live_ai_limits_refused_total`), once set.
    refused: std::sync::OnceLock<prometheus::IntCounterVec>,
}

/// The limits of this deployment, as the API and the stream manager use them.
#[derive(Clone)]
pub struct Limits {
    inner: Arc<Inner>,
}

impl Limits {
    pub fn new(store: Arc<dyn LimitStore>, quotas: LimitSettings, shutdown: CancellationToken) -> Self {
        let limits = Self { inner: Arc::new(Inner { store, quotas, held: Mutex::default(), refused: Default::default() }) };
        limits.renew_held_slots(shutdown);
        limits
    }

    /// Counts the starts refused from now on in `counter`, by code.
    pub fn count_refusals(&self, counter: prometheus::IntCounterVec) {
        let _ = self.inner.refused.set(counter);
    }

    pub fn quotas(&self) -> &LimitSettings {
        &self.inner.quotas
    }

    fn renew_held_slots(&self, shutdown: CancellationToken) {
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(RENEWAL);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let Some(inner) = weak.upgrade() else { return };
                let slots: Vec<(String, String)> =
                    inner.held.lock().unwrap().iter().map(|(slot, principal)| (principal.clone(), slot.clone())).collect();
                if let Err(error) = inner.store.renew(&slots).await {
                    tracing::warn!(%error, "could not renew concurrency slots");
                }
            }
        });
    }

    /// Admits a start reserving `tokens`, or says which limit refuses it.
    pub async fn admit(&self, principal: &Principal, tokens: u64) -> Result<Reservation, LimitError> {
        let slot = uuid::Uuid::new_v4().simple().to_string();
        let admitted = self.inner.store.admit(&Admission { principal: principal.id(), slot: &slot, tokens }).await;
        if let (Err(LimitError::Refused(refusal)), Some(refused)) = (&admitted, self.inner.refused.get()) {
            refused.with_label_values(&[refusal.code()]).inc();
        }
        admitted?;
        self.inner.held.lock().unwrap().insert(slot.clone(), principal.id().to_owned());
        Ok(Reservation { inner: self.inner.clone(), principal: principal.id().to_owned(), slot, meter: Arc::default(), settled: false })
    }

    pub async fn standing(&self, principal: &Principal) -> Result<Standing, LimitError> {
        self.inner.store.standing(principal.id()).await
    }

    /// Whether the limits' store answers (a readiness probe also keeps its
    /// connection from going stale while no start comes).
    pub async fn ready(&self) -> Result<(), LimitError> {
        self.inner.store.ready().await
    }
}

/// What a generation used, as its events showed it.
#[derive(Default)]
struct Meter {
    /// Output tokens of the chunks so far, as the model's counter counts them.
    produced: AtomicU64,
    /// `usage.completion_tokens` of the `complete` event, plus one (0: none yet).
    reported: AtomicU64,
}

impl Meter {
    fn used(&self) -> u64 {
        match self.reported.load(Ordering::Relaxed) {
            0 => self.produced.load(Ordering::Relaxed),
            reported => reported - 1,
        }
    }
}

/// An admitted start: a concurrency slot and a token reservation, settled once.
pub struct Reservation {
    inner: Arc<Inner>,
    principal: String,
    slot: String,
    meter: Arc<Meter>,
    settled: bool,
}

impl Reservation {
    /// Passes a generation's events through, noting the tokens it used
    /// (`counter` counts the chunks of a generation that ends without usage).
    pub fn meter(&self, events: EventStream, counter: TokenCounter) -> EventStream {
        let meter = self.meter.clone();
        Box::pin(events.inspect(move |body| match body {
            EventBody::Chunk { token } => {
                meter.produced.fetch_add(counter.chunk(token), Ordering::Relaxed);
            }
            EventBody::Complete { usage, .. } => meter.reported.store(usage.completion_tokens.saturating_add(1), Ordering::Relaxed),
            _ => {}
        }))
    }

    /// What the metered events used so far.
    pub fn used(&self) -> u64 {
        self.meter.used()
    }

    /// Settles to what the metered events used.
    pub async fn settle(self) {
        let used = self.meter.used();
        self.settle_to(used).await;
    }

    /// Frees the slot and counts `used` tokens instead of the reservation.
    pub async fn settle_to(mut self, used: u64) {
        self.settled = true;
        settle(self.inner.clone(), self.principal.clone(), self.slot.clone(), used).await;
    }
}

async fn settle(inner: Arc<Inner>, principal: String, slot: String, used: u64) {
    inner.held.lock().unwrap().remove(&slot);
    if let Err(error) = inner.store.settle(&principal, &slot, used).await {
        // The slot lapses by itself after SLOT_TTL, its reservation counted as spent.
        tracing::warn!(%error, "could not settle a reservation");
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        let (inner, principal, slot, used) = (self.inner.clone(), self.principal.clone(), self.slot.clone(), self.meter.used());
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(settle(inner, principal, slot, used));
            }
            Err(_) => {
                inner.held.lock().unwrap().remove(&slot);
            }
        }
    }
}

/// Time left in the current UTC day, when a token budget resets.
pub fn until_midnight_utc(now: std::time::SystemTime) -> Duration {
    let secs = now.duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs();
    Duration::from_secs(86_400 - secs % 86_400)
}

/// The number of the UTC day (days since 1970-01-01).
pub fn utc_day(now: std::time::SystemTime) -> u64 {
    now.duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs() / 86_400
}
