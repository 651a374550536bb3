//! live-ai's own figures over OTLP, under the `live_ai.` prefix: read at each
//! export from the very Prometheus registry `/metrics` renders, so the two cannot
//! drift. A counter of `/metrics` (`live_ai_x_total{labels}`) is an OTLP sum, a
//! gauge a gauge, with the same labels as attributes. Histograms stay in
//! `/metrics` (the GenAI histograms are the OTLP ones).

use opentelemetry::metrics::Meter;
use opentelemetry::KeyValue;
use prometheus::proto::MetricType;
use prometheus::Registry;

/// What is exported: the family in `/metrics`, its OTLP name, unit, description.
const EXPORTED: &[(&str, &str, &str, &str)] = &[
    ("live_ai_active_streams", "live_ai.streams.active", "{stream}", "Generations running now."),
    ("live_ai_attached_readers", "live_ai.readers.attached", "{reader}", "Clients reading a stream now, over both transports."),
    ("live_ai_stream_resumes_total", "live_ai.streams.resumes", "{resume}", "Readers that resumed a stream after a seq."),
    ("live_ai_readers_dropped_total", "live_ai.readers.dropped", "{reader}", "Readers the server cut, by reason."),
    ("live_ai_stream_outcomes_total", "live_ai.streams.outcomes", "{stream}", "Finished generations by block, provider and outcome."),
    ("live_ai_limits_refused_total", "live_ai.limits.refused", "{request}", "Starts refused by a limit, by code."),
    ("live_ai_moderation_flags_total", "live_ai.moderation.flags", "{flag}", "Moderation flags by stage, category and block."),
    ("live_ai_moderation_checks_total", "live_ai.moderation.checks", "{check}", "Moderation checks by stage and outcome."),
    ("live_ai_events_sent_total", "live_ai.events.sent", "{event}", "Events written to clients, by transport."),
    ("live_ai_provider_streams_open", "live_ai.provider.requests.open", "{request}", "Provider requests open now."),
    ("live_ai_connections_open", "live_ai.connections.open", "{connection}", "Open client connections."),
    ("live_ai_connections_closed_total", "live_ai.connections.closed", "{connection}", "Connections the server closed itself, by reason."),
    ("live_ai_retained_log_bytes", "live_ai.logs.retained", "By", "Bytes held by the logs of finished streams."),
    ("live_ai_telemetry_spans_dropped_total", "live_ai.telemetry.spans.dropped", "{span}", "Spans not exported, by reason."),
];

/// Registers the observable instruments reading `registry` on `meter`; the
/// meter provider calls them at each export.
pub fn export(meter: &Meter, registry: &Registry) {
    for &(family, name, unit, description) in EXPORTED {
        let registry = registry.clone();
        if family.ends_with("_total") {
            meter
                .u64_observable_counter(name)
                .with_unit(unit)
                .with_description(description)
                .with_callback(move |observer| {
                    for (value, attributes) in read(&registry, family) {
                        observer.observe(value as u64, &attributes);
                    }
                })
                .build();
        } else {
            meter
                .i64_observable_gauge(name)
                .with_unit(unit)
                .with_description(description)
                .with_callback(move |observer| {
                    for (value, attributes) in read(&registry, family) {
                        observer.observe(value as i64, &attributes);
                    }
                })
                .build();
        }
    }
}

/// The samples of one family, with their labels as attributes. A family with no
/// sample yet (a counter vector nobody incremented) has none.
fn read(registry: &Registry, family: &str) -> Vec<(f64, Vec<KeyValue>)> {
    let families = registry.gather();
    let Some(found) = families.iter().find(|f| f.name() == family) else { return Vec::new() };
    found
        .get_metric()
        .iter()
        .map(|metric| {
            let value = match found.get_field_type() {
                MetricType::COUNTER => metric.get_counter().value(),
                _ => metric.get_gauge().value(),
            };
            let attributes = metric.get_label().iter().map(|l| KeyValue::new(l.name().to_owned(), l.value().to_owned())).collect();
            (value, attributes)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    #[test]
    fn every_exported_family_is_in_metrics_and_reads_back_with_its_labels() {
        let metrics = Metrics::new();
        let _ = metrics.registry().register(Box::new(crate::telemetry::export_queue::SPANS_DROPPED.clone()));
        // Counter vectors are rendered once they have a sample.
        metrics.outcomes.with_label_values(&["quiz", "demo", "complete"]).inc();
        metrics.readers_dropped.with_label_values(&["send_timeout"]).inc();
        metrics.moderation_flags.with_label_values(&["output", "violence", "quiz"]).inc();
        metrics.moderation_checks.with_label_values(&["output", "allowed"]).inc();
        metrics.connections_closed.with_label_values(&["at_capacity"]).inc();
        metrics.limits_refused.with_label_values(&["rate_limited"]).inc();
        crate::telemetry::export_queue::SPANS_DROPPED.with_label_values(&["queue_full"]).inc_by(0);
        let rendered = metrics.render();
        for (family, ..) in EXPORTED {
            assert!(rendered.contains(&format!("# TYPE {family} ")), "{family} is not in /metrics");
        }
        let read = read(metrics.registry(), "live_ai_stream_outcomes_total");
        assert_eq!(read.len(), 1);
        assert_eq!(read[0].0, 1.0);
        assert!(read[0].1.contains(&KeyValue::new("outcome", "complete")));
    }
}
