//! The real providers end to end: `live-ai` with `AI_PROVIDER=openai|anthropic`
//! pointed at a fake model API that replays byte-exact wire transcripts, read by a
//! real SSE client. Covers each failure's `error` event and clean close, that a
//! cancel closes the upstream request, and that the API key never leaks.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

use crate::fake_upstream::{fixture, FakeUpstream, Reply};
use crate::helpers::{
    assert_contiguous, jwt_mode, kinds, learner_token, spawn_app, start_up_failure, text_of, Received, TestApp, PATIENCE,
};

const OPENAI_KEY: &str = "sk-live-openai-0123456789abcdef";
const ANTHROPIC_KEY: &str = "sk-ant-live-0123456789abcdef";

async fn openai_app(upstream: &FakeUpstream, extra: &[(&str, &str)]) -> TestApp {
    let base = format!("{}/v1", upstream.url());
    let mut vars =
        vec![("AI_PROVIDER", "openai"), ("OPENAI_BASE_URL", base.as_str()), ("OPENAI_API_KEY", OPENAI_KEY), ("AI_MODEL", "gpt-test")];
    vars.extend_from_slice(extra);
    spawn_app(&vars).await
}

async fn anthropic_app(upstream: &FakeUpstream, extra: &[(&str, &str)]) -> TestApp {
    let base = upstream.url();
    let mut vars = vec![("AI_PROVIDER", "anthropic"), ("ANTHROPIC_BASE_URL", base.as_str()), ("ANTHROPIC_API_KEY", ANTHROPIC_KEY)];
    vars.extend_from_slice(extra);
    spawn_app(&vars).await
}

/// Runs one block to its terminal event over SSE; checks seq and the clean close.
async fn run_block(app: &TestApp, block: &str, input: Value) -> Vec<Received> {
    let id = app.create_stream(block, input).await;
    let events = app.events_of(&id).await.until_terminal().await;
    assert_contiguous(&events, 0);
    events
}

fn explain() -> Value {
    json!({"topic": "tides"})
}

/// The single `error` event that ends `events`.
fn the_error(events: &[Received]) -> &Value {
    let last = events.last().unwrap();
    assert_eq!(last.kind(), "error", "{:?}", kinds(events));
    assert_eq!(events.iter().filter(|e| e.kind() == "error").count(), 1);
    &last.data
}

fn assert_no_key(events: &[Received], key: &str) {
    for event in events {
        assert!(!event.data.to_string().contains(key), "the key leaked into {}", event.data);
    }
}

