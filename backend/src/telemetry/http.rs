//! The server span of each HTTP request (a WebSocket's is its upgrade's, held for
//! the socket's life): named `{method} {route}` after the matched route, never
//! the URL (a query may carry a read token), and a child of the host app's W3C
//! `traceparent` when the request carries one — the host's trace is the root.
//!
//! Made directly on the SDK's tracer, not through `tracing`: a request's span
//! would be entered at every poll of its response body (once or twice per
//! streamed event), and the bridge would copy each of its fields into a
//! `String` of its own for every request, sampled or not. Here an unsampled
//! request's span is a context and nothing else: its name and attributes are
//! set only on a span that records. Its context is the request task's
//! ([`within`], a `tokio` task-local, also around a WebSocket's session), where
//! a generation finds its parent and a resume its reader's span. The span ends
//! when the last holder of its context lets go: the response body, once sent
//! (or a socket, once closed).
//!
//! Its log lines come from a log-only `tracing` span (target
//! [`LOG_ONLY`]: `method`, `path` and, when logs show spans, the trace's
//! `trace_id` and `span_id`, so a log line leads to its trace), entered while
//! the handler runs and while the body is polled; at `RUST_LOG=warn` it is
//! disabled and costs nothing.

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{MatchedPath, Request};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::Response;
use http_body::{Frame, SizeHint};
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{Span as _, SpanBuilder, SpanKind, Status, TraceContextExt, Tracer as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tokio::task::futures::TaskLocalFuture;
use tracing::field::Empty;
use tracing::{Instrument, Span};

use super::generation::{logs_show_spans, record_ids, traces_exported, LOG_ONLY};

tokio::task_local! {
    /// The OpenTelemetry context of the request (or socket) a task serves.
    static REQUEST: Context;
}

/// The request's (or socket's) context in this task, if it is traced.
pub fn current() -> Option<Context> {
    REQUEST.try_with(Context::clone).ok()
}

/// `serve`, run with `context` as its task's request: a WebSocket's session,
/// which outlives the upgrade's response.
pub fn within<F: Future>(context: Context, serve: F) -> TaskLocalFuture<Context, F> {
    REQUEST.scope(context, serve)
}

/// The middleware that traces each request (`axum::middleware::from_fn`).
pub async fn traced(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let log = tracing::info_span!(target: LOG_ONLY, "request", method = method.as_str(), path = Empty, trace_id = Empty, span_id = Empty);
    let show = logs_show_spans() && !log.is_disabled();
    if show {
        log.record("path", request.uri().path());
    }
    let Some(context) = server_span(&request, method.as_str()) else {
        let response = next.run(request).instrument(log.clone()).await;
        return response.map(|body| Body::new(Traced { body, _context: None, log }));
    };
    let ids = context.span().span_context().clone();
    if show && ids.is_valid() {
        record_ids(&log, &ids);
    }
    let response = REQUEST.scope(context.clone(), next.run(request)).instrument(log.clone()).await;
    let span = context.span();
    if span.is_recording() {
        let status = response.status();
        span.set_attribute(KeyValue::new("http.response.status_code", i64::from(status.as_u16())));
        // A 4xx is the client's, per the HTTP conventions for server spans.
        if status.is_server_error() {
            span.set_status(Status::error(""));
        }
    }
    response.map(|body| Body::new(Traced { body, _context: Some(context), log }))
}

/// The request's server span, in a context under the host app's `traceparent`
/// (a new trace without a valid one); `None` when traces are not exported.
fn server_span(request: &Request, method: &str) -> Option<Context> {
    if !traces_exported() {
        return None;
    }
    let parent = TraceContextPropagator::new().extract(&Headers(request.headers()));
    let builder = SpanBuilder::from_name("request").with_kind(SpanKind::Server);
    let mut span = super::tracer().build_with_context(builder, &parent);
    if span.is_recording() {
        let route = request.extensions().get::<MatchedPath>().map(MatchedPath::as_str);
        span.update_name(match route {
            Some(route) => format!("{method} {route}"),
            None => method.to_owned(),
        });
        let mut attributes = Vec::with_capacity(4);
        attributes.push(KeyValue::new("http.request.method", method.to_owned()));
        attributes.push(KeyValue::new("url.path", request.uri().path().to_owned()));
        attributes.push(KeyValue::new("url.scheme", request.uri().scheme_str().unwrap_or("http").to_owned()));
        if let Some(route) = route {
            attributes.push(KeyValue::new("http.route", route.to_owned()));
        }
        span.set_attributes(attributes);
    }
    Some(parent.with_span(span))
}

/// A response body that holds its request's context (the span ends when the
/// last holder drops it) and polls inside the request's log span.
struct Traced {
    body: Body,
    _context: Option<Context>,
    log: Span,
}

impl HttpBody for Traced {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        let _entered = this.log.enter();
        Pin::new(&mut this.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
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
