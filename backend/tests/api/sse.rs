//! SSE: streaming each block, resume without gap or duplicate, fan-out, framing.

use serde_json::{json, Value};

use crate::helpers::*;

#[tokio::test]
async fn each_block_streams_start_chunks_parts_complete_with_contiguous_seq() {
    let app = spawn_app(&[]).await;
    for (block, input) in sample_inputs() {
        let id = app.create_stream(block, input.clone()).await;
        let events = app.events_of(&id).await.until_terminal().await;
        assert_contiguous(&events, 0);
        assert_eq!(events[0].kind(), "start");
        assert_eq!(events[0].data["block_type"], block);
        assert_eq!(events[0].data["provider"], "demo");
        assert!(events[0].data["model"].as_str().unwrap().contains("demo"));
        assert_eq!(events.last().unwrap().kind(), "complete", "{block}: {:?}", events.last());
        assert!(events.iter().filter(|e| e.kind() == "chunk").count() > 5, "{block} streams token by token");
        let parts: Vec<&Received> = events.iter().filter(|e| e.kind() == "part").collect();
        let result = &events.last().unwrap().data["result"];
        match block {
            "quiz" => {
                assert_eq!(parts.len(), 3);
                let questions: Vec<Value> = parts.iter().map(|p| p.data["data"].clone()).collect();
                assert_eq!(result["questions"], Value::Array(questions), "parts are the result's questions");
                let last_chunk = events.iter().rposition(|e| e.kind() == "chunk").unwrap();
                let first_part = events.iter().position(|e| e.kind() == "part").unwrap();
                assert!(first_part < last_chunk / 2, "the first question arrives while the text still streams");
            }
            "diagram" => assert!(result["source"].as_str().unwrap().starts_with("flowchart TD")),
            _ => assert_eq!(result["markdown"], text_of(&events)),
        }
    }
}

#[tokio::test]
async fn the_spec_endpoint_streams_a_block_from_query_parameters() {
    let app = spawn_app(&[]).await;
    let mut reader = app.sse("/api/stream/ai-block/quiz?topic=volcanoes&count=2&difficulty=hard", &[]).await;
    assert_eq!(reader.status, 200);
    let events = reader.until_terminal().await;
    assert_contiguous(&events, 0);
    assert_eq!(events.iter().filter(|e| e.kind() == "part").count(), 2);
}

#[tokio::test]
async fn streamed_tokens_equal_the_whole_response_for_the_same_input() {
    let app = spawn_app(&[]).await;
    for (block, input) in sample_inputs() {
        let whole: Value = app.post_json(&format!("/api/ai-block/{block}"), &input).await.json().await.unwrap();
        let query = as_query(&input);
        let events = app.sse(&format!("/api/stream/ai-block/{block}?{query}"), &[]).await.until_terminal().await;
        assert_eq!(text_of(&events), whole["text"].as_str().unwrap(), "{block}");
        assert_eq!(events.last().unwrap().data["result"], whole["result"], "{block}");
    }
}

/// An uninterrupted run's events, for comparison.
async fn uninterrupted(app: &TestApp, input: &Value) -> Vec<Received> {
    let id = app.create_stream("ask-question", input.clone()).await;
    app.events_of(&id).await.until_terminal().await
}

fn payloads_without_ids(events: &[Received]) -> Vec<Value> {
    events
        .iter()
        .map(|e| {
            let mut data = e.data.clone();
            data.as_object_mut().unwrap().remove("stream_id");
            for timing in ["ttft_ms", "duration_ms"] {
                data.as_object_mut().unwrap().remove(timing);
            }
            data
        })
        .collect()
}

#[tokio::test]
async fn resume_after_a_cut_at_several_points_yields_the_uninterrupted_sequence() {
    // Coalescing off: each start must generate, so every run is compared with
    // the reference event for event (a replay of it would say `cached`).
    let app = spawn_app(&[("DEMO_TOKENS_PER_SECOND", "400"), ("COALESCE", "off")]).await;
    let input = json!({"question": "How do tides work?"});
    let reference = uninterrupted(&app, &input).await;
    for cut in [1, 2, 7, 30, reference.len() - 1] {
        for via_header in [true, false] {
            let id = app.create_stream("ask-question", input.clone()).await;
            let mut first = app.events_of(&id).await;
            let mut events = first.take(cut).await;
            drop(first);
            let last = events.last().unwrap().seq();
            let mut second = if via_header {
                app.sse(&format!("/api/streams/{id}/events"), &[("last-event-id", &format!("{id}:{last}"))]).await
            } else {
                app.sse(&format!("/api/streams/{id}/events?after={last}"), &[]).await
            };
            events.extend(second.until_terminal().await);
            assert_contiguous(&events, 0);
            assert_eq!(payloads_without_ids(&events), payloads_without_ids(&reference), "cut after {cut} events");
        }
    }
}

