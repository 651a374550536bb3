//! Cancel, disconnect grace, provider faults, retention and shutdown.

use std::time::Duration;

use eventsource_stream::Eventsource;
use futures::StreamExt;
use serde_json::{json, Value};

use crate::helpers::*;

#[tokio::test]
async fn cancel_stops_the_provider_and_reaches_every_reader() {
    let app = spawn_app(&[("DEMO_TOKENS_PER_SECOND", "50")]).await;
    let id = app.create_stream("ask-question", json!({"question": "What is a star?"})).await;
    let mut a = app.events_of(&id).await;
    let mut b = app.events_of(&id).await;
    let mut seen_a = a.take(3).await;
    let mut seen_b = b.take(3).await;
    assert_eq!(app.metric("live_ai_provider_streams_open", &[]).await, 1.0);
    let response = app.delete(&format!("/api/streams/{id}")).await;
    assert_eq!(response.status(), 202);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["state"], "cancelled");
    // The provider request is closed by the time the cancel is answered.
    assert_eq!(app.metric("live_ai_provider_streams_open", &[]).await, 0.0);
    seen_a.extend(a.until_terminal().await);
    seen_b.extend(b.until_terminal().await);
    for events in [&seen_a, &seen_b] {
        assert_contiguous(events, 0);
        assert_eq!(events.last().unwrap().kind(), "cancelled");
        assert_eq!(events.last().unwrap().data["reason"], "requested");
    }
    let again: Value = app.delete(&format!("/api/streams/{id}")).await.json().await.unwrap();
    assert_eq!(again["state"], "finished");
}

#[tokio::test]
async fn a_client_that_vanishes_causes_upstream_cancel_after_the_grace_period() {
    let app = spawn_app(&[("DEMO_TOKENS_PER_SECOND", "20"), ("STREAM_RESUME_GRACE_SECONDS", "0.3")]).await;
    let id = app.create_stream("ask-question", json!({"question": "Why do cats purr?"})).await;
    let mut reader = app.events_of(&id).await;
    let seen = reader.take(2).await;
    drop(reader);
    app.wait_for_metric("live_ai_stream_outcomes_total", &["outcome=\"cancelled_abandoned\""], |v| v == 1.0).await;
    assert_eq!(app.metric("live_ai_provider_streams_open", &[]).await, 0.0);
    let events = app.sse(&format!("/api/streams/{id}/events?after={}", seen[1].seq()), &[]).await.until_terminal().await;
    let last = events.last().unwrap();
    assert_eq!((last.kind(), last.data["reason"].as_str()), ("cancelled", Some("abandoned")));
}

#[tokio::test]
async fn a_client_that_comes_back_within_the_grace_period_finishes_the_same_generation() {
    let app = spawn_app(&[("DEMO_TOKENS_PER_SECOND", "100"), ("STREAM_RESUME_GRACE_SECONDS", "5")]).await;
    let id = app.create_stream("explain-eli10", json!({"topic": "wind"})).await;
    let mut reader = app.events_of(&id).await;
    let mut events = reader.take(3).await;
    drop(reader);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let last = events.last().unwrap().id.clone();
    events.extend(app.sse(&format!("/api/streams/{id}/events"), &[("last-event-id", &last)]).await.until_terminal().await);
    assert_contiguous(&events, 0);
    assert_eq!(events.last().unwrap().kind(), "complete");
}

#[tokio::test]
async fn at_a_grace_of_zero_a_stream_started_by_post_waits_for_its_reader_then_ends_as_soon_as_it_leaves() {
    let app = spawn_app(&[("DEMO_TOKENS_PER_SECOND", "20"), ("STREAM_RESUME_GRACE_SECONDS", "0")]).await;
    let id = app.create_stream("ask-question", json!({"question": "Why do cats purr?"})).await;
    let mut reader = app.events_of(&id).await;
    assert_eq!(kinds(&reader.take(3).await), ["start", "chunk", "chunk"], "the reader found its stream generating");
    drop(reader);
    app.wait_for_metric("live_ai_stream_outcomes_total", &["outcome=\"cancelled_abandoned\""], |v| v == 1.0).await;
    assert_eq!(app.metric("live_ai_provider_streams_open", &[]).await, 0.0);
}

#[tokio::test]
async fn a_stream_nobody_reads_is_abandoned_too() {
    // Slow enough to outlast the wait for a first reader (5 s, above this grace).
    let app = spawn_app(&[("DEMO_TOKENS_PER_SECOND", "5"), ("STREAM_RESUME_GRACE_SECONDS", "0.2")]).await;
    app.create_stream("explain-eli10", json!({"topic": "wind"})).await;
    app.wait_for_metric("live_ai_stream_outcomes_total", &["outcome=\"cancelled_abandoned\""], |v| v == 1.0).await;
}

