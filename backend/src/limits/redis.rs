//! Limits held in Redis (`STREAM_STORE=redis`), so they hold across every process
//! of a deployment. Each decision is one Lua script, atomic in Redis, timed by
//! Redis's own clock (`TIME`) so processes with skewed clocks agree.
//!
//! Per principal (keys share a hash tag of the principal's digest):
//! - `…:active`: a sorted set of held slots, scored by when each lapses; the
//!   process running the generation renews it, so a dead process's slots lapse;
//! - `…:rate`: the start rate's theoretical arrival time (GCRA, as `governor`);
//! - `…:reserved`: a hash slot → `<day>:<tokens>` of open reservations;
//! - `…:budget`: a hash with each day's `<day>:used` and `<day>:reserved`
//!   output tokens (the last two days').
//!
//! Every key a script touches is one of its declared `KEYS`, all under the
//! principal's hash tag: Redis Cluster routes a script by its keys, and a key
//! made up inside the script is one it cannot see.

use std::collections::HashMap;
use std::time::Duration;

use crate::redis_connection::{RedisConn, RedisTarget};
use async_trait::async_trait;
use sha2::{Digest, Sha256};

use super::{Admission, LimitError, LimitKind, LimitStore, Refusal, Standing, CONCURRENCY_RETRY};
use crate::config::settings::LimitSettings;

const ADMIT: &str = r#"
-- KEYS: active, rate, reserved, budget. ARGV: slot, tokens, max_concurrent, per_minute, per_day, slot_ttl_ms
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local day = math.floor(tonumber(t[1]) / 86400)
-- Slots whose process stopped renewing them are free; what they reserved counts as spent.
for _, slot in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)) do
  local held = redis.call('HGET', KEYS[3], slot)
  if held then
    local d, amount = string.match(held, '^(%d+):(%d+)$')
    if redis.call('HEXISTS', KEYS[4], d .. ':reserved') == 1 then
      redis.call('HINCRBY', KEYS[4], d .. ':reserved', -tonumber(amount))
      redis.call('HINCRBY', KEYS[4], d .. ':used', tonumber(amount))
    end
    redis.call('HDEL', KEYS[3], slot)
  end
  redis.call('ZREM', KEYS[1], slot)
end
local tokens = tonumber(ARGV[2])
local max_concurrent = tonumber(ARGV[3])
if max_concurrent >= 0 and redis.call('ZCARD', KEYS[1]) >= max_concurrent then
  return {1, 0, 0}
end
local per_day = tonumber(ARGV[5])
if per_day >= 0 then
  local spent = tonumber(redis.call('HGET', KEYS[4], day .. ':used') or '0') + tonumber(redis.call('HGET', KEYS[4], day .. ':reserved') or '0')
  if spent + tokens > per_day then
    return {3, math.max(per_day - spent, 0), (day + 1) * 86400000 - now}
  end
end
local per_minute = tonumber(ARGV[4])
if per_minute >= 0 then
  local interval = 60000 / per_minute
  local tat = tonumber(redis.call('GET', KEYS[2]) or '0')
  if tat < now then tat = now end
  local next_tat = tat + interval
  if next_tat - now > 60000 then
    return {2, 0, math.ceil(next_tat - now - 60000)}
  end
  redis.call('SET', KEYS[2], string.format('%.3f', next_tat), 'PX', math.ceil(next_tat - now))
end
local ttl = tonumber(ARGV[6])
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
redis.call('PEXPIRE', KEYS[1], ttl + 60000)
redis.call('HSET', KEYS[3], ARGV[1], day .. ':' .. tokens)
redis.call('PEXPIRE', KEYS[3], 172800000)
-- A day's two fields are kept for two days (a slot reserved before midnight settles after it).
redis.call('HINCRBY', KEYS[4], day .. ':reserved', tokens)
redis.call('HSETNX', KEYS[4], day .. ':used', 0)
redis.call('HDEL', KEYS[4], (day - 2) .. ':used', (day - 2) .. ':reserved')
redis.call('PEXPIRE', KEYS[4], 172800000)
return {0, 0, 0}
"#;

const SETTLE: &str = r#"
-- KEYS: active, reserved, budget. ARGV: slot, used tokens
local held = redis.call('HGET', KEYS[2], ARGV[1])
if held then
  local d, amount = string.match(held, '^(%d+):(%d+)$')
  if redis.call('HEXISTS', KEYS[3], d .. ':reserved') == 1 then
    redis.call('HINCRBY', KEYS[3], d .. ':reserved', -tonumber(amount))
    redis.call('HINCRBY', KEYS[3], d .. ':used', tonumber(ARGV[2]))
  end
  redis.call('HDEL', KEYS[2], ARGV[1])
end
redis.call('ZREM', KEYS[1], ARGV[1])
return 0
"#;

const RENEW: &str = r#"
-- KEYS: active. ARGV: slot_ttl_ms, slots...
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[1])
for i = 2, #ARGV do
  redis.call('ZADD', KEYS[1], 'XX', now + ttl, ARGV[i])
