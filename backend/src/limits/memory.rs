//! Limits held in this process (`STREAM_STORE=memory`): `governor` for the start
//! rate, a map of accounts for slots and token budgets. One mutex makes each
//! admission one decision: the rate limiter is asked last, under the lock, so a
//! refused start consumes nothing.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::SystemTime;

use async_trait::async_trait;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};

use super::{until_midnight_utc, utc_day, Admission, LimitError, LimitKind, LimitStore, Refusal, Standing, CONCURRENCY_RETRY};
use crate::config::settings::LimitSettings;

type StartRate = RateLimiter<String, DefaultKeyedStateStore<String>, DefaultClock, StateInformationMiddleware>;

#[derive(Default)]
struct Account {
    /// Held slots and the day and amount each reserved.
    slots: HashMap<String, (u64, u64)>,
    day: u64,
    used: u64,
    reserved: u64,
}

impl Account {
    /// Starts a new budget when the UTC day changed; yesterday's reservations
    /// settle into nothing.
    fn roll_over(&mut self, today: u64) {
        if self.day != today {
            self.day = today;
            self.used = 0;
            self.reserved = 0;
        }
    }
}

pub struct MemoryLimitStore {
    quotas: LimitSettings,
    rate: Option<StartRate>,
    accounts: Mutex<HashMap<String, Account>>,
}

impl MemoryLimitStore {
    pub fn new(quotas: LimitSettings) -> Self {
        let rate = quotas.starts_per_minute.and_then(NonZeroU32::new).map(|n| RateLimiter::keyed(Quota::per_minute(n)).with_middleware());
        Self { quotas, rate, accounts: Mutex::default() }
    }
}

#[async_trait]
impl LimitStore for MemoryLimitStore {
    async fn admit(&self, admission: &Admission<'_>) -> Result<(), LimitError> {
        let now = SystemTime::now();
        let today = utc_day(now);
        let mut accounts = self.accounts.lock().unwrap();
        let account = accounts.entry(admission.principal.to_owned()).or_default();
        account.roll_over(today);
        if let Some(limit) = self.quotas.concurrent_streams {
            if account.slots.len() >= limit as usize {
                let refusal = Refusal { kind: LimitKind::Concurrency, limit: limit.into(), remaining: 0, retry_after: CONCURRENCY_RETRY };
                return Err(LimitError::Refused(refusal));
            }
        }
        if let Some(limit) = self.quotas.tokens_per_day {
            let spent = account.used + account.reserved;
            if spent.saturating_add(admission.tokens) > limit {
                let remaining = limit.saturating_sub(spent);
                let refusal = Refusal { kind: LimitKind::TokenBudget, limit, remaining, retry_after: until_midnight_utc(now) };
                return Err(LimitError::Refused(refusal));
            }
        }
        if let Some(rate) = &self.rate {
            let limit = self.quotas.starts_per_minute.unwrap_or_default().into();
            if let Err(not_until) = rate.check_key(&admission.principal.to_owned()) {
                let retry_after = not_until.wait_time_from(DefaultClock::default().now());
                return Err(LimitError::Refused(Refusal { kind: LimitKind::StartRate, limit, remaining: 0, retry_after }));
            }
        }
        account.slots.insert(admission.slot.to_owned(), (today, admission.tokens));
        account.reserved += admission.tokens;
        Ok(())
    }

    async fn settle(&self, principal: &str, slot: &str, used: u64) -> Result<(), LimitError> {
        let mut accounts = self.accounts.lock().unwrap();
        let Some(account) = accounts.get_mut(principal) else { return Ok(()) };
        account.roll_over(utc_day(SystemTime::now()));
        if let Some((day, reserved)) = account.slots.remove(slot) {
            if day == account.day {
                account.reserved -= reserved.min(account.reserved);
                account.used += used;
            }
        }
        Ok(())
    }

    async fn renew(&self, _slots: &[(String, String)]) -> Result<(), LimitError> {
        // Slots of this process end with it; forget idle principals instead, so a
        // stream of one-off client addresses cannot grow memory without bound.
        let today = utc_day(SystemTime::now());
        self.accounts.lock().unwrap().retain(|_, account| !account.slots.is_empty() || (account.day == today && account.used > 0));
        if let Some(rate) = &self.rate {
            rate.retain_recent();
        }
        Ok(())
    }

    async fn standing(&self, principal: &str) -> Result<Standing, LimitError> {
        let mut accounts = self.accounts.lock().unwrap();
        let Some(account) = accounts.get_mut(principal) else { return Ok(Standing::default()) };
        account.roll_over(utc_day(SystemTime::now()));
        Ok(Standing { active_streams: account.slots.len() as u64, tokens_used_today: account.used, tokens_reserved: account.reserved })
    }

    async fn ready(&self) -> Result<(), LimitError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quotas(concurrent: Option<u32>, per_minute: Option<u32>, per_day: Option<u64>) -> LimitSettings {
        LimitSettings { concurrent_streams: concurrent, starts_per_minute: per_minute, tokens_per_day: per_day, streams_per_socket: 8 }
    }

    fn admission<'a>(principal: &'a str, slot: &'a str, tokens: u64) -> Admission<'a> {
        Admission { principal, slot, tokens }
    }

    fn refused(result: Result<(), LimitError>) -> Refusal {
        match result {
            Err(LimitError::Refused(refusal)) => refusal,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_settled_slot_is_free_again_and_principals_are_apart() {
        let store = MemoryLimitStore::new(quotas(Some(1), None, None));
        store.admit(&admission("a", "s1", 10)).await.unwrap();
        assert_eq!(refused(store.admit(&admission("a", "s2", 10)).await).kind, LimitKind::Concurrency);
        store.admit(&admission("b", "s3", 10)).await.unwrap();
        store.settle("a", "s1", 3).await.unwrap();
        store.admit(&admission("a", "s2", 10)).await.unwrap();
    }

    #[tokio::test]
    async fn a_reservation_that_cannot_be_covered_is_refused_and_settling_frees_the_rest() {
        let store = MemoryLimitStore::new(quotas(None, None, Some(100)));
        store.admit(&admission("a", "s1", 80)).await.unwrap();
        let refusal = refused(store.admit(&admission("a", "s2", 30)).await);
        assert_eq!((refusal.kind, refusal.code(), refusal.remaining), (LimitKind::TokenBudget, "budget_exhausted", 20));
        store.settle("a", "s1", 50).await.unwrap();
        store.admit(&admission("a", "s2", 30)).await.unwrap();
        assert_eq!(store.standing("a").await.unwrap(), Standing { active_streams: 1, tokens_used_today: 50, tokens_reserved: 30 });
    }

    #[tokio::test]
    async fn starts_beyond_the_rate_are_refused_with_a_wait() {
        let store = MemoryLimitStore::new(quotas(None, Some(2), None));
        store.admit(&admission("a", "s1", 1)).await.unwrap();
        store.admit(&admission("a", "s2", 1)).await.unwrap();
        let refusal = refused(store.admit(&admission("a", "s3", 1)).await);
        assert_eq!((refusal.kind, refusal.code()), (LimitKind::StartRate, "rate_limited"));
        assert!(refusal.retry_after > std::time::Duration::ZERO);
        store.admit(&admission("b", "s4", 1)).await.unwrap();
    }
}
