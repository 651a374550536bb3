//! The scale-out event store: logs in Redis, shared by every `live-ai` process.
//!
//! Per stream (keys share a hash tag, so a cluster keeps them on one slot):
//! - `{prefix}:{<id>}:log`: a Redis Stream; entry id `<seq>-1`, fields `t` (type)
//!   and `j` (the event JSON);
//! - `{prefix}:{<id>}:meta`: a hash with `len`, `finished` and `owner` (the
//!   principal that started the stream);
//! - `{prefix}:{<id>}:lease`: present while a process generates the stream; that
//!   process renews it, so when the process dies the lease lapses and readers
//!   elsewhere end the stream with `generation_lost` instead of hanging.
//!
//! Appends run as one Lua script (check seq, XADD, update meta, publish), so seq is
//! contiguous and nothing follows a terminal event even with several writers.
//! Readers wait on the live tail through one pub/sub subscription per process
//! (`{prefix}:tail`, payload `<id> <len>`) fanned out locally by `watch` channels;
//! cancel requests travel on `{prefix}:cancel`. If the subscription drops, readers
//! still poll on their wait timeout, so a lost notification delays, never loses.
//! Finished logs expire after the retention period; their memory bound is Redis's
//! own (`maxmemory`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;
use futures::StreamExt;
use redis::aio::ConnectionManager;
use redis::streams::StreamRangeReply;
use redis::AsyncCommands;
use tokio::sync::{broadcast, watch};
use tokio_stream::wrappers::BroadcastStream;
use tokio_util::sync::CancellationToken;

use super::{EventStore, KeyClaim, LogStatus, StoreError};
use crate::ai::streaming::events::{EventType, LoggedEvent, StreamId};

/// How long a lease lives without renewal; the generating process renews it
/// every `LEASE_TTL / 3`.
pub const LEASE_TTL: Duration = Duration::from_secs(3);
/// Upper bound on how long an unfinished log is kept if its process vanished.
const LIVE_TTL: Duration = Duration::from_secs(3600);

const APPEND: &str = r#"
-- KEYS: meta, log, lease. ARGV: seq, type, json, terminal, retention_ms, live_ttl_ms, tail channel, id
local len = tonumber(redis.call('HGET', KEYS[1], 'len'))
if not len then return {-1, 0} end
if redis.call('HGET', KEYS[1], 'finished') == '1' then return {-2, len} end
if tonumber(ARGV[1]) ~= len then return {-3, len} end
redis.call('XADD', KEYS[2], ARGV[1] .. '-1', 't', ARGV[2], 'j', ARGV[3])
redis.call('HSET', KEYS[1], 'len', len + 1)
if ARGV[4] == '1' then
  redis.call('HSET', KEYS[1], 'finished', '1')
  redis.call('DEL', KEYS[3])
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
  redis.call('PEXPIRE', KEYS[2], ARGV[5])
elseif len == 0 then
  redis.call('PEXPIRE', KEYS[2], ARGV[6])
end
redis.call('PUBLISH', ARGV[7], ARGV[8] .. ' ' .. (len + 1))
return {0, len + 1}
"#;

pub struct RedisStore {
    conn: ConnectionManager,
    prefix: String,
    retention: Duration,
    append: redis::Script,
    /// Local waiters on each stream's tail, fed by the pub/sub subscription.
    tails: Arc<Mutex<HashMap<StreamId, watch::Sender<u64>>>>,
    cancels: broadcast::Sender<StreamId>,
}

fn unavailable(error: redis::RedisError) -> StoreError {
    StoreError::Unavailable(error.to_string())
}

impl RedisStore {
    /// Connects, and subscribes to tail and cancel notifications until `shutdown`.
    pub async fn connect(url: &str, prefix: &str, retention: Duration, shutdown: CancellationToken) -> Result<Self, StoreError> {
        let client = redis::Client::open(url).map_err(unavailable)?;
        let conn = ConnectionManager::new(client.clone()).await.map_err(unavailable)?;
        let store = Self {
            conn,
            prefix: prefix.to_owned(),
            retention,
            append: redis::Script::new(APPEND),
            tails: Arc::default(),
            cancels: broadcast::channel(1024).0,
        };
        store.subscribe(client, shutdown).await?;
        Ok(store)
    }

    fn key(&self, id: &StreamId, part: &str) -> String {
        format!("{}:{{{id}}}:{part}", self.prefix)
    }

    fn idempotency_key(&self, key: &str) -> String {
        format!("{}:idempotency:{key}", self.prefix)
    }

    fn channel(&self, name: &str) -> String {
        format!("{}:{name}", self.prefix)
    }

