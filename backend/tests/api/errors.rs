//! Bad input gets a clear JSON problem (or error frame) naming what is wrong:
//! never a panic, a 500 or a dropped socket.

use serde_json::{json, Value};

use crate::helpers::*;

async fn problem(response: reqwest::Response, status: u16) -> Value {
    assert_eq!(response.status(), status);
    assert_eq!(response.headers()["content-type"], "application/problem+json");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], status);
    assert!(body["detail"].as_str().is_some_and(|d| !d.is_empty()));
    body
}

#[tokio::test]
async fn an_unknown_block_type_is_404_on_every_endpoint() {
    let app = spawn_app(&[]).await;
    let body = problem(app.get("/api/stream/ai-block/poem?topic=x").await, 404).await;
    assert_eq!(body["code"], "unknown_block_type");
    problem(app.post_json("/api/ai-block/poem", &json!({"topic": "x"})).await, 404).await;
    let body = problem(app.post_json("/api/streams", &json!({"block_type": "poem", "input": {}})).await, 400).await;
    assert_eq!(body["field"], "block_type");
    problem(app.get("/api/nothing/here").await, 404).await;
}

#[tokio::test]
async fn missing_invalid_and_oversized_fields_are_named() {
    let app = spawn_app(&[]).await;
    let cases = [
        ("quiz", json!({}), 422, "topic"),
        ("quiz", json!({"topic": "x", "count": 11}), 422, "count"),
        ("quiz", json!({"topic": "x", "difficulty": "brutal"}), 422, "difficulty"),
        ("ask-question", json!({"question": "   "}), 422, "question"),
        ("ask-question", json!({"question": "x".repeat(4001)}), 413, "question"),
        ("diagram", json!({"description": "x", "kind": "gantt"}), 422, "kind"),
        ("explain-eli10", json!({"topic": "x", "colour": "red"}), 422, "colour"),
    ];
    for (block, input, status, field) in cases {
        let body = problem(app.post_json(&format!("/api/ai-block/{block}"), &input).await, status).await;
        assert_eq!(body["field"], field, "{block} {input}");
        let body = problem(app.post_json("/api/streams", &json!({"block_type": block, "input": input})).await, status).await;
        assert_eq!(body["field"], field);
        if status == 422 {
            let body = problem(app.get(&format!("/api/stream/ai-block/{block}?{}", as_query(&input))).await, status).await;
            assert_eq!(body["field"], field);
        }
    }
}

#[tokio::test]
async fn malformed_and_oversized_bodies_are_problems() {
    let app = spawn_app(&[]).await;
    let garbage = app.http.post(app.url("/api/streams")).header("content-type", "application/json").body("{not json").send().await.unwrap();
    problem(garbage, 400).await;
    let huge = json!({"block_type": "ask-question", "input": {"question": "x", "context": "y".repeat(100_000)}});
    problem(app.post_json("/api/streams", &huge).await, 413).await;
    let untyped = app.http.post(app.url("/api/streams")).body("{}").send().await.unwrap();
    problem(untyped, 415).await;
}

#[tokio::test]
async fn garbage_resume_positions_and_stream_ids_are_400() {
    let app = spawn_app(&[]).await;
    for bad in ["nonsense", "abc:", ":1", "abc:-3", "a b:2"] {
        let response = app.http.get(app.url("/api/stream/ai-block/quiz?topic=x")).header("last-event-id", bad).send().await.unwrap();
        let body = problem(response, 400).await;
        assert_eq!(body["field"], "Last-Event-ID", "{bad}");
    }
    let id = app.create_stream("explain-eli10", json!({"topic": "ice"})).await;
    let other = app.http.get(app.url(&format!("/api/streams/{id}/events"))).header("last-event-id", "another:3").send().await.unwrap();
    problem(other, 400).await;
    problem(app.get(&format!("/api/streams/{id}/events?after=-1")).await, 400).await;
    problem(app.get("/api/streams/bad%20id/events").await, 400).await;
    problem(app.delete("/api/streams/nosuchstream").await, 404).await;
}

#[tokio::test]
async fn with_streaming_off_streams_are_refused_and_whole_responses_work() {
    let app = spawn_app(&[("AI_STREAMING_ENABLED", "false")]).await;
    let body = problem(app.get("/api/stream/ai-block/quiz?topic=x").await, 503).await;
    assert_eq!(body["code"], "streaming_disabled");
    problem(app.post_json("/api/streams", &json!({"block_type": "quiz", "input": {"topic": "x"}})).await, 503).await;
    assert!(tokio_tungstenite::connect_async(format!("ws://{}/api/stream/ws", app.addr)).await.is_err());
    let whole = app.post_json("/api/ai-block/quiz", &json!({"topic": "x", "count": 2})).await;
    assert_eq!(whole.status(), 200);
    let whole: Value = whole.json().await.unwrap();
    assert_eq!(whole["result"]["questions"].as_array().unwrap().len(), 2);
    assert_eq!(whole["parts"].as_array().unwrap().len(), 2);
    let config: Value = app.get("/api/ai/config").await.json().await.unwrap();
    assert_eq!(config["streaming_enabled"], false);
}