#[tokio::test]
async fn an_event_source_reconnect_resumes_the_same_generation_and_ends_with_204() {
    let app = spawn_app(&[("DEMO_TOKENS_PER_SECOND", "300")]).await;
    let url = "/api/stream/ai-block/explain-eli10?topic=magnets";
    let mut first = app.sse(url, &[]).await;
    let mut events = first.take(4).await;
    drop(first);
    // What a browser EventSource sends when it reconnects: the same URL plus the last id.
    let last_id = events.last().unwrap().id.clone();
    events.extend(app.sse(url, &[("last-event-id", &last_id)]).await.until_terminal().await);
    assert_contiguous(&events, 0);
    let stream_id = events[0].data["stream_id"].clone();
    assert!(events.iter().all(|e| e.data["stream_id"] == stream_id), "never a new generation");
    let done = app.sse(url, &[("last-event-id", &events.last().unwrap().id)]).await;
    assert_eq!(done.status, 204, "a client holding the terminal event is told to stop");
    assert_eq!(app.metric("live_ai_stream_outcomes_total", &[]).await, 1.0, "one generation in all");
}

#[tokio::test]
async fn two_readers_of_one_stream_see_the_same_events() {
    let app = spawn_app(&[("DEMO_TOKENS_PER_SECOND", "300")]).await;
    let id = app.create_stream("quiz", json!({"topic": "planets"})).await;
    let mut a = app.events_of(&id).await;
    let mut b = app.events_of(&id).await;
    let (a, b) = tokio::join!(a.until_terminal(), b.until_terminal());
    assert_contiguous(&a, 0);
    assert_eq!(payloads_without_ids(&a), payloads_without_ids(&b));
}

#[tokio::test]
async fn sse_responses_are_uncached_unbuffered_and_never_compressed() {
    let app = spawn_app(&[]).await;
    let id = app.create_stream("explain-eli10", json!({"topic": "rain"})).await;
    let mut reader = app.sse(&format!("/api/streams/{id}/events"), &[("accept-encoding", "gzip, br")]).await;
    assert_eq!(reader.headers["content-type"], "text/event-stream");
    assert_eq!(reader.headers["cache-control"], "no-cache");
    assert_eq!(reader.headers["x-accel-buffering"], "no");
    assert!(reader.headers.get("content-encoding").is_none());
    reader.until_terminal().await;
}

#[tokio::test]
async fn the_wire_format_has_a_retry_hint_ids_types_and_keep_alives() {
    let app = spawn_app(&[("DEMO_FIRST_TOKEN_MS", "300"), ("SSE_KEEPALIVE_SECONDS", "0.05"), ("SSE_RETRY_MS", "1500")]).await;
    let id = app.create_stream("explain-eli10", json!({"topic": "rain"})).await;
    let raw = app.get(&format!("/api/streams/{id}/events")).await.text().await.unwrap();
    assert!(raw.starts_with(": connected\nretry: 1500\n\n") || raw.starts_with("retry: 1500\n"), "{}", &raw[..80]);
    assert!(raw.contains(": keep-alive\n"), "keep-alive comments while the model thinks");
    assert!(raw.contains(&format!("id: {id}:0\nevent: start\ndata: {{")), "{}", &raw[..300]);
    let first_chunk = raw.find("event: chunk").unwrap();
    assert!(raw[..first_chunk].contains(": keep-alive"), "keep-alive came before the first token");
}

#[tokio::test]
async fn an_unknown_stream_gets_one_stream_not_found_event() {
    let app = spawn_app(&[]).await;
    let events = app.sse("/api/streams/nosuchstream/events?after=4", &[]).await.until_terminal().await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].data["code"], "stream_not_found");
    assert_eq!(events[0].seq(), 5);
}

