//! Telemetry never costs a stream: a collector that accepts connections and
//! never answers leaves every stream whole, and the spans it could not take are
//! dropped and counted. And a log line leads to its trace.

use std::io::BufRead;

use serde_json::{json, Value};
use tokio::net::TcpListener;

use crate::collector;
use crate::helpers::LiveAiProcess;
use crate::otel_vars;

/// A collector that accepts every connection and never answers (nor closes).
pub async fn black_hole() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    format!("http://{addr}")
}

#[tokio::test]
async fn a_collector_that_never_answers_costs_the_streams_nothing_and_its_dropped_spans_are_counted() {
    let endpoint = black_hole().await;
    let vars = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "10"),
        ("OTEL_BSP_MAX_QUEUE_SIZE", "4"),
        ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "2"),
        ("OTEL_METRIC_EXPORT_INTERVAL", "50"),
        ("DEMO_TOKENS_PER_SECOND", "0"),
    ];
    let process = LiveAiProcess::spawn(&vars).await;
    // Three spans a stream (request, generation, provider call): far more than the
    // queue holds while the one export in flight waits on the black hole.
    for topic in ["moons", "tides", "comets", "rivers", "deserts", "forests", "volcanoes", "glaciers"] {
        let id = process.create_stream("explain-eli10", json!({"topic": topic})).await;
        let events = process.events_of(&id).await.until_terminal().await;
        assert_eq!(events.last().unwrap().data["type"], "complete", "{topic}");
    }
    let dropped = process.wait_for_metric("live_ai_telemetry_spans_dropped_total", &["reason=\"queue_full\""], |n| n > 0.0).await;
    assert!(dropped > 0.0);
}

#[tokio::test]
async fn a_generations_log_lines_carry_its_trace_and_span_ids_beside_the_stream_id() {
    let (_dir, path, process) = logging_process().await;
    let id = process.create_stream("explain-eli10", json!({"topic": "auroras"})).await;
    process.events_of(&id).await.until_terminal().await;
    let generation =
        collector().span("generation span", |s| s.name.starts_with("generate ") && s.attr("stream_id") == Some(&json!(id))).await;
    let ended = generation_ended(&path, &id);
    assert_eq!(ended["span"]["trace_id"], json!(generation.trace_id), "{ended}");
    assert_eq!(ended["span"]["span_id"], json!(generation.span_id), "{ended}");
}

#[tokio::test]
async fn an_unsampled_generation_exports_no_span_and_its_log_lines_still_carry_the_trace_id() {
    let (_dir, path, process) = logging_process().await;
    // The host app did not sample its trace (flags 00): the parent-based sampler follows it.
    let (traceparent, unsampled_trace, _) = crate::host_traceparent();
    let traceparent = format!("{}-00", traceparent.strip_suffix("-01").unwrap());
    let events =
        process.sse("/api/stream/ai-block/explain-eli10?topic=geysers", &[("traceparent", &traceparent)]).await.until_terminal().await;
    let id = events[0].data["stream_id"].as_str().unwrap().to_owned();
    // A sampled trace after it: once its generation arrived, the unsampled one's
    // would have (one exporter, in order).
    let (traceparent, sampled_trace, _) = crate::host_traceparent();
    process.sse("/api/stream/ai-block/explain-eli10?topic=fjords", &[("traceparent", &traceparent)]).await.until_terminal().await;
    collector().span("the sampled generation", |s| s.trace_id == sampled_trace && s.name.starts_with("generate ")).await;
    assert!(collector().spans(|s| s.trace_id == unsampled_trace).is_empty(), "the unsampled trace exported spans");
    let ended = generation_ended(&path, &id);
    assert_eq!(ended["span"]["trace_id"], json!(unsampled_trace), "{ended}");
    // A log-only span: it has no span id of its own to lead to.
    assert_eq!(ended["span"]["span_id"], Value::Null, "{ended}");
}

/// A process exporting to [`collector`] and writing JSON logs to a file of its
/// own (in the returned directory, kept while the test runs).
async fn logging_process() -> (tempfile::TempDir, std::path::PathBuf, LiveAiProcess) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("live-ai.log");
    let mut vars = otel_vars(collector().addr);
    vars.push(("LOG_FORMAT", "json".into()));
    let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let process = LiveAiProcess::spawn_logging(&vars, std::fs::File::create(&path).unwrap()).await;
    (dir, path, process)
}

/// The `generation ended` log line of stream `id`: the generation's span ends
/// after its last line was written (lines are flushed whole), so it is there
/// once the stream's terminal event or span arrived.
fn generation_ended(path: &std::path::Path, id: &str) -> Value {
    std::io::BufReader::new(std::fs::File::open(path).unwrap())
        .lines()
        .map_while(Result::ok)
        .filter_map(|line| serde_json::from_str::<Value>(&line).ok())
        .find(|line| line["fields"]["message"] == "generation ended" && line["span"]["stream_id"] == json!(id))
        .unwrap_or_else(|| panic!("no `generation ended` line for {id}"))
}
