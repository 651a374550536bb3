//! Child safety: moderation in the streaming layer, against real servers and
//! real clients. The demo model streams a flagged sentence mid-answer
//! (`DEMO_INJECT_TEXT`); remote moderators are fake servers on loopback that
//! replay the moderation APIs' bodies byte for byte. What readers received is
//! checked as raw bytes, so "no byte of it" means exactly that.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use futures::StreamExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::fake_upstream::{fixture, fixture_in, FakeUpstream, RecordedRequest, Reply};
use crate::helpers::*;

/// What the demo model is made to say mid-answer: the local filter flags it.
const FLAGGED: &str = "You are a worthless piece of shit.";
/// Words of it that must never reach a reader in buffered mode.
const FLAGGED_WORDS: [&str; 2] = ["worthless", "shit"];

/// Settings of a server whose demo model says [`FLAGGED`] after 60 tokens
/// (past the first windows, so some text passes before it).
fn injecting<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut vars = vec![("DEMO_INJECT_TEXT", FLAGGED), ("DEMO_INJECT_AFTER_TOKENS", "60"), ("DEMO_TOKENS_PER_SECOND", "400")];
    vars.extend_from_slice(extra);
    vars
}

fn question() -> Value {
    json!({"question": "Why do leaves change colour in autumn?"})
}

/// The whole body of an SSE response (it ends after the terminal event).
async fn raw_sse(api: &ApiClient, path: &str, headers: &[(&str, &str)]) -> String {
    let mut request = api.http.get(api.url(path)).header("accept", "text/event-stream");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = tokio::time::timeout(PATIENCE, request.send()).await.expect("an answer in time").unwrap();
    tokio::time::timeout(PATIENCE, response.text()).await.expect("the stream ends in time").unwrap()
}

/// The events of a raw SSE body, each checked against the contract.
fn events_in(body: &str) -> Vec<Value> {
    body.split("\n\n")
        .filter_map(|block| block.lines().find_map(|line| line.strip_prefix("data: ")))
        .map(|data| {
            let event: Value = serde_json::from_str(data).expect("SSE data is JSON");
            assert_stream_event(&event);
            event
        })
        .collect()
}

/// Every text frame a WebSocket gets for `stream_id`, resumed from its start, up to the terminal event.
async fn raw_ws(api: &ApiClient, stream_id: &str) -> String {
    let mut ws = api.ws().await;
    ws.send(json!({"type": "resume", "stream_id": stream_id, "after": null})).await;
    let mut frames = String::new();
    loop {
        let message = tokio::time::timeout(PATIENCE, ws.socket.next()).await.expect("a frame in time").expect("open").expect("healthy");
        let Message::Text(text) = message else { continue };
        frames.push_str(&text);
        frames.push_str("\n\n");
        let value: Value = serde_json::from_str(&text).unwrap();
        if value["stream_id"] == stream_id && matches!(value["type"].as_str(), Some("error" | "complete" | "cancelled")) {
            return frames;
        }
    }
}

fn ws_events(frames: &str) -> Vec<Value> {
    frames
        .split("\n\n")
        .filter(|f| !f.is_empty())
        .map(|f| serde_json::from_str::<Value>(f).unwrap())
        .filter(|v| v.get("seq").is_some())
        .inspect(assert_stream_event)
        .collect()
}

fn types(events: &[Value]) -> Vec<&str> {
    events.iter().map(|e| e["type"].as_str().unwrap()).collect()
}

fn assert_no_flagged_byte(bytes: &str, reader: &str) {
    for word in FLAGGED_WORDS {
        assert!(!bytes.contains(word), "{reader} received `{word}`:\n{bytes}");
    }
}

/// Checks a buffered reader's events: some text passed, then `output_flagged`.
fn assert_stopped_before_the_flagged_window(events: &[Value], reader: &str) {
    let last = events.last().expect("events");
    assert_eq!((last["type"].as_str(), last["code"].as_str()), (Some("error"), Some("output_flagged")), "{reader}: {last}");
    assert_eq!(last["retryable"], false);
    assert!(last["categories"].as_array().unwrap().contains(&json!("profanity")), "{last}");
    assert!(last.get("retract").is_none(), "buffered mode has nothing to retract: {last}");
    assert!(types(events).contains(&"chunk"), "{reader}: the text before the flagged window passed");
}