#[tokio::test]
async fn a_retried_start_with_the_same_idempotency_key_attaches_to_the_same_generation() {
    let app = spawn_app(&[("DEMO_TOKENS_PER_SECOND", "100")]).await;
    let body = json!({"block_type": "explain-eli10", "input": {"topic": "clouds"}});
    let start = || app.http.post(app.url("/api/streams")).header("idempotency-key", "k-123").json(&body).send();
    let first = start().await.unwrap();
    let second = start().await.unwrap();
    assert_eq!((first.status().as_u16(), second.status().as_u16()), (201, 200));
    let (a, b): (Value, Value) = (first.json().await.unwrap(), second.json().await.unwrap());
    assert_eq!(a["stream_id"], b["stream_id"]);
    let other = json!({"block_type": "explain-eli10", "input": {"topic": "snow"}});
    let conflict = app.http.post(app.url("/api/streams")).header("idempotency-key", "k-123").json(&other).send().await.unwrap();
    assert_eq!(conflict.status(), 422);
    let problem: Value = conflict.json().await.unwrap();
    assert_eq!(problem["field"], "Idempotency-Key");
    assert_eq!(app.metric("live_ai_active_streams", &[]).await, 1.0, "one generation paid for");
}

#[tokio::test]
async fn an_expired_stream_is_not_found_at_a_seq_none_of_its_events_had() {
    // Room for about one finished ELI10 log: the first is evicted by the next ones.
    let app = spawn_app(&[("STREAM_RETENTION_MAX_BYTES", "9000")]).await;
    let first = app.create_stream("explain-eli10", json!({"topic": "moss"})).await;
    let events = app.events_of(&first).await.until_terminal().await;
    for n in 0..3 {
        let id = app.create_stream("explain-eli10", json!({"topic": format!("topic {n}")})).await;
        app.events_of(&id).await.until_terminal().await;
    }
    let gone = app.sse(&format!("/api/streams/{first}/events?after=2"), &[]).await.until_terminal().await;
    assert_eq!(gone[0].data["code"], "stream_not_found");
    assert_eq!(gone[0].seq(), events.len() as u64, "the seq after the log's last event, not after the client's");
}

/// A client that resumes an expired stream from an early seq gets one
/// `stream_not_found` at the seq after the log's last event (a seq above the last
/// it holds: not a gap), over SSE and WebSocket, and nothing else.
async fn an_expired_stream_ends_with_stream_not_found_after_its_logs_end(store: &[(&'static str, String)]) {
    let mut vars: Vec<(&str, &str)> = store.iter().map(|(k, v)| (*k, v.as_str())).collect();
    vars.push(("STREAM_RETENTION_SECONDS", "0.3"));
    let app = spawn_app(&vars).await;
    let id = app.create_stream("explain-eli10", json!({"topic": "tides"})).await;
    let last = app.events_of(&id).await.until_terminal().await.last().unwrap().seq();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let events = loop {
        let events = app.sse(&format!("/api/streams/{id}/events?after=3"), &[]).await.until_terminal().await;
        if events[0].kind() == "error" {
            break events;
        }
        assert!(tokio::time::Instant::now() < deadline, "the log expires");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(events.len(), 1);
    assert_eq!((events[0].data["code"].as_str(), events[0].seq()), (Some("stream_not_found"), last + 1));
    let by_header = app.sse(&format!("/api/streams/{id}/events"), &[("last-event-id", &format!("{id}:3"))]).await.until_terminal().await;
    assert_eq!(by_header[0].seq(), last + 1);
    let mut ws = app.ws().await;
    ws.send(json!({"type": "resume", "stream_id": id, "after": 3})).await;
    let event = ws.next().await;
    assert_eq!(
        (event["type"].as_str(), event["code"].as_str(), event["seq"].as_u64()),
        (Some("error"), Some("stream_not_found"), Some(last + 1))
    );
}

#[tokio::test]
async fn an_expired_stream_ends_with_stream_not_found_after_its_logs_end_in_memory() {
    an_expired_stream_ends_with_stream_not_found_after_its_logs_end(&[]).await;
}

#[tokio::test]
async fn an_expired_stream_ends_with_stream_not_found_after_its_logs_end_with_redis() {
    an_expired_stream_ends_with_stream_not_found_after_its_logs_end(&redis_deployment(&fresh_prefix())).await;
}
