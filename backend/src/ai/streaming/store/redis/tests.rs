//! The Redis store against the machine's Redis (`REDIS_URL`, default local); each
//! test has a key prefix of its own, and two stores on one prefix are two
//! processes of one deployment.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use redis::AsyncCommands;

use super::*;
use crate::ai::streaming::events::{ErrorCode, EventType};
use crate::ai::streaming::store::{FollowError, FollowFailure};

const PATIENCE: Duration = Duration::from_secs(15);

fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

fn config(prefix: &str, grace: Duration) -> RedisStoreConfig {
    RedisStoreConfig { prefix: prefix.into(), retention: Duration::from_secs(60), grace, generation_timeout: Duration::from_secs(600) }
}

async fn store_on(prefix: &str, grace: Duration) -> RedisStore {
    RedisStore::connect(&RedisTarget::Node(redis_url()), config(prefix, grace)).await.expect("Redis runs for the tests")
}

/// Two processes of one deployment.
async fn pair() -> (RedisStore, RedisStore) {
    let prefix = format!("live-ai-test-{}", uuid::Uuid::new_v4().simple());
    (store_on(&prefix, Duration::from_secs(30)).await, store_on(&prefix, Duration::from_secs(30)).await)
}

fn chunk(n: u64) -> EventRecord {
    EventRecord::new(&EventBody::Chunk { token: format!("t{n} ") })
}

fn end() -> EventRecord {
    EventRecord::new(&EventBody::Cancelled { reason: CancelReason::Requested })
}

async fn raw(store: &RedisStore) -> RedisConn {
    store.shared.conn.clone()
}

/// Everything a follower yields until it ends.
async fn drain(follower: Follower) -> (Vec<LoggedEvent>, Option<FollowError>) {
    let items: Vec<_> = tokio::time::timeout(PATIENCE, follower.collect::<Vec<_>>()).await.expect("the follower ends");
    let mut events = Vec::new();
    for item in items {
        match item {
            Ok(batch) => events.extend(batch.events),
            Err(error) => return (events, Some(error)),
        }
    }
    (events, None)
}

#[tokio::test]
async fn appends_are_contiguous_retries_are_recognised_and_nothing_follows_the_end() {
    let (store, _) = pair().await;
    let id = StreamId::generate();
    let log = store.create(&id, "owner", CancellationToken::new()).await.unwrap();
    log.append(0, &chunk(0)).await.unwrap();
    log.append(0, &chunk(0)).await.unwrap();
    log.append(1, &chunk(1)).await.unwrap();
    assert!(
        matches!(log.append(1, &chunk(9)).await, Err(StoreError::OutOfOrder { expected: 2, got: 1, .. })),
        "another event at a taken seq is refused"
    );
    assert!(matches!(log.append(3, &end()).await, Err(StoreError::OutOfOrder { expected: 2, .. })));
    log.append(2, &end()).await.unwrap();
    log.append(2, &end()).await.unwrap();
    assert!(matches!(log.append(3, &chunk(3)).await, Err(StoreError::Finished(_)) | Err(StoreError::OutOfOrder { .. })));
    assert!(matches!(log.append(3, &end()).await, Err(StoreError::Finished(_))));
    assert_eq!(store.status(&id).await.unwrap(), LogStatus { len: 3, finished: true, owner: "owner".into() });
    let lease: Option<String> = raw(&store).await.get(store.shared.keys.lease(&id)).await.unwrap();
    assert_eq!(lease, None, "a finished stream has no lease");
    assert!(!store.shared.holds_lease(&id));
}

#[tokio::test]
async fn a_follower_in_another_process_gets_history_then_the_live_tail() {
    let (writer, reader) = pair().await;
    let id = StreamId::generate();
    let log = writer.create(&id, "owner", CancellationToken::new()).await.unwrap();
    for seq in 0..3 {
        log.append(seq, &chunk(seq)).await.unwrap();
    }
    let from_one = reader.follow(&id, Some(0));
    let mut live = reader.follow(&id, Some(2));
    // The second follower made the mirror start at 3; the first reads 1..=2 from history.
    for seq in 3..6 {
        log.append(seq, &chunk(seq)).await.unwrap();
    }
    let first = tokio::time::timeout(PATIENCE, live.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(first.events[0].seq, 3);
    assert_eq!(first.events[0].fields, chunk(3).fields);
    log.append(6, &end()).await.unwrap();
    let (events, failure) = drain(from_one).await;
    assert_eq!(failure, None);
    assert_eq!(events.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2, 3, 4, 5, 6]);
    assert_eq!(events.last().unwrap().event_type, EventType::Cancelled);
}

fn retraction() -> EventRecord {
    let mut body = EventBody::error(ErrorCode::OutputFlagged, "flagged", false);
    if let EventBody::Error { retract, .. } = &mut body {
        *retract = true;
    }
    EventRecord::new(&body)
}