#[tokio::test]
async fn buffered_output_keeps_a_flagged_sentence_from_every_byte_any_reader_or_replay_gets() {
    let app = spawn_app(&injecting(&[])).await;
    let id = app.create_stream("ask-question", question()).await;
    let path = format!("/api/streams/{id}/events");
    let (sse, ws) = tokio::join!(raw_sse(&app, &path, &[]), raw_ws(&app, &id));
    assert_no_flagged_byte(&sse, "the SSE reader");
    assert_no_flagged_byte(&ws, "the WebSocket reader");
    assert_stopped_before_the_flagged_window(&events_in(&sse), "SSE");
    assert_stopped_before_the_flagged_window(&ws_events(&ws), "WebSocket");
    // A replay from the start and a resume from the middle, once it ended.
    let replay = raw_sse(&app, &format!("{path}?after=0"), &[]).await;
    let resume = raw_sse(&app, &path, &[("last-event-id", &format!("{id}:2"))]).await;
    for (bytes, reader) in [(&replay, "a replay"), (&resume, "a resume")] {
        assert_no_flagged_byte(bytes, reader);
        assert_eq!(events_in(bytes).last().unwrap()["code"], "output_flagged");
    }
    let flags =
        app.metric("live_ai_moderation_flags_total", &["stage=\"output\"", "category=\"profanity\"", "block=\"ask-question\""]).await;
    assert_eq!(flags, 1.0);
    app.wait_for_metric("live_ai_provider_streams_open", &[], |open| open == 0.0).await;
}

#[tokio::test]
async fn buffered_quiz_parts_pass_only_with_their_text_and_none_after_the_flag() {
    let app = spawn_app(&injecting(&[("DEMO_INJECT_AFTER_TOKENS", "90")])).await;
    let id = app.create_stream("quiz", json!({"topic": "volcanoes", "count": 4})).await;
    let body = raw_sse(&app, &format!("/api/streams/{id}/events"), &[]).await;
    assert_no_flagged_byte(&body, "the quiz reader");
    let events = events_in(&body);
    assert_eq!(events.last().unwrap()["code"], "output_flagged");
    let mut text = String::new();
    let mut parts = 0;
    for event in &events {
        match event["type"].as_str().unwrap() {
            "chunk" => text.push_str(event["token"].as_str().unwrap()),
            "part" => {
                parts += 1;
                let question = event["data"]["question"].as_str().unwrap();
                assert!(text.contains(&serde_json::to_string(question).unwrap()[1..question.len()]), "a part before its text: {question}");
            }
            _ => {}
        }
    }
    assert!(parts < 4, "the parts after the flagged window never came");
}

#[tokio::test]
async fn async_output_retracts_for_every_reader_and_a_replay_holds_only_start_and_the_terminal_event() {
    let app = spawn_app(&injecting(&[("MODERATION_OUTPUT_MODE", "async"), ("DEMO_TOKENS_PER_SECOND", "200")])).await;
    let id = app.create_stream("ask-question", question()).await;
    let path = format!("/api/streams/{id}/events");
    let (sse, ws) = tokio::join!(raw_sse(&app, &path, &[]), raw_ws(&app, &id));
    for (events, reader) in [(events_in(&sse), "SSE"), (ws_events(&ws), "WebSocket")] {
        let last = events.last().unwrap();
        assert_eq!((last["code"].as_str(), last["retract"].as_bool()), (Some("output_flagged"), Some(true)), "{reader}: {last}");
        assert!(types(&events).contains(&"chunk"), "{reader}: async mode showed text before the flag");
    }
    let terminal_seq = events_in(&sse).last().unwrap()["seq"].clone();
    for (path, headers) in
        [(path.clone(), vec![]), (format!("{path}?after=0"), vec![]), (path.clone(), vec![("last-event-id", format!("{id}:3"))])]
    {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let replay = raw_sse(&app, &path, &headers).await;
        assert_no_flagged_byte(&replay, "a replay");
        let events = events_in(&replay);
        assert!(types(&events).iter().all(|t| *t == "start" || *t == "error"), "{:?}", types(&events));
        assert_eq!(events.last().unwrap()["seq"], terminal_seq, "the terminal event keeps its seq");
    }
    assert_eq!(types(&ws_events(&raw_ws(&app, &id).await)), ["start", "error"]);
}

