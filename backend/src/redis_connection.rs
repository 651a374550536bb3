//! How every Redis connection of `live-ai` behaves: each command has a timeout,
//! so a Redis that stops answering is an error within seconds, never a hang; and
//! reconnection attempts stay frequent, so the process is back soon after Redis.
//! The event store's append connection speaks RESP itself (`store/redis/wire.rs`)
//! and keeps the same command timeout.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

/// Bound on every Redis command (a blocking command gets its block on top).
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest pause between reconnection attempts.
const RECONNECT_MAX_DELAY: Duration = Duration::from_millis(500);

/// A managed connection whose commands may take `response_timeout`, to a Redis
/// new enough (see [`MIN_VERSION`]).
pub async fn connect(client: redis::Client, response_timeout: Duration) -> redis::RedisResult<ConnectionManager> {
    let config = ConnectionManagerConfig::new()
        .set_response_timeout(Some(response_timeout))
        .set_connection_timeout(Some(COMMAND_TIMEOUT))
        .set_max_delay(RECONNECT_MAX_DELAY);
    let mut conn = ConnectionManager::new_with_config(client, config).await?;
    let info: String = redis::cmd("INFO").arg("server").query_async(&mut conn).await?;
    check_version(&info)?;
    Ok(conn)
}

/// The oldest Redis `live-ai` runs on: 7.0 brought `SET … NX GET` (idempotency
/// keys) and sharded pub/sub (Redis Cluster).
pub const MIN_VERSION: (u32, u32) = (7, 0);

/// Refuses a server older than [`MIN_VERSION`], by the `redis_version` line of
/// its `INFO server` (Valkey reports the Redis version it matches there too).
pub fn check_version(info: &str) -> redis::RedisResult<()> {
    let version = info.lines().find_map(|line| line.trim().strip_prefix("redis_version:")).unwrap_or("unknown");
    let mut numbers = version.split('.').map(|n| n.parse::<u32>().ok());
    let found = (numbers.next().flatten(), numbers.next().flatten());
    match found {
        (Some(major), Some(minor)) if (major, minor) >= MIN_VERSION => Ok(()),
        _ => Err(redis::RedisError::from((
            redis::ErrorKind::Client,
            "Redis 7.0 or newer is required",
            format!("this server is Redis {version}"),
        ))),
    }
}

/// The calls of a Lua script whose key is not one of its declared `KEYS`
/// (Redis Cluster routes a script by the keys it declares; a key made up inside
/// the script may live on another node). A lint for the tests of every script.
#[cfg(test)]
pub fn undeclared_keys(script: &str) -> Vec<String> {
    /// Commands that take no key.
    const KEYLESS: &[&str] = &["TIME", "PUBLISH", "SPUBLISH"];
    let mut found = Vec::new();
    for (at, _) in script.match_indices("redis.call(").chain(script.match_indices("redis.pcall(")) {
        let args = &script[at..];
        let args = &args[args.find('(').unwrap() + 1..];
        let mut depth = 0;
        let mut parts = vec![String::new()];
        for c in args.chars() {
            match c {
                '(' | '{' | '[' => depth += 1,
                ')' | '}' | ']' if depth == 0 => break,
                ')' | '}' | ']' => depth -= 1,
                ',' if depth == 0 => {
                    parts.push(String::new());
                    continue;
                }
                _ => {}
            }
            parts.last_mut().unwrap().push(c);
        }
        let command = parts[0].trim().trim_matches('\'').trim_matches('"').to_ascii_uppercase();
        if KEYLESS.contains(&command.as_str()) {
            continue;
        }
        let key = parts.get(1).map(|k| k.trim()).unwrap_or_default();
        let declared = key.strip_prefix("KEYS[").and_then(|k| k.strip_suffix(']')).is_some_and(|n| n.parse::<u32>().is_ok());
        if !declared {
            found.push(format!("{command} {key}"));
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_redis_older_than_7_0_is_refused_by_name() {
        for ok in ["redis_version:7.0.15", "# Server\r\nredis_version:7.2.4\r\nredis_mode:standalone", "redis_version:10.1.0"] {
            assert!(check_version(ok).is_ok(), "{ok}");
        }
        for old in ["redis_version:6.2.14", "redis_version:5.0.7", "nothing"] {
            let refused = check_version(old).unwrap_err().to_string();
            assert!(refused.contains("Redis 7.0 or newer is required"), "{refused}");
        }
        assert!(check_version("redis_version:6.2.14").unwrap_err().to_string().contains("6.2.14"));
    }

    #[test]
    fn a_key_made_up_inside_a_script_is_found() {
        let script = "redis.call('TIME') redis.call('HGET', KEYS[2], 'f') redis.call('HINCRBY', ARGV[7] .. day, 'x', 1)";
        assert_eq!(undeclared_keys(script), ["HINCRBY ARGV[7] .. day"]);
    }
}
