//! The request index of coalescing in Redis (see `store/requests.rs`): one key
//! per request, `<prefix>:request:{<digest>}`, holding the id of the generation
//! that answers it (`<id>`, or `<id> joined` once a start was given it), then
//! ` ~<id>` for each joined generation a `fresh` claim took the key from (the
//! newest first, `REPLACED_KEPT` at most), with an expiry. Each decision is one
//! script on that one key, so it is atomic across every process and needs no
//! cross-slot access in a cluster:
//! - a claim takes a vacant key, or returns the id it names and marks it
//!   joined in the same step (keeping its expiry); a `fresh` claim takes the
//!   key whatever it names, marks nothing, and keeps the replaced generation's
//!   mark when it was joined;
//! - replacing a generation found unusable, holding (extending), releasing and
//!   handing over compare the id first, so a process never touches a key
//!   another generation has taken since.

use std::sync::LazyLock;
use std::time::Duration;

use async_trait::async_trait;
use redis::AsyncCommands;

use super::super::requests::{Claim, RequestIndex, REPLACED_KEPT};
use super::super::StoreError;
use super::{unavailable, RedisStore};
use crate::ai::streaming::events::StreamId;

/// Whether a key's value says `id` was joined: it names `id` as joined, or
/// keeps `id`'s mark as a joined generation a `fresh` claim replaced.
fn joined_in(held: &str, id: &StreamId) -> bool {
    let mut tokens = held.split(' ');
    let named = tokens.next() == Some(id.as_str());
    let mut marks = tokens.peekable();
    if marks.next_if_eq(&"joined").is_some() && named {
        return true;
    }
    marks.any(|token| token.strip_prefix('~') == Some(id.as_str()))
}

/// Takes the key if it is vacant (or, with a stale id, names that id, keeping
/// the marks of replaced generations); else marks it joined and returns the id
/// it names.
static CLAIM: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
-- KEYS: request. ARGV: new id, ttl_ms, stale id (or '')
local held = redis.call('GET', KEYS[1])
local kept = ''
if held then
  local id = string.match(held, '^%S+')
  if id ~= ARGV[3] then
    if not string.find(held, '^%S+ joined') then
      redis.call('SET', KEYS[1], id .. ' joined' .. string.sub(held, #id + 1), 'KEEPTTL')
    end
    return id
  end
  for replaced in string.gmatch(held, ' ~%S+') do kept = kept .. replaced end
end
redis.call('SET', KEYS[1], ARGV[1] .. kept, 'PX', ARGV[2])
return false
",
    )
});

/// Takes the key whatever it names (a `fresh` start), keeping the marks of
/// the joined generations it replaces: the one it names, if joined, then those
/// already kept, ARGV[3] at most.
static FRESH: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
-- KEYS: request. ARGV: new id, ttl_ms, marks kept at most
local held = redis.call('GET', KEYS[1])
local value = ARGV[1]
if held then
  local kept, limit = {}, tonumber(ARGV[3])
  if string.find(held, '^%S+ joined') then kept[1] = ' ~' .. string.match(held, '^%S+') end
  for replaced in string.gmatch(held, ' ~%S+') do
    if #kept < limit then kept[#kept + 1] = replaced end
  end
  value = value .. table.concat(kept)
end
redis.call('SET', KEYS[1], value, 'PX', ARGV[2])
return 0
",
    )
});

/// Extends the key's expiry if it names ARGV[1].
static HOLD: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local held = redis.call('GET', KEYS[1])
if held and string.match(held, '^%S+') == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
",
    )
});

/// Deletes the key if it names ARGV[1].
static RELEASE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local held = redis.call('GET', KEYS[1])
if held and string.match(held, '^%S+') == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 0
",
    )
});

/// Makes the key name ARGV[2] instead of ARGV[1], if it still names ARGV[1];
/// else drops ARGV[1]'s mark as a replaced generation, if it has one.
static HAND_OVER: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
-- KEYS: request. ARGV: from, to, ttl_ms
local held = redis.call('GET', KEYS[1])
if not held then return 0 end
local id = string.match(held, '^%S+')
if id == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2] .. string.sub(held, #id + 1), 'PX', ARGV[3])
  return 1
end
local rest, found = '', false
for token in string.gmatch(string.sub(held, #id + 1), '%S+') do
  if token == '~' .. ARGV[1] then found = true else rest = rest .. ' ' .. token end
end
if found then redis.call('SET', KEYS[1], id .. rest, 'KEEPTTL') end
return 0
",
    )
});

fn millis(ttl: Duration) -> u64 {
    ttl.as_millis().clamp(1, u64::MAX as u128) as u64
}

