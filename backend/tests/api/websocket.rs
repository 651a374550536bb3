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

#[tokio::test]
async fn a_close_mid_replay_of_eight_finished_quizzes_is_answered_at_once() {
    // The demo model unpaced: eight quizzes of ten questions, finished, then replayed.
    let app = spawn_app(&[("CLIENT_SEND_TIMEOUT_SECONDS", "120")]).await;
    let mut ws = app.ws().await;
    for n in 0..8 {
        ws.send(
            json!({"type": "start", "block_type": "quiz", "input": {"topic": format!("topic {n}"), "count": 10}, "ref": format!("q{n}")}),
        )
        .await;
    }
    let (mut ids, mut replay_len) = (Vec::new(), 0);
    while ids.len() < 8 {
        let event = Received { id: String::new(), data: ws.next().await };
        if event.is_terminal() {
            ids.push(event.data["stream_id"].as_str().unwrap().to_owned());
            replay_len += event.seq() + 1;
        }
    }
    drop(ws);
    let mut ws = app.ws().await;
    for id in &ids {
        ws.send(json!({"type": "resume", "stream_id": id})).await;
    }
    for _ in 0..5 {
        ws.next().await;
    }
    ws.socket.send(Message::Close(None)).await.unwrap();
    let sent = tokio::time::Instant::now();
    // Not a speed assertion: a bound far under the old 10 s, so a Close that waits
    // for the queued replay (or a timeout) fails.
    let mut after_close = 0u64;
    let answer = tokio::time::timeout(std::time::Duration::from_secs(2), async {
        loop {
            match ws.socket.next().await {
                Some(Ok(Message::Close(_))) => return "close frame",
                Some(Ok(Message::Text(_))) => after_close += 1,
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return "connection dropped without a close frame",
            }
        }
    })
    .await;
    assert_eq!(answer, Ok("close frame"), "the server answered the Close ({:?} after it was sent)", sent.elapsed());
    println!("{after_close} of {replay_len} replayed events came after the Close, answered in {:?}", sent.elapsed());
    // What was already on its way comes first; the rest of the replay never does.
    assert!(after_close + 5 < replay_len, "the whole replay ({after_close} of {replay_len} events) was sent before the answer");
}

#[tokio::test]
async fn detach_stops_a_stream_on_the_socket_and_frees_its_slot_while_the_generation_goes_on() {
    let app = spawn_app(&[("LIMIT_STREAMS_PER_SOCKET", "1"), ("DEMO_TOKENS_PER_SECOND", "20")]).await;
    let mut ws = app.ws().await;
    ws.send(json!({"type": "start", "block_type": "explain-eli10", "input": {"topic": "moss"}, "ref": "a"})).await;
    let a = ws.next().await["stream_id"].as_str().unwrap().to_owned();
    ws.send(json!({"type": "start", "block_type": "explain-eli10", "input": {"topic": "ferns"}, "ref": "b"})).await;
    let full = loop {
        let message = ws.next().await;
        if message["type"] == "protocol_error" {
            break message;
        }
    };
    assert_eq!((full["code"].as_str(), full["ref"].as_str()), (Some("rate_limited"), Some("b")), "one stream fills this socket");
    ws.send(json!({"type": "detach", "stream_id": a})).await;
    // Detaching what the socket does not read is no error; a malformed id is.
    ws.send(json!({"type": "detach", "stream_id": "not-read-here"})).await;
    ws.send(json!({"type": "detach", "stream_id": "not a stream id"})).await;
    let mut after_detach = Vec::new();
    let refused = loop {
        let message = ws.next().await;
        if message["type"] == "protocol_error" {
            break message;
        }
        after_detach.push(message);
    };
    assert_eq!((refused["code"].as_str(), refused["field"].as_str()), (Some("bad_request"), Some("stream_id")), "{refused}");
    ws.send(json!({"type": "start", "block_type": "explain-eli10", "input": {"topic": "ferns"}, "ref": "c"})).await;
    let start = loop {
        let message = ws.next().await;
        if message["type"] == "start" {
            break message;
        }
        after_detach.push(message);
    };
    assert_eq!(start["ref"], "c", "the detached stream's slot is free");
    let c = start["stream_id"].as_str().unwrap().to_owned();
    let mut others = Vec::new();
    ws.until_terminal(&c, &mut others).await;
    assert!(others.is_empty() && after_detach.iter().all(|m| m["stream_id"] == a.as_str()), "{others:?}");
    // The generation went on without a reader: it is complete, not abandoned.
    let events = app.events_of(&a).await.until_terminal().await;
    assert_contiguous(&events, 0);
    assert_eq!(events.last().unwrap().kind(), "complete");
}

