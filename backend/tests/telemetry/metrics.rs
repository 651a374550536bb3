//! Metrics over OTLP: the four GenAI client histograms with their units and
//! required attributes, and live-ai's own figures, equal to `/metrics`.

use serde_json::{json, Value};

use crate::collector::MetricRecord;
use crate::helpers::LiveAiProcess;
use crate::{collector, otel_vars, traced_app};

fn has(point_attributes: &serde_json::Map<String, Value>, key: &str, value: &str) -> bool {
    point_attributes.get(key) == Some(&json!(value))
}

#[tokio::test]
async fn the_four_genai_metrics_arrive_with_their_units_and_required_attributes() {
    let app = traced_app(&[]).await;
    let events = app.sse("/api/stream/ai-block/explain-eli10?topic=rainbows", &[]).await.until_terminal().await;
    assert_eq!(events.last().unwrap().data["type"], "complete");
    let model = events[0].data["model"].as_str().unwrap().to_owned();
    let of_this_model = |m: &MetricRecord| m.points.iter().any(|p| p.count > 0 && has(&p.attributes, "gen_ai.request.model", &model));
    for (name, unit) in [
        ("gen_ai.client.operation.duration", "s"),
        ("gen_ai.client.token.usage", "{token}"),
        ("gen_ai.client.operation.time_to_first_chunk", "s"),
        ("gen_ai.client.operation.time_per_output_chunk", "s"),
    ] {
        let metric = collector().metric(name, of_this_model).await;
        assert_eq!((metric.unit.as_str(), metric.kind), (unit, "histogram"), "{name}");
        for point in metric.points.iter().filter(|p| has(&p.attributes, "gen_ai.request.model", &model)) {
            assert!(has(&point.attributes, "gen_ai.operation.name", "chat"), "{name}: {point:?}");
            assert!(has(&point.attributes, "gen_ai.provider.name", "demo"), "{name}: {point:?}");
            assert!(has(&point.attributes, "gen_ai.response.model", &model), "{name}: {point:?}");
        }
    }
    let tokens = collector().metric("gen_ai.client.token.usage", of_this_model).await;
    for kind in ["input", "output"] {
        assert!(tokens.points.iter().any(|p| has(&p.attributes, "gen_ai.token.type", kind) && p.value > 0.0), "no {kind} tokens");
    }
    // One observation per chunk after the first: as many as the answer had chunks, less one.
    let chunks = events.iter().filter(|e| e.kind() == "chunk").count() as u64;
    // The newest export may have been taken before the call ended: wait for one
    // after it (cumulative counts only grow), else the wait fails.
    let counted =
        |m: &MetricRecord| m.points.iter().filter(|p| has(&p.attributes, "gen_ai.request.model", &model)).map(|p| p.count).sum::<u64>();
    let per_chunk =
        collector().metric("gen_ai.client.operation.time_per_output_chunk", |m| of_this_model(m) && counted(m) >= chunks - 1).await;
    assert!(counted(&per_chunk) >= chunks - 1);
}

#[tokio::test]
async fn live_ais_own_figures_arrive_over_otlp_equal_to_the_metrics_endpoint() {
    let instance = uuid::Uuid::new_v4().simple().to_string();
    let mut vars = otel_vars(collector().addr);
    vars.push(("OTEL_RESOURCE_ATTRIBUTES", format!("service.instance.id={instance}")));
    let process = LiveAiProcess::spawn(&vars.iter().map(|(k, v)| (*k, v.as_str())).collect::<Vec<_>>()).await;
    for topic in ["moons", "tides", "comets"] {
        let id = process.create_stream("explain-eli10", json!({"topic": topic})).await;
        process.events_of(&id).await.until_terminal().await;
    }
    let scraped = process.metric("live_ai_stream_outcomes_total", &["outcome=\"complete\""]).await;
    assert_eq!(scraped, 3.0);
    let exported = collector()
        .metric("live_ai.streams.outcomes", |m| {
            m.resource.get("service.instance.id") == Some(&json!(instance))
                && m.points.iter().any(|p| has(&p.attributes, "outcome", "complete") && p.value == scraped)
        })
        .await;
    assert_eq!((exported.kind, exported.unit.as_str()), ("sum", "{stream}"));
    let point = exported.points.iter().find(|p| has(&p.attributes, "outcome", "complete")).unwrap();
    assert!(has(&point.attributes, "block", "explain-eli10") && has(&point.attributes, "provider", "demo"), "{point:?}");
    let active = collector().metric("live_ai.streams.active", |m| m.resource.get("service.instance.id") == Some(&json!(instance))).await;
    assert_eq!(active.kind, "gauge");
}

#[tokio::test]
async fn every_gap_between_a_calls_chunks_is_recorded_exactly_once() {
    // A process of its own, so its histograms hold this one call only; without
    // moderation, each chunk the learner gets is one chunk of the provider.
    let instance = uuid::Uuid::new_v4().simple().to_string();
    let mut vars = otel_vars(collector().addr);
    vars.push(("OTEL_RESOURCE_ATTRIBUTES", format!("service.instance.id={instance}")));
    vars.push(("MODERATION", "off".into()));
    let process = LiveAiProcess::spawn(&vars.iter().map(|(k, v)| (*k, v.as_str())).collect::<Vec<_>>()).await;
    let id = process.create_stream("explain-eli10", json!({"topic": "glaciers"})).await;
    let events = process.events_of(&id).await.until_terminal().await;
    assert_eq!(events.last().unwrap().data["type"], "complete");
    let chunks = events.iter().filter(|e| e.kind() == "chunk").count() as u64;
    // Several times the gaps a call holds before recording them (32).
    assert!(chunks > 64, "{chunks} chunks");
    let count_of = |m: &MetricRecord| m.points.iter().map(|p| p.count).sum::<u64>();
    let this_process = |m: &MetricRecord| m.resource.get("service.instance.id") == Some(&json!(instance));
    // Cumulative: once an export holds them all, no later one holds fewer.
    let per_chunk =
        collector().metric("gen_ai.client.operation.time_per_output_chunk", |m| this_process(m) && count_of(m) >= chunks - 1).await;
    assert_eq!(count_of(&per_chunk), chunks - 1);
    let first = collector().metric("gen_ai.client.operation.time_to_first_chunk", |m| this_process(m) && count_of(m) >= 1).await;
    assert_eq!(count_of(&first), 1);
    let duration = collector().metric("gen_ai.client.operation.duration", |m| this_process(m) && count_of(m) >= 1).await;
    assert_eq!(count_of(&duration), 1);
}