/// Two processes of one deployment on the machine's Redis.
async fn two_processes(vars: &[(&str, &str)]) -> (LiveAiProcess, LiveAiProcess) {
    let deployment = redis_deployment(&fresh_prefix());
    let mut all: Vec<(&str, &str)> = deployment.iter().map(|(k, v)| (*k, v.as_str())).collect();
    all.extend_from_slice(vars);
    let mut processes = join_all([LiveAiProcess::spawn(&all), LiveAiProcess::spawn(&all)]).await;
    let b = processes.pop().unwrap();
    (processes.pop().unwrap(), b)
}

#[tokio::test]
async fn buffered_output_keeps_a_flagged_sentence_from_a_resume_on_another_process() {
    let (a, b) = two_processes(&injecting(&[("DEMO_TOKENS_PER_SECOND", "100")])).await;
    let id = a.create_stream("ask-question", question()).await;
    let mut first = a.events_of(&id).await;
    let start = first.take(1).await;
    drop(first);
    let path = format!("/api/streams/{id}/events");
    let resumed = raw_sse(&b, &path, &[("last-event-id", &start[0].id)]).await;
    assert_no_flagged_byte(&resumed, "the reader that resumed on the other process");
    assert_stopped_before_the_flagged_window(&events_in(&resumed), "resume elsewhere");
    for process in [&a, &b] {
        let replay = raw_sse(process, &format!("{path}?after=0"), &[]).await;
        assert_no_flagged_byte(&replay, "a replay");
    }
}

#[tokio::test]
async fn async_retraction_reaches_readers_on_another_process_and_redacts_the_redis_log() {
    let (a, b) = two_processes(&injecting(&[("MODERATION_OUTPUT_MODE", "async"), ("DEMO_TOKENS_PER_SECOND", "100")])).await;
    assert_retraction_reaches_both_and_redacts_the_log(&a, &b).await;
}

#[tokio::test]
async fn on_a_cluster_async_retraction_reaches_readers_on_another_process_and_redacts_the_log() {
    let mut deployment = crate::scale_out::Deployment::on_cluster(&crate::cluster::cluster().urls(), 100);
    for (name, value) in injecting(&[("MODERATION_OUTPUT_MODE", "async"), ("DEMO_TOKENS_PER_SECOND", "100")]) {
        deployment = deployment.with(name, value);
    }
    let [a, b]: [LiveAiProcess; 2] = deployment.processes(2).await.try_into().ok().unwrap();
    assert_retraction_reaches_both_and_redacts_the_log(&a, &b).await;
}

/// A stream generated on `a` and retracted: its readers on both processes get
/// the retraction, and every later replay holds only `start` and it.
async fn assert_retraction_reaches_both_and_redacts_the_log(a: &LiveAiProcess, b: &LiveAiProcess) {
    let id = a.create_stream("ask-question", question()).await;
    let path = format!("/api/streams/{id}/events");
    let (on_a, on_b) = tokio::join!(raw_sse(a, &path, &[]), raw_sse(b, &path, &[]));
    for body in [&on_a, &on_b] {
        let last = events_in(body).last().unwrap().clone();
        assert_eq!((last["code"].as_str(), last["retract"].as_bool()), (Some("output_flagged"), Some(true)), "{last}");
    }
    for process in [a, b] {
        let replay = raw_sse(process, &format!("{path}?after=0"), &[]).await;
        assert_no_flagged_byte(&replay, "a replay");
        assert_eq!(types(&events_in(&replay)), ["error"], "after seq 0, only the terminal event is left");
        assert_eq!(types(&events_in(&raw_sse(process, &path, &[]).await)), ["start", "error"]);
    }
}

