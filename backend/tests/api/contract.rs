//! The contract file, the OpenAPI document and the config endpoint.

use serde_json::{json, Value};

use crate::helpers::*;

#[test]
fn the_contract_accepts_good_events_and_rejects_bad_ones() {
    let validator = schema_validator("StreamEvent");
    let good = json!({"type": "chunk", "stream_id": "abc", "seq": 1, "token": "Hi"});
    assert!(validator.is_valid(&good));
    for bad in [
        json!({"type": "chunk", "stream_id": "abc", "seq": 1}),
        json!({"type": "chunk", "stream_id": "abc", "seq": -1, "token": "x"}),
        json!({"type": "chunk", "stream_id": "abc", "seq": 1, "token": "x", "extra": true}),
        json!({"type": "error", "stream_id": "abc", "seq": 1, "code": "oops", "message": "m", "retryable": true}),
        json!({"type": "part", "stream_id": "abc", "seq": 1, "kind": "quiz_question", "index": 0, "data": {"question": "q", "choices": ["a"], "answer_index": 0, "explanation": "e"}}),
        json!({"type": "finish", "stream_id": "abc", "seq": 1}),
    ] {
        assert!(!validator.is_valid(&bad), "{bad}");
    }
}

#[tokio::test]
async fn the_openapi_document_lists_every_http_endpoint() {
    let app = spawn_app(&[]).await;
    let doc: Value = app.get("/api/openapi.json").await.json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let mut paths = vec![
        "/api/streams".to_owned(),
        "/api/streams/{stream_id}/events".into(),
        "/api/streams/{stream_id}".into(),
        "/api/stream/ws".into(),
        "/api/ai/config".into(),
        "/api/usage".into(),
        "/healthz".into(),
        "/metrics".into(),
    ];
    // One start operation per block, each with that block's input.
    for (block, _) in sample_inputs() {
        paths.push(format!("/api/stream/ai-block/{block}"));
        paths.push(format!("/api/ai-block/{block}"));
    }
    for path in &paths {
        assert!(doc["paths"].get(path).is_some(), "{path} is documented");
    }
    let quiz = &doc["paths"]["/api/ai-block/quiz"]["post"];
    assert_eq!(quiz["requestBody"]["content"]["application/json"]["schema"]["required"], json!(["topic"]));
    assert!(quiz["responses"]["429"]["content"]["application/problem+json"].is_object());
}

#[tokio::test]
async fn config_health_and_metrics_answer() {
    let app = spawn_app(&[("STREAMING_BACKEND", "websocket")]).await;
    let config: Value = app.get("/api/ai/config").await.json().await.unwrap();
    assert_eq!(config["streaming_enabled"], true);
    assert_eq!(config["streaming_backend"], "websocket");
    assert_eq!(config["provider"], "demo");
    assert_eq!(config["demo"], true);
    assert_eq!(config["blocks"], json!(["ask-question", "explain-eli10", "quiz", "diagram"]));
    let health: Value = app.get("/healthz").await.json().await.unwrap();
    assert_eq!(health["status"], "ok");
    let id = app.create_stream("explain-eli10", json!({"topic": "salt"})).await;
    app.events_of(&id).await.until_terminal().await;
    let metrics = app.get("/metrics").await.text().await.unwrap();
    for name in
        ["live_ai_active_streams", "live_ai_events_sent_total", "live_ai_time_to_first_token_seconds", "live_ai_stream_outcomes_total"]
    {
        assert!(metrics.contains(name), "{name} in /metrics");
    }
    assert!(app.metric("live_ai_events_sent_total", &["transport=\"sse\""]).await > 5.0);
    assert_eq!(app.metric("live_ai_stream_outcomes_total", &["block=\"explain-eli10\"", "outcome=\"complete\""]).await, 1.0);
}

#[test]
fn every_client_message_the_server_decodes_is_one_the_contract_describes() {
    let messages = [
        ("ClientAuth", json!({"type": "auth", "token": "t"})),
        ("ClientStart", json!({"type": "start", "block_type": "quiz", "input": {"topic": "x"}, "ref": "r"})),
        ("ClientResume", json!({"type": "resume", "stream_id": "abc", "after": 3})),
        ("ClientCancel", json!({"type": "cancel", "stream_id": "abc"})),
        ("ClientDetach", json!({"type": "detach", "stream_id": "abc"})),
    ];
    for (schema, message) in messages {
        assert!(schema_validator(schema).is_valid(&message), "{schema}: {message}");
        assert!(live_ai::api::ws_messages::decode(&message.to_string()).is_ok(), "the server decodes {message}");
    }
    assert!(!schema_validator("ClientDetach").is_valid(&json!({"type": "detach", "stream_id": "abc", "after": 1})));
}