#[tokio::test]
async fn whole_response_failures_map_to_problems_with_the_event_code() {
    let app = spawn_app(&[("DEMO_FAIL_AFTER_TOKENS", "2")]).await;
    let body = problem(app.post_json("/api/ai-block/explain-eli10", &json!({"topic": "x"})).await, 502).await;
    assert_eq!((body["code"].as_str(), body["retryable"].as_bool()), (Some("provider_error"), Some(true)));
}

#[tokio::test]
async fn malformed_websocket_messages_get_error_frames_and_other_streams_live_on() {
    let app = spawn_app(&[("DEMO_TOKENS_PER_SECOND", "200")]).await;
    let mut ws = app.ws().await;
    ws.send(json!({"type": "start", "block_type": "explain-eli10", "input": {"topic": "fog"}, "ref": "keep"})).await;
    let start = ws.next().await;
    let stream_id = start["stream_id"].as_str().unwrap().to_owned();
    let bad_messages = [
        "not json".to_owned(),
        json!({"type": "dance"}).to_string(),
        json!({"type": "start", "block_type": "poem", "input": {}, "ref": "r1"}).to_string(),
        json!({"type": "start", "block_type": "quiz", "input": {"count": 3}, "ref": "r2"}).to_string(),
        json!({"type": "resume", "stream_id": "bad id!"}).to_string(),
        json!({"type": "cancel", "stream_id": "nosuchstream"}).to_string(),
    ];
    for bad in &bad_messages {
        ws.send_raw(bad.clone()).await;
    }
    ws.socket.send(tokio_tungstenite::tungstenite::Message::binary(vec![1, 2, 3])).await.unwrap();
    let mut frames = Vec::new();
    let events = ws.until_terminal(&stream_id, &mut frames).await;
    while frames.len() < bad_messages.len() + 1 {
        frames.push(ws.next().await);
    }
    assert!(frames.iter().all(|f| f["type"] == "protocol_error" && f.get("seq").is_none()), "{frames:?}");
    let quiz_error = frames.iter().find(|f| f["ref"] == "r2").expect("the bad start's ref is echoed");
    assert_eq!(quiz_error["field"], "topic");
    assert!(frames.iter().any(|f| f["code"] == "stream_not_found" && f["stream_id"] == "nosuchstream"));
    let mut all = vec![Received { id: String::new(), data: start }];
    all.extend(events);
    assert_contiguous(&all, 0);
    assert_eq!(all.last().unwrap().kind(), "complete");
}

use futures::SinkExt;

#[tokio::test]
async fn resume_positions_beyond_the_log_are_400_naming_where_they_came_from_in_both_stores() {
    let redis_url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let prefix = format!("live-ai-test-beyond-{}", std::process::id());
    let memory = spawn_app(&[("DEMO_TOKENS_PER_SECOND", "20")]).await;
    let redis =
        spawn_app(&[("DEMO_TOKENS_PER_SECOND", "20"), ("STREAM_STORE", "redis"), ("REDIS_URL", &redis_url), ("REDIS_KEY_PREFIX", &prefix)])
            .await;
    for app in [&memory, &redis] {
        let id = app.create_stream("ask-question", json!({"question": "Is this live?"})).await;
        let mut reader = app.events_of(&id).await;
        let seen = reader.take(3).await;
        let events = format!("/api/streams/{id}/events");
        for after in [u64::MAX, seen.last().unwrap().seq() + 1_000] {
            let body = problem(app.get(&format!("{events}?after={after}")).await, 400).await;
            assert_eq!(body["field"], "after", "{after}");
            let header = format!("{id}:{after}");
            let response = app.http.get(app.url(&events)).header("last-event-id", &header).send().await.unwrap();
            assert_eq!(problem(response, 400).await["field"], "Last-Event-ID");
        }
        let unknown = problem(app.get(&format!("/api/streams/nosuchstream/events?after={}", u64::MAX)).await, 400).await;
        assert_eq!(unknown["field"], "after");
        let mut ws = app.ws().await;
        ws.send(json!({"type": "resume", "stream_id": id, "after": u64::MAX})).await;
        let refused = ws.next().await;
        assert_eq!((refused["type"].as_str(), refused["field"].as_str()), (Some("protocol_error"), Some("after")));
        // The reader that asked for a position that exists is unaffected.
        assert_eq!(reader.next().await.unwrap().seq(), seen.last().unwrap().seq() + 1);
    }
}