/// A fake OpenAI moderation API: `flagged` for input containing `word`, clean otherwise, after `delay`.
/// A string `input` gets OpenAI's single answer byte for byte; an array (batched checks) gets
/// one entry per text, in order, taken from the two-input answer
/// (`openai_moderation_batch.json`: clean, then flagged).
async fn openai_moderation(word: &'static str, delay: Duration) -> FakeUpstream {
    let clean = String::from_utf8(fixture_in("moderation", "openai_moderation_clean.json")).unwrap();
    let flagged = String::from_utf8(fixture_in("moderation", "openai_moderation_flagged.json")).unwrap();
    FakeUpstream::start_with(Arc::new(move |request: &RecordedRequest| {
        let body: Value = serde_json::from_slice(&request.body).unwrap_or_default();
        let reply = match &body["input"] {
            Value::Array(texts) => batch_answer_flagging(word, texts),
            text if text.as_str().unwrap_or_default().contains(word) => flagged.clone(),
            _ => clean.clone(),
        };
        Reply::status(200, &[], reply).after(delay)
    }))
    .await
}

/// The two `results` entries of OpenAI's two-input answer: clean, then flagged.
fn batch_entries() -> [Value; 2] {
    let answer: Value = serde_json::from_slice(&fixture_in("moderation", "openai_moderation_batch.json")).unwrap();
    answer["results"].as_array().unwrap().clone().try_into().unwrap()
}

/// The answer to the array `input` `texts`: flagged where a text contains `word`, clean elsewhere.
fn batch_answer_flagging(word: &str, texts: &[Value]) -> String {
    let [clean_entry, flagged_entry] = batch_entries();
    batch_answer(
        texts.iter().map(|text| if text.as_str().unwrap().contains(word) { flagged_entry.clone() } else { clean_entry.clone() }).collect(),
    )
}

/// An answer to an array `input`, in the shape of OpenAI's.
fn batch_answer(results: Vec<Value>) -> String {
    json!({"id": "modr-5c2e9a1d7b3f4e608a9d1c2b3e4f5a6b", "model": "omni-moderation-latest", "results": results}).to_string()
}

/// Settings of a server that checks only input through `moderator`, gathering
/// up to `max` checks for as long as a second: a full batch leaves at once, so
/// the test never waits the second out.
fn batching_input_checks(moderator: &FakeUpstream, max: &'static str) -> Vec<(&'static str, String)> {
    vec![
        ("MODERATION", "input".into()),
        ("MODERATION_PROVIDER", "openai".into()),
        ("MODERATION_BASE_URL", format!("{}/v1", moderator.url())),
        ("MODERATION_BATCH_WAIT_MS", "1000".into()),
        ("MODERATION_BATCH_MAX", max.into()),
    ]
}

#[tokio::test]
async fn checks_of_streams_started_together_share_one_moderation_request_and_each_stream_gets_its_own_verdict() {
    let moderator = openai_moderation("kill", Duration::ZERO).await;
    let vars = batching_input_checks(&moderator, "3");
    let app = spawn_app(&vars.iter().map(|(k, v)| (*k, v.as_str())).collect::<Vec<_>>()).await;
    let questions = ["Why is the sky blue?", "I want to kill them.", "How do bees make honey?"];
    let ids = join_all(questions.map(|question| app.create_stream("ask-question", json!({"question": question})))).await;
    let endings = join_all(ids.iter().map(|id| async { app.events_of(id).await.until_terminal().await })).await;
    for (question, events) in questions.iter().zip(&endings) {
        let last = &events.last().unwrap().data;
        if question.contains("kill") {
            assert_eq!(
                (last["code"].as_str(), &last["categories"]),
                (Some("input_flagged"), &json!(["harassment", "harassment/threatening", "violence", "violence/graphic"])),
                "{question}"
            );
        } else {
            assert_eq!(last["type"], "complete", "{question}: {last}");
        }
    }
    // Every check was answered, so every request the server made has been seen.
    assert_eq!(moderator.connections(), 1, "one request for the three checks");
    let body: Value = serde_json::from_slice(&moderator.request(0).await.body).unwrap();
    let inputs: Vec<&str> = body["input"].as_array().expect("an array input").iter().map(|t| t.as_str().unwrap()).collect();
    assert_eq!(inputs.len(), 3, "{inputs:?}");
    for question in questions {
        assert!(inputs.iter().any(|input| input.contains(question)), "{question} in {inputs:?}");
    }
    assert_eq!(app.metric("live_ai_moderation_batch_size_count", &[]).await, 1.0);
    assert_eq!(app.metric("live_ai_moderation_batch_size_sum", &[]).await, 3.0);
}

