//! The OTLP pipelines: a tracer provider (sampler, bounded batch queue) and a
//! meter provider (periodic reader), both exporting over http/protobuf or gRPC to
//! the endpoints the settings resolved, under one resource. Spans over
//! http/protobuf go through live-ai's own processor ([`super::http_traces`]),
//! which writes each span where it ends and posts batches from a thread of its
//! own; over gRPC through the SDK's batch processor and the OTLP crate's
//! exporter ([`super::export_queue`]); metrics through the crate's.
//!
//! Exports run on threads of their own: a span ending costs the stream its
//! encoding or a queue push, whatever the collector does; a collector that is
//! down costs a failed export per batch, on that thread, counted.

use opentelemetry::KeyValue;
use opentelemetry_otlp::{MetricExporter, SpanExporter, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider};
use opentelemetry_sdk::Resource;

use super::chunk_gaps::WithChunkGaps;
use super::export_queue;
use super::http_traces::{Batching, HttpTraceProcessor};
use crate::config::telemetry::{OtlpExport, OtlpProtocol, SamplerSetting, TelemetrySettings};

/// The version of the OpenTelemetry semantic conventions this telemetry follows
/// (named in the README; GenAI conventions are still in development, so a
/// dashboard built on them names the version it was built for).
pub const SEMCONV_VERSION: &str = "1.41.0";
pub const SCHEMA_URL: &str = "https://opentelemetry.io/schemas/1.41.0";

/// An OTLP exporter that cannot be built from the settings.
#[derive(Debug, thiserror::Error)]
#[error("cannot export telemetry to {endpoint}: {message}")]
pub struct ExportSetupError {
    pub endpoint: String,
    pub message: String,
}

pub fn resource(settings: &TelemetrySettings) -> Resource {
    let attributes = settings.resource_attributes.iter().map(|(k, v)| KeyValue::new(k.clone(), v.clone()));
    Resource::builder_empty()
        .with_service_name(settings.service_name.clone())
        .with_schema_url([KeyValue::new("service.version", env!("CARGO_PKG_VERSION"))], SCHEMA_URL)
        .with_attributes(attributes)
        .with_attributes([KeyValue::new("telemetry.sdk.name", "opentelemetry"), KeyValue::new("telemetry.sdk.language", "rust")])
        .build()
}

pub fn tracer_provider(export: &OtlpExport, endpoint: &str, resource: Resource) -> Result<SdkTracerProvider, ExportSetupError> {
    let failed = |e: opentelemetry_otlp::ExporterBuildError| ExportSetupError { endpoint: endpoint.into(), message: e.to_string() };
    let builder = match export.protocol {
        // live-ai's own processor: each span written to protobuf where it ends (see `http_traces`).
        OtlpProtocol::HttpProtobuf => {
            let batching = Batching { max_batch: export.max_batch, max_queue: export.max_queue, delay: export.batch_delay };
            let processor = HttpTraceProcessor::new(endpoint, &export.traces_headers, export.traces_timeout, batching)?;
            SdkTracerProvider::builder().with_span_processor(processor)
        }
        OtlpProtocol::Grpc => {
            let exporter = SpanExporter::builder().with_tonic().with_endpoint(endpoint).build().map_err(failed)?;
            SdkTracerProvider::builder().with_span_processor(batched(export, exporter))
        }
    };
    Ok(builder.with_sampler(sampler(export.sampler)).with_resource(resource).build())
}

/// `exporter` behind the bounded batch queue.
fn batched<E: opentelemetry_sdk::trace::SpanExporter + 'static>(export: &OtlpExport, exporter: E) -> export_queue::BoundedProcessor {
    let config = BatchConfigBuilder::default()
        .with_scheduled_delay(export.batch_delay)
        .with_max_queue_size(export.max_queue)
        .with_max_export_batch_size(export.max_batch)
        .build();
    export_queue::bounded(exporter, export.max_queue, |exporter| BatchSpanProcessor::builder(exporter).with_batch_config(config).build())
}

pub fn meter_provider(export: &OtlpExport, endpoint: &str, resource: Resource) -> Result<SdkMeterProvider, ExportSetupError> {
    let failed = |e: opentelemetry_otlp::ExporterBuildError| ExportSetupError { endpoint: endpoint.into(), message: e.to_string() };
    let exporter = match export.protocol {
        // The OTLP crate's exporter, sending through live-ai's client, which
        // appends the chunk-gap histograms to each request (see `chunk_gaps`).
        OtlpProtocol::HttpProtobuf => {
            let client = blocking_client(endpoint, export.metrics_timeout)?;
            let client = WithChunkGaps::new(client, &resource, super::scope());
            MetricExporter::builder().with_http().with_endpoint(endpoint).with_http_client(client).build().map_err(failed)?
        }
        OtlpProtocol::Grpc => MetricExporter::builder().with_tonic().with_endpoint(endpoint).build().map_err(failed)?,
    };
    let reader = PeriodicReader::builder(exporter).with_interval(export.metric_interval).build();
    Ok(SdkMeterProvider::builder().with_reader(reader).with_resource(resource).build())
}

/// A blocking HTTP client giving up on a request after `timeout`. It runs a
/// runtime of its own, which may be neither built nor dropped on a thread of
/// the server's runtime: built on a thread of its own.
pub fn blocking_client(endpoint: &str, timeout: std::time::Duration) -> Result<reqwest::blocking::Client, ExportSetupError> {
    let failed = |message: String| ExportSetupError { endpoint: endpoint.into(), message };
    std::thread::spawn(move || reqwest::blocking::Client::builder().timeout(timeout).build())
        .join()
        .map_err(|_| failed("building the HTTP client panicked".into()))?
        .map_err(|error| failed(format!("cannot build the HTTP client: {error}")))
}

fn sampler(setting: SamplerSetting) -> Sampler {
    match setting {
        SamplerSetting::AlwaysOn => Sampler::AlwaysOn,
        SamplerSetting::AlwaysOff => Sampler::AlwaysOff,
        SamplerSetting::TraceIdRatio(ratio) => Sampler::TraceIdRatioBased(ratio),
        SamplerSetting::ParentBasedAlwaysOn => Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
        SamplerSetting::ParentBasedAlwaysOff => Sampler::ParentBased(Box::new(Sampler::AlwaysOff)),
        SamplerSetting::ParentBasedTraceIdRatio(ratio) => Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio))),
    }
}
