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

/// A managed connection whose commands may take `response_timeout`.
pub async fn connect(client: redis::Client, response_timeout: Duration) -> redis::RedisResult<ConnectionManager> {
    let config = ConnectionManagerConfig::new()
        .set_response_timeout(Some(response_timeout))
        .set_connection_timeout(Some(COMMAND_TIMEOUT))
        .set_max_delay(RECONNECT_MAX_DELAY);
    ConnectionManager::new_with_config(client, config).await
}
