//! What a learner said stays out of telemetry unless the operator opts in: prompt
//! and answer text only with OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT,
//! the principal only as a salted hash.

use serde_json::{json, Value};

use crate::collector::SpanRecord;
use crate::helpers::{jwt_mode, learner_token};
use crate::{collector, traced_app};

const CONTENT_KEYS: [&str; 3] = ["gen_ai.system_instructions", "gen_ai.input.messages", "gen_ai.output.messages"];

/// The spans of the trace that generated `stream_id`, once its client span arrived.
async fn trace_of(stream_id: &str) -> (SpanRecord, Vec<SpanRecord>) {
    let generation =
        collector().span("generation span", |s| s.name.starts_with("generate ") && s.attr("stream_id") == Some(&json!(stream_id))).await;
    let (trace, id) = (generation.trace_id.clone(), generation.span_id.clone());
    let chat = collector().span("GenAI client span", |s| s.trace_id == trace && s.parent_span_id == id).await;
    let trace = collector().spans(|s| s.trace_id == generation.trace_id);
    (chat, trace)
}

fn mentions(spans: &[SpanRecord], text: &str) -> bool {
    spans.iter().any(|s| s.attributes.values().any(|v: &Value| v.to_string().contains(text)))
}

async fn generate_as(app: &crate::helpers::TestApp, learner: &str, topic: &str) -> String {
    let created = app.create_stream_as(&learner_token(learner), "explain-eli10", json!({"topic": topic})).await;
    let id = created["stream_id"].as_str().unwrap().to_owned();
    let token = created["read_token"].as_str().unwrap().to_owned();
    app.sse(&format!("/api/streams/{id}/events?read_token={token}"), &[]).await.until_terminal().await;
    id
}

#[tokio::test]
async fn prompt_answer_and_principal_stay_out_of_traces_by_default() {
    let app = traced_app(&jwt_mode()).await;
    let id = generate_as(&app, "learner-ada-4711", "the zebra crossing quagga").await;
    let (chat, trace) = trace_of(&id).await;
    for key in CONTENT_KEYS {
        assert_eq!(chat.attr(key), None, "{key} exported without being asked");
    }
    assert!(!mentions(&trace, "quagga"), "the learner's words reached a span");
    assert!(!mentions(&trace, "learner-ada-4711"), "the principal reached a span");
}

#[tokio::test]
async fn prompt_and_answer_are_captured_when_content_capture_is_on() {
    let mut vars = jwt_mode();
    vars.push(("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "true"));
    let app = traced_app(&vars).await;
    let id = generate_as(&app, "learner-bea-4712", "the quagga's stripes").await;
    let (chat, trace) = trace_of(&id).await;
    let text = |key: &str| chat.attr(key).and_then(Value::as_str).unwrap_or_default().to_owned();
    assert!(text("gen_ai.input.messages").contains("quagga"), "{chat:?}");
    assert!(!text("gen_ai.system_instructions").is_empty());
    let output: Value = serde_json::from_str(&text("gen_ai.output.messages")).unwrap();
    assert_eq!(output[0]["role"], "assistant");
    assert!(!output[0]["parts"][0]["content"].as_str().unwrap().is_empty());
    // Content capture is about text: the principal is still only hashed.
    assert!(!mentions(&trace, "learner-bea-4712"));
}
