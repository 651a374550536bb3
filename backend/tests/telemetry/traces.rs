//! The span tree of a generation: the server span (child of the host app's
//! `traceparent` when it sends one), the generation span under it, the provider
//! call as a GenAI client span under that; and a reader in another process
//! linking its span to the generator's.

use serde_json::{json, Value};

use crate::collector::SpanRecord;
use crate::fake_upstream::{fixture, FakeUpstream, Reply};
use crate::helpers::{fresh_prefix, redis_deployment, LiveAiProcess, Received};
use crate::{collector, host_traceparent, otel_vars, traced_app, API_KEY};

const SERVER: i32 = 2;
const CLIENT: i32 = 3;
const STATUS_ERROR: i32 = 2;

async fn generation_of(stream_id: &str) -> SpanRecord {
    collector().span("generation span", |s| s.name.starts_with("generate ") && s.attr("stream_id") == Some(&json!(stream_id))).await
}

async fn child_of(parent: &SpanRecord, what: &str) -> SpanRecord {
    let (trace, id) = (parent.trace_id.clone(), parent.span_id.clone());
    collector().span(what, move |s| s.trace_id == trace && s.parent_span_id == id).await
}

async fn span_by_id(trace_id: &str, span_id: &str) -> SpanRecord {
    collector().span("parent span", |s| s.trace_id == trace_id && s.span_id == span_id).await
}

