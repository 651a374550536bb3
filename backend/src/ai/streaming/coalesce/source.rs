//! Where a coalesced start gets its answer: its own stream's generation (its
//! claim took the request key for its own stream id), one already running
//! (join), or a finished, complete one (cache). Decided through the store's request index, so every
//! process agrees; a key naming a generation that cannot serve (it ended
//! without a complete answer, its log is gone, or its starter died before
//! creating it) is replaced, only if nobody replaced it first.

use std::time::Duration;

use futures::StreamExt;
use tokio::time::Instant;

use super::RequestKey;
use crate::ai::streaming::events::{EventType, StreamId};
use crate::ai::streaming::store::{Claim, EventStore, StoreError};

/// How long a claim may name a generation whose log does not exist yet (its
/// start is creating it) before it is taken for one whose start died.
const PENDING_CLAIM: Duration = Duration::from_secs(10);
/// How often a start looks again at a generation being created.
const PENDING_PAUSE: Duration = Duration::from_millis(20);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The key is ours: the caller's own stream generates the answer.
    Claimed(StreamId),
    /// A generation for the same request is running: its log is read from the start.
    Joined(StreamId),
    /// A complete answer to the same request, within the cache window.
    Cached(StreamId),
}

/// Finds the generation answering `key`, or claims it for `candidate` (with
/// `fresh`, always: the new answer replaces whatever was there). `live_ttl`
/// bounds how long the claim names a generation that never reports its end.
pub async fn find_or_claim(
    store: &dyn EventStore,
    key: &RequestKey,
    candidate: &StreamId,
    fresh: bool,
    live_ttl: Duration,
) -> Result<Source, StoreError> {
    let mut stale: Option<StreamId> = None;
    let deadline = Instant::now() + PENDING_CLAIM;
    loop {
        let claim = match (&stale, fresh) {
            (_, true) => Claim::Always,
            (Some(stale), false) => Claim::Replacing(stale),
            (None, false) => Claim::Vacant,
        };
        let Some(held) = store.claim_request(key.as_str(), candidate, live_ttl, claim).await? else {
            return Ok(Source::Claimed(candidate.clone()));
        };
        match store.status(&held).await {
            Ok(status) if !status.finished => return Ok(Source::Joined(held)),
            Ok(status) => {
                if ends_complete(store, &held, status.len).await? {
                    return Ok(Source::Cached(held));
                }
            }
            // Claimed, and its log is being created: wait for it.
            Err(StoreError::NotFound(_)) if Instant::now() < deadline => {
                tokio::time::sleep(PENDING_PAUSE).await;
                continue;
            }
            Err(StoreError::NotFound(_) | StoreError::Expired { .. }) => {}
            Err(other) => return Err(other),
        }
        stale = Some(held);
    }
}

/// Whether the finished log of `id` (`len` events) ends with `complete`.
async fn ends_complete(store: &dyn EventStore, id: &StreamId, len: u64) -> Result<bool, StoreError> {
    let mut last = store.follow(id, len.checked_sub(2));
    match last.next().await {
        Some(Ok(batch)) => Ok(batch.events.last().is_some_and(|event| event.event_type == EventType::Complete)),
        Some(Err(error)) if error.cause == crate::ai::streaming::store::FollowFailure::Unreachable => {
            Err(StoreError::Unavailable(format!("could not read the end of shared generation {id}")))
        }
        // Gone since: not an answer to serve.
        Some(Err(_)) | None => Ok(false),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::ai::blocks::{BlockInput, BlockType};
    use crate::ai::streaming::events::{CancelReason, EventBody, EventRecord, FinishReason, Usage};
    use crate::ai::streaming::store::memory::MemoryStore;

    fn store() -> Arc<MemoryStore> {
        Arc::new(MemoryStore::new(Duration::from_secs(300), 1 << 20, prometheus::IntGauge::new("retained", "test").unwrap()))
    }

    fn key() -> RequestKey {
        let input = BlockInput::parse(BlockType::ExplainEli10, serde_json::json!({"topic": "tides"}).as_object().unwrap()).unwrap();
        let provider = crate::ai::providers::demo::DemoProvider::new(crate::config::settings::DemoSettings::unpaced());
        RequestKey::of("principal:jwt:ada", &input, &provider).unwrap()
    }

    fn id(name: &str) -> StreamId {
        StreamId::parse(name).unwrap()
    }

    const TTL: Duration = Duration::from_secs(60);

    /// A shared log with one chunk, and its writer.
    async fn running(store: &MemoryStore, name: &str) -> Box<dyn crate::ai::streaming::store::Appender> {
        let appender = store.create(&id(name), super::super::SHARED_OWNER, CancellationToken::new()).await.unwrap();
        appender.append(0, &EventRecord::new(&EventBody::Chunk { token: "hi".into() })).await.unwrap();
        appender
    }

    fn complete() -> EventBody {
        EventBody::Complete {
            finish_reason: FinishReason::Stop,
            usage: Usage::default(),
            result: serde_json::json!({"markdown": "hi"}),
            ttft_ms: 0,
            duration_ms: 0,
        }
    }

    #[tokio::test]
    async fn a_running_generation_is_joined_and_a_complete_one_served_from_cache() {
        let (store, key) = (store(), key());
        assert_eq!(find_or_claim(store.as_ref(), &key, &id("g1"), false, TTL).await.unwrap(), Source::Claimed(id("g1")));
        let g1 = running(&store, "g1").await;
        assert_eq!(find_or_claim(store.as_ref(), &key, &id("g2"), false, TTL).await.unwrap(), Source::Joined(id("g1")));
        g1.append(1, &EventRecord::new(&complete())).await.unwrap();
        assert_eq!(find_or_claim(store.as_ref(), &key, &id("g3"), false, TTL).await.unwrap(), Source::Cached(id("g1")));
        assert_eq!(find_or_claim(store.as_ref(), &key, &id("g4"), true, TTL).await.unwrap(), Source::Claimed(id("g4")), "fresh");
    }

    #[tokio::test]
    async fn an_answer_that_did_not_complete_is_replaced() {
        let (store, key) = (store(), key());
        find_or_claim(store.as_ref(), &key, &id("g1"), false, TTL).await.unwrap();
        let g1 = running(&store, "g1").await;
        g1.append(1, &EventRecord::new(&EventBody::Cancelled { reason: CancelReason::Abandoned })).await.unwrap();
        assert_eq!(find_or_claim(store.as_ref(), &key, &id("g2"), false, TTL).await.unwrap(), Source::Claimed(id("g2")));
    }
}
