//! The one Redis-side decision that needs atomicity: ending a log. Ordinary events
//! are plain `XADD`s at an explicit entry id (one command per event; Redis refuses
//! an id at or below the top, which fences a writer whose log someone else ended).
//! The first event checks that the log was created (and sets its expiry); ending
//! a log checks and writes several keys at once. Each is one Lua script; the
//! ending one has two modes:
//! - `owner`: the generator appends its terminal event at its seq;
//! - `orphan`: anyone may end a log that no process holds a lease on (its
//!   generator died), at whatever seq is next — a reader declaring the generation
//!   lost, or a cancel of an orphaned stream.
//!
//! A terminal event that retracts its stream (async moderation flagged it)
//! redacts the log in the same script: the log is rebuilt with only its first
//! event (`start`) before the terminal one is added, so no `XRANGE` ever sees
//! the retracted events again (a rebuilt stream, not `XDEL`: deleted entries
//! would linger in the stream's memory until their whole node goes).

use crate::ai::streaming::events::EventRecord;

const FINISH: &str = r#"
-- KEYS: log, meta, lease. ARGV: mode, seq, type, fields, retention_ms, tombstone_ms, retract
if ARGV[1] == 'orphan' and redis.call('EXISTS', KEYS[3]) == 1 then return {1, 0} end
local meta = redis.call('HMGET', KEYS[2], 'state', 'len')
if not meta[1] then return {-1, 0} end
local len = 0
local top = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if #top > 0 then
  len = tonumber(string.match(top[1][1], '^%d+')) + 1
  local t = top[1][2][2]
  if t == 'error' or t == 'complete' or t == 'cancelled' then return {2, len} end
elseif meta[1] == 'finished' then
  -- A finished log whose retention ran out: its meta outlives it, with its length.
  return {-2, tonumber(meta[2])}
end
if ARGV[1] == 'owner' and tonumber(ARGV[2]) ~= len then return {-3, len} end
if ARGV[7] == '1' and len > 1 then
  local first = redis.call('XRANGE', KEYS[1], '0-1', '0-1')
  redis.call('DEL', KEYS[1])
  if #first > 0 then redis.call('XADD', KEYS[1], '0-1', unpack(first[1][2])) end
end
redis.call('XADD', KEYS[1], len .. '-1', 't', ARGV[3], 'j', ARGV[4])
-- Nothing follows a terminal event: every later XADD now finds its id too small.
redis.call('XSETID', KEYS[1], '18446744073709551615-0')
redis.call('PEXPIRE', KEYS[1], ARGV[5])
redis.call('HSET', KEYS[2], 'state', 'finished', 'len', len + 1)
redis.call('PEXPIRE', KEYS[2], ARGV[6])
redis.call('DEL', KEYS[3])
return {0, len + 1}
"#;

const FIRST: &str = r#"
-- KEYS: log, meta. ARGV: type, fields, live_ttl_ms
if redis.call('EXISTS', KEYS[2]) == 0 then return -1 end
-- A log that exists has an entry at 0-1 or later (an ended one, at the top id):
-- the XADD is refused.
local added = redis.pcall('XADD', KEYS[1], '0-1', 't', ARGV[1], 'j', ARGV[2])
if type(added) == 'table' and added.err then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"#;

const MARK_CANCEL: &str = r#"
-- KEYS: meta, lease. Marks a cancel on a stream some process generates.
if redis.call('EXISTS', KEYS[2]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'cancel', 1)
return 1
"#;

/// What the first-event script did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum First {
    Appended,
    /// The log has events already (a retry, or a bug).
    Taken,
    /// No such stream.
    Unknown,
}

/// What the finishing script did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// Appended; the log now holds `len` events.
    Appended { len: u64 },
    /// The log already ended; it holds `len` events.
    AlreadyFinished { len: u64 },
    /// `orphan` mode: a process holds the lease, so nothing was written.
    Leased,
    /// `owner` mode: the log's length is `len`, not the given seq.
    OutOfOrder { len: u64 },
    /// The log ended with `len` events and its retention has run out.
    Expired { len: u64 },
    /// No such stream.
    Unknown,
}

pub struct Scripts {
    first: redis::Script,
    finish: redis::Script,
    mark_cancel: redis::Script,
}

impl Default for Scripts {
    fn default() -> Self {
        Self { first: redis::Script::new(FIRST), finish: redis::Script::new(FINISH), mark_cancel: redis::Script::new(MARK_CANCEL) }
    }
}

/// Where and how long a finished log is kept.
pub struct FinishTarget<'a> {
    pub log: &'a str,
    pub meta: &'a str,
    pub lease: &'a str,
    pub retention_ms: u64,
    pub tombstone_ms: u64,
}

impl Scripts {
    /// Marks a cancel on a stream whose generator holds its lease; `false` when
    /// no process does (nothing was marked).
    pub async fn mark_cancel(&self, conn: &mut crate::redis_connection::RedisConn, meta: &str, lease: &str) -> redis::RedisResult<bool> {
        let marked: i64 = self.mark_cancel.key(meta).key(lease).invoke_async(conn).await?;
        Ok(marked == 1)
    }

    /// Appends `record` as the log's first event (seq 0).
    pub async fn first(
        &self,
        conn: &mut crate::redis_connection::RedisConn,
        log: &str,
        meta: &str,
        live_ttl_ms: u64,
        record: &EventRecord,
    ) -> redis::RedisResult<First> {
        let code: i64 = self
            .first
            .key(log)
            .key(meta)
            .arg(record.event_type.as_str())
            .arg(&record.fields[..])
            .arg(live_ttl_ms)
            .invoke_async(conn)
            .await?;
        Ok(match code {
            1 => First::Appended,
            0 => First::Taken,
            _ => First::Unknown,
        })
    }

    /// Appends `record` as the log's terminal event: at `seq` as its generator
    /// (`Some(seq)`), or at the next seq of an orphaned log (`None`); a
    /// retracting one redacts the log.
    pub async fn finish(
        &self,
        conn: &mut crate::redis_connection::RedisConn,
        target: FinishTarget<'_>,
        seq: Option<u64>,
        record: &EventRecord,
    ) -> redis::RedisResult<Finish> {
        let (code, len): (i64, u64) = self
            .finish
            .key(target.log)
            .key(target.meta)
            .key(target.lease)
            .arg(if seq.is_some() { "owner" } else { "orphan" })
            .arg(seq.unwrap_or(0))
            .arg(record.event_type.as_str())
            .arg(&record.fields[..])
            .arg(target.retention_ms.max(1))
            .arg(target.tombstone_ms.max(1))
            .arg(if record.retracts() { "1" } else { "0" })
            .invoke_async(conn)
            .await?;
        Ok(match code {
            0 => Finish::Appended { len },
            1 => Finish::Leased,
            2 => Finish::AlreadyFinished { len },
            -3 => Finish::OutOfOrder { len },
            -2 => Finish::Expired { len },
            _ => Finish::Unknown,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_the_scripts_touch_is_declared() {
        for script in [FIRST, FINISH, MARK_CANCEL] {
            assert_eq!(crate::redis_connection::undeclared_keys(script), Vec::<String>::new(), "{script}");
        }
    }
}