fn stream_id_of(events: &[Received]) -> String {
    events[0].data["stream_id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn every_trace_export_is_protobuf_and_carries_the_configured_headers() {
    let app = traced_app(&[]).await;
    let events = app.sse("/api/stream/ai-block/explain-eli10?topic=moon", &[]).await.until_terminal().await;
    let generation = generation_of(&stream_id_of(&events)).await;
    let (content_type, api_key) = &generation.sent_with;
    assert_eq!(content_type, "application/x-protobuf");
    assert_eq!(api_key, API_KEY, "OTEL_EXPORTER_OTLP_HEADERS, percent-decoded");
}

#[tokio::test]
async fn one_generation_yields_the_server_generation_and_genai_client_span_tree_with_every_required_attribute() {
    let upstream = FakeUpstream::start(vec![Reply::sse(fixture("openai_chat_stream.sse"))]).await;
    let base = format!("{}/v1", upstream.url());
    let app =
        traced_app(&[("AI_PROVIDER", "openai"), ("OPENAI_BASE_URL", &base), ("OPENAI_API_KEY", "sk-test"), ("AI_MODEL", "gpt-test")]).await;
    let events = app.sse("/api/stream/ai-block/explain-eli10?topic=tides", &[]).await.until_terminal().await;
    let complete = &events.last().unwrap().data;
    assert_eq!(complete["type"], "complete", "{complete}");

    let generation = generation_of(&stream_id_of(&events)).await;
    assert_eq!(generation.attr("block"), Some(&json!("explain-eli10")));
    assert_eq!(generation.attr("outcome"), Some(&json!("complete")));
    assert!(generation.attr("enduser.pseudo.id").and_then(Value::as_str).is_some_and(|id| id.len() == 32), "{generation:?}");
    assert_eq!(generation.resource.get("service.name"), Some(&json!("live-ai")));

    let server = span_by_id(&generation.trace_id, &generation.parent_span_id).await;
    assert_eq!(server.name, "GET /api/stream/ai-block/{block_type}");
    assert_eq!(server.kind, SERVER);
    assert_eq!(server.attr("http.response.status_code"), Some(&json!(200)));
    assert_eq!(server.attr("http.request.method"), Some(&json!("GET")));
    assert_eq!(server.attr("http.route"), Some(&json!("/api/stream/ai-block/{block_type}")));
    assert_eq!(server.attr("url.path"), Some(&json!("/api/stream/ai-block/explain-eli10")), "the path, never the query");
    assert_eq!(server.attr("url.scheme"), Some(&json!("http")));

    let chat = child_of(&generation, "GenAI client span").await;
    assert_eq!(chat.name, "chat gpt-test");
    assert_eq!(chat.kind, CLIENT);
    let port = upstream.url().rsplit(':').next().unwrap().parse::<i64>().unwrap();
    let expected = [
        ("gen_ai.operation.name", json!("chat")),
        ("gen_ai.provider.name", json!("openai")),
        ("gen_ai.request.model", json!("gpt-test")),
        ("gen_ai.response.model", json!("gpt-test")),
        ("gen_ai.usage.input_tokens", complete["usage"]["prompt_tokens"].clone()),
        ("gen_ai.usage.output_tokens", complete["usage"]["completion_tokens"].clone()),
        ("gen_ai.response.finish_reasons", json!(["stop"])),
        ("server.address", json!("127.0.0.1")),
        ("server.port", json!(port)),
    ];
    for (key, value) in expected {
        assert_eq!(chat.attr(key), Some(&value), "{key} of {chat:?}");
    }
    assert_eq!(chat.attr("error.type"), None);
    assert_ne!(chat.status, STATUS_ERROR);
    assert_eq!(chat.events, ["gen_ai.first_chunk"], "the first chunk is the call's one event");
}

#[tokio::test]
async fn with_coalescing_the_provider_call_of_a_question_asked_first_sits_under_the_askers_own_generation() {
    let upstream = FakeUpstream::start(vec![Reply::sse(fixture("openai_chat_stream.sse"))]).await;
    let base = format!("{}/v1", upstream.url());
    let vars = [
        ("AI_PROVIDER", "openai"),
        ("OPENAI_BASE_URL", &base),
        ("OPENAI_API_KEY", "sk-test"),
        ("AI_MODEL", "gpt-test"),
        ("COALESCE", "on"),
    ];
    let app = traced_app(&vars).await;
    let events = app.sse("/api/stream/ai-block/explain-eli10?topic=coral", &[]).await.until_terminal().await;
    assert_eq!(events.last().unwrap().data["type"], "complete");
    let learner = generation_of(&stream_id_of(&events)).await;
    assert_eq!(learner.attr("outcome"), Some(&json!("complete")));
    // The first asker's own stream is the answer's source (no shared log
    // beside it): the provider call is their generation's child, as with
    // coalescing off.
    let chat = child_of(&learner, "GenAI client span").await;
    assert_eq!(chat.name, "chat gpt-test");
}

#[tokio::test]
async fn a_provider_failure_is_an_error_typed_client_span_and_an_error_generation() {
    let upstream = FakeUpstream::start(vec![Reply::status(500, &[], "{\"error\":{\"message\":\"boom\"}}".into())]).await;
    let base = format!("{}/v1", upstream.url());
    let app =
        traced_app(&[("AI_PROVIDER", "openai"), ("OPENAI_BASE_URL", &base), ("OPENAI_API_KEY", "sk-test"), ("AI_MODEL", "gpt-test")]).await;
    let events = app.sse("/api/stream/ai-block/explain-eli10?topic=tides", &[]).await.until_terminal().await;
    let code = events.last().unwrap().data["code"].as_str().unwrap().to_owned();
    let generation = generation_of(&stream_id_of(&events)).await;
    assert_eq!(generation.attr("outcome"), Some(&json!(code)));
    assert_eq!(generation.status, STATUS_ERROR);
    let chat = child_of(&generation, "GenAI client span").await;
    assert_eq!(chat.attr("error.type"), Some(&json!(code)));
    assert_eq!(chat.status, STATUS_ERROR);
}

#[tokio::test]
async fn a_traceparent_from_the_host_app_is_the_root_of_the_trace() {
    let app = traced_app(&[]).await;
    let (traceparent, trace_id, host_span) = host_traceparent();
    let events =
        app.sse("/api/stream/ai-block/explain-eli10?topic=volcanoes", &[("traceparent", &traceparent)]).await.until_terminal().await;
    let generation = generation_of(&stream_id_of(&events)).await;
    assert_eq!(generation.trace_id, trace_id, "the generation is in the host app's trace");
    let server = span_by_id(&trace_id, &generation.parent_span_id).await;
    assert_eq!(server.parent_span_id, host_span, "the server span is a child of the host app's span");
    let chat = child_of(&generation, "GenAI client span").await;
    assert_eq!(chat.trace_id, trace_id);
}

#[tokio::test]
async fn a_websocket_start_is_traced_under_the_upgrades_traceparent() {
    let app = traced_app(&[]).await;
    let (traceparent, trace_id, host_span) = host_traceparent();
    let mut socket = app.ws_with(&[("traceparent", &traceparent)]).await.unwrap();
    socket.send(json!({"type": "start", "block_type": "explain-eli10", "input": {"topic": "comets"}, "ref": "r1"})).await;
    let start = socket.next().await;
    let stream_id = start["stream_id"].as_str().unwrap().to_owned();
    socket.until_terminal(&stream_id, &mut Vec::new()).await;
    // The upgrade's span lasts as long as the socket.
    drop(socket);
    let generation = generation_of(&stream_id).await;
    assert_eq!(generation.trace_id, trace_id);
    let upgrade = span_by_id(&trace_id, &generation.parent_span_id).await;
    assert_eq!((upgrade.name.as_str(), upgrade.parent_span_id.as_str()), ("GET /api/stream/ws", host_span.as_str()));
}

#[tokio::test]
async fn a_resume_on_another_process_links_to_the_generator() {
    let prefix = fresh_prefix();
    let process = |instance: &'static str| {
        let mut vars: Vec<(&str, String)> = redis_deployment(&prefix);
        vars.extend(otel_vars(collector().addr));
        vars.push(("OTEL_RESOURCE_ATTRIBUTES", format!("service.instance.id={instance}-{prefix}")));
        vars.push(("DEMO_TOKENS_PER_SECOND", "40".into()));
        vars
    };
    let (a_vars, b_vars) = (process("a"), process("b"));
    let a = LiveAiProcess::spawn(&a_vars.iter().map(|(k, v)| (*k, v.as_str())).collect::<Vec<_>>()).await;
    let b = LiveAiProcess::spawn(&b_vars.iter().map(|(k, v)| (*k, v.as_str())).collect::<Vec<_>>()).await;
    let stream_id = a.create_stream("explain-eli10", json!({"topic": "glaciers"})).await;
    let mut first = a.events_of(&stream_id).await;
    let seen = first.take(2).await;
    drop(first);
    let after = seen.last().unwrap().data["seq"].as_u64().unwrap();
    let rest = b.sse(&format!("/api/streams/{stream_id}/events?after={after}"), &[]).await.until_terminal().await;
    assert_eq!(rest[0].data["seq"].as_u64(), Some(after + 1), "B resumed where A's reader left");

    let generation = generation_of(&stream_id).await;
    assert_eq!(generation.resource.get("service.instance.id"), Some(&json!(format!("a-{prefix}"))));
    let path = format!("/api/streams/{stream_id}/events");
    let reader = collector()
        .span("B's reading span", |s| {
            s.attr("url.path") == Some(&json!(path)) && s.resource.get("service.instance.id") == Some(&json!(format!("b-{prefix}")))
        })
        .await;
    assert!(
        reader.links.contains(&(generation.trace_id.clone(), generation.span_id.clone())),
        "B's span links to A's generation: {:?}",
        reader.links
    );
    assert!(b.metric("live_ai_stream_resumes_total", &[]).await >= 1.0);
}

