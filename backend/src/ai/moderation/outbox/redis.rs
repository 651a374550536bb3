//! The outbox in Redis (`STREAM_STORE=redis`): deliveries outlive a restart and
//! any process delivers them. Two keys sharing a hash tag: a hash
//! `<prefix>:{moderation}:outbox` (id → the delivery as JSON) and a sorted set
//! `<prefix>:{moderation}:outbox-due` (id → when it is due, in Redis's clock, so
//! processes with skewed clocks agree). Claiming is one script: due entries are
//! re-scored to the end of their lease as they are read. Both keys expire a day
//! after the last write (the retry schedule spans about eight hours).

use std::time::Duration;

use super::{Delivery, Outbox, OutboxError};
use crate::redis_connection::{self, RedisConn, RedisTarget, COMMAND_TIMEOUT};
use async_trait::async_trait;

const CLAIM: &str = r#"
-- KEYS: due, deliveries. ARGV: lease_ms, max
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))) do
  local body = redis.call('HGET', KEYS[2], id)
  if body then
    redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), id)
    table.insert(out, body)
  else
    redis.call('ZREM', KEYS[1], id)
  end
end
return out
"#;

const SCHEDULE: &str = r#"
-- KEYS: due, deliveries. ARGV: id, body, delay_ms, ttl_ms
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
return 1
"#;

const REMOVE: &str = r#"
-- KEYS: due, deliveries. ARGV: id
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
return 1
"#;

/// How long the outbox keys outlive their last write.
const KEY_TTL: Duration = Duration::from_secs(24 * 3600);

pub struct RedisOutbox {
    conn: RedisConn,
    due: String,
    deliveries: String,
    claim: redis::Script,
    schedule: redis::Script,
    remove: redis::Script,
}

fn unavailable(error: redis::RedisError) -> OutboxError {
    OutboxError(error.to_string())
}

impl RedisOutbox {
    /// Connects to `target`'s node or cluster (both keys share a slot).
    pub async fn connect(target: &RedisTarget, prefix: &str) -> Result<Self, OutboxError> {
        let conn = redis_connection::open(target, COMMAND_TIMEOUT).await.map_err(unavailable)?;
        Ok(Self {
            conn,
            due: format!("{prefix}:{{moderation}}:outbox-due"),
            deliveries: format!("{prefix}:{{moderation}}:outbox"),
            claim: redis::Script::new(CLAIM),
            schedule: redis::Script::new(SCHEDULE),
            remove: redis::Script::new(REMOVE),
        })
    }

    async fn schedule(&self, delivery: &Delivery, delay: Duration) -> Result<(), OutboxError> {
        let body = serde_json::to_string(delivery).expect("deliveries serialise");
        self.schedule
            .key(&self.due)
            .key(&self.deliveries)
            .arg(&delivery.id)
            .arg(body)
            .arg(delay.as_millis() as u64)
            .arg(KEY_TTL.as_millis() as u64)
            .invoke_async::<i64>(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}

#[async_trait]
impl Outbox for RedisOutbox {
    async fn add(&self, delivery: &Delivery) -> Result<(), OutboxError> {
        self.schedule(delivery, Duration::ZERO).await
    }

    async fn claim(&self, lease: Duration, max: usize) -> Result<Vec<Delivery>, OutboxError> {
        let bodies: Vec<String> = self
            .claim
            .key(&self.due)
            .key(&self.deliveries)
            .arg(lease.as_millis() as u64)
            .arg(max)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        Ok(bodies
            .into_iter()
            .filter_map(|body| match serde_json::from_str(&body) {
                Ok(delivery) => Some(delivery),
                Err(error) => {
                    tracing::error!(%error, "a webhook delivery in Redis cannot be read; skipping it");
                    None
                }
            })
            .collect())
    }

    async fn retry(&self, delivery: &Delivery, delay: Duration) -> Result<(), OutboxError> {
        self.schedule(delivery, delay).await
    }

    async fn remove(&self, id: &str) -> Result<(), OutboxError> {
        // A script, not MULTI: atomic on one node and in a cluster alike.
        self.remove.key(&self.due).key(&self.deliveries).arg(id).invoke_async::<i64>(&mut self.conn.clone()).await.map_err(unavailable)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_the_outbox_scripts_touch_is_declared() {
        for script in [CLAIM, SCHEDULE, REMOVE] {
            assert_eq!(redis_connection::undeclared_keys(script), Vec::<String>::new(), "{script}");
        }
    }
}
