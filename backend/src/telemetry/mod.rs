//! Telemetry: structured logs (text for people, JSON for collectors, `LOG_FORMAT`,
//! filtered by `RUST_LOG`) and, when an OTLP endpoint is configured, traces and
//! metrics exported with OpenTelemetry (`OTEL_*`, see the README's "Watching it in
//! production").
//!
//! Every span is made directly on the SDK's tracer — the request's
//! ([`http`]), the generation's ([`generation`]) and the provider call's
//! ([`genai`]) — each in a context its task holds (a `tokio` task-local), not
//! through `tracing`: a request's span would be entered at every poll of its
//! body, and a bridge would copy every field of every span, sampled or not.
//! `tracing` carries the log lines: a log-only span beside the request's and
//! the generation's gives their lines the stream id and, when logs show spans,
//! the trace's ids; `RUST_LOG=warn` quietens logs without losing traces. The
//! log layer never hears of span enters and exits ([`no_enter_exit`]). Without
//! export, logging is set up exactly as it always was.
//!
//! - [`otlp`]: exporters, sampler, resource; [`http_traces`] and
//!   [`span_proto`]: the http/protobuf span path, each span written to protobuf
//!   where it ends and posted in batches, dropped spans counted;
//!   [`export_queue`]: over gRPC, the SDK's batch queue bounded and counted.
//! - [`http`]: the server span of each request, child of the host app's W3C
//!   `traceparent`.
//! - [`generation`]: the generation span, its outcome and resumes, and the link a
//!   reader elsewhere makes to it.
//! - [`genai`]: the provider call as a GenAI client span, and the four GenAI
//!   metrics; [`chunk_gaps`]: the per-chunk one aggregated by live-ai and
//!   appended to each metrics export over http/protobuf.
//! - [`live_metrics`]: `/metrics`' own figures, exported over OTLP from the same source.

pub mod chunk_gaps;
pub mod export_queue;
pub mod genai;
pub mod generation;
pub mod http;
pub mod http_traces;
pub mod live_metrics;
mod no_enter_exit;
pub mod otlp;
pub mod span_proto;

use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use std::sync::{Arc, OnceLock};

use opentelemetry::metrics::Meter;
use opentelemetry::InstrumentationScope;

use crate::ai::providers::Provider;
use crate::config::settings::LogFormat;
use crate::config::telemetry::{OtlpProtocol, TelemetrySettings};
use crate::metrics::Metrics;
pub use otlp::ExportSetupError;

/// The running exporters; [`Telemetry::shutdown`] sends what is still queued.
#[derive(Default)]
pub struct Telemetry {
    tracer: Option<SdkTracerProvider>,
    meter: Option<SdkMeterProvider>,
}

impl Telemetry {
    /// Whether spans are exported.
    pub fn traces(&self) -> bool {
        self.tracer.is_some()
    }

    /// Flushes and stops the exporters, waiting at most `patience`: a collector
    /// that does not answer must not hold the process (a rolling deploy waits
    /// for it). Blocking.
    pub fn shutdown(self, patience: std::time::Duration) {
        if self.tracer.is_none() && self.meter.is_none() {
            return;
        }
        let (done, finished) = std::sync::mpsc::channel();
        // A thread of its own, left behind if it is still exporting at the deadline.
        std::thread::spawn(move || {
            if let Some(tracer) = self.tracer {
                if let Err(error) = tracer.shutdown_with_timeout(patience) {
                    tracing::warn!(%error, "could not flush the last spans");
                }
            }
            if let Some(meter) = self.meter {
                if let Err(error) = meter.shutdown_with_timeout(patience) {
                    tracing::warn!(%error, "could not flush the last metrics");
                }
            }
            let _ = done.send(());
        });
        if finished.recv_timeout(patience).is_err() {
            tracing::warn!(?patience, "the collector did not take the last telemetry in time; exiting without it");
        }
    }
}

