//! Scale-out over the Redis store: several `live-ai` processes share stream logs,
//! so a client resumes or cancels on any of them, and readers learn when the
//! process that generates dies. Needs the Redis at `REDIS_URL` (default local).

use serde_json::{json, Value};

use crate::helpers::*;

fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// Settings of one deployment: processes with the same prefix share streams.
fn deployment(prefix: &str, tokens_per_second: &'static str) -> Vec<(&'static str, String)> {
    vec![
        ("STREAM_STORE", "redis".into()),
        ("REDIS_URL", redis_url()),
        ("REDIS_KEY_PREFIX", prefix.to_owned()),
        ("DEMO_TOKENS_PER_SECOND", tokens_per_second.into()),
    ]
}

async fn spawn_in(deployment: &[(&'static str, String)]) -> TestApp {
    let vars: Vec<(&str, &str)> = deployment.iter().map(|(k, v)| (*k, v.as_str())).collect();
    spawn_app(&vars).await
}

fn fresh_prefix() -> String {
    format!("live-ai-test-{}", uuid_like())
}

fn uuid_like() -> String {
    use std::time::{SystemTime, UNIX_EPOCH};
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    format!("{nanos:x}-{}", std::process::id())
}

#[tokio::test]
async fn a_stream_started_on_one_process_resumes_on_another_without_gap_or_duplicate() {
    let deployment = deployment(&fresh_prefix(), "200");
    let (a, b) = (spawn_in(&deployment).await, spawn_in(&deployment).await);
    let id = a.create_stream("quiz", json!({"topic": "glaciers", "count": 2})).await;
    let mut first = a.events_of(&id).await;
    let mut events = first.take(10).await;
    drop(first);
    let last = events.last().unwrap().id.clone();
    events.extend(b.sse(&format!("/api/streams/{id}/events"), &[("last-event-id", &last)]).await.until_terminal().await);
    assert_contiguous(&events, 0);
    assert_eq!(events.last().unwrap().kind(), "complete");
    assert_eq!(events.iter().filter(|e| e.kind() == "part").count(), 2);
    let done = b.sse(&format!("/api/streams/{id}/events"), &[("last-event-id", &events.last().unwrap().id)]).await;
    assert_eq!(done.status, 204);
}

#[tokio::test]
async fn a_cancel_sent_to_another_process_stops_the_generation_where_it_runs() {
    let deployment = deployment(&fresh_prefix(), "30");
    let (a, b) = (spawn_in(&deployment).await, spawn_in(&deployment).await);
    let id = a.create_stream("ask-question", json!({"question": "Where do rivers start?"})).await;
    let mut on_a = a.events_of(&id).await;
    let mut on_b = b.events_of(&id).await;
    on_a.take(2).await;
    on_b.take(2).await;
    let response: Value = b.delete(&format!("/api/streams/{id}")).await.json().await.unwrap();
    assert_eq!(response["state"], "cancelled");
    for reader in [&mut on_a, &mut on_b] {
        let events = reader.until_terminal().await;
        assert_eq!(events.last().unwrap().kind(), "cancelled");
    }
    a.wait_for_metric("live_ai_provider_streams_open", &[], |v| v == 0.0).await;
}

#[tokio::test]
async fn readers_get_generation_lost_when_the_generating_process_dies() {
    let prefix = fresh_prefix();
    let generator = LiveAiProcess::spawn(&[
        ("STREAM_STORE", "redis"),
        ("REDIS_URL", &redis_url()),
        ("REDIS_KEY_PREFIX", &prefix),
        ("DEMO_TOKENS_PER_SECOND", "5"),
    ])
    .await;
    let (http, base) = (reqwest::Client::new(), generator.base.clone());
    let created: Value = http
        .post(format!("{base}/api/streams"))
        .json(&json!({"block_type": "explain-eli10", "input": {"topic": "comets"}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["stream_id"].as_str().unwrap().to_owned();
    let watcher = spawn_in(&deployment(&prefix, "5")).await;
    let mut reader = watcher.events_of(&id).await;
    let mut events = reader.take(2).await;
    generator.kill().await;
    events.extend(reader.until_terminal().await);
    assert_contiguous(&events, 0);
    let last = &events.last().unwrap().data;
    assert_eq!((last["code"].as_str(), last["retryable"].as_bool()), (Some("generation_lost"), Some(true)));
}

#[tokio::test]
async fn a_start_retried_on_another_process_attaches_to_the_same_generation() {
    let deployment = deployment(&fresh_prefix(), "100");
    let (a, b) = (spawn_in(&deployment).await, spawn_in(&deployment).await);
    let body = json!({"block_type": "explain-eli10", "input": {"topic": "fog"}});
    let start = |app: &TestApp| app.http.post(app.url("/api/streams")).header("idempotency-key", "one-fog").json(&body).send();
    let first = start(&a).await.unwrap();
    let retried = start(&b).await.unwrap();
    assert_eq!((first.status().as_u16(), retried.status().as_u16()), (201, 200));
    let (first, retried): (Value, Value) = (first.json().await.unwrap(), retried.json().await.unwrap());
    assert_eq!(first["stream_id"], retried["stream_id"]);
    assert_eq!(b.metric("live_ai_active_streams", &[]).await, 0.0, "the retry started nothing on b");
}