#[tokio::test]
async fn an_openai_quiz_streams_parts_usage_and_its_result() {
    let upstream = FakeUpstream::start(vec![Reply::sse(fixture("openai_quiz_stream.sse"))]).await;
    let app = openai_app(&upstream, &[]).await;
    let events = run_block(&app, "quiz", json!({"topic": "tides", "count": 2})).await;
    assert_eq!((events[0].data["provider"].as_str(), events[0].data["model"].as_str()), (Some("openai"), Some("gpt-test")));
    let parts: Vec<&Received> = events.iter().filter(|e| e.kind() == "part").collect();
    assert_eq!(parts.len(), 2);
    assert_eq!(parts[1].data["data"]["answer_index"], 1);
    let complete = &events.last().unwrap().data;
    assert_eq!(complete["type"], "complete");
    assert_eq!(complete["usage"], json!({"prompt_tokens": 112, "completion_tokens": 96, "total_tokens": 208}));
    assert_eq!(complete["result"]["questions"].as_array().unwrap().len(), 2);
    assert!(text_of(&events).starts_with(r#"{"questions":[{"question":"What pulls the tides?""#));
    // The request asked for usage in the stream.
    let sent: Value = serde_json::from_slice(&upstream.request(0).await.body).unwrap();
    assert_eq!(sent["stream_options"]["include_usage"], true);
}

#[tokio::test]
async fn an_anthropic_diagram_streams_mermaid_through_pings() {
    let upstream = FakeUpstream::start(vec![Reply::sse(fixture("anthropic_messages_stream.sse"))]).await;
    let app = anthropic_app(&upstream, &[("AI_MODEL", "claude-test")]).await;
    let events = run_block(&app, "diagram", json!({"description": "how rain forms"})).await;
    assert_eq!(events[0].data["provider"], "anthropic");
    // The ping is not an event: only text chunks reach the client.
    assert!(events.iter().filter(|e| e.kind() == "chunk").all(|e| !e.data["token"].as_str().unwrap().is_empty()));
    let complete = &events.last().unwrap().data;
    assert_eq!(complete["type"], "complete");
    assert_eq!(complete["finish_reason"], "stop");
    assert_eq!(complete["usage"]["total_tokens"], 88);
    assert_eq!(complete["result"]["kind"], "flowchart");
    assert!(complete["result"]["source"].as_str().unwrap().starts_with("flowchart TD\n  A[\"Sun warms water\"]"));
}

#[tokio::test]
async fn whole_response_mode_reads_the_same_provider_stream() {
    let upstream = FakeUpstream::start(vec![Reply::sse(fixture("anthropic_messages_stream.sse"))]).await;
    let app = anthropic_app(&upstream, &[("AI_STREAMING_ENABLED", "false")]).await;
    let response = app.post_json("/api/ai-block/diagram", &json!({"description": "how rain forms"})).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!((body["provider"].as_str(), body["model"].as_str()), (Some("anthropic"), Some("claude-haiku-4-5")));
    assert!(body["result"]["source"].as_str().unwrap().ends_with("C[\"Rain falls 🌧\"]"), "{body}");
    assert_eq!(body["usage"]["prompt_tokens"], 57);
}

#[tokio::test]
async fn whole_response_mode_answers_an_overload_with_429_and_retry_after() {
    let overloaded = r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
    let upstream = FakeUpstream::start(vec![Reply::status(529, &[("retry-after", "4")], overloaded.into())]).await;
    let app = anthropic_app(&upstream, &[("AI_STREAMING_ENABLED", "false")]).await;
    let response = app.post_json("/api/ai-block/explain-eli10", &explain()).await;
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "4");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], "rate_limited");
    assert!(!body.to_string().contains(ANTHROPIC_KEY));
}