#[async_trait]
impl RequestIndex for RedisStore {
    async fn claim_request(&self, key: &str, id: &StreamId, ttl: Duration, claim: Claim<'_>) -> Result<Option<StreamId>, StoreError> {
        let mut conn = self.shared.conn.clone();
        let name = self.shared.keys.request(key);
        let stale = match claim {
            Claim::Vacant => "",
            Claim::Replacing(stale) => stale.as_str(),
            Claim::Always => {
                FRESH
                    .key(&name)
                    .arg(id.as_str())
                    .arg(millis(ttl))
                    .arg(REPLACED_KEPT)
                    .invoke_async::<i64>(&mut conn)
                    .await
                    .map_err(unavailable)?;
                return Ok(None);
            }
        };
        let held: Option<String> =
            CLAIM.key(&name).arg(id.as_str()).arg(millis(ttl)).arg(stale).invoke_async(&mut conn).await.map_err(unavailable)?;
        held.map(|held| StreamId::parse(&held).ok_or_else(|| StoreError::Unavailable(format!("request key {name} holds no stream id"))))
            .transpose()
    }

    async fn hold_request(&self, key: &str, id: &StreamId, ttl: Duration) -> Result<(), StoreError> {
        let mut conn = self.shared.conn.clone();
        HOLD.key(self.shared.keys.request(key))
            .arg(id.as_str())
            .arg(millis(ttl))
            .invoke_async::<i64>(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn release_request(&self, key: &str, id: &StreamId) -> Result<(), StoreError> {
        let mut conn = self.shared.conn.clone();
        RELEASE.key(self.shared.keys.request(key)).arg(id.as_str()).invoke_async::<i64>(&mut conn).await.map_err(unavailable)?;
        Ok(())
    }

    async fn request_joined(&self, key: &str, id: &StreamId) -> Result<bool, StoreError> {
        let mut conn = self.shared.conn.clone();
        let held: Option<String> = conn.get(self.shared.keys.request(key)).await.map_err(unavailable)?;
        Ok(held.is_some_and(|held| joined_in(&held, id)))
    }

    async fn hand_over_request(&self, key: &str, from: &StreamId, to: &StreamId, ttl: Duration) -> Result<bool, StoreError> {
        let mut conn = self.shared.conn.clone();
        let handed: i64 = HAND_OVER
            .key(self.shared.keys.request(key))
            .arg(from.as_str())
            .arg(to.as_str())
            .arg(millis(ttl))
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(handed == 1)
    }
}

#[cfg(test)]
mod tests {
    use redis::AsyncCommands;

    use super::super::{RedisStoreConfig, RedisTarget};
    use super::*;

    /// Two processes of one deployment on the machine's Redis (`REDIS_URL`, default local).
    async fn pair() -> (RedisStore, RedisStore) {
        let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
        let prefix = format!("live-ai-test-{}", uuid::Uuid::new_v4().simple());
        let config = || RedisStoreConfig {
            prefix: prefix.clone(),
            retention: Duration::from_secs(60),
            grace: Duration::from_secs(30),
            generation_timeout: Duration::from_secs(600),
        };
        let target = RedisTarget::Node(url);
        let a = RedisStore::connect(&target, config()).await.expect("Redis runs for the tests");
        (a, RedisStore::connect(&target, config()).await.expect("Redis runs for the tests"))
    }

    fn id(name: &str) -> StreamId {
        StreamId::parse(name).unwrap()
    }

    const TTL: Duration = Duration::from_secs(60);

    #[tokio::test]
    async fn processes_agree_on_one_generation_per_request_and_only_its_own_holder_changes_it() {
        let (a, b) = pair().await;
        assert_eq!(a.claim_request("k", &id("g1"), TTL, Claim::Vacant).await.unwrap(), None);
        assert_eq!(b.claim_request("k", &id("g2"), TTL, Claim::Vacant).await.unwrap(), Some(id("g1")));
        assert_eq!(b.claim_request("k", &id("g2"), TTL, Claim::Replacing(&id("g0"))).await.unwrap(), Some(id("g1")));
        assert_eq!(b.claim_request("k", &id("g2"), TTL, Claim::Replacing(&id("g1"))).await.unwrap(), None);
        // g1's process learns late that its answer ended: it no longer names the key.
        a.release_request("k", &id("g1")).await.unwrap();
        a.hold_request("k", &id("g1"), Duration::from_millis(1)).await.unwrap();
        assert_eq!(a.claim_request("k", &id("g3"), TTL, Claim::Vacant).await.unwrap(), Some(id("g2")));
        assert_eq!(a.claim_request("k", &id("g3"), TTL, Claim::Always).await.unwrap(), None, "fresh");
        b.release_request("k", &id("g3")).await.unwrap();
        assert_eq!(a.claim_request("k", &id("g4"), TTL, Claim::Vacant).await.unwrap(), None, "released");
    }

    #[tokio::test]
    async fn a_fresh_claim_keeps_the_mark_of_the_joined_generation_it_replaced_until_that_one_is_handed_over() {
        let (a, b) = pair().await;
        a.claim_request("k", &id("g1"), TTL, Claim::Vacant).await.unwrap();
        b.claim_request("k", &id("g2"), TTL, Claim::Vacant).await.unwrap();
        b.claim_request("k", &id("f1"), TTL, Claim::Always).await.unwrap();
        assert!(a.request_joined("k", &id("g1")).await.unwrap(), "g1's joiners still read it");
        assert!(!a.request_joined("k", &id("f1")).await.unwrap());
        assert_eq!(b.claim_request("k", &id("g3"), TTL, Claim::Vacant).await.unwrap(), Some(id("f1")), "new starts get the fresh answer");
        assert!(b.request_joined("k", &id("f1")).await.unwrap() && a.request_joined("k", &id("g1")).await.unwrap(), "both marks");
        // A generation found unusable is replaced; the marks of those a fresh claim replaced stay.
        assert_eq!(b.claim_request("k", &id("r1"), TTL, Claim::Replacing(&id("f1"))).await.unwrap(), None);
        assert!(a.request_joined("k", &id("g1")).await.unwrap());
        assert!(!a.hand_over_request("k", &id("g1"), &id("s1"), TTL).await.unwrap(), "the key stays r1's");
        assert!(!a.request_joined("k", &id("g1")).await.unwrap(), "handed over once");
        assert_eq!(b.claim_request("k", &id("g4"), TTL, Claim::Vacant).await.unwrap(), Some(id("r1")));
        // The marks kept are bounded, the newest kept.
        for n in 0..REPLACED_KEPT + 2 {
            b.claim_request("k", &id("j"), TTL, Claim::Vacant).await.unwrap();
            b.claim_request("k", &id(&format!("f{}", n + 2)), TTL, Claim::Always).await.unwrap();
        }
        assert!(a.request_joined("k", &id(&format!("f{}", REPLACED_KEPT + 2))).await.unwrap());
        assert!(!a.request_joined("k", &id("r1")).await.unwrap(), "the oldest went");
        let held: String = a.shared.conn.clone().get(a.shared.keys.request("k")).await.unwrap();
        assert_eq!(held.matches(" ~").count(), REPLACED_KEPT, "{held}");
    }

    #[tokio::test]
    async fn a_start_given_the_held_generation_marks_it_joined_in_the_key_and_only_its_holder_hands_it_over() {
        let (a, b) = pair().await;
        a.claim_request("k", &id("g1"), TTL, Claim::Vacant).await.unwrap();
        assert!(!a.request_joined("k", &id("g1")).await.unwrap(), "claimed, not joined");
        assert_eq!(b.claim_request("k", &id("g2"), TTL, Claim::Vacant).await.unwrap(), Some(id("g1")));
        assert!(a.request_joined("k", &id("g1")).await.unwrap(), "joined through another process");
        let name = a.shared.keys.request("k");
        let left: i64 = a.shared.conn.clone().pttl(&name).await.unwrap();
        assert!(left > 0, "the mark keeps the key's expiry: {left}");
        assert_eq!(b.claim_request("k", &id("g3"), TTL, Claim::Vacant).await.unwrap(), Some(id("g1")), "a second join");
        a.hold_request("k", &id("g1"), Duration::from_secs(5)).await.unwrap();
        let left: i64 = a.shared.conn.clone().pttl(&name).await.unwrap();
        assert!(left > 0 && left <= 5000, "a joined key is held by its generation: {left}");
        assert!(!b.hand_over_request("k", &id("g0"), &id("s1"), TTL).await.unwrap(), "not g0's");
        assert!(a.hand_over_request("k", &id("g1"), &id("s1"), TTL).await.unwrap());
        assert_eq!(b.claim_request("k", &id("g4"), TTL, Claim::Vacant).await.unwrap(), Some(id("s1")), "the key names the new log");
        assert!(!a.request_joined("k", &id("g1")).await.unwrap(), "g1 no longer holds it");
        b.release_request("k", &id("s1")).await.unwrap();
        assert_eq!(a.claim_request("k", &id("g5"), TTL, Claim::Vacant).await.unwrap(), None, "a joined key is released by its generation");
        assert_eq!(a.claim_request("k", &id("g6"), TTL, Claim::Always).await.unwrap(), None);
        assert!(!a.request_joined("k", &id("g6")).await.unwrap(), "a fresh claim joins nothing");
    }

    #[tokio::test]
    async fn a_request_key_expires_by_itself_and_is_tagged_by_its_own_digest() {
        let (a, _) = pair().await;
        a.claim_request("abc", &id("g1"), TTL, Claim::Vacant).await.unwrap();
        let name = a.shared.keys.request("abc");
        assert!(name.ends_with(":request:{abc}"), "{name}");
        let left: i64 = a.shared.conn.clone().pttl(&name).await.unwrap();
        assert!(left > 0 && left <= TTL.as_millis() as i64, "{left}");
        a.hold_request("abc", &id("g1"), Duration::from_secs(5)).await.unwrap();
        let left: i64 = a.shared.conn.clone().pttl(&name).await.unwrap();
        assert!(left > 0 && left <= 5000, "held for the cache window: {left}");
    }
}