/// Installs the process's logging and, when configured, its OTLP export. Call
/// once, inside the Tokio runtime (the gRPC exporter needs it). A second call
/// (tests) keeps the first subscriber.
pub fn init(format: LogFormat, settings: &TelemetrySettings) -> Result<Telemetry, ExportSetupError> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,tower_http=warn"));
    generation::set_principal_salt(settings.principal_salt.as_ref().map(|salt| salt.expose()));
    let mut telemetry = Telemetry::default();
    let Some(export) = &settings.export else {
        let builder = tracing_subscriber::fmt().with_env_filter(filter);
        // A second init (tests) is harmless: the first subscriber stays.
        let _ = match format {
            LogFormat::Text => builder.try_init(),
            LogFormat::Json => builder.json().try_init(),
        };
        return Ok(telemetry);
    };
    // Log lines show spans' fields only when the filter lets info spans through.
    generation::set_logs_show_spans(filter.max_level_hint().is_none_or(|level| level >= LevelFilter::INFO));
    // Per-layer filters look each span up at every enter and exit: neither layer
    // needs to hear of them (the registry keeps the current span itself).
    let logs = no_enter_exit::NoEnterExit(
        match format {
            LogFormat::Text => tracing_subscriber::fmt::layer().boxed(),
            LogFormat::Json => tracing_subscriber::fmt::layer().json().boxed(),
        }
        .with_filter(filter),
    );
    let resource = otlp::resource(settings);
    if let Some(endpoint) = &export.metrics_endpoint {
        let meter = otlp::meter_provider(export, endpoint, resource.clone())?;
        opentelemetry::global::set_meter_provider(meter.clone());
        telemetry.meter = Some(meter);
    }
    if let Some(endpoint) = &export.traces_endpoint {
        let provider = otlp::tracer_provider(export, endpoint, resource)?;
        opentelemetry::global::set_tracer_provider(provider.clone());
        generation::set_traces_exported(true);
        telemetry.tracer = Some(provider);
    }
    let _ = tracing_subscriber::registry().with(logs).try_init();
    Ok(telemetry)
}

/// live-ai's meter on the process's meter provider (a no-op one without export),
/// named with the semantic conventions' schema.
pub fn meter() -> Meter {
    opentelemetry::global::meter_with_scope(scope())
}

/// live-ai's tracer on the process's tracer provider (a no-op one without
/// trace export): for the spans made directly on the SDK, not through `tracing`.
pub fn tracer() -> &'static opentelemetry::global::BoxedTracer {
    // Made once, after `init` installed the provider (spans are made only
    // when traces are exported): building one per span allocates.
    static TRACER: OnceLock<opentelemetry::global::BoxedTracer> = OnceLock::new();
    TRACER.get_or_init(|| opentelemetry::global::tracer_with_scope(scope()))
}

/// live-ai's instrumentation scope, named with the semantic conventions' schema.
pub(crate) fn scope() -> InstrumentationScope {
    InstrumentationScope::builder("live-ai").with_version(env!("CARGO_PKG_VERSION")).with_schema_url(otlp::SCHEMA_URL).build()
}

/// The provider an app uses: its calls traced and measured when anything is
/// exported; as it is otherwise (nothing per chunk then).
pub fn instrument_provider(settings: &TelemetrySettings, provider: Arc<dyn Provider>) -> Arc<dyn Provider> {
    let Some(export) = &settings.export else { return provider };
    crate::ai::providers::watch::calibrate_clock();
    // Over http/protobuf the chunk gaps are aggregated here and appended to the
    // metrics' requests; over gRPC (or with no metrics) the SDK records them.
    let own_chunk_gaps = export.protocol == OtlpProtocol::HttpProtobuf && export.metrics_endpoint.is_some();
    let instruments = genai::GenAiInstruments::new(&meter(), own_chunk_gaps);
    genai::instrumented(provider, instruments, opentelemetry::global::tracer_with_scope(scope()), settings.capture_content)
}

/// Puts an app's `/metrics` figures on the OTLP export too, and the count of
/// dropped spans in `/metrics`.
pub fn export_metrics(settings: &TelemetrySettings, metrics: &Metrics) {
    // Registered in each app's registry; only a second registration in the same one fails.
    let _ = metrics.registry().register(Box::new(export_queue::SPANS_DROPPED.clone()));
    if settings.export.as_ref().is_some_and(|export| export.metrics_endpoint.is_some()) {
        live_metrics::export(&meter(), metrics.registry());
    }
}