#[tokio::test]
async fn each_upstream_failure_ends_in_one_error_event_with_its_code() {
    struct Case {
        name: &'static str,
        anthropic: bool,
        reply: Reply,
        code: &'static str,
        retryable: bool,
    }
    let limited = r#"{"error":{"message":"Rate limit reached","type":"requests","code":"rate_limit_exceeded"}}"#;
    let overloaded = r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
    let cases = [
        Case {
            name: "401",
            anthropic: false,
            reply: Reply::status(401, &[], format!(r#"{{"error":{{"message":"Incorrect API key provided: {OPENAI_KEY}"}}}}"#)),
            code: "provider_error",
            retryable: false,
        },
        Case {
            name: "429",
            anthropic: false,
            reply: Reply::status(429, &[("Retry-After", "2")], limited.into()),
            code: "rate_limited",
            retryable: true,
        },
        Case { name: "529", anthropic: true, reply: Reply::status(529, &[], overloaded.into()), code: "rate_limited", retryable: true },
        Case {
            name: "overloaded event",
            anthropic: true,
            reply: Reply::sse(fixture("anthropic_overloaded_event.sse")),
            code: "rate_limited",
            retryable: true,
        },
        Case { name: "500", anthropic: false, reply: Reply::status(500, &[], "oops".into()), code: "provider_error", retryable: true },
        Case {
            name: "malformed",
            anthropic: false,
            reply: Reply::sse(fixture("openai_malformed.sse")),
            code: "provider_error",
            retryable: false,
        },
        Case {
            name: "no [DONE]",
            anthropic: false,
            reply: Reply::sse(fixture("openai_truncated.sse")),
            code: "provider_error",
            retryable: true,
        },
        Case {
            name: "no message_stop",
            anthropic: true,
            reply: Reply::sse(fixture("anthropic_truncated.sse")),
            code: "provider_error",
            retryable: true,
        },
    ];
    for case in cases {
        let upstream = FakeUpstream::start(vec![case.reply]).await;
        let app = if case.anthropic { anthropic_app(&upstream, &[]).await } else { openai_app(&upstream, &[]).await };
        let events = run_block(&app, "explain-eli10", explain()).await;
        let error = the_error(&events);
        assert_eq!(
            (error["code"].as_str(), error["retryable"].as_bool()),
            (Some(case.code), Some(case.retryable)),
            "{}: {error}",
            case.name
        );
        assert_no_key(&events, OPENAI_KEY);
        assert_no_key(&events, ANTHROPIC_KEY);
        if case.name == "429" {
            assert_eq!(error["retry_after_ms"], 2000, "{error}");
        }
        if case.name == "401" {
            assert!(error["message"].as_str().unwrap().contains("OPENAI_API_KEY"), "{error}");
        }
        app.shutdown.cancel();
    }
}

/// `GET /api/usage` of `token` once no reservation is open.
async fn settled_usage(app: &TestApp, token: &str) -> Value {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let usage: Value = app.http.get(app.url("/api/usage")).bearer_auth(token).send().await.unwrap().json().await.unwrap();
        if usage["tokens_reserved"] == 0 && usage["active_streams"] == 0 {
            return usage;
        }
        assert!(tokio::time::Instant::now() < deadline, "a reservation stayed open: {usage}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_server_that_sends_no_usage_is_charged_the_tokens_its_model_streamed() {
    // An OpenAI-compatible server that ignores `stream_options.include_usage`.
    let upstream = FakeUpstream::start(vec![Reply::sse(fixture("openai_no_usage_stream.sse"))]).await;
    let mut vars = jwt_mode();
    vars.extend([("AI_MODEL", "gpt-4o-mini"), ("LIMIT_TOKENS_PER_DAY", "100000")]);
    let app = openai_app(&upstream, &vars).await;
    let ada = learner_token("ada");
    let created: Value = app.create_stream_as(&ada, "explain-eli10", explain()).await;
    let id = created["stream_id"].as_str().unwrap();
    let events = app.sse(&format!("/api/streams/{id}/events"), &[("authorization", &format!("Bearer {ada}"))]).await.until_terminal().await;
    let complete = &events.last().unwrap().data;
    assert_eq!(complete["type"], "complete");
    // gpt-4o-mini's own tokenizer (o200k_base), chunk by chunk, at least one each.
    let bpe = tiktoken_rs::bpe_for_model("gpt-4o-mini").unwrap();
    let chunks: Vec<&str> = events.iter().filter(|e| e.kind() == "chunk").map(|e| e.data["token"].as_str().unwrap()).collect();
    let expected: u64 = chunks.iter().map(|chunk| (bpe.count_ordinary(chunk) as u64).max(1)).sum();
    assert!(expected >= chunks.len() as u64 && expected > 0);
    assert_eq!(complete["usage"]["completion_tokens"], expected, "{complete}");
    let prompt = complete["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(prompt > 0, "the prompt is counted too");
    assert_eq!(complete["usage"]["total_tokens"], prompt + expected);
    let usage = settled_usage(&app, &ada).await;
    assert_eq!(usage["tokens_used_today"], expected, "the budget is charged what was streamed");
}

#[tokio::test]
async fn a_model_without_a_known_tokenizer_is_charged_a_quarter_token_per_character_and_one_per_chunk_at_least() {
    let upstream = FakeUpstream::start(vec![Reply::sse(fixture("openai_no_usage_stream.sse"))]).await;
    let mut vars = jwt_mode();
    vars.extend([("AI_MODEL", "llama3.2"), ("LIMIT_TOKENS_PER_DAY", "100000")]);
    let app = openai_app(&upstream, &vars).await;
    let ada = learner_token("ada");
    let whole = app.http.post(app.url("/api/ai-block/explain-eli10")).bearer_auth(&ada).json(&explain()).send().await.unwrap();
    assert_eq!(whole.status(), 200);
    let body: Value = whole.json().await.unwrap();
    let text = body["text"].as_str().unwrap();
    assert!(text.starts_with("Tides rise"), "{body}");
    let reported = body["usage"]["completion_tokens"].as_u64().unwrap();
    // Whole-response mode has no chunks to show: the floor and ceiling of the rule.
    let chars = text.chars().count() as u64;
    assert!(reported >= chars.div_ceil(4) && reported > 0, "{reported} for {chars} characters");
    assert_eq!(settled_usage(&app, &ada).await["tokens_used_today"], reported);
}

#[tokio::test]
async fn a_refused_port_is_provider_unavailable() {
    let port = FakeUpstream::refused_port().await;
    let base = format!("http://127.0.0.1:{port}/v1");
    let app = spawn_app(&[("AI_PROVIDER", "openai"), ("OPENAI_BASE_URL", &base), ("AI_MODEL", "local")]).await;
    let events = run_block(&app, "explain-eli10", explain()).await;
    let error = the_error(&events);
    assert_eq!((error["code"].as_str(), error["retryable"].as_bool()), (Some("provider_unavailable"), Some(true)), "{error}");
}

#[tokio::test]
async fn a_stall_after_the_first_token_is_a_timeout() {
    let upstream = FakeUpstream::start(vec![Reply::sse(fixture("openai_chat_stream.sse")).stall_after(3)]).await;
    let app = openai_app(&upstream, &[("PROVIDER_IDLE_TIMEOUT_SECONDS", "0.3")]).await;
    let events = run_block(&app, "explain-eli10", explain()).await;
    assert_eq!(text_of(&events), "Tides rise");
    assert_eq!(the_error(&events)["code"], "timeout");
    // The timed-out request is closed, not left hanging.
    tokio::time::timeout(PATIENCE, upstream.closed(0)).await.expect("the stalled upstream request is closed");
}

#[tokio::test]
async fn a_rate_limit_before_the_first_token_is_retried_after_its_retry_after() {
    let replies = vec![Reply::status(429, &[("retry-after-ms", "600")], "{}".into()), Reply::sse(fixture("openai_chat_stream.sse"))];
    let upstream = FakeUpstream::start(replies).await;
    let app = openai_app(&upstream, &[("PROVIDER_MAX_RETRIES", "1")]).await;
    let events = run_block(&app, "explain-eli10", explain()).await;
    assert_eq!(events.last().unwrap().kind(), "complete");
    let (first, second) = (upstream.request(0).await, upstream.request(1).await);
    assert!(second.at - first.at >= Duration::from_millis(600), "retried after {:?}", second.at - first.at);
}

/// Starts a stream on a provider that stalls after a few tokens, cancels it, and
/// returns how long after the DELETE was answered the upstream saw its socket close
/// (zero when it closed before the answer).
async fn cancel_to_upstream_close(app: &TestApp, upstream: &FakeUpstream) -> Duration {
    let id = app.create_stream("explain-eli10", explain()).await;
    let mut reader = app.events_of(&id).await;
    let opening = reader.take(3).await;
    assert_eq!(kinds(&opening), ["start", "chunk", "chunk"]);
    let sent = tokio::time::Instant::now();
    let response = app.delete(&format!("/api/streams/{id}")).await;
    let answered = tokio::time::Instant::now();
    assert!(response.status().is_success(), "{}", response.status());
    let closed = tokio::time::timeout(PATIENCE, upstream.closed(0)).await.expect("the upstream sees its request closed");
    let rest = reader.until_terminal().await;
    assert_eq!(rest.last().unwrap().kind(), "cancelled");
    println!(
        "cancel → upstream close: {:?} after the DELETE was sent, {:?} after it was answered",
        closed.saturating_duration_since(sent),
        closed.saturating_duration_since(answered)
    );
    closed.saturating_duration_since(answered)
}

#[tokio::test]
async fn cancel_closes_the_openai_request_at_once() {
    let upstream = FakeUpstream::start(vec![Reply::sse(fixture("openai_chat_stream.sse")).stall_after(3)]).await;
    // Async moderation: the chunks before the stall reach the reader (buffered
    // mode would hold them for a window that never fills).
    let app = openai_app(&upstream, &[("MODERATION_OUTPUT_MODE", "async")]).await;
    let after_answer = cancel_to_upstream_close(&app, &upstream).await;
    assert!(after_answer < Duration::from_millis(100), "closed {after_answer:?} after the cancel was answered");
}

#[tokio::test]
async fn cancel_closes_the_anthropic_request_at_once() {
    // Through message_start, content_block_start, ping and two text deltas.
    let upstream = FakeUpstream::start(vec![Reply::sse(fixture("anthropic_messages_stream.sse")).stall_after(5)]).await;
    let app = anthropic_app(&upstream, &[("MODERATION_OUTPUT_MODE", "async")]).await;
    let after_answer = cancel_to_upstream_close(&app, &upstream).await;
    assert!(after_answer < Duration::from_millis(100), "closed {after_answer:?} after the cancel was answered");
}

#[tokio::test]
async fn the_config_names_the_provider_and_model_but_never_the_key() {
    let upstream = FakeUpstream::start(vec![Reply::sse(fixture("openai_chat_stream.sse"))]).await;
    let app = openai_app(&upstream, &[]).await;
    let body = app.get("/api/ai/config").await.text().await.unwrap();
    assert!(!body.contains(OPENAI_KEY), "{body}");
    let config: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (config["provider"].as_str(), config["model"].as_str(), config["demo"].as_bool()),
        (Some("openai"), Some("gpt-test"), Some(false))
    );
}

/// Log lines written while the test thread runs (the app runs on it too: the
/// test runtime is single-threaded).
#[derive(Clone, Default)]
struct CapturedLogs(Arc<Mutex<Vec<u8>>>);

impl Write for CapturedLogs {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn a_refused_key_echoed_by_the_server_stays_out_of_the_logs() {
    let logs = CapturedLogs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt().with_max_level(tracing::Level::TRACE).with_writer(move || writer.clone()).finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let body = format!(r#"{{"error":{{"message":"Incorrect API key provided: {OPENAI_KEY}","code":"invalid_api_key"}}}}"#);
    let upstream = FakeUpstream::start(vec![Reply::status(401, &[], body)]).await;
    let app = openai_app(&upstream, &[]).await;
    let events = run_block(&app, "explain-eli10", explain()).await;
    assert_eq!(the_error(&events)["code"], "provider_error");
    let logs = String::from_utf8_lossy(&logs.0.lock().unwrap()).into_owned();
    assert!(!logs.is_empty(), "the capture sees the app's logs");
    assert!(!logs.contains(OPENAI_KEY), "the key is in the logs:\n{logs}");
}

#[test]
fn start_up_without_the_key_or_model_a_provider_needs_names_the_variable() {
    let (code, stderr) = start_up_failure(&[("AI_PROVIDER", "anthropic")]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("ANTHROPIC_API_KEY"), "{stderr}");
    let (code, stderr) = start_up_failure(&[("AI_PROVIDER", "openai")]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("OPENAI_API_KEY"), "{stderr}");
    let (code, stderr) = start_up_failure(&[("AI_PROVIDER", "openai"), ("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("AI_MODEL"), "{stderr}");
}