#[tokio::test]
async fn a_batch_reply_cut_off_mid_body_is_retried_as_one_request_and_each_stream_gets_its_own_verdict() {
    // The first request's answer stops halfway through its body, the socket closed.
    let requests = Arc::new(AtomicUsize::new(0));
    let moderator = FakeUpstream::start_with(Arc::new(move |request: &RecordedRequest| {
        let body: Value = serde_json::from_slice(&request.body).unwrap_or_default();
        let answer = batch_answer_flagging("kill", body["input"].as_array().expect("an array input"));
        let half = answer.len() / 2;
        let reply = Reply::status(200, &[], answer);
        if requests.fetch_add(1, Ordering::SeqCst) == 0 {
            reply.cut_after(half)
        } else {
            reply
        }
    }))
    .await;
    let mut vars = batching_input_checks(&moderator, "2");
    vars.push(("PROVIDER_MAX_RETRIES", "1".into()));
    let app = spawn_app(&vars.iter().map(|(k, v)| (*k, v.as_str())).collect::<Vec<_>>()).await;
    let questions = ["Why is the sky blue?", "I want to kill them."];
    let ids = join_all(questions.map(|question| app.create_stream("ask-question", json!({"question": question})))).await;
    let endings = join_all(ids.iter().map(|id| async { app.events_of(id).await.until_terminal().await })).await;
    assert_eq!(endings[0].last().unwrap().kind(), "complete", "the clean question is answered: {:?}", endings[0].last().unwrap().data);
    assert_eq!(endings[1].last().unwrap().data["code"], "input_flagged", "the flagged one is refused");
    assert_eq!(moderator.connections(), 2, "the cut-off request and one retry");
    let (first, retry) = (moderator.request(0).await, moderator.request(1).await);
    assert_eq!(first.body, retry.body, "the retry asks about the same batch");
    assert_eq!(app.metric("live_ai_moderation_checks_total", &["outcome=\"failed_closed\""]).await, 0.0);
}

#[tokio::test]
async fn a_moderation_answer_with_fewer_results_than_inputs_fails_every_stream_of_its_batch() {
    // One result, whatever was asked: no check can tell which verdict is its own.
    let [clean_entry, _] = batch_entries();
    let moderator = FakeUpstream::start(vec![Reply::status(200, &[], batch_answer(vec![clean_entry]))]).await;
    let vars = batching_input_checks(&moderator, "2");
    let app = spawn_app(&vars.iter().map(|(k, v)| (*k, v.as_str())).collect::<Vec<_>>()).await;
    let questions = ["Why is the sky blue?", "How do bees make honey?"];
    let ids = join_all(questions.map(|question| app.create_stream("ask-question", json!({"question": question})))).await;
    for id in &ids {
        let events = app.events_of(id).await.until_terminal().await;
        assert_eq!(kinds(&events), ["start", "error"], "no answer passes an unchecked question");
        let error = &events[1].data;
        assert_eq!((error["code"].as_str(), error["retryable"].as_bool()), (Some("moderation_unavailable"), Some(true)));
    }
    assert_eq!(moderator.connections(), 1, "an answer that cannot be read is not retried");
    assert_eq!(app.metric("live_ai_moderation_checks_total", &["outcome=\"failed_closed\""]).await, 2.0);
}

