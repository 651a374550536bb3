//! SIGTERM: the spans still queued leave before the process does, and a
//! collector that never answers holds the exit back only for the shutdown
//! timeout.

use serde_json::json;

use crate::collector;
use crate::helpers::{LiveAiProcess, PATIENCE};
use crate::resilience::black_hole;

#[tokio::test]
async fn on_sigterm_the_spans_still_queued_are_exported_before_the_process_exits() {
    // Batches every ten minutes: only the flush at shutdown sends these spans.
    let endpoint = format!("http://{}", collector().addr);
    let vars = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "600000"),
        ("OTEL_METRIC_EXPORT_INTERVAL", "600000"),
        ("COALESCE", "off"),
    ];
    let process = LiveAiProcess::spawn(&vars).await;
    let id = process.create_stream("explain-eli10", json!({"topic": "lighthouses"})).await;
    let events = process.events_of(&id).await.until_terminal().await;
    assert_eq!(events.last().unwrap().data["type"], "complete");
    process.terminate();
    let status = tokio::time::timeout(PATIENCE, process.exited()).await.expect("the process exits after SIGTERM");
    assert!(status.success(), "{status}");
    let generation =
        collector().span("generation span", |s| s.name.starts_with("generate ") && s.attr("stream_id") == Some(&json!(id))).await;
    collector().span("provider call span", |s| s.parent_span_id == generation.span_id && s.name.starts_with("chat ")).await;
}

#[tokio::test]
async fn on_sigterm_a_collector_that_never_answers_holds_the_exit_only_for_the_shutdown_timeout() {
    // The exporter itself would wait ten minutes for an answer.
    let endpoint = black_hole().await;
    let vars = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "600000"),
        ("OTEL_BSP_SCHEDULE_DELAY", "10"),
        ("OTEL_METRIC_EXPORT_INTERVAL", "50"),
        ("SHUTDOWN_TIMEOUT_SECONDS", "1"),
    ];
    let process = LiveAiProcess::spawn(&vars).await;
    let id = process.create_stream("explain-eli10", json!({"topic": "harbours"})).await;
    assert_eq!(process.events_of(&id).await.until_terminal().await.last().unwrap().data["type"], "complete");
    process.terminate();
    let status = tokio::time::timeout(PATIENCE, process.exited()).await.expect("the process exits though its exports hang");
    assert!(status.success(), "{status}");
}