end
redis.call('PEXPIRE', KEYS[1], ttl + 60000)
return 0
"#;

const STANDING: &str = r#"
-- KEYS: active, budget. Returns active slots, used, reserved.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local day = math.floor(tonumber(t[1]) / 86400)
return {
  redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf'),
  tonumber(redis.call('HGET', KEYS[2], day .. ':used') or '0'),
  tonumber(redis.call('HGET', KEYS[2], day .. ':reserved') or '0'),
}
"#;

pub struct RedisLimitStore {
    conn: RedisConn,
    prefix: String,
    quotas: LimitSettings,
    slot_ttl: Duration,
    admit: redis::Script,
    settle: redis::Script,
    renew: redis::Script,
    standing: redis::Script,
}

fn unavailable(error: redis::RedisError) -> LimitError {
    LimitError::Unavailable(error.to_string())
}

impl RedisLimitStore {
    /// Connects with its own connection, so limit decisions never queue behind
    /// event-log traffic.
    pub async fn connect(target: &RedisTarget, prefix: &str, quotas: LimitSettings, slot_ttl: Duration) -> Result<Self, LimitError> {
        let conn = crate::redis_connection::open(target, crate::redis_connection::COMMAND_TIMEOUT).await.map_err(unavailable)?;
        Ok(Self {
            conn,
            prefix: prefix.to_owned(),
            quotas,
            slot_ttl,
            admit: redis::Script::new(ADMIT),
            settle: redis::Script::new(SETTLE),
            renew: redis::Script::new(RENEW),
            standing: redis::Script::new(STANDING),
        })
    }

    /// `{prefix}:limits:{<digest>}:<what>`: principals are arbitrary text, so keys
    /// carry a digest; the braces keep one principal's keys on one cluster slot.
    fn key(&self, principal: &str, what: &str) -> String {
        let digest = hex::encode(&Sha256::digest(principal.as_bytes())[..16]);
        format!("{}:limits:{{{digest}}}:{what}", self.prefix)
    }
}

fn limit_arg<T: Into<u64>>(limit: Option<T>) -> i64 {
    limit.map_or(-1, |n| i64::try_from(n.into()).unwrap_or(i64::MAX))
}

#[async_trait]
impl LimitStore for RedisLimitStore {
    async fn admit(&self, admission: &Admission<'_>) -> Result<(), LimitError> {
        let mut conn = self.conn.clone();
        let p = admission.principal;
        let (code, remaining, retry_ms): (i64, i64, i64) = self
            .admit
            .key(self.key(p, "active"))
            .key(self.key(p, "rate"))
            .key(self.key(p, "reserved"))
            .key(self.key(p, "budget"))
            .arg(admission.slot)
            .arg(admission.tokens)
            .arg(limit_arg(self.quotas.concurrent_streams))
            .arg(limit_arg(self.quotas.starts_per_minute))
            .arg(limit_arg(self.quotas.tokens_per_day))
            .arg(self.slot_ttl.as_millis() as u64)
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        let retry_after = Duration::from_millis(retry_ms.max(1) as u64);
        let refusal = |kind, limit: u64| Refusal { kind, limit, remaining: remaining.max(0) as u64, retry_after };
        match code {
            0 => Ok(()),
            1 => Err(LimitError::Refused(Refusal {
                retry_after: CONCURRENCY_RETRY,
                ..refusal(LimitKind::Concurrency, self.quotas.concurrent_streams.unwrap_or_default().into())
            })),
            2 => Err(LimitError::Refused(refusal(LimitKind::StartRate, self.quotas.starts_per_minute.unwrap_or_default().into()))),
            _ => Err(LimitError::Refused(refusal(LimitKind::TokenBudget, self.quotas.tokens_per_day.unwrap_or_default()))),
        }
    }