#[tokio::test]
async fn flagged_input_closes_the_provider_request_it_ran_alongside_and_logs_nothing_of_the_answer() {
    // The model answers at once and then stalls, its request open; the moderator
    // takes a while: the request was made while the input was being checked.
    let model = FakeUpstream::start(vec![Reply::sse(fixture("openai_chat_stream.sse")).stall_after(4)]).await;
    let moderator = openai_moderation("kill", Duration::from_millis(300)).await;
    let (model_url, moderator_url) = (format!("{}/v1", model.url()), format!("{}/v1", moderator.url()));
    let app = spawn_app(&[
        ("AI_PROVIDER", "openai"),
        ("OPENAI_BASE_URL", &model_url),
        ("OPENAI_API_KEY", "sk-model"),
        ("AI_MODEL", "gpt-test"),
        ("MODERATION_PROVIDER", "openai"),
        ("MODERATION_BASE_URL", &moderator_url),
        ("MODERATION_API_KEY", "sk-moderation"),
        ("LIMIT_TOKENS_PER_DAY", "100000"),
    ])
    .await;
    let id = app.create_stream("ask-question", json!({"question": "I want to kill them."})).await;
    let events = events_in(&raw_sse(&app, &format!("/api/streams/{id}/events"), &[]).await);
    assert_eq!(types(&events), ["start", "error"], "no chunk of the answer");
    let error = &events[1];
    assert_eq!((error["code"].as_str(), error["retryable"].as_bool()), (Some("input_flagged"), Some(false)));
    assert_eq!(error["categories"], json!(["harassment", "harassment/threatening", "violence", "violence/graphic"]));
    assert!(!error.to_string().contains("kill them"), "the input is not quoted: {error}");
    // The model was asked while the input was checked, and its request is closed.
    model.request(0).await;
    tokio::time::timeout(PATIENCE, model.closed(0)).await.expect("the provider request closes");
    let request = moderator.request(0).await;
    assert_eq!(request.header("authorization").as_deref(), Some("Bearer sk-moderation"));
    // Nothing of the answer is in the log, for any later reader.
    let replay = events_in(&raw_sse(&app, &format!("/api/streams/{id}/events?after=0"), &[]).await);
    assert_eq!(types(&replay), ["error"]);
    // Charged what the provider produced before it was closed, not the reservation.
    let usage: Value = app.get("/api/usage").await.json().await.unwrap();
    assert_eq!(usage["tokens_reserved"], 0, "{usage}");
    // A handful: the words of the few events streamed before the stall, not the block's
    // max_tokens that the start reserved.
    let used = usage["tokens_used_today"].as_u64().unwrap();
    assert!(used > 0 && used < 20, "{usage}");
}

#[tokio::test]
async fn a_remote_moderator_flags_output_windows_through_its_api() {
    let moderator = openai_moderation("shit", Duration::ZERO).await;
    let url = format!("{}/v1", moderator.url());
    let app = spawn_app(&injecting(&[("MODERATION_PROVIDER", "openai"), ("MODERATION_BASE_URL", &url)])).await;
    let id = app.create_stream("explain-eli10", json!({"topic": "volcanoes"})).await;
    let body = raw_sse(&app, &format!("/api/streams/{id}/events"), &[]).await;
    assert_no_flagged_byte(&body, "the reader");
    let last = events_in(&body).last().unwrap().clone();
    assert_eq!(last["code"], "output_flagged");
    assert_eq!(last["categories"], json!(["harassment", "harassment/threatening", "violence", "violence/graphic"]));
    assert_eq!(moderator.request(0).await.header("authorization"), None, "no key set, none sent");
}

#[tokio::test]
async fn llama_guard_flags_input_through_an_openai_compatible_chat_server() {
    let guard = FakeUpstream::start(vec![Reply::status(
        200,
        &[],
        String::from_utf8(fixture_in("moderation", "llama_guard_vllm_unsafe.json")).unwrap(),
    )])
    .await;
    let url = format!("{}/v1", guard.url());
    let app = spawn_app(&[("MODERATION_PROVIDER", "llama-guard"), ("MODERATION_BASE_URL", &url), ("MODERATION", "input")]).await;
    let id = app.create_stream("explain-eli10", json!({"topic": "how to hurt someone"})).await;
    let events = events_in(&raw_sse(&app, &format!("/api/streams/{id}/events"), &[]).await);
    assert_eq!(types(&events), ["start", "error"]);
    assert_eq!((events[1]["code"].as_str(), &events[1]["categories"]), (Some("input_flagged"), &json!(["violence", "self-harm"])));
    let request: Value = serde_json::from_slice(&guard.request(0).await.body).unwrap();
    assert_eq!(request["messages"], json!([{"role": "user", "content": "how to hurt someone"}]));
}

