//! OpenTelemetry export, end to end: `live-ai` servers export over OTLP
//! (http/protobuf, loopback) to a receiver in this test binary, which decodes
//! what arrives with `opentelemetry-proto`.
//!
//! A binary of its own, apart from `tests/api`: the tracing subscriber and the
//! meter provider are global to a process, so the in-process servers of these
//! tests all export to the one receiver installed first. Each test finds its own
//! spans by the stream id it started (or the trace id it sent). What only a
//! process shows (two processes on one Redis, a collector that never answers,
//! the log lines) runs the built binary.

#[path = "../../src/ai/providers/fake_upstream.rs"]
mod fake_upstream;
#[allow(dead_code)]
#[path = "../api/helpers.rs"]
mod helpers;

mod collector;
mod content;
mod metrics;
mod resilience;
mod shutdown;
mod traces;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use collector::Collector;
use live_ai::config::settings::{LogFormat, Settings};

/// The API key every export of these tests carries, as `OTEL_EXPORTER_OTLP_HEADERS`
/// gives it (percent-encoded there).
pub const API_KEY: &str = "key with spaces";

/// The variables that point a server's export at `collector`, with short batch
/// delays so a test waits milliseconds, not the production seconds.
pub fn otel_vars(collector: SocketAddr) -> Vec<(&'static str, String)> {
    vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{collector}")),
        ("OTEL_EXPORTER_OTLP_HEADERS", "x-api-key=key%20with%20spaces".into()),
        ("OTEL_BSP_SCHEDULE_DELAY", "20".into()),
        ("OTEL_METRIC_EXPORT_INTERVAL", "100".into()),
    ]
}

/// The receiver this process's in-process servers export to; the first call
/// installs the process's telemetry.
pub fn collector() -> &'static Arc<Collector> {
    static COLLECTOR: OnceLock<Arc<Collector>> = OnceLock::new();
    COLLECTOR.get_or_init(|| {
        Collector::start(|addr| {
            let vars: HashMap<String, String> = otel_vars(addr).into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
            let settings = Settings::from_map(&vars).expect("valid telemetry settings");
            // Kept for the process's life: the exporters run until it exits.
            std::mem::forget(live_ai::telemetry::init(LogFormat::Text, &settings.telemetry).expect("the exporters build"));
        })
    })
}

/// An in-process server exporting to [`collector`], with `vars` on top.
/// Coalescing is off unless `vars` turn it on: with it, a learner who joins
/// or is served from the cache has no provider call in their trace (the
/// first asker's own, a test of its own in `traces.rs`).
pub async fn traced_app(vars: &[(&str, &str)]) -> helpers::TestApp {
    let otel = otel_vars(collector().addr);
    let mut all: Vec<(&str, &str)> = otel.iter().map(|(k, v)| (*k, v.as_str())).collect();
    all.push(("COALESCE", "off"));
    all.extend_from_slice(vars);
    helpers::spawn_app(&all).await
}

/// A fresh W3C trace context, as a host app would send it.
pub fn host_traceparent() -> (String, String, String) {
    let trace_id = uuid::Uuid::new_v4().simple().to_string();
    let span_id = uuid::Uuid::new_v4().simple().to_string()[..16].to_owned();
    (format!("00-{trace_id}-{span_id}-01"), trace_id, span_id)
}