/// What one session of a client that fans a socket's stream out to its sessions
/// accepts: from `after` + 1 on, in order; lower seqs are duplicates it holds.
struct Session {
    next: u64,
    events: Vec<Received>,
}

impl Session {
    fn new(after: u64) -> Self {
        Self { next: after + 1, events: Vec::new() }
    }

    fn offer(&mut self, event: &Received) {
        if event.seq() == self.next {
            self.next += 1;
            self.events.push(event.clone());
        }
    }
}

#[tokio::test]
async fn two_resumes_of_one_stream_on_one_socket_deliver_every_event_from_each_position_in_order_and_the_terminal_once() {
    let app = spawn_app(&[("DEMO_TOKENS_PER_SECOND", "100")]).await;
    for (first, second) in [(2, 40), (40, 2)] {
        let id = app.create_stream("quiz", json!({"topic": "rivers", "count": 3})).await;
        // The stream is live, some way in: both positions are in its log.
        let mut sse = app.events_of(&id).await;
        sse.take(45).await;
        let mut ws = app.ws().await;
        ws.send(json!({"type": "resume", "stream_id": id, "after": first})).await;
        ws.send(json!({"type": "resume", "stream_id": id, "after": second})).await;
        let wire = ws.until_terminal(&id, &mut Vec::new()).await;
        let terminal = sse.until_terminal().await.last().unwrap().seq();
        assert_eq!(wire.iter().filter(|e| e.is_terminal()).count(), 1, "one reader, so one terminal on the wire");
        let (mut a, mut b) = (Session::new(first), Session::new(second));
        for event in &wire {
            a.offer(event);
            b.offer(event);
        }
        for (session, after) in [(&a, first), (&b, second)] {
            assert_eq!(session.events.first().map(Received::seq), Some(after + 1), "resumed after {after} then {second}");
            assert_contiguous(&session.events, after + 1);
            assert_eq!(session.events.last().unwrap().seq(), terminal, "the reader after {after} was not silenced");
        }
    }
}

#[tokio::test]
async fn a_resume_ahead_of_a_reader_still_behind_in_the_log_does_not_skip_that_readers_events() {
    let app = spawn_app(&[("CLIENT_SEND_TIMEOUT_SECONDS", "120")]).await;
    let finished_quiz = |topic: String| {
        let app = &app;
        async move {
            let id = app.create_stream("quiz", json!({"topic": topic, "count": 10})).await;
            let last = app.events_of(&id).await.until_terminal().await.last().unwrap().seq();
            (id, last)
        }
    };
    let mut fillers = Vec::new();
    for n in 0..8 {
        fillers.push(finished_quiz(format!("filler {n}")).await.0);
    }
    let (id, last) = finished_quiz("rivers".into()).await;
    let mut ws = app.ws().await;
    // Replays that fill the socket while this client reads nothing: the reader of
    // `id` opened next waits behind them, at the start of its log.
    for filler in &fillers {
        ws.send(json!({"type": "resume", "stream_id": filler})).await;
    }
    let ahead = last - 20;
    ws.send(json!({"type": "resume", "stream_id": id, "after": 2})).await;
    ws.send(json!({"type": "resume", "stream_id": id, "after": ahead})).await;
    let wire = ws.until_terminal(&id, &mut Vec::new()).await;
    assert_eq!(wire.iter().filter(|e| e.is_terminal()).count(), 1);
    let (mut behind, mut front) = (Session::new(2), Session::new(ahead));
    for event in &wire {
        behind.offer(event);
        front.offer(event);
    }
    assert_contiguous(&behind.events, 3);
    assert_contiguous(&front.events, ahead + 1);
}
