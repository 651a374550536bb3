//! The bound on spans waiting for export over gRPC (the SDK's batch processor;
//! over http/protobuf `http_traces` bounds its own), owned here so that what
//! is dropped is counted: a collector that is down or slow costs the streams nothing, and the
//! spans it could not take show up in `live_ai_telemetry_spans_dropped_total`.
//!
//! The SDK's batch processor already drops when its queue is full, but keeps the
//! count to itself. [`BoundedProcessor`] admits a span only while fewer than the
//! queue's size are waiting (counted from `on_end` until the exporter was handed
//! them, so never fewer than the processor's own queue holds): the processor's
//! queue is never the one that overflows.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use opentelemetry::Context;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{BatchSpanProcessor, Span, SpanData, SpanExporter, SpanProcessor};
use opentelemetry_sdk::Resource;
use prometheus::IntCounterVec;

/// Spans lost before reaching the collector, by why: `queue_full` or
/// `export_failed`. One per process (the exporter is), registered in each app's
/// registry so `/metrics` shows it.
pub static SPANS_DROPPED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    IntCounterVec::new(
        // Named without the prefix: each app's registry adds `live_ai_`.
        prometheus::Opts::new("telemetry_spans_dropped_total", "Spans not exported: queue_full (collector slow or down) or export_failed."),
        &["reason"],
    )
    .expect("valid metric")
});

#[derive(Debug)]
struct Waiting {
    count: AtomicUsize,
    max: usize,
}

/// The batch processor behind the bound.
#[derive(Debug)]
pub struct BoundedProcessor {
    inner: BatchSpanProcessor,
    waiting: Arc<Waiting>,
}

/// The exporter, telling the bound when spans have left the queue.
#[derive(Debug)]
pub struct CountingExporter<E> {
    inner: E,
    waiting: Arc<Waiting>,
}

/// A processor over `exporter` that holds at most `max_queue` spans.
pub fn bounded<E: SpanExporter + 'static>(
    exporter: E,
    max_queue: usize,
    build: impl FnOnce(CountingExporter<E>) -> BatchSpanProcessor,
) -> BoundedProcessor {
    let waiting = Arc::new(Waiting { count: AtomicUsize::new(0), max: max_queue });
    let inner = build(CountingExporter { inner: exporter, waiting: waiting.clone() });
    BoundedProcessor { inner, waiting }
}

impl SpanProcessor for BoundedProcessor {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        if self.waiting.count.fetch_add(1, Ordering::Relaxed) >= self.waiting.max {
            self.waiting.count.fetch_sub(1, Ordering::Relaxed);
            SPANS_DROPPED.with_label_values(&["queue_full"]).inc();
            return;
        }
        self.inner.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

impl<E: SpanExporter> SpanExporter for CountingExporter<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let spans = batch.len();
        self.waiting.count.fetch_sub(spans, Ordering::Relaxed);
        let result = self.inner.export(batch).await;
        if result.is_err() {
            SPANS_DROPPED.with_label_values(&["export_failed"]).inc_by(spans as u64);
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}
