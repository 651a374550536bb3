//! The server span of each HTTP request (a WebSocket's is its upgrade's, held for
//! the socket's life): named `{method} {route}` after the matched route, never
//! the URL (a query may carry a read token), and a child of the host app's W3C
//! `traceparent` when the request carries one — the host's trace is the root.
//!
//! Its `trace_id` and `span_id` fields put the ids on every log line of the
//! request, so a log line leads to its trace; they, and the `method` and `path`
//! of the log lines, are recorded only when logs show spans (see
//! [`super::generation::logs_show_spans`]).

use axum::extract::MatchedPath;
use axum::http::{HeaderMap, Request, Response};
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing::field::Empty;
use tracing::Span;
use opentelemetry::trace::TraceContextExt;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::generation::{logs_show_spans, record_ids};

/// `make_span_with` of the HTTP trace layer.
pub fn request_span<B>(request: &Request<B>) -> Span {
    let method = request.method().as_str();
    let route = request.extensions().get::<MatchedPath>().map_or("", |path| path.as_str());
    let name = if route.is_empty() { method.to_owned() } else { format!("{method} {route}") };
    let span = tracing::info_span!(
        "request",
        otel.name = name,
        otel.kind = "server",
        otel.status_code = Empty,
        method = Empty,
        path = Empty,
        "http.request.method" = method,
        "http.route" = route,
        "http.response.status_code" = Empty,
        trace_id = Empty,
        span_id = Empty,
    );
    if span.is_disabled() {
        return span;
    }
    let parent = TraceContextPropagator::new().extract(&Headers(request.headers()));
    // Without a valid `traceparent` the extracted context is empty: a new trace.
    let _ = span.set_parent(parent);
    // The log lines' fields, not the trace's (it has `http.*`).
    if logs_show_spans() {
        span.record("method", method);
        span.record("path", request.uri().path());
        let ids = span.context().span().span_context().clone();
        if ids.is_valid() {
            record_ids(&span, &ids);
        }
    }
    span
}

/// `on_response` of the HTTP trace layer: the status, and an error status on 5xx
/// (a 4xx is the client's, per the HTTP conventions for server spans).
pub fn record_status<B>(response: &Response<B>, _latency: std::time::Duration, span: &Span) {
    let status = response.status();
    span.record("http.response.status_code", i64::from(status.as_u16()));
    if status.is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
}

struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|name| name.as_str()).collect()
    }
}