    /// Runs the subscription in the background, reconnecting with backoff.
    async fn subscribe(&self, client: redis::Client, shutdown: CancellationToken) -> Result<(), StoreError> {
        let (tail, cancel) = (self.channel("tail"), self.channel("cancel"));
        let mut pubsub = client.get_async_pubsub().await.map_err(unavailable)?;
        pubsub.subscribe(&[&tail, &cancel]).await.map_err(unavailable)?;
        let (tails, cancels) = (self.tails.clone(), self.cancels.clone());
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(100);
            loop {
                {
                    let mut messages = pubsub.on_message();
                    loop {
                        let message = tokio::select! {
                            _ = shutdown.cancelled() => return,
                            message = messages.next() => message,
                        };
                        let Some(message) = message else { break };
                        backoff = Duration::from_millis(100);
                        let Ok(payload) = message.get_payload::<String>() else { continue };
                        if message.get_channel_name() == cancel {
                            if let Some(id) = StreamId::parse(&payload) {
                                let _ = cancels.send(id);
                            }
                        } else if let Some((id, len)) = payload.split_once(' ') {
                            let (Some(id), Ok(len)) = (StreamId::parse(id), len.parse::<u64>()) else { continue };
                            if let Some(tail) = tails.lock().unwrap().get(&id) {
                                tail.send_replace(len);
                            }
                        }
                    }
                }
                tracing::warn!("lost the Redis subscription; reconnecting");
                loop {
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    if let Ok(mut fresh) = client.get_async_pubsub().await {
                        if fresh.subscribe(&[&tail, &cancel]).await.is_ok() {
                            pubsub = fresh;
                            break;
                        }
                    }
                }
            }
        });
        Ok(())
    }

    fn entry_event(id: &str, fields: &HashMap<String, redis::Value>) -> Option<LoggedEvent> {
        let seq = id.split_once('-')?.0.parse().ok()?;
        let text = |name: &str| match fields.get(name)? {
            redis::Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
            redis::Value::SimpleString(s) => Some(s.clone()),
            _ => None,
        };
        Some(LoggedEvent { seq, event_type: EventType::parse(&text("t")?)?, json: text("j")?.into(), created: std::time::Instant::now() })
    }
}

