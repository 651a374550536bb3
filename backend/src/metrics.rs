//! Prometheus metrics, one registry per app (so tests can run several apps in one
//! process). Hot-path counters are resolved once, not looked up per event.

use prometheus::{Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    pub active_streams: IntGauge,
    pub attached_readers: IntGauge,
    pub provider_streams_open: IntGauge,
    pub retained_log_bytes: IntGauge,
    pub events_sent_sse: IntCounter,
    pub events_sent_ws: IntCounter,
    pub time_to_first_token: HistogramVec,
    pub chunk_delivery: prometheus::Histogram,
    pub outcomes: IntCounterVec,
    pub readers_dropped: IntCounterVec,
    /// Flags by stage (`input`/`output`), category and block.
    pub moderation_flags: IntCounterVec,
    /// Checks by stage and outcome (`allowed`, `flagged`, `failed_closed`, `failed_open`).
    pub moderation_checks: IntCounterVec,
    pub moderation_check_seconds: HistogramVec,
    /// Inputs per batched moderation request; its count is the batched requests sent.
    pub moderation_batch_size: prometheus::Histogram,
    /// Webhook attempts by outcome (`delivered`, `failed`, `abandoned`, `lost`).
    pub moderation_webhooks: IntCounterVec,
    /// Sockets open now, lingering closes included (bounded by `MAX_CONNECTIONS`).
    pub connections_open: IntGauge,
    /// Connections the server ended itself, by why.
    pub connections_closed: IntCounterVec,
    /// Coalescing, by block: generations started that others may join, starts that joined
    /// one, starts served a finished answer, and the provider tokens those
    /// joined and replayed answers did not cost.
    pub shared_generations: IntCounterVec,
    pub coalesce_joins: IntCounterVec,
    pub coalesce_cache_hits: IntCounterVec,
    pub coalesce_tokens_saved: IntCounterVec,
    /// Readers that resumed a stream after a seq, wherever it is generated.
    pub stream_resumes: IntCounter,
    /// Starts a limit refused, by code (`rate_limited`, `budget_exhausted`).
    pub limits_refused: IntCounterVec,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new_custom(Some("live_ai".into()), None).expect("valid prefix");
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid metric");
            registry.register(Box::new(g.clone())).expect("registered once");
            g
        };
        let counters = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry.register(Box::new(c.clone())).expect("registered once");
            c
        };
        let active_streams = gauge("active_streams", "Generations running now.");
        let attached_readers = gauge("attached_readers", "Clients reading a stream now, over both transports.");
        let provider_streams_open = gauge("provider_streams_open", "Provider requests open now (closed on cancel).");
        let retained_log_bytes =
            gauge("retained_log_bytes", "Bytes held by the logs of finished streams (bounded by STREAM_RETENTION_MAX_BYTES).");
        let events_sent = counters("events_sent_total", "Events written to clients.", &["transport"]);
        let outcomes = counters("stream_outcomes_total", "Finished generations by outcome.", &["block", "provider", "outcome"]);
        let readers_dropped = counters("readers_dropped_total", "Readers the server dropped.", &["reason"]);
        let moderation_flags =
            counters("moderation_flags_total", "Moderation flags, by stage, category and block.", &["stage", "category", "block"]);
        let moderation_checks = counters("moderation_checks_total", "Moderation checks, by stage and outcome.", &["stage", "outcome"]);
        let moderation_webhooks =
            counters("moderation_webhook_deliveries_total", "Moderation webhook delivery attempts, by outcome.", &["outcome"]);
        let moderation_check_seconds = HistogramVec::new(
            HistogramOpts::new("moderation_check_seconds", "One moderation check, retries included.")
                .buckets(vec![0.0001, 0.001, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]),
            &["stage"],
        )
        .expect("valid metric");
        registry.register(Box::new(moderation_check_seconds.clone())).expect("registered once");
        let moderation_batch_size = prometheus::Histogram::with_opts(
            HistogramOpts::new(
                "moderation_batch_size",
                "Inputs per batched moderation request (MODERATION_PROVIDER=openai, MODERATION_BATCH_WAIT_MS above 0); its count is the batched requests sent.",
            )
            .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0]),
        )
        .expect("valid metric");
        registry.register(Box::new(moderation_batch_size.clone())).expect("registered once");
        let connections_open = gauge("connections_open", "Open client connections (bounded by MAX_CONNECTIONS).");
        let connections_closed = counters(
            "connections_closed_total",
            "Connections the server closed itself: send_timeout, header_timeout, or at_capacity (refused over MAX_CONNECTIONS).",
            &["reason"],
        );
        let shared_generations = counters(
            "shared_generations_total",
            "Generations started for a request that identical requests in its scope may join (COALESCE).",
            &["block"],
        );
        let coalesce_joins = counters("coalesce_joins_total", "Starts that joined a generation already running.", &["block"]);
        let coalesce_cache_hits =
            counters("coalesce_cache_hits_total", "Starts served a finished answer without asking the model.", &["block"]);
        let coalesce_tokens_saved = counters(
            "coalesce_tokens_saved_total",
            "Provider tokens (prompt and completion) of the complete answers that joined or cached streams got without a generation of their own.",
            &["block"],
        );
        let stream_resumes = IntCounter::new("stream_resumes_total", "Readers that resumed a stream after a seq.").expect("valid metric");
        registry.register(Box::new(stream_resumes.clone())).expect("registered once");
        let limits_refused = counters("limits_refused_total", "Starts refused by a limit, by code.", &["code"]);
        let time_to_first_token = HistogramVec::new(
            HistogramOpts::new("time_to_first_token_seconds", "From start to the first chunk.")
                .buckets(vec![0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0]),
            &["block", "provider"],
        )
        .expect("valid metric");
        registry.register(Box::new(time_to_first_token.clone())).expect("registered once");
        let chunk_delivery = prometheus::Histogram::with_opts(
            HistogramOpts::new(
                "chunk_delivery_seconds",
                "From a chunk's creation by the engine to its hand-off to an SSE connection: the latency the server adds. Replayed chunks count their age.",
            )
            .buckets(vec![0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0]),
        )
        .expect("valid metric");
        registry.register(Box::new(chunk_delivery.clone())).expect("registered once");
        Self {
            events_sent_sse: events_sent.with_label_values(&["sse"]),
            events_sent_ws: events_sent.with_label_values(&["websocket"]),
            registry,
            active_streams,
            attached_readers,
            provider_streams_open,
            retained_log_bytes,
            time_to_first_token,
            chunk_delivery,
            outcomes,
            readers_dropped,
            moderation_flags,
            moderation_checks,
            moderation_check_seconds,
            moderation_batch_size,
            moderation_webhooks,
            connections_open,
            connections_closed,
            shared_generations,
            coalesce_joins,
            coalesce_cache_hits,
            coalesce_tokens_saved,
            stream_resumes,
            limits_refused,
        }
    }

    /// The registry `/metrics` renders: the OTLP export reads the same figures.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out).expect("encoding to a Vec cannot fail");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