#[tokio::test]
async fn a_moderator_that_cannot_be_reached_fails_closed_or_open_as_configured() {
    let port = FakeUpstream::refused_port().await;
    let url = format!("http://127.0.0.1:{port}/v1");
    let down = [("MODERATION_PROVIDER", "openai"), ("MODERATION_BASE_URL", url.as_str())];
    let closed = spawn_app(&down).await;
    let id = closed.create_stream("explain-eli10", json!({"topic": "volcanoes"})).await;
    let events = closed.events_of(&id).await.until_terminal().await;
    assert_eq!(kinds(&events), ["start", "error"]);
    assert_eq!((events[1].data["code"].as_str(), events[1].data["retryable"].as_bool()), (Some("moderation_unavailable"), Some(true)));

    let mut open_vars = down.to_vec();
    open_vars.push(("MODERATION_FAIL_MODE", "open"));
    let open = spawn_app(&open_vars).await;
    let id = open.create_stream("explain-eli10", json!({"topic": "volcanoes"})).await;
    let events = open.events_of(&id).await.until_terminal().await;
    assert_contiguous(&events, 0);
    assert_eq!(events.last().unwrap().kind(), "complete");
    assert!(open.metric("live_ai_moderation_checks_total", &["outcome=\"failed_open\""]).await >= 2.0, "input and output counted");
}

#[tokio::test]
async fn a_question_the_local_filter_flags_at_once_still_begins_with_start() {
    // The local filter answers before the engine's first event: the stream
    // must still begin with `start`, then end `input_flagged`.
    let app = spawn_app(&[]).await;
    let id = app.create_stream("explain-eli10", json!({"topic": "f u c k this"})).await;
    let events = events_in(&raw_sse(&app, &format!("/api/streams/{id}/events"), &[]).await);
    assert_eq!(types(&events), ["start", "error"]);
    assert_eq!((events[1]["code"].as_str(), events[1]["retryable"].as_bool()), (Some("input_flagged"), Some(false)));
}

#[tokio::test]
async fn a_flagged_whole_response_request_is_refused_naming_the_categories() {
    let app = spawn_app(&[]).await;
    let response = app.post_json("/api/ai-block/explain-eli10", &json!({"topic": "f u c k this"})).await;
    let problem = assert_problem(response, 422, "input_flagged").await;
    assert!(problem["categories"].as_array().unwrap().contains(&json!("profanity")), "{problem}");
}

#[tokio::test]
async fn the_config_says_the_local_moderator_is_a_word_level_filter() {
    let app = spawn_app(&[]).await;
    let config: Value = app.get("/api/ai/config").await.json().await.unwrap();
    let moderation = &config["moderation"];
    assert_eq!((moderation["stages"].as_str(), moderation["provider"].as_str()), (Some("both"), Some("local")));
    assert_eq!((moderation["output_mode"].as_str(), moderation["fail_mode"].as_str()), (Some("buffered"), Some("closed")));
    assert!(moderation["description"].as_str().unwrap().contains("word-level filter, not a classifier"), "{moderation}");
}

/// HMAC-SHA256, written out (RFC 2104) so the test does not trust the signing crate.
fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| block.iter().map(|b| b ^ byte).collect::<Vec<u8>>();
    let inner = Sha256::new().chain_update(pad(0x36)).chain_update(message).finalize();
    Sha256::new().chain_update(pad(0x5c)).chain_update(inner).finalize().into()
}

/// 32 bytes, as `whsec_<base64>`.
const WEBHOOK_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// Checks a delivery the way the Standard Webhooks reference does: `v1,` and
/// base64 of HMAC-SHA256 over `id.timestamp.body` with the decoded secret.
fn assert_signed(request: &RecordedRequest) -> Value {
    use base64::Engine;
    let id = request.header("webhook-id").expect("webhook-id");
    let timestamp = request.header("webhook-timestamp").expect("webhook-timestamp");
    assert!(id.starts_with("msg_"), "{id}");
    assert!(timestamp.parse::<i64>().unwrap().abs_diff(now_secs() as i64) < 300, "a current timestamp");
    let key = base64::engine::general_purpose::STANDARD.decode(WEBHOOK_SECRET.strip_prefix("whsec_").unwrap()).unwrap();
    let signed = [id.as_bytes(), b".", timestamp.as_bytes(), b".", &request.body].concat();
    let expected = format!("v1,{}", base64::engine::general_purpose::STANDARD.encode(hmac_sha256(&key, &signed)));
    let signatures = request.header("webhook-signature").expect("webhook-signature");
    assert!(signatures.split(' ').any(|s| s == expected), "{signatures} is not {expected}");
    assert_eq!(request.header("content-type").as_deref(), Some("application/json"));
    serde_json::from_slice(&request.body).unwrap()
}

