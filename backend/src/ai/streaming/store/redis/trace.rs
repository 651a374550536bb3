//! The generator's `traceparent`, kept in the stream's meta hash (field
//! `traceparent`), so a reader in another process links its span to the
//! generation's. Written once per traced generation, read once per traced resume
//! elsewhere; never when tracing is off. The write never creates the meta: a
//! stream already gone stays gone.

use std::sync::LazyLock;

use super::{unavailable, Shared};
use crate::ai::streaming::events::StreamId;
use crate::ai::streaming::store::StoreError;

const FIELD: &str = "traceparent";

static SET_IF_LIVE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new("if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end return 0")
});

pub(super) async fn set(shared: &Shared, id: &StreamId, traceparent: &str) -> Result<(), StoreError> {
    let mut conn = shared.conn.clone();
    let _: i64 = SET_IF_LIVE.key(shared.keys.meta(id)).arg(FIELD).arg(traceparent).invoke_async(&mut conn).await.map_err(unavailable)?;
    Ok(())
}

pub(super) async fn get(shared: &Shared, id: &StreamId) -> Result<Option<String>, StoreError> {
    let mut conn = shared.conn.clone();
    redis::cmd("HGET").arg(shared.keys.meta(id)).arg(FIELD).query_async(&mut conn).await.map_err(unavailable)
}