/// A slow demo model: its answer outlives any wait of these tests by far, so
/// its generation is still running when they look.
const SLOW: (&str, &str) = ("DEMO_TOKENS_PER_SECOND", "2");

/// The server span of the request that sent `traceparent` with `host_span`.
async fn server_span_under(what: &str, trace_id: &str, host_span: &str) -> SpanRecord {
    collector().span(what, |s| s.trace_id == trace_id && s.parent_span_id == host_span).await
}

fn generations_in(trace_id: &str) -> Vec<SpanRecord> {
    collector().spans(|s| s.trace_id == trace_id && s.name.starts_with("generate "))
}

#[tokio::test]
async fn a_readers_span_ends_when_the_reader_leaves_mid_stream_while_the_generation_runs_on() {
    // Moderation off: its window would hold the slow chunks back for seconds.
    let app = traced_app(&[SLOW, ("MODERATION", "off")]).await;
    let (traceparent, trace_id, host_span) = host_traceparent();
    let mut reader = app.sse("/api/stream/ai-block/explain-eli10?topic=tides", &[("traceparent", &traceparent)]).await;
    let seen = reader.take(2).await;
    assert_eq!(seen[1].kind(), "chunk", "the answer is under way");
    // The peer closes while the server is still sending.
    drop(reader);
    let server = server_span_under("the departed reader's server span", &trace_id, &host_span).await;
    assert_eq!(server.name, "GET /api/stream/ai-block/{block_type}");
    assert_eq!(server.attr("http.response.status_code"), Some(&json!(200)));
    assert!(generations_in(&trace_id).is_empty(), "the generation outlives its reader (within the resume grace)");
}

#[tokio::test]
async fn a_post_that_starts_a_stream_ends_its_span_with_its_response_not_with_the_generation() {
    let app = traced_app(&[SLOW]).await;
    let (traceparent, trace_id, host_span) = host_traceparent();
    let response = reqwest::Client::new()
        .post(app.url("/api/streams"))
        .header("traceparent", &traceparent)
        .json(&json!({"block_type": "explain-eli10", "input": {"topic": "tides"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let server = server_span_under("the POST's server span", &trace_id, &host_span).await;
    assert_eq!(server.name, "POST /api/streams");
    assert_eq!(server.attr("http.response.status_code"), Some(&json!(201)));
    assert!(generations_in(&trace_id).is_empty(), "the generation it started runs on");
}

#[tokio::test]
async fn a_5xx_answer_marks_its_server_span_an_error_and_a_4xx_does_not() {
    let request = |app: &crate::helpers::TestApp, path: &str| {
        let (traceparent, trace_id, host_span) = host_traceparent();
        let sent = reqwest::Client::new().get(app.url(path)).header("traceparent", traceparent).send();
        (sent, trace_id, host_span)
    };
    // Streaming off: the server's own refusal, a 503.
    let refusing = traced_app(&[("AI_STREAMING_ENABLED", "false")]).await;
    let (sent, trace_id, host_span) = request(&refusing, "/api/stream/ai-block/explain-eli10?topic=tides");
    assert_eq!(sent.await.unwrap().status(), 503);
    let refused = server_span_under("the refused request's span", &trace_id, &host_span).await;
    assert_eq!(refused.attr("http.response.status_code"), Some(&json!(503)));
    assert_eq!(refused.status, STATUS_ERROR, "a 5xx is the server's failure");
    // A block that does not exist: the client's mistake, a 4xx.
    let app = traced_app(&[]).await;
    let (sent, trace_id, host_span) = request(&app, "/api/stream/ai-block/no-such-block");
    assert!(sent.await.unwrap().status().is_client_error());
    let mistaken = server_span_under("the mistaken request's span", &trace_id, &host_span).await;
    assert_ne!(mistaken.status, STATUS_ERROR, "a 4xx is not the server's failure");
}