#[test]
fn the_hmac_of_the_test_is_rfc_4231s() {
    // RFC 4231, test case 2.
    let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
    assert_eq!(hex::encode(mac), "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
}

#[tokio::test]
async fn each_flag_is_posted_to_the_host_app_signed_per_standard_webhooks() {
    let receiver = FakeUpstream::start(vec![Reply::status(204, &[], String::new())]).await;
    let url = format!("{}/hooks/moderation", receiver.url());
    let app = spawn_app(&[
        ("MODERATION_WEBHOOK_URL", &url),
        ("MODERATION_WEBHOOK_SECRET", WEBHOOK_SECRET),
        ("MODERATION_WEBHOOK_INCLUDE_TEXT", "true"),
    ])
    .await;
    let id = app.create_stream("explain-eli10", json!({"topic": "f u c k this"})).await;
    app.events_of(&id).await.until_terminal().await;
    let request = receiver.request(0).await;
    assert_eq!((request.method.as_str(), request.path.as_str()), ("POST", "/hooks/moderation"));
    let payload = assert_signed(&request);
    assert_eq!(payload["type"], "moderation.flagged");
    let data = &payload["data"];
    assert_eq!(
        (data["stream_id"].as_str(), data["block_type"].as_str(), data["stage"].as_str(), data["moderator"].as_str()),
        (Some(id.as_str()), Some("explain-eli10"), Some("input"), Some("local"))
    );
    assert_eq!(data["principal"], "ip:127.0.0.1");
    assert!(data["categories"].as_array().unwrap().contains(&json!("profanity")), "{data}");
    assert_eq!(data["scores"]["profanity"], 0.67);
    assert_eq!(data["text"], "f u c k this", "MODERATION_WEBHOOK_INCLUDE_TEXT=true");
    app.wait_for_metric("live_ai_moderation_webhook_deliveries_total", &["outcome=\"delivered\""], |n| n == 1.0).await;
}

#[tokio::test]
async fn a_webhook_delivery_outlives_the_process_that_queued_it() {
    // The host app fails the first attempt; the process then dies. Another
    // process of the deployment delivers it from the outbox in Redis.
    let receiver = FakeUpstream::start(vec![Reply::status(503, &[], String::new()), Reply::status(200, &[], String::new())]).await;
    let url = format!("{}/hooks", receiver.url());
    let prefix = fresh_prefix();
    let deployment = redis_deployment(&prefix);
    let mut vars: Vec<(&str, &str)> = deployment.iter().map(|(k, v)| (*k, v.as_str())).collect();
    vars.extend([("MODERATION_WEBHOOK_URL", url.as_str()), ("MODERATION_WEBHOOK_SECRET", WEBHOOK_SECRET)]);
    let first = LiveAiProcess::spawn(&vars).await;
    let id = first.create_stream("explain-eli10", json!({"topic": "f u c k this"})).await;
    first.events_of(&id).await.until_terminal().await;
    let failed = receiver.request(0).await;
    assert_signed(&failed);
    first.kill().await;
    let second = LiveAiProcess::spawn(&vars).await;
    let delivered = receiver.request(1).await;
    let payload = assert_signed(&delivered);
    assert_eq!(delivered.header("webhook-id"), failed.header("webhook-id"), "the same message, for deduplication");
    assert_eq!(payload["data"]["stream_id"], id.as_str());
    assert!(payload["data"].get("text").is_none(), "no text unless MODERATION_WEBHOOK_INCLUDE_TEXT=true");
    second.wait_for_metric("live_ai_moderation_webhook_deliveries_total", &["outcome=\"delivered\""], |n| n == 1.0).await;
}