    async fn settle(&self, principal: &str, slot: &str, used: u64) -> Result<(), LimitError> {
        let mut conn = self.conn.clone();
        self.settle
            .key(self.key(principal, "active"))
            .key(self.key(principal, "reserved"))
            .key(self.key(principal, "budget"))
            .arg(slot)
            .arg(used)
            .invoke_async::<i64>(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn renew(&self, slots: &[(String, String)]) -> Result<(), LimitError> {
        let mut by_principal: HashMap<&str, Vec<&str>> = HashMap::new();
        for (principal, slot) in slots {
            by_principal.entry(principal).or_default().push(slot);
        }
        let mut conn = self.conn.clone();
        for (principal, slots) in by_principal {
            let mut invocation = self.renew.key(self.key(principal, "active"));
            invocation.arg(self.slot_ttl.as_millis() as u64);
            for slot in slots {
                invocation.arg(slot);
            }
            invocation.invoke_async::<i64>(&mut conn).await.map_err(unavailable)?;
        }
        Ok(())
    }

    async fn standing(&self, principal: &str) -> Result<Standing, LimitError> {
        let mut conn = self.conn.clone();
        let (active, used, reserved): (u64, u64, u64) = self
            .standing
            .key(self.key(principal, "active"))
            .key(self.key(principal, "budget"))
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(Standing { active_streams: active, tokens_used_today: used, tokens_reserved: reserved })
    }

    async fn ready(&self) -> Result<(), LimitError> {
        let mut conn = self.conn.clone();
        redis::cmd("PING").query_async::<()>(&mut conn).await.map_err(unavailable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redis_url() -> String {
        std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
    }

    fn quotas(concurrent: Option<u32>, per_minute: Option<u32>, per_day: Option<u64>) -> LimitSettings {
        LimitSettings { concurrent_streams: concurrent, starts_per_minute: per_minute, tokens_per_day: per_day, streams_per_socket: 8 }
    }

    async fn store(prefix: &str, quotas: LimitSettings, ttl: Duration) -> RedisLimitStore {
        RedisLimitStore::connect(&RedisTarget::Node(redis_url()), prefix, quotas, ttl).await.expect("Redis runs for the tests")
    }

    fn prefix() -> String {
        format!("live-ai-test-{}", uuid::Uuid::new_v4().simple())
    }

    fn admission<'a>(principal: &'a str, slot: &'a str, tokens: u64) -> Admission<'a> {
        Admission { principal, slot, tokens }
    }

    fn kind(result: Result<(), LimitError>) -> LimitKind {
        match result {
            Err(LimitError::Refused(refusal)) => refusal.kind,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn every_key_the_scripts_touch_is_declared() {
        for script in [ADMIT, SETTLE, RENEW, STANDING] {
            assert_eq!(crate::redis_connection::undeclared_keys(script), Vec::<String>::new(), "{script}");
        }
    }

    #[tokio::test]
    async fn two_processes_share_one_concurrency_limit() {
        let prefix = prefix();
        let ttl = Duration::from_secs(30);
        let (a, b) = (store(&prefix, quotas(Some(2), None, None), ttl).await, store(&prefix, quotas(Some(2), None, None), ttl).await);
        a.admit(&admission("p", "s1", 1)).await.unwrap();
        b.admit(&admission("p", "s2", 1)).await.unwrap();
        assert_eq!(kind(a.admit(&admission("p", "s3", 1)).await), LimitKind::Concurrency);
        assert_eq!(kind(b.admit(&admission("p", "s3", 1)).await), LimitKind::Concurrency);
        a.settle("p", "s2", 1).await.unwrap();
        b.admit(&admission("p", "s3", 1)).await.unwrap();
        assert_eq!(a.standing("p").await.unwrap().active_streams, 2);
    }

    #[tokio::test]
    async fn the_start_rate_and_the_budget_are_shared_and_settled_to_real_usage() {
        let prefix = prefix();
        let ttl = Duration::from_secs(30);
        let q = quotas(None, Some(3), Some(100));
        let (a, b) = (store(&prefix, q.clone(), ttl).await, store(&prefix, q, ttl).await);
        a.admit(&admission("p", "s1", 60)).await.unwrap();
        assert_eq!(kind(b.admit(&admission("p", "s2", 60)).await), LimitKind::TokenBudget);
        b.settle("p", "s1", 10).await.unwrap();
        assert_eq!(a.standing("p").await.unwrap(), Standing { active_streams: 0, tokens_used_today: 10, tokens_reserved: 0 });
        b.admit(&admission("p", "s2", 60)).await.unwrap();
        a.admit(&admission("p", "s3", 1)).await.unwrap();
        assert_eq!(kind(b.admit(&admission("p", "s4", 1)).await), LimitKind::StartRate, "the 4th start within a minute");
    }

    #[tokio::test]
    async fn a_slot_that_is_not_renewed_lapses_and_counts_its_reservation_as_spent() {
        let prefix = prefix();
        let (dead, alive) = (
            store(&prefix, quotas(Some(1), None, Some(1000)), Duration::from_millis(300)).await,
            store(&prefix, quotas(Some(1), None, Some(1000)), Duration::from_millis(300)).await,
        );
        dead.admit(&admission("p", "dead-slot", 400)).await.unwrap();
        // The dead process never renews nor settles; the other one gets the slot once it lapses.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            match alive.admit(&admission("p", "s2", 1)).await {
                Ok(()) => break,
                Err(LimitError::Refused(r)) if r.kind == LimitKind::Concurrency && tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                other => panic!("{other:?}"),
            }
        }
        let standing = alive.standing("p").await.unwrap();
        assert_eq!((standing.tokens_used_today, standing.tokens_reserved), (400, 1));
    }

    #[tokio::test]
    async fn renewed_slots_stay_held() {
        let prefix = prefix();
        let ttl = Duration::from_millis(1500);
        let s = store(&prefix, quotas(Some(1), None, None), ttl).await;
        s.admit(&admission("p", "s1", 1)).await.unwrap();
        for _ in 0..4 {
            tokio::time::sleep(ttl / 3).await;
            s.renew(&[("p".into(), "s1".into())]).await.unwrap();
        }
        assert_eq!(kind(s.admit(&admission("p", "s2", 1)).await), LimitKind::Concurrency);
    }
}
