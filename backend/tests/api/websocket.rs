//! WebSocket: every block, multiplexing, resume after a dropped socket, cancel,
//! idempotent start by `ref`.

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::*;

#[tokio::test]
async fn each_block_streams_over_one_socket_at_once_with_its_ref() {
    let app = spawn_app(&[("DEMO_TOKENS_PER_SECOND", "300")]).await;
    let mut ws = app.ws().await;
    for (n, (block, input)) in sample_inputs().into_iter().enumerate() {
        ws.send(json!({"type": "start", "block_type": block, "input": input, "ref": format!("r{n}")})).await;
    }
    let mut by_stream: std::collections::HashMap<String, Vec<Received>> = Default::default();
    let mut done = 0;
    while done < 4 {
        let value = ws.next().await;
        let event = Received { id: String::new(), data: value };
        if event.is_terminal() {
            done += 1;
        }
        by_stream.entry(event.data["stream_id"].as_str().unwrap().to_owned()).or_default().push(event);
    }
    assert_eq!(by_stream.len(), 4, "four streams multiplexed");
    for (n, (block, input)) in sample_inputs().into_iter().enumerate() {
        let events = by_stream.values().find(|e| e[0].data["ref"] == format!("r{n}")).expect("the start carries the ref");
        assert_contiguous(events, 0);
        assert_eq!(events[0].data["block_type"], block);
        assert_eq!(events.last().unwrap().kind(), "complete");
        let whole: Value = app.post_json(&format!("/api/ai-block/{block}"), &input).await.json().await.unwrap();
        assert_eq!(text_of(events), whole["text"].as_str().unwrap(), "{block}");
    }
}

#[tokio::test]
async fn resume_after_a_dropped_socket_yields_no_gap_or_duplicate() {
    let app = spawn_app(&[("DEMO_TOKENS_PER_SECOND", "400")]).await;
    let input = json!({"topic": "earthquakes", "count": 4});
    let reference = app.post_json("/api/ai-block/quiz", &input).await.json::<Value>().await.unwrap();
    for cut in [1, 3, 25, 80] {
        let mut ws = app.ws().await;
        ws.send(json!({"type": "start", "block_type": "quiz", "input": input})).await;
        let mut events = Vec::new();
        for _ in 0..cut {
            events.push(Received { id: String::new(), data: ws.next().await });
        }
        drop(ws);
        let stream_id = events[0].data["stream_id"].as_str().unwrap().to_owned();
        let mut ws = app.ws().await;
        ws.send(json!({"type": "resume", "stream_id": stream_id, "after": events.last().unwrap().seq()})).await;
        events.extend(ws.until_terminal(&stream_id, &mut Vec::new()).await);
        assert_contiguous(&events, 0);
        assert_eq!(text_of(&events), reference["text"].as_str().unwrap(), "cut after {cut}");
        assert_eq!(events.iter().filter(|e| e.kind() == "part").count(), 4);
    }
}

#[tokio::test]
async fn cancel_over_the_socket_ends_the_stream_and_closes_the_provider() {
    let app = spawn_app(&[("DEMO_TOKENS_PER_SECOND", "30")]).await;
    let mut ws = app.ws().await;
    ws.send(json!({"type": "start", "block_type": "ask-question", "input": {"question": "What is soil?"}})).await;
    let start = ws.next().await;
    let stream_id = start["stream_id"].as_str().unwrap().to_owned();
    let sse_id = stream_id.clone();
    let mut sse_reader = app.events_of(&sse_id).await;
    ws.next().await;
    ws.send(json!({"type": "cancel", "stream_id": stream_id})).await;
    let events = ws.until_terminal(&stream_id, &mut Vec::new()).await;
    assert_eq!(events.last().unwrap().kind(), "cancelled");
    let sse_events = sse_reader.until_terminal().await;
    assert_eq!(sse_events.last().unwrap().kind(), "cancelled", "the other reader sees the cancel too");
    app.wait_for_metric("live_ai_provider_streams_open", &[], |v| v == 0.0).await;
}

#[tokio::test]
async fn a_repeated_start_with_the_same_ref_attaches_instead_of_paying_twice() {
    let app = spawn_app(&[("DEMO_TOKENS_PER_SECOND", "100")]).await;
    let start = json!({"type": "start", "block_type": "explain-eli10", "input": {"topic": "tea"}, "ref": "same-ref"});
    let mut first = app.ws().await;
    first.send(start.clone()).await;
    let a = first.next().await;
    let mut second = app.ws().await;
    second.send(start).await;
    let b = second.next().await;
    assert_eq!(a["stream_id"], b["stream_id"]);
    assert_eq!((a["type"].as_str(), b["ref"].as_str()), (Some("start"), Some("same-ref")));
    assert_eq!(app.metric("live_ai_active_streams", &[]).await, 1.0);
}

#[tokio::test]
async fn resuming_an_unknown_stream_gets_stream_not_found() {
    let app = spawn_app(&[]).await;
    let mut ws = app.ws().await;
    ws.send(json!({"type": "resume", "stream_id": "nosuchstream", "after": 2})).await;
    let event = ws.next().await;
    assert_eq!((event["type"].as_str(), event["code"].as_str(), event["seq"].as_u64()), (Some("error"), Some("stream_not_found"), Some(3)));
}

#[tokio::test]
async fn an_idle_socket_gets_keep_alive_messages() {
    let app = spawn_app(&[("SSE_KEEPALIVE_SECONDS", "0.05")]).await;
    let mut ws = app.ws().await;
    ws.skip_keep_alives = false;
    assert_eq!(ws.next().await, json!({"type": "keep_alive"}));
    assert_eq!(ws.next().await, json!({"type": "keep_alive"}));
}

#[tokio::test]
async fn a_close_mid_replay_is_answered_at_once_and_frees_the_sockets_readers() {
    // A send timeout far beyond the test's patience: a Close that waited for it fails the test.
    // Output moderation only, async: chunks flow at the model's pace, not held
    // for windows (and the word filter would read the input's "x x x" as "xxx").
    let app = spawn_app(&[
        ("DEMO_TOKENS_PER_SECOND", "50"),
        ("CLIENT_SEND_TIMEOUT_SECONDS", "120"),
        ("MODERATION", "output"),
        ("MODERATION_OUTPUT_MODE", "async"),
    ])
    .await;
    let mut ids = Vec::new();
    for n in 0..8 {
        let id = app.create_stream("ask-question", json!({"question": format!("Question {n}?"), "context": "x ".repeat(500)})).await;
        // Ten events each: the eight generations (about 150 events each) must all
        // still run when the socket resumes them.
        app.events_of(&id).await.take(10).await;
        ids.push(id);
    }
    let mut ws = app.ws().await;
    for id in &ids {
        ws.send(json!({"type": "resume", "stream_id": id, "after": null})).await;
    }
    app.wait_for_metric("live_ai_attached_readers", &[], |v| v >= 8.0).await;
    ws.socket.send(Message::Close(None)).await.unwrap();
    let answer = tokio::time::timeout(PATIENCE, async {
        loop {
            match ws.socket.next().await {
                Some(Ok(Message::Close(_))) => return "close frame",
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return "connection dropped without a close frame",
            }
        }
    })
    .await;
    assert_eq!(answer, Ok("close frame"), "the server answered the Close");
    app.wait_for_metric("live_ai_attached_readers", &[], |v| v == 0.0).await;
    assert_eq!(app.metric("live_ai_active_streams", &[]).await, 8.0, "the generations go on, resumable");
}