#[tokio::test]
async fn a_provider_fault_mid_stream_gives_one_error_event_and_a_clean_close() {
    let app = spawn_app(&[("DEMO_FAIL_AFTER_TOKENS", "5")]).await;
    let id = app.create_stream("ask-question", json!({"question": "What is rust?"})).await;
    let events = app.events_of(&id).await.until_terminal().await;
    assert_contiguous(&events, 0);
    assert_eq!(events.iter().filter(|e| e.kind() == "chunk").count(), 5);
    let error = &events.last().unwrap().data;
    assert_eq!((error["code"].as_str(), error["retryable"].as_bool()), (Some("provider_error"), Some(true)));
}

#[tokio::test]
async fn a_stalled_provider_times_out_with_one_error_event() {
    let app = spawn_app(&[("DEMO_STALL_AFTER_TOKENS", "3"), ("PROVIDER_IDLE_TIMEOUT_SECONDS", "0.2")]).await;
    let id = app.create_stream("explain-eli10", json!({"topic": "snow"})).await;
    let events = app.events_of(&id).await.until_terminal().await;
    assert_contiguous(&events, 0);
    assert_eq!(events.last().unwrap().data["code"], "timeout");
    assert_eq!(app.metric("live_ai_provider_streams_open", &[]).await, 0.0);
}

#[tokio::test]
async fn finished_logs_stay_within_their_memory_bound_oldest_first() {
    // About five finished ELI10 logs fit in 40 KB.
    let app = spawn_app(&[("STREAM_RETENTION_MAX_BYTES", "40000")]).await;
    let mut ids = Vec::new();
    for n in 0..40 {
        let id = app.create_stream("explain-eli10", json!({"topic": format!("topic {n}")})).await;
        app.events_of(&id).await.until_terminal().await;
        ids.push(id);
        let retained = app.metric("live_ai_retained_log_bytes", &[]).await;
        assert!(retained > 0.0 && retained <= 40000.0, "retained {retained} bytes");
    }
    let oldest = app.events_of(&ids[0]).await.until_terminal().await;
    assert_eq!(oldest[0].data["code"], "stream_not_found", "the oldest log was evicted");
    let newest = app.events_of(&ids[39]).await.until_terminal().await;
    assert_eq!(newest.last().unwrap().kind(), "complete", "the newest log is still resumable");
}

#[tokio::test]
async fn shutdown_ends_every_open_stream_with_a_retryable_error_and_stops() {
    let app = spawn_app(&[("DEMO_TOKENS_PER_SECOND", "20"), ("SHUTDOWN_TIMEOUT_SECONDS", "2")]).await;
    let mut readers = Vec::new();
    for (block, input) in sample_inputs() {
        let id = app.create_stream(block, input).await;
        let mut reader = app.events_of(&id).await;
        reader.take(1).await;
        readers.push(reader);
    }
    let mut ws = app.ws().await;
    ws.send(json!({"type": "start", "block_type": "explain-eli10", "input": {"topic": "sun"}})).await;
    assert_eq!(ws.next().await["type"], "start");
    app.shutdown.cancel();
    for mut reader in readers {
        let events = reader.until_terminal().await;
        let last = &events.last().unwrap().data;
        assert_eq!((last["code"].as_str(), last["retryable"].as_bool()), (Some("generation_lost"), Some(true)));
    }
    let mut others = Vec::new();
    let terminal = loop {
        let value = ws.next().await;
        if value["type"] == "error" {
            break value;
        }
        others.push(value);
    };
    assert_eq!(terminal["code"], "generation_lost");
    let stopped = tokio::time::timeout(Duration::from_secs(10), app.server).await;
    assert!(stopped.is_ok(), "the server stops within its shutdown timeout");
}