#[async_trait]
impl EventStore for RedisStore {
    async fn create(&self, id: &StreamId, owner: &str) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let meta = self.key(id, "meta");
        redis::pipe()
            .atomic()
            .hset_multiple(&meta, &[("len", "0"), ("finished", "0"), ("owner", owner)])
            .pexpire(&meta, LIVE_TTL.as_millis() as i64)
            .set_options(
                self.key(id, "lease"),
                1,
                redis::SetOptions::default().with_expiration(redis::SetExpiry::PX(LEASE_TTL.as_millis() as u64)),
            )
            .query_async::<()>(&mut conn)
            .await
            .map_err(unavailable)
    }

    async fn append(&self, id: &StreamId, event: LoggedEvent) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let (code, len): (i64, u64) = self
            .append
            .key(self.key(id, "meta"))
            .key(self.key(id, "log"))
            .key(self.key(id, "lease"))
            .arg(event.seq)
            .arg(event.event_type.as_str())
            .arg(&*event.json)
            .arg(if event.is_terminal() { "1" } else { "0" })
            .arg(self.retention.as_millis().max(1) as u64)
            .arg(LIVE_TTL.as_millis() as u64)
            .arg(self.channel("tail"))
            .arg(id.as_str())
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        match code {
            0 => Ok(()),
            -1 => Err(StoreError::NotFound(id.clone())),
            -2 => Err(StoreError::Finished(id.clone())),
            _ => Err(StoreError::OutOfOrder { stream_id: id.clone(), expected: len, got: event.seq }),
        }
    }

    async fn read_after(&self, id: &StreamId, after: Option<u64>, limit: usize) -> Result<Vec<LoggedEvent>, StoreError> {
        let mut conn = self.conn.clone();
        let start = after.map_or_else(|| "-".to_owned(), |seq| format!("({seq}-1"));
        let reply: StreamRangeReply = conn.xrange_count(self.key(id, "log"), start, "+", limit).await.map_err(unavailable)?;
        if reply.ids.is_empty() {
            let exists: bool = conn.exists(self.key(id, "meta")).await.map_err(unavailable)?;
            if !exists {
                return Err(StoreError::NotFound(id.clone()));
            }
        }
        reply
            .ids
            .iter()
            .map(|entry| {
                Self::entry_event(&entry.id, &entry.map)
                    .ok_or_else(|| StoreError::Unavailable(format!("malformed log entry {} of {id}", entry.id)))
            })
            .collect()
    }

    async fn wait_after(&self, id: &StreamId, after: Option<u64>, wait: Duration) -> Result<(), StoreError> {
        let wanted = after.map_or(1, |seq| seq.saturating_add(2));
        let mut tail = self.tails.lock().unwrap().entry(id.clone()).or_insert_with(|| watch::channel(0).0).subscribe();
        // Subscribed first, then checked: an append in between is not missed.
        let checked = self.status(id).await;
        if !matches!(&checked, Ok(status) if status.len >= wanted) {
            let _ = tokio::time::timeout(wait, tail.wait_for(|len| *len >= wanted)).await;
        }
        drop(tail);
        let mut tails = self.tails.lock().unwrap();
        if tails.get(id).is_some_and(|t| t.receiver_count() == 0) {
            tails.remove(id);
        }
        checked.map(|_| ())
    }

    async fn status(&self, id: &StreamId) -> Result<LogStatus, StoreError> {
        let mut conn = self.conn.clone();
        let (len, finished, owner): (Option<u64>, Option<String>, Option<String>) = redis::cmd("HMGET")
            .arg(self.key(id, "meta"))
            .arg("len")
            .arg("finished")
            .arg("owner")
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        let len = len.ok_or_else(|| StoreError::NotFound(id.clone()))?;
        Ok(LogStatus { len, finished: finished.as_deref() == Some("1"), owner: owner.unwrap_or_default() })
    }

    async fn request_cancel(&self, id: &StreamId) -> Result<(), StoreError> {
        self.status(id).await?;
        let mut conn = self.conn.clone();
        conn.publish::<_, _, ()>(self.channel("cancel"), id.as_str()).await.map_err(unavailable)
    }

    fn cancel_requests(&self) -> BoxStream<'static, StreamId> {
        BroadcastStream::new(self.cancels.subscribe()).filter_map(|r| async move { r.ok() }).boxed()
    }

    async fn renew_leases(&self, ids: &[StreamId]) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn.clone();
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.pexpire(self.key(id, "lease"), LEASE_TTL.as_millis() as i64).ignore();
        }
        pipe.query_async::<()>(&mut conn).await.map_err(unavailable)
    }

    async fn is_generating(&self, id: &StreamId) -> Result<bool, StoreError> {
        let mut conn = self.conn.clone();
        conn.exists(self.key(id, "lease")).await.map_err(unavailable)
    }

    async fn claim_key(&self, key: &str, claim: KeyClaim, ttl: Duration) -> Result<Option<KeyClaim>, StoreError> {
        let mut conn = self.conn.clone();
        let name = self.idempotency_key(key);
        let value = format!("{} {}", claim.stream_id, claim.fingerprint);
        let options = redis::SetOptions::default()
            .conditional_set(redis::ExistenceCheck::NX)
            .get(true)
            .with_expiration(redis::SetExpiry::PX(ttl.as_millis().max(1) as u64));
        // SET NX GET: the previous holder when the key was taken, nothing when we got it.
        let held: Option<String> = conn.set_options(&name, value, options).await.map_err(unavailable)?;
        Ok(held.and_then(|held| {
            let (id, fingerprint) = held.split_once(' ')?;
            Some(KeyClaim { stream_id: StreamId::parse(id)?, fingerprint: fingerprint.to_owned() })
        }))
    }

    async fn release_key(&self, key: &str, id: &StreamId) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let release = redis::Script::new(
            "local v = redis.call('GET', KEYS[1]) if v and string.sub(v, 1, #ARGV[1] + 1) == ARGV[1] .. ' ' then redis.call('DEL', KEYS[1]) end return 0",
        );
        release.key(self.idempotency_key(key)).arg(id.as_str()).invoke_async::<i64>(&mut conn).await.map_err(unavailable)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ai::streaming::events::{CancelReason, EventBody};

    /// The Redis the tests use: `REDIS_URL`, or the local default.
    pub fn redis_url() -> String {
        std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
    }

    async fn store() -> RedisStore {
        // A fresh prefix per test keeps parallel tests apart.
        let prefix = format!("live-ai-test-{}", uuid::Uuid::new_v4().simple());
        RedisStore::connect(&redis_url(), &prefix, Duration::from_secs(60), CancellationToken::new())
            .await
            .expect("Redis runs for the tests")
    }

    fn chunk(id: &StreamId, seq: u64) -> LoggedEvent {
        LoggedEvent::new(id, seq, EventBody::Chunk { token: format!("t{seq} ") })
    }

    #[tokio::test]
    async fn appends_are_contiguous_and_end_at_the_terminal_event() {
        let store = store().await;
        let id = StreamId::generate();
        assert!(matches!(store.append(&id, chunk(&id, 0)).await, Err(StoreError::NotFound(_))));
        store.create(&id, "owner").await.unwrap();
        store.append(&id, chunk(&id, 0)).await.unwrap();
        assert!(matches!(store.append(&id, chunk(&id, 2)).await, Err(StoreError::OutOfOrder { expected: 1, .. })));
        store.append(&id, LoggedEvent::new(&id, 1, EventBody::Cancelled { reason: CancelReason::Requested })).await.unwrap();
        assert!(matches!(store.append(&id, chunk(&id, 2)).await, Err(StoreError::Finished(_))));
        assert_eq!(store.status(&id).await.unwrap(), LogStatus { len: 2, finished: true, owner: "owner".into() });
        assert!(!store.is_generating(&id).await.unwrap(), "a finished stream has no lease");
    }

    #[tokio::test]
    async fn reads_start_after_the_given_seq_and_keep_the_json() {
        let store = store().await;
        let id = StreamId::generate();
        store.create(&id, "owner").await.unwrap();
        for seq in 0..5 {
            store.append(&id, chunk(&id, seq)).await.unwrap();
        }
        let all = store.read_after(&id, None, 100).await.unwrap();
        assert_eq!(all.iter().map(|e| e.seq).collect::<Vec<_>>(), [0, 1, 2, 3, 4]);
        assert_eq!(all[3].json, chunk(&id, 3).json);
        assert_eq!(all[3].event_type, EventType::Chunk);
        let tail = store.read_after(&id, Some(2), 1).await.unwrap();
        assert_eq!(tail.iter().map(|e| e.seq).collect::<Vec<_>>(), [3]);
        assert!(store.read_after(&id, Some(4), 10).await.unwrap().is_empty());
        assert!(matches!(store.read_after(&StreamId::generate(), None, 10).await, Err(StoreError::NotFound(_))));
    }

    #[tokio::test]
    async fn a_waiting_reader_wakes_when_another_process_appends() {
        let reader = Arc::new(store().await);
        // Same prefix: two processes sharing one Redis.
        let writer = RedisStore::connect(&redis_url(), &reader.prefix, Duration::from_secs(60), CancellationToken::new()).await.unwrap();
        let id = StreamId::generate();
        writer.create(&id, "owner").await.unwrap();
        let waiting = tokio::spawn({
            let (reader, id) = (reader.clone(), id.clone());
            async move {
                let started = std::time::Instant::now();
                reader.wait_after(&id, None, Duration::from_secs(20)).await.unwrap();
                started.elapsed()
            }
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        writer.append(&id, chunk(&id, 0)).await.unwrap();
        let waited = waiting.await.unwrap();
        assert!(waited < Duration::from_secs(20), "woken by the append, not by the timeout");
    }

    #[tokio::test]
    async fn an_idempotency_key_is_claimed_once_across_processes() {
        let a = store().await;
        let b = RedisStore::connect(&redis_url(), &a.prefix, Duration::from_secs(60), CancellationToken::new()).await.unwrap();
        let claim = |id: &StreamId| KeyClaim { stream_id: id.clone(), fingerprint: "quiz:00ff".into() };
        let (first, second) = (StreamId::generate(), StreamId::generate());
        let ttl = Duration::from_secs(60);
        assert_eq!(a.claim_key("retry-me", claim(&first), ttl).await.unwrap(), None);
        assert_eq!(b.claim_key("retry-me", claim(&second), ttl).await.unwrap(), Some(claim(&first)));
        b.release_key("retry-me", &second).await.unwrap();
        assert_eq!(b.claim_key("retry-me", claim(&second), ttl).await.unwrap(), Some(claim(&first)));
        a.release_key("retry-me", &first).await.unwrap();
        assert_eq!(b.claim_key("retry-me", claim(&second), ttl).await.unwrap(), None);
    }

    #[tokio::test]
    async fn cancel_requests_reach_every_process() {
        let a = store().await;
        let b = RedisStore::connect(&redis_url(), &a.prefix, Duration::from_secs(60), CancellationToken::new()).await.unwrap();
        let id = StreamId::generate();
        a.create(&id, "owner").await.unwrap();
        let mut requests = b.cancel_requests();
        a.request_cancel(&id).await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(10), requests.next()).await.unwrap();
        assert_eq!(got, Some(id));
    }

    #[tokio::test]
    async fn a_lease_that_is_not_renewed_lapses() {
        let store = store().await;
        let (renewed, lapsed) = (StreamId::generate(), StreamId::generate());
        for id in [&renewed, &lapsed] {
            store.create(id, "owner").await.unwrap();
        }
        for _ in 0..4 {
            tokio::time::sleep(LEASE_TTL / 3).await;
            store.renew_leases(std::slice::from_ref(&renewed)).await.unwrap();
        }
        assert!(store.is_generating(&renewed).await.unwrap());
        assert!(!store.is_generating(&lapsed).await.unwrap());
    }
}
