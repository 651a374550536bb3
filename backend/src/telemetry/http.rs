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
use axum::http::{HeaderMap, Method};
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
    let Some(context) = server_span(&request, &method) else {
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
fn server_span(request: &Request, method: &Method) -> Option<Context> {
    if !traces_exported() {
        return None;
    }
    let parent = TraceContextPropagator::new().extract(&Headers(request.headers()));
    let builder = SpanBuilder::from_name("request").with_kind(SpanKind::Server);
    let mut span = super::tracer().build_with_context(builder, &parent);
    if span.is_recording() {
        let known = known_method(method);
        let route = request.extensions().get::<MatchedPath>().map(|route| routes::named(known, route.as_str()));
        span.update_name(match route {
            Some(route) => route.name,
            None => known.unwrap_or("HTTP"),
        });
        // One at a time: the span's own vector then grows to its final size
        // once, with the status code.
        span.set_attribute(KeyValue::new("http.request.method", known.unwrap_or("_OTHER")));
        if known.is_none() {
            span.set_attribute(KeyValue::new("http.request.method_original", method.as_str().to_owned()));
        }
        span.set_attribute(KeyValue::new("url.path", request.uri().path().to_owned()));
        span.set_attribute(KeyValue::new("url.scheme", if request.uri().scheme_str() == Some("https") { "https" } else { "http" }));
        if let Some(route) = route {
            span.set_attribute(KeyValue::new("http.route", route.route));
        }
    }
    Some(parent.with_span(span))
}

/// The method as the HTTP conventions name it, when it is one of theirs; any
/// other is `_OTHER` on the span (and `HTTP` in its name).
fn known_method(method: &Method) -> Option<&'static str> {
    Some(match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => return None,
    })
}

/// Span names and routes as `&'static str`, made once per route and method:
/// the same for every request of a route, which then names its span without
/// allocating. Bounded: the routes are the router's, the methods the
/// conventions' nine and `HTTP`.
mod routes {
    use std::collections::HashMap;
    use std::sync::{LazyLock, RwLock};

    #[derive(Clone, Copy)]
    pub struct Named {
        pub name: &'static str,
        pub route: &'static str,
    }

    /// One route's names, by method.
    type ByMethod = Vec<(&'static str, Named)>;

    /// By route, then by method.
    static NAMED: LazyLock<RwLock<HashMap<Box<str>, ByMethod>>> = LazyLock::new(Default::default);

    pub fn named(method: Option<&'static str>, route: &str) -> Named {
        let method = method.unwrap_or("HTTP");
        let find = |methods: &ByMethod| methods.iter().find(|(known, _)| *known == method).map(|(_, named)| *named);
        if let Some(named) = NAMED.read().unwrap_or_else(|poisoned| poisoned.into_inner()).get(route).and_then(find) {
            return named;
        }
        let mut all = NAMED.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        let methods = all.entry(route.into()).or_default();
        if let Some(named) = find(methods) {
            return named;
        }
        let route = methods.first().map_or_else(|| &*Box::leak(Box::<str>::from(route)), |(_, named)| named.route);
        let named = Named { name: Box::leak(format!("{method} {route}").into_boxed_str()), route };
        methods.push((method, named));
        named
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_method_outside_the_conventions_is_other() {
        assert_eq!(known_method(&Method::GET), Some("GET"));
        assert_eq!(known_method(&Method::from_bytes(b"PURGE").unwrap()), None);
    }

    #[test]
    fn a_routes_span_name_is_made_once_per_method() {
        let first = routes::named(Some("GET"), "/api/streams/{stream_id}/tests");
        let again = routes::named(Some("GET"), "/api/streams/{stream_id}/tests");
        assert_eq!(first.name, "GET /api/streams/{stream_id}/tests");
        assert!(std::ptr::eq(first.name, again.name), "the same name, not a new one");
        let other = routes::named(None, "/api/streams/{stream_id}/tests");
        assert_eq!(other.name, "HTTP /api/streams/{stream_id}/tests");
        assert!(std::ptr::eq(first.route, other.route), "one route string per route");
    }
}