#[tokio::test]
async fn a_websocket_client_that_stops_reading_is_dropped_without_slowing_others() {
    use futures::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    // Paced, so the readers below are mid-stream throughout; the send timeout is long
    // enough that the stuck client stays attached while the others are watched. A
    // transport test: without moderation's windows, events leave one by one, as the
    // stall's measurement below assumes, and a loaded machine keeps up with 100 streams.
    let app = spawn_app(&[("DEMO_TOKENS_PER_SECOND", "100"), ("CLIENT_SEND_TIMEOUT_SECONDS", "5"), ("MODERATION", "off")]).await;
    const SSE: &str = "transport=\"sse\"";
    const WEBSOCKET: &str = "transport=\"websocket\"";
    const SEND_TIMEOUT: &str = "reason=\"send_timeout\"";
    let app = &app;
    let sent = |transport: &'static str| async move { app.metric("live_ai_events_sent_total", &[transport]).await };

    // The others start first: two SSE readers of one long stream (~1,500 events: the
    // demo model repeats the many-worded topic in every question).
    let topic = "a b c d e f g h i j k l m n o p q r s t u v w x y z a b c d e f g h i j k l m n";
    let id = app.create_stream("quiz", json!({"topic": topic, "count": 10})).await;
    let (mut a, mut b) = (app.events_of(&id).await, app.events_of(&id).await);
    let (mut seen_a, mut seen_b) = (a.take(3).await, b.take(3).await);

    // Then a WebSocket client with a tiny receive buffer that never reads: it
    // follows the same stream and starts many more, so the server's writes to it
    // back up and its outbox fills.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(app.addr).await.unwrap();
    let (mut stuck, _) = tokio_tungstenite::client_async(format!("ws://{}/api/stream/ws", app.addr), stream).await.unwrap();
    stuck.send(Message::text(json!({"type": "resume", "stream_id": id}).to_string())).await.unwrap();
    for n in 0..100 {
        let start = json!({"type": "start", "block_type": "quiz", "input": {"topic": format!("topic {n}"), "count": 10}});
        stuck.send(Message::text(start.to_string())).await.unwrap();
    }

    // The stall: the WebSocket send counter (its only client is the stuck one)
    // stands still across a stretch in which the server hands the SSE readers events.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let stalled_at = loop {
        let (ws_before, sse_before) = (sent(WEBSOCKET).await, sent(SSE).await);
        seen_a.extend(a.take(5).await);
        seen_b.extend(b.take(5).await);
        let ws_after = sent(WEBSOCKET).await;
        if ws_after > 0.0 && ws_after == ws_before && sent(SSE).await >= sse_before + 10.0 {
            break ws_after;
        }
        assert!(tokio::time::Instant::now() < deadline, "the client that does not read never stalled the server's writes to it");
    };

    // During the stall the others keep receiving: the server hands them 40 more
    // events while it hands the stuck client none, and the stuck client is still
    // attached afterwards, so all of that happened while it was stalled.
    let sse_at_stall = sent(SSE).await;
    while sent(SSE).await < sse_at_stall + 40.0 {
        seen_a.extend(a.take(5).await);
        seen_b.extend(b.take(5).await);
    }
    assert_eq!(sent(WEBSOCKET).await, stalled_at, "the stuck client received nothing while the others did");
    assert_eq!(app.metric("live_ai_readers_dropped_total", &[SEND_TIMEOUT]).await, 0.0, "the stuck client was still attached meanwhile");

    // Then the server gives up on it, and the others go on, without a gap.
    app.wait_for_metric("live_ai_readers_dropped_total", &[SEND_TIMEOUT], |v| v >= 1.0).await;
    seen_a.extend(a.take(20).await);
    seen_b.extend(b.take(20).await);
    for events in [&seen_a, &seen_b] {
        let seqs: Vec<u64> = events.iter().map(Received::seq).collect();
        assert_eq!(seqs, (0..events.len() as u64).collect::<Vec<_>>(), "other readers get every event in order");
        assert!(events.iter().all(|e| !e.is_terminal()), "their stream was still running throughout");
    }
}

#[tokio::test]
async fn sigterm_ends_open_streams_with_a_retryable_error_and_the_process_exits() {
    let mut process = LiveAiProcess::spawn(&[("DEMO_TOKENS_PER_SECOND", "10"), ("SHUTDOWN_TIMEOUT_SECONDS", "3")]).await;
    let http = reqwest::Client::new();
    let response = http.get(format!("{}/api/stream/ai-block/explain-eli10?topic=sleep", process.base)).send().await.unwrap();
    let mut events = response.bytes_stream().eventsource();
    let first = tokio::time::timeout(PATIENCE, events.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(first.event, "start");
    process.terminate();
    let mut last = first;
    while let Some(Ok(event)) = tokio::time::timeout(PATIENCE, events.next()).await.expect("the stream ends in time") {
        last = event;
    }
    let data: Value = serde_json::from_str(&last.data).unwrap();
    assert_stream_event(&data);
    assert_eq!((data["code"].as_str(), data["retryable"].as_bool()), (Some("generation_lost"), Some(true)));
    let exit = tokio::time::timeout(Duration::from_secs(10), process.child.wait()).await.expect("exits within the shutdown timeout");
    assert!(exit.unwrap().success());
}