#[tokio::test]
async fn a_retraction_leaves_only_the_first_and_the_terminal_event_in_redis_and_in_every_mirror() {
    let (writer, reader) = pair().await;
    let id = StreamId::generate();
    let log = writer.create(&id, "owner", CancellationToken::new()).await.unwrap();
    for seq in 0..5 {
        log.append(seq, &chunk(seq)).await.unwrap();
    }
    // Readers on the other process: one at the tail, one behind it, one from the start.
    let mut at_tail = reader.follow(&id, Some(4));
    let behind = reader.follow(&id, Some(1));
    let from_start = reader.follow(&id, None);
    log.append(5, &chunk(5)).await.unwrap();
    let first = tokio::time::timeout(PATIENCE, at_tail.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(first.events[0].seq, 5);
    log.append(6, &retraction()).await.unwrap();
    let (rest, failure) = drain(at_tail).await;
    assert_eq!((rest.iter().map(|e| e.seq).collect::<Vec<_>>(), failure), (vec![6], None));
    // What the readers had not read yet is gone, even from the mirror they share.
    for (follower, expected) in [(behind, vec![2, 3, 4, 5, 6]), (from_start, vec![0, 1, 2, 3, 4, 5, 6])] {
        let (events, failure) = drain(follower).await;
        assert_eq!(failure, None);
        let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
        assert!(seqs.ends_with(&[6]) && seqs.iter().all(|s| expected.contains(s)), "{seqs:?}");
    }
    // Later replays, on either process, and Redis itself hold only start and the terminal event.
    for store in [&writer, &reader] {
        let (events, failure) = drain(store.follow(&id, None)).await;
        assert_eq!(failure, None);
        assert_eq!(events.iter().map(|e| e.seq).collect::<Vec<_>>(), [0, 6]);
        assert_eq!(events[1].fields, retraction().fields);
        let (events, _) = drain(store.follow(&id, Some(2))).await;
        assert_eq!(events.iter().map(|e| e.seq).collect::<Vec<_>>(), [6]);
    }
    let entries: usize = raw(&writer).await.xlen(writer.shared.keys.log(&id)).await.unwrap();
    assert_eq!(entries, 2);
    assert_eq!(writer.status(&id).await.unwrap(), LogStatus { len: 7, finished: true, owner: "owner".into() });
}

#[tokio::test]
async fn events_whose_announcements_were_lost_still_reach_reader_presence() {
    let (writer, reader) = pair().await;
    let id = StreamId::generate();
    let log = writer.create(&id, "owner", CancellationToken::new()).await.unwrap();
    log.append(0, &chunk(0)).await.unwrap();
    let mut follower = reader.follow(&id, None);
    let first = tokio::time::timeout(PATIENCE, follower.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(first.events.iter().map(|e| e.seq).collect::<Vec<_>>(), [0]);
    // Seq 1 lands without an announcement (as if pub/sub dropped it): the
    // announcement of 2 shows the gap, and the reader reads 1 from the log.
    let _: String = redis::cmd("XADD")
        .arg(writer.shared.keys.log(&id))
        .arg(entry_id(1))
        .arg("t")
        .arg("chunk")
        .arg("j")
        .arg(&chunk(1).fields[..])
        .query_async(&mut raw(&writer).await)
        .await
        .unwrap();
    log.append(2, &chunk(2)).await.unwrap();
    let mut seen = Vec::new();
    while seen.last() != Some(&2) {
        let batch = tokio::time::timeout(PATIENCE, follower.next()).await.unwrap().unwrap().unwrap();
        seen.extend(batch.events.iter().map(|e| e.seq));
    }
    assert_eq!(seen, [1, 2]);
    // The terminal event too, with nothing after it: the reader finds it when the
    // log has been silent a while.
    let (log_key, meta, lease) = (writer.shared.keys.log(&id), writer.shared.keys.meta(&id), writer.shared.keys.lease(&id));
    let target = FinishTarget { log: &log_key, meta: &meta, lease: &lease, retention_ms: 60_000, tombstone_ms: 60_000 };
    let finished = writer.shared.scripts.finish(&mut raw(&writer).await, target, Some(3), &end()).await.unwrap();
    assert_eq!(finished, Finish::Appended { len: 4 });
    let (events, failure) = drain(follower).await;
    assert_eq!(failure, None);
    assert_eq!(events.iter().map(|e| e.seq).collect::<Vec<_>>(), [3]);
}

#[tokio::test]
async fn a_reader_that_attaches_while_the_subscription_is_down_follows_the_log_while_redis_answers() {
    let (writer, reader) = pair().await;
    // Down for longer than the outage limit, while Redis answers commands (as
    // after a Redis restart, before the subscription's next attempt).
    reader.tails.lost_subscription_at(tokio::time::Instant::now() - tail::OUTAGE_LIMIT * 2);
    let id = StreamId::generate();
    let log = writer.create(&id, "owner", CancellationToken::new()).await.unwrap();
    let mut follower = reader.follow(&id, None);
    log.append(0, &chunk(0)).await.unwrap();
    let first = tokio::time::timeout(PATIENCE, follower.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(first.events[0].seq, 0);
    // The mirror is watched over a few times while the subscription is down.
    tokio::time::sleep(tail::WATCH_INTERVAL * 3).await;
    for seq in 1..3 {
        log.append(seq, &chunk(seq)).await.unwrap();
    }
    log.append(3, &end()).await.unwrap();
    let (events, failure) = drain(follower).await;
    assert_eq!(failure, None, "Redis answers: the reader must not be told it is unreachable");
    assert_eq!(events.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2, 3]);
}

#[tokio::test]
async fn status_tells_live_finished_expired_and_unknown_logs_apart() {
    let (store, _) = pair().await;
    let id = StreamId::generate();
    assert!(matches!(store.status(&id).await, Err(StoreError::NotFound(_))));
    let log = store.create(&id, "owner", CancellationToken::new()).await.unwrap();
    assert_eq!(store.status(&id).await.unwrap(), LogStatus { len: 0, finished: false, owner: "owner".into() });
    log.append(0, &chunk(0)).await.unwrap();
    log.append(1, &end()).await.unwrap();
    assert_eq!(store.status(&id).await.unwrap(), LogStatus { len: 2, finished: true, owner: "owner".into() });
    // Retention over: the log goes, its length stays.
    raw(&store).await.del::<_, ()>(store.shared.keys.log(&id)).await.unwrap();
    assert!(matches!(store.status(&id).await, Err(StoreError::Expired { len: 2, .. })));
}

#[tokio::test]
async fn a_silent_log_whose_generator_died_ends_generation_lost_for_its_readers() {
    let (generator, reader) = pair().await;
    let id = StreamId::generate();
    let log = generator.create(&id, "owner", CancellationToken::new()).await.unwrap();
    log.append(0, &chunk(0)).await.unwrap();
    // The generating process dies: it stops renewing, and its lease lapses.
    generator.release(&id);
    raw(&generator).await.del::<_, ()>(generator.shared.keys.lease(&id)).await.unwrap();
    let (events, failure) = drain(reader.follow(&id, None)).await;
    assert_eq!(failure, None);
    assert_eq!(events.iter().map(|e| e.seq).collect::<Vec<_>>(), [0, 1]);
    let lost: serde_json::Value = serde_json::from_slice(&events[1].json(&id)).unwrap();
    assert_eq!((lost["code"].as_str(), lost["retryable"].as_bool()), (Some(ErrorCode::GenerationLost.as_str()), Some(true)));
    assert!(matches!(log.append(1, &chunk(1)).await, Err(StoreError::Finished(_))), "the old generator is fenced");
}

#[tokio::test]
async fn a_process_never_declares_its_own_running_generation_lost() {
    let (store, _) = pair().await;
    let id = StreamId::generate();
    let log = store.create(&id, "owner", CancellationToken::new()).await.unwrap();
    log.append(0, &chunk(0)).await.unwrap();
    // A stall longer than the lease: it lapses although the generation runs here.
    raw(&store).await.del::<_, ()>(store.shared.keys.lease(&id)).await.unwrap();
    let mut follower = store.follow(&id, Some(0));
    // Long enough for the silence check to run more than once, and the lease to be re-taken.
    let waited = tokio::time::timeout(tail::SILENCE * 3, follower.next()).await;
    assert!(waited.is_err(), "no event: the stream is still live");
    let lease: Option<String> = raw(&store).await.get(store.shared.keys.lease(&id)).await.unwrap();
    assert_eq!(lease.as_deref(), Some(store.shared.owner.as_str()), "the renewal re-took the lapsed lease");
    log.append(1, &chunk(1)).await.unwrap();
    let next = tokio::time::timeout(PATIENCE, follower.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(next.events[0].seq, 1);
}

#[tokio::test]
async fn a_cancel_reaches_the_generating_process_by_message() {
    let (generator, other) = pair().await;
    let id = StreamId::generate();
    let cancel = CancellationToken::new();
    let _log = generator.create(&id, "owner", cancel.clone()).await.unwrap();
    other.request_cancel(&id).await.unwrap();
    tokio::time::timeout(PATIENCE, cancel.cancelled()).await.expect("the generation is told");
}

#[tokio::test]
async fn a_cancel_whose_message_was_lost_reaches_the_generator_at_its_next_renewal_and_renewals_keep_the_mark() {
    let (generator, other) = pair().await;
    let id = StreamId::generate();
    let cancel = CancellationToken::new();
    let _log = generator.create(&id, "owner", cancel.clone()).await.unwrap();
    // The mark alone, as if the message had been lost.
    let (meta, lease) = (other.shared.keys.meta(&id), other.shared.keys.lease(&id));
    assert!(other.shared.scripts.mark_cancel(&mut raw(&other).await, &meta, &lease).await.unwrap());
    tokio::time::timeout(PATIENCE, cancel.cancelled()).await.expect("the renewal finds the mark");
    // Renewals go on while the generation winds down; they never clear the mark,
    // so a renewal whose reply was lost would find it again.
    tokio::time::sleep(upkeep::INTERVAL * 2).await;
    let mark: Option<String> = raw(&generator).await.hget(&meta, "cancel").await.unwrap();
    assert_eq!(mark.as_deref(), Some("1"));
    let holder: Option<String> = raw(&generator).await.get(&lease).await.unwrap();
    assert_eq!(holder.as_deref(), Some(generator.shared.owner.as_str()), "the lease is still its generator's");
}

#[tokio::test]
async fn a_burst_of_cancels_from_another_process_reaches_every_generation() {
    // More than any bounded queue of cancel requests held (the old broadcast channel
    // held 1,024 and dropped the rest when its reader lagged).
    const STREAMS: usize = 1_100;
    let (generator, other) = pair().await;
    let ids: Vec<StreamId> = (0..STREAMS).map(|_| StreamId::generate()).collect();
    let mut cancels = Vec::new();
    for id in &ids {
        let cancel = CancellationToken::new();
        generator.create(id, "owner", cancel.clone()).await.unwrap();
        cancels.push(cancel);
    }
    futures::future::try_join_all(ids.iter().map(|id| other.request_cancel(id))).await.unwrap();
    for cancel in cancels {
        tokio::time::timeout(PATIENCE, cancel.cancelled()).await.expect("every generation is told");
    }
}

#[tokio::test]
async fn a_live_log_expires_only_after_the_longest_generation_could_have_ended() {
    let prefix = format!("live-ai-test-{}", uuid::Uuid::new_v4().simple());
    let two_hours = Duration::from_secs(7200);
    let config = RedisStoreConfig { generation_timeout: two_hours, ..config(&prefix, Duration::from_secs(30)) };
    let store = RedisStore::connect(&RedisTarget::Node(redis_url()), config).await.unwrap();
    let id = StreamId::generate();
    let log = store.create(&id, "owner", CancellationToken::new()).await.unwrap();
    log.append(0, &chunk(0)).await.unwrap();
    for key in [store.shared.keys.log(&id), store.shared.keys.meta(&id)] {
        let left: i64 = raw(&store).await.pttl(&key).await.unwrap();
        assert!(left > two_hours.as_millis() as i64, "{key} expires in {left} ms, before a generation of two hours could end");
    }
}

#[tokio::test]
async fn cancelling_a_stream_nobody_generates_ends_it_cancelled_at_once() {
    let (generator, other) = pair().await;
    let id = StreamId::generate();
    let log = generator.create(&id, "owner", CancellationToken::new()).await.unwrap();
    log.append(0, &chunk(0)).await.unwrap();
    generator.release(&id);
    raw(&generator).await.del::<_, ()>(generator.shared.keys.lease(&id)).await.unwrap();
    other.request_cancel(&id).await.unwrap();
    assert_eq!(other.status(&id).await.unwrap(), LogStatus { len: 2, finished: true, owner: "owner".into() });
    assert!(matches!(other.request_cancel(&StreamId::generate()).await, Err(StoreError::NotFound(_))));
}

#[tokio::test]
async fn a_reader_in_another_process_counts_until_the_grace_after_it_left() {
    let prefix = format!("live-ai-test-{}", uuid::Uuid::new_v4().simple());
    let grace = Duration::from_millis(1500);
    let (generator, reader) = (store_on(&prefix, grace).await, store_on(&prefix, grace).await);
    let id = StreamId::generate();
    let _log = generator.create(&id, "owner", CancellationToken::new()).await.unwrap();
    assert_eq!(generator.reader_presence(&id).await.unwrap(), None);
    let follower = reader.follow(&id, None);
    let mut follower = follower;
    // Attaching happens on the first poll.
    let _ = tokio::time::timeout(Duration::from_millis(50), follower.next()).await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while generator.reader_presence(&id).await.unwrap().is_none() {
        assert!(tokio::time::Instant::now() < deadline, "the reader's presence shows");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(follower);
    // Left, but within the grace: still counted; then not.
    assert!(generator.reader_presence(&id).await.unwrap().is_some());
    while generator.reader_presence(&id).await.unwrap().is_some() {
        assert!(tokio::time::Instant::now() < deadline, "presence lapses after the grace");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_reader_attaching_where_the_stream_is_followed_already_marks_presence_at_once() {
    let prefix = format!("live-ai-test-{}", uuid::Uuid::new_v4().simple());
    let grace = Duration::from_secs(1);
    let (generator, reader) = (store_on(&prefix, grace).await, store_on(&prefix, grace).await);
    let id = StreamId::generate();
    let log = generator.create(&id, "owner", CancellationToken::new()).await.unwrap();
    log.append(0, &chunk(0)).await.unwrap();
    let mut first = reader.follow(&id, None);
    tokio::time::timeout(PATIENCE, first.next()).await.unwrap().unwrap().unwrap();
    // The mark lapsed (a refresh came late, say) while the mirror had its reader.
    // The once-a-second upkeep may set it again between the delete and the
    // check: delete until a check sees it gone.
    let mut lapsed = false;
    for _ in 0..5 {
        raw(&reader).await.del::<_, ()>(reader.shared.keys.readers(&id)).await.unwrap();
        if generator.reader_presence(&id).await.unwrap().is_none() {
            lapsed = true;
            break;
        }
    }
    assert!(lapsed, "the presence mark could be removed");
    // A second reader on that process: present before it is handed an event.
    let mut second = reader.follow(&id, None);
    tokio::time::timeout(PATIENCE, second.next()).await.unwrap().unwrap().unwrap();
    let left = generator.reader_presence(&id).await.unwrap().expect("the new reader is counted");
    assert!(left > grace, "counted for the grace and the refresh slack ({left:?})");
}

#[tokio::test]
async fn a_leaving_reader_never_shortens_the_presence_another_process_marked() {
    let prefix = format!("live-ai-test-{}", uuid::Uuid::new_v4().simple());
    let grace = Duration::from_secs(1);
    let (generator, stays, leaves) = (store_on(&prefix, grace).await, store_on(&prefix, grace).await, store_on(&prefix, grace).await);
    let id = StreamId::generate();
    let log = generator.create(&id, "owner", CancellationToken::new()).await.unwrap();
    log.append(0, &chunk(0)).await.unwrap();
    let mut staying = stays.follow(&id, None);
    tokio::time::timeout(PATIENCE, staying.next()).await.unwrap().unwrap().unwrap();
    let mut leaving = leaves.follow(&id, None);
    tokio::time::timeout(PATIENCE, leaving.next()).await.unwrap().unwrap().unwrap();
    drop(leaving);
    // What the leave writes (in the background, from the drop), awaited here.
    leaves.shared.extend_presence(&id, grace, Presence::LikelyThere).await.unwrap();
    let left = generator.reader_presence(&id).await.unwrap().expect("the staying reader counts");
    assert!(left > grace, "the leave did not cut the mark to the grace ({left:?})");
}

/// Calls per command since the last `CONFIG RESETSTAT`, without the asking ones.
async fn commands_since_reset(conn: &mut redis::aio::MultiplexedConnection) -> Vec<(String, u64)> {
    let stats: String = redis::cmd("INFO").arg("commandstats").query_async(conn).await.unwrap();
    let _: () = redis::cmd("CONFIG").arg("RESETSTAT").query_async(conn).await.unwrap();
    stats
        .lines()
        .filter_map(|line| {
            let (name, rest) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest.split(',').find_map(|field| field.strip_prefix("calls="))?.parse().ok()?;
            Some((name.to_owned(), calls))
        })
        .filter(|(name, _)| name != "info" && !name.starts_with("config"))
        .collect()
}

#[tokio::test]
async fn a_first_readers_presence_mark_and_a_refresh_each_cost_one_command() {
    // A Redis of the test's own, so its command counts are this process's alone.
    let redis = test_server::TestServer::start(&[]).await;
    let prefix = format!("live-ai-test-{}", uuid::Uuid::new_v4().simple());
    let grace = Duration::from_secs(30);
    let store = RedisStore::connect(&RedisTarget::Node(redis.url()), config(&prefix, grace)).await.unwrap();
    let mut conn = redis::Client::open(redis.url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let id = StreamId::generate();
    commands_since_reset(&mut conn).await;
    store.shared.mark_reading(&id).await.unwrap();
    assert_eq!(commands_since_reset(&mut conn).await, [("set".to_owned(), 1)], "a new key is made by one SET NX");
    // As a refresh finds it: marked a while ago, with less time left.
    let key = store.shared.keys.readers(&id);
    conn.pexpire::<_, ()>(&key, grace.as_millis() as i64).await.unwrap();
    commands_since_reset(&mut conn).await;
    store.shared.refresh_reading(&id).await.unwrap();
    assert_eq!(commands_since_reset(&mut conn).await, [("pexpire".to_owned(), 1)], "a key there is extended by one PEXPIRE GT");
    let left: i64 = conn.pttl(&key).await.unwrap();
    assert!(Duration::from_millis(left as u64) > grace, "marked for the grace and the slack ({left} ms)");
}

#[tokio::test]
async fn an_idempotency_key_is_claimed_once_across_processes() {
    let (a, b) = pair().await;
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
async fn a_pending_claim_lapses_and_a_held_one_stays_across_processes() {
    let (a, b) = pair().await;
    let claim = |id: &StreamId| KeyClaim { stream_id: id.clone(), fingerprint: "quiz:00ff".into() };
    let (held, left, other) = (StreamId::generate(), StreamId::generate(), StreamId::generate());
    let pending = Duration::from_millis(300);
    assert_eq!(a.claim_key("held", claim(&held), pending).await.unwrap(), None);
    assert_eq!(a.claim_key("left", claim(&left), pending).await.unwrap(), None);
    a.hold_key("held", &held, Duration::from_secs(60)).await.unwrap();
    b.hold_key("left", &other, Duration::from_secs(60)).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while b.claim_key("left", claim(&other), pending).await.unwrap().is_some() {
        assert!(tokio::time::Instant::now() < deadline, "a claim nobody held lapses after its ttl");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(b.claim_key("held", claim(&other), pending).await.unwrap(), Some(claim(&held)), "the held claim outlived its first ttl");
}

#[tokio::test]
async fn a_log_redis_lost_fails_its_followers_as_lost_not_as_unknown() {
    let (generator, reader) = pair().await;
    let id = StreamId::generate();
    let log = generator.create(&id, "owner", CancellationToken::new()).await.unwrap();
    log.append(0, &chunk(0)).await.unwrap();
    let mut follower = reader.follow(&id, None);
    let first = tokio::time::timeout(PATIENCE, follower.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(first.events.len(), 1);
    // What a Redis restart without persistence leaves: nothing.
    let keys = &generator.shared.keys;
    raw(&generator).await.del::<_, ()>(&[keys.log(&id), keys.meta(&id), keys.lease(&id)]).await.unwrap();
    generator.release(&id);
    let (events, failure) = drain(follower).await;
    assert!(events.is_empty());
    assert_eq!(failure, Some(FollowError { next_seq: 1, cause: FollowFailure::LogLost }));
    assert!(matches!(log.append(1, &chunk(1)).await, Err(StoreError::NotFound(_))), "a vanished log is not re-created");
}

#[tokio::test]
async fn a_reader_of_a_log_that_expired_before_it_was_read_learns_it_expired_and_nothing_rewrites_the_log() {
    let prefix = format!("live-ai-test-{}", uuid::Uuid::new_v4().simple());
    let short = RedisStoreConfig { retention: Duration::from_millis(200), ..config(&prefix, Duration::from_secs(30)) };
    let generator = RedisStore::connect(&RedisTarget::Node(redis_url()), short).await.unwrap();
    let reader = store_on(&prefix, Duration::from_secs(30)).await;
    let id = StreamId::generate();
    let log = generator.create(&id, "owner", CancellationToken::new()).await.unwrap();
    for seq in 0..3 {
        log.append(seq, &chunk(seq)).await.unwrap();
    }
    log.append(3, &end()).await.unwrap();
    let log_key = generator.shared.keys.log(&id);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while raw(&generator).await.exists::<_, bool>(&log_key).await.unwrap() {
        assert!(tokio::time::Instant::now() < deadline, "the finished log expires");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // As a reader that found the log a moment before it expired: its mirror reads nothing.
    let (events, failure) = drain(reader.follow(&id, Some(1))).await;
    assert!(events.is_empty(), "{events:?}");
    assert_eq!(failure, Some(FollowError { next_seq: 2, cause: FollowFailure::Expired { len: 4 } }));
    assert!(!raw(&generator).await.exists::<_, bool>(&log_key).await.unwrap(), "no generation_lost re-created the log");
    assert!(matches!(generator.status(&id).await, Err(StoreError::Expired { len: 4, .. })));
}

/// The announced events one message on a process's channel carries.
fn records_of(message: &redis::Msg) -> Vec<(Bytes, LoggedEvent)> {
    announce::decode(Bytes::copy_from_slice(message.get_payload_bytes()))
        .filter_map(|record| match record.expect("a well-formed announcement") {
            announce::Record::Event(id, event) => Some((id, event)),
            announce::Record::Nudge(_) => None,
        })
        .collect()
}

/// A subscription to a channel of the test's own, which `store` treats as a
/// process following `id`.
async fn watch(store: &RedisStore, id: &StreamId) -> redis::aio::PubSub {
    let channel: Arc<str> = format!("{}-watcher", store.shared.channel).into();
    let client = redis::Client::open(redis_url()).unwrap();
    let pubsub = subscription::subscribe(&client, &channel).await.unwrap();
    assert_eq!(store.shared.routes.follow(id, &channel), routes::Followed::Added);
    pubsub
}

/// Subscribed to the channel of `process`, as the process itself is.
async fn listen_as(process: &RedisStore) -> redis::aio::PubSub {
    let client = redis::Client::open(redis_url()).unwrap();
    subscription::subscribe(&client, &process.shared.channel).await.unwrap()
}

#[tokio::test]
async fn every_confirmed_event_and_no_refused_one_is_announced_in_order() {
    let (store, _) = pair().await;
    let id = StreamId::generate();
    let log = store.create(&id, "owner", CancellationToken::new()).await.unwrap();
    let mut pubsub = watch(&store, &id).await;
    log.append(0, &chunk(0)).await.unwrap();
    log.append(1, &chunk(1)).await.unwrap();
    assert!(log.append(1, &chunk(9)).await.is_err(), "another event at a taken seq is refused");
    log.append(2, &chunk(2)).await.unwrap();
    log.append(3, &end()).await.unwrap();

    let mut announced = Vec::new();
    let mut messages = pubsub.on_message();
    while announced.last().is_none_or(|e: &LoggedEvent| !e.is_terminal()) {
        let message = tokio::time::timeout(PATIENCE, messages.next()).await.expect("announcements come").unwrap();
        for (stream, event) in records_of(&message) {
            if &stream[..] == id.as_str().as_bytes() {
                announced.push(event);
            }
        }
    }
    let expected = vec![chunk(0).at(0), chunk(1).at(1), chunk(2).at(2), end().at(3)];
    assert_eq!(announced, expected);
}

#[tokio::test]
async fn concurrent_streams_each_have_every_event_announced_once_in_order() {
    const STREAMS: usize = 40;
    const CHUNKS: u64 = 25;
    let (store, _) = pair().await;
    let store = Arc::new(store);
    let ids: Vec<StreamId> = (0..STREAMS).map(|_| StreamId::generate()).collect();
    let mut logs = Vec::new();
    for id in &ids {
        logs.push(store.create(id, "owner", CancellationToken::new()).await.unwrap());
    }
    let channel: Arc<str> = format!("{}-watcher", store.shared.channel).into();
    let client = redis::Client::open(redis_url()).unwrap();
    let mut pubsub = subscription::subscribe(&client, &channel).await.unwrap();
    for id in &ids {
        store.shared.routes.follow(id, &channel);
    }
    // Every stream appends as fast as its appends are confirmed, so several
    // pipelines are in flight at once.
    let mut appenders = Vec::new();
    for log in logs {
        appenders.push(tokio::spawn(async move {
            for seq in 0..CHUNKS {
                log.append(seq, &chunk(seq)).await.unwrap();
            }
            log.append(CHUNKS, &end()).await.unwrap();
        }));
    }

    let mut announced: HashMap<Vec<u8>, Vec<LoggedEvent>> = HashMap::new();
    let mut ended = 0;
    let mut messages = pubsub.on_message();
    while ended < STREAMS {
        let message = tokio::time::timeout(PATIENCE, messages.next()).await.expect("every stream's end is announced").unwrap();
        for (stream, event) in records_of(&message) {
            ended += usize::from(event.is_terminal());
            announced.entry(stream.to_vec()).or_default().push(event);
        }
    }
    for appender in appenders {
        appender.await.expect("every append succeeded");
    }
    let mut expected: Vec<LoggedEvent> = (0..CHUNKS).map(|seq| chunk(seq).at(seq)).collect();
    expected.push(end().at(CHUNKS));
    for id in &ids {
        assert_eq!(announced.get(id.as_str().as_bytes()), Some(&expected), "stream {id}");
    }
}

#[tokio::test]
async fn a_process_reading_a_stream_it_generates_takes_every_event_in_place_and_publishes_nothing() {
    // A Redis of the test's own, so its command counts are this process's alone.
    let redis = test_server::TestServer::start(&[]).await;
    let prefix = format!("live-ai-test-{}", uuid::Uuid::new_v4().simple());
    let store = RedisStore::connect(&RedisTarget::Node(redis.url()), config(&prefix, Duration::from_secs(30))).await.unwrap();
    let id = StreamId::generate();
    let log = store.create(&id, "owner", CancellationToken::new()).await.unwrap();
    log.append(0, &chunk(0)).await.unwrap();
    let mut follower = store.follow(&id, None);
    assert_eq!(read_until(&mut follower, 0).await, [0]);
    const EVENTS: u64 = 50;
    for seq in 1..EVENTS {
        log.append(seq, &chunk(seq)).await.unwrap();
    }
    log.append(EVENTS, &end()).await.unwrap();
    // Each once and in order, well before a silent log would have been read.
    let (events, failure) = tokio::time::timeout(tail::SILENCE / 2, drain(follower)).await.expect("the events come at once");
    assert_eq!(failure, None);
    assert_eq!(events.iter().map(|e| e.seq).collect::<Vec<_>>(), (1..=EVENTS).collect::<Vec<_>>());
    assert_eq!(events.last(), Some(&end().at(EVENTS)));
    let mut conn = redis::Client::open(redis.url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let stats: String = redis::cmd("INFO").arg("commandstats").query_async(&mut conn).await.unwrap();
    assert!(!stats.contains("cmdstat_publish:"), "nothing went through Redis's pub/sub: {stats}");
}

/// Reads `pubsub` until the event at `seq` of `until` arrives; returns every
/// announced event on the way, by stream.
async fn announced_until(pubsub: &mut redis::aio::PubSub, until: &StreamId, seq: u64) -> Vec<(Bytes, u64)> {
    let mut seen = Vec::new();
    let mut messages = pubsub.on_message();
    loop {
        let message = tokio::time::timeout(PATIENCE, messages.next()).await.expect("the awaited event is announced").unwrap();
        for (stream, event) in records_of(&message) {
            let found = &stream[..] == until.as_str().as_bytes() && event.seq == seq;
            seen.push((stream, event.seq));
            if found {
                return seen;
            }
        }
    }
}

/// Reads `follower` until it has the event at `seq`.
async fn read_until(follower: &mut Follower, seq: u64) -> Vec<u64> {
    let mut seen = Vec::new();
    while seen.last().is_none_or(|last| *last < seq) {
        let batch = tokio::time::timeout(PATIENCE, follower.next()).await.expect("the events come").unwrap().unwrap();
        seen.extend(batch.events.iter().map(|e| e.seq));
    }
    seen
}

#[tokio::test]
async fn a_process_without_readers_of_a_stream_receives_none_of_its_announcements() {
    let prefix = format!("live-ai-test-{}", uuid::Uuid::new_v4().simple());
    let grace = Duration::from_secs(30);
    let (generator, reading, idle) = (store_on(&prefix, grace).await, store_on(&prefix, grace).await, store_on(&prefix, grace).await);
    let (read, other) = (StreamId::generate(), StreamId::generate());
    let log = generator.create(&read, "owner", CancellationToken::new()).await.unwrap();
    let other_log = generator.create(&other, "owner", CancellationToken::new()).await.unwrap();
    log.append(0, &chunk(0)).await.unwrap();
    other_log.append(0, &chunk(0)).await.unwrap();
    let (mut on_reading, mut on_idle) = (listen_as(&reading).await, listen_as(&idle).await);
    // `reading` serves a reader of one stream; `idle` one of the other stream only.
    let mut reader = reading.follow(&read, None);
    assert_eq!(read_until(&mut reader, 0).await, [0]);
    let mut idle_reader = idle.follow(&other, None);
    assert_eq!(read_until(&mut idle_reader, 0).await, [0]);
    // Both followers are on the generator's routes once their notices were heard.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while generator.shared.routes.readers_of(&read).len() + generator.shared.routes.readers_of(&other).len() < 2 {
        assert!(tokio::time::Instant::now() < deadline, "the follow notices reach the generator");
        tokio::task::yield_now().await;
    }

    for seq in 1..=5 {
        log.append(seq, &chunk(seq)).await.unwrap();
    }
    other_log.append(1, &chunk(1)).await.unwrap();
    // What `idle` was sent up to the other stream's event, which came after the
    // five: announcements reach a channel in the order they were confirmed.
    let seen = announced_until(&mut on_idle, &other, 1).await;
    assert!(seen.iter().all(|(stream, _)| &stream[..] == other.as_str().as_bytes()), "{seen:?}");
    let seen = announced_until(&mut on_reading, &read, 5).await;
    assert!(seen.iter().all(|(stream, _)| &stream[..] == read.as_str().as_bytes()), "{seen:?}");
    assert_eq!(read_until(&mut reader, 5).await, [1, 2, 3, 4, 5]);
}

#[tokio::test]
async fn a_reader_arriving_while_its_follow_notice_is_on_its_way_gets_every_event_without_gap_or_duplicate() {
    let (generator, reader) = pair().await;
    let id = StreamId::generate();
    let log = generator.create(&id, "owner", CancellationToken::new()).await.unwrap();
    log.append(0, &chunk(0)).await.unwrap();
    log.append(1, &chunk(1)).await.unwrap();
    reader.shared.notices.hold();
    let mut follower = reader.follow(&id, None);
    assert_eq!(read_until(&mut follower, 1).await, [0, 1]);
    // Confirmed while the generator does not know of the reader: announced to nobody.
    log.append(2, &chunk(2)).await.unwrap();
    log.append(3, &end()).await.unwrap();
    reader.shared.notices.release(true);
    // The generator's nudge has the mirror read the log: well before a silent
    // log would have been read.
    let rest = tokio::time::timeout(tail::SILENCE / 2, drain(follower)).await.expect("the nudge brings the rest");
    assert_eq!(rest, (vec![chunk(2).at(2), end().at(3)], None));
}

#[tokio::test]
async fn a_reader_arriving_later_on_a_process_gets_every_event_without_gap_or_duplicate() {
    let (generator, reader) = pair().await;
    let id = StreamId::generate();
    let log = Arc::new(generator.create(&id, "owner", CancellationToken::new()).await.unwrap());
    // Readers come and go on the other process while the stream is written.
    const EVENTS: u64 = 300;
    let writer = {
        let log = log.clone();
        tokio::spawn(async move {
            for seq in 0..EVENTS {
                log.append(seq, &chunk(seq)).await.unwrap();
                if seq % 10 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            log.append(EVENTS, &end()).await.unwrap();
        })
    };
    let mut readers = Vec::new();
    for n in 0..20u64 {
        let after = (n > 0).then(|| n * 7);
        readers.push((after, reader.follow(&id, after)));
        if n % 3 == 0 {
            // The last reader leaving and a new one arriving: a leave, then a follow.
            let (_, mut leaving) = readers.remove(0);
            let _ = tokio::time::timeout(Duration::from_millis(5), leaving.next()).await;
        }
        tokio::task::yield_now().await;
    }
    writer.await.unwrap();
    for (after, follower) in readers {
        let (events, failure) = drain(follower).await;
        assert_eq!(failure, None);
        let first = after.map_or(0, |a| a + 1);
        assert_eq!(events.iter().map(|e| e.seq).collect::<Vec<_>>(), (first..=EVENTS).collect::<Vec<_>>(), "after {after:?}");
    }
}

#[tokio::test]
async fn a_process_whose_last_reader_left_is_sent_nothing_more_of_that_stream() {
    let (generator, reader) = pair().await;
    let (left, kept) = (StreamId::generate(), StreamId::generate());
    let left_log = generator.create(&left, "owner", CancellationToken::new()).await.unwrap();
    let kept_log = generator.create(&kept, "owner", CancellationToken::new()).await.unwrap();
    left_log.append(0, &chunk(0)).await.unwrap();
    kept_log.append(0, &chunk(0)).await.unwrap();
    let mut on_reader = listen_as(&reader).await;
    let (mut leaving, mut staying) = (reader.follow(&left, None), reader.follow(&kept, None));
    assert_eq!(read_until(&mut leaving, 0).await, [0]);
    assert_eq!(read_until(&mut staying, 0).await, [0]);
    left_log.append(1, &chunk(1)).await.unwrap();
    assert_eq!(read_until(&mut leaving, 1).await, [1], "announced while followed");
    drop(leaving);
    let channel = reader.shared.channel.clone();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while generator.shared.routes.readers_of(&left).contains(&channel) {
        assert!(tokio::time::Instant::now() < deadline, "the leave notice reaches the generator");
        tokio::task::yield_now().await;
    }
    left_log.append(2, &chunk(2)).await.unwrap();
    kept_log.append(1, &chunk(1)).await.unwrap();
    // Up to the kept stream's event, confirmed after it, nothing of the left one's.
    let seen = announced_until(&mut on_reader, &kept, 1).await;
    assert!(!seen.iter().any(|(stream, seq)| &stream[..] == left.as_str().as_bytes() && *seq == 2), "{seen:?}");
}

#[tokio::test]
async fn a_follow_notice_lost_on_the_way_is_sent_again_once_the_log_seems_silent() {
    let (generator, reader) = pair().await;
    let id = StreamId::generate();
    let log = generator.create(&id, "owner", CancellationToken::new()).await.unwrap();
    log.append(0, &chunk(0)).await.unwrap();
    reader.shared.notices.hold();
    let mut follower = reader.follow(&id, None);
    assert_eq!(read_until(&mut follower, 0).await, [0]);
    reader.shared.notices.release(false);
    log.append(1, &chunk(1)).await.unwrap();
    // Found when the log seems silent; then the reader follows again, and is announced the rest.
    assert_eq!(read_until(&mut follower, 1).await, [1]);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !generator.shared.routes.readers_of(&id).contains(&reader.shared.channel) {
        assert!(tokio::time::Instant::now() < deadline, "the reader follows again");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    log.append(2, &chunk(2)).await.unwrap();
    let next = tokio::time::timeout(tail::SILENCE / 2, follower.next()).await.expect("announced, not found by silence").unwrap().unwrap();
    assert_eq!(next.events[0].seq, 2);
}

/// The ids of the pub/sub clients of the Redis at `url`.
fn pubsub_clients(url: &str) -> Vec<String> {
    let mut conn = redis::Client::open(url).unwrap().get_connection().unwrap();
    let list: String = redis::cmd("CLIENT").arg("LIST").arg("TYPE").arg("pubsub").query(&mut conn).unwrap();
    let mut ids: Vec<String> =
        list.lines().filter_map(|line| line.split(' ').find_map(|field| field.strip_prefix("id=")).map(str::to_owned)).collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn a_process_too_slow_for_its_pubsub_buffer_is_dropped_by_redis_and_reads_what_it_missed_from_the_log() {
    // A small buffer, so a process that stops reading its channel for a moment overflows it.
    let redis = test_server::TestServer::start(&["--client-output-buffer-limit", "pubsub 16kb 0 0"]).await;
    let prefix = format!("live-ai-test-{}", uuid::Uuid::new_v4().simple());
    let target = RedisTarget::Node(redis.url());
    let generator = RedisStore::connect(&target, config(&prefix, Duration::from_secs(30))).await.unwrap();
    let reader = RedisStore::connect(&target, config(&prefix, Duration::from_secs(30))).await.unwrap();
    let id = StreamId::generate();
    let log = generator.create(&id, "owner", CancellationToken::new()).await.unwrap();
    log.append(0, &chunk(0)).await.unwrap();
    let mut follower = reader.follow(&id, None);
    assert_eq!(read_until(&mut follower, 0).await, [0]);
    log.append(1, &chunk(1)).await.unwrap();
    assert_eq!(read_until(&mut follower, 1).await, [1]);
    let before = pubsub_clients(&redis.url());

    // With the test's thread (and so the reader's runtime) busy, blocking calls
    // append events without announcements and fill the reader's channel with
    // more than its buffer takes (records of a stream it does not follow).
    let mut raw = redis::Client::open(redis.url()).unwrap().get_connection().unwrap();
    for seq in 2..5 {
        let _: String = redis::cmd("XADD")
            .arg(generator.shared.keys.log(&id))
            .arg(entry_id(seq))
            .arg("t")
            .arg("chunk")
            .arg("j")
            .arg(&chunk(seq).fields[..])
            .query(&mut raw)
            .unwrap();
    }
    let mut junk = bytes::BytesMut::new();
    announce::encode(&mut junk, &StreamId::generate(), 0, &EventRecord::new(&EventBody::Chunk { token: "x".repeat(64 * 1024) }));
    // More than the kernel's socket buffers hold, so Redis's own buffer fills.
    for _ in 0..512 {
        let _: i64 = redis::cmd("PUBLISH").arg(&*reader.shared.channel).arg(&junk[..]).query(&mut raw).unwrap();
    }
    let after = pubsub_clients(&redis.url());
    assert!(before.iter().any(|id| !after.contains(id)), "Redis dropped the reader's subscription: {before:?} → {after:?}");

    // Back: the subscription returns, the mirror reads 2..4 from the log, and the rest is announced.
    log.append(5, &chunk(5)).await.unwrap();
    log.append(6, &end()).await.unwrap();
    let (events, failure) = drain(follower).await;
    assert_eq!(failure, None);
    assert_eq!(events.iter().map(|e| e.seq).collect::<Vec<_>>(), [2, 3, 4, 5, 6]);
}
