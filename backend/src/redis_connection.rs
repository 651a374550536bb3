//! How every Redis connection of `live-ai` behaves: each command has a timeout,
//! so a Redis that stops answering is an error within seconds, never a hang; and
//! reconnection attempts stay frequent, so the process is back soon after Redis.
//! The event store's append connection to one node speaks RESP itself
//! (`store/redis/wire.rs`) and keeps the same command timeout.
//!
//! Redis is one node (`REDIS_URL`) or a cluster (`REDIS_CLUSTER_URLS`, its seed
//! nodes): [`RedisConn`] is either, behind redis-rs's `ConnectionLike`, so every
//! command, script and same-slot pipeline is written once. In a cluster redis-rs
//! routes each by its key's slot and follows `MOVED`/`ASK` and topology changes;
//! a pipeline must stay within one slot (one stream's keys share a hash tag).

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{Cmd, Pipeline, RedisFuture, Value};

/// Where Redis is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisTarget {
    /// One node (`REDIS_URL`).
    Node(String),
    /// A Redis Cluster, by some of its nodes (`REDIS_CLUSTER_URLS`).
    Cluster(Vec<String>),
}

impl RedisTarget {
    /// The variable that named it, for messages.
    pub fn variable(&self) -> &'static str {
        match self {
            Self::Node(_) => "REDIS_URL",
            Self::Cluster(_) => "REDIS_CLUSTER_URLS",
        }
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }

    /// The command that publishes on a channel: sharded pub/sub in a cluster,
    /// so a message goes to the node of its channel's slot, not to every node.
    pub fn publish_command(&self) -> &'static str {
        match self {
            Self::Node(_) => "PUBLISH",
            Self::Cluster(_) => "SPUBLISH",
        }
    }
}

/// A connection to one node or to a cluster; cheap to clone (both multiplex).
#[derive(Clone)]
pub enum RedisConn {
    Node(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Node(conn) => conn.req_packed_command(cmd),
            Self::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(&'a mut self, pipeline: &'a Pipeline, offset: usize, count: usize) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Node(conn) => conn.req_packed_commands(pipeline, offset, count),
            Self::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Node(conn) => conn.get_db(),
            Self::Cluster(conn) => conn.get_db(),
        }
    }
}

/// Connects to `target`, checking the server is new enough.
pub async fn open(target: &RedisTarget, response_timeout: Duration) -> redis::RedisResult<RedisConn> {
    match target {
        RedisTarget::Node(url) => Ok(RedisConn::Node(connect(redis::Client::open(url.as_str())?, response_timeout).await?)),
        RedisTarget::Cluster(urls) => {
            let mut conn = cluster_client(urls, None)?.get_async_connection().await?;
            let random = RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random);
            let info = conn.route_command(redis::cmd("INFO").arg("server").clone(), random).await?;
            check_version(&redis::from_redis_value::<String>(info)?)?;
            Ok(RedisConn::Cluster(conn))
        }
    }
}

/// A client of the cluster at `urls`, with the command timeout of every
/// connection; `push` receives what nodes push (RESP3: sharded pub/sub).
pub fn cluster_client(
    urls: &[String],
    push: Option<tokio::sync::mpsc::UnboundedSender<redis::PushInfo>>,
) -> redis::RedisResult<redis::cluster::ClusterClient> {
    let mut builder = redis::cluster::ClusterClientBuilder::new(urls.to_vec())
        .connection_timeout(COMMAND_TIMEOUT)
        .response_timeout(COMMAND_TIMEOUT)
        // Each request retries over redirections and failovers for a few seconds at most.
        .retries(6)
        .min_retry_wait(50)
        .max_retry_wait(500);
    if let Some(push) = push {
        builder = builder.use_protocol(redis::ProtocolVersion::RESP3).push_sender(push);
    }
    builder.build()
}

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
