//! An OTLP receiver for the tests: http/protobuf on a loopback port, `POST
//! /v1/traces` and `/v1/metrics` decoded with `opentelemetry-proto` into plain
//! records. It runs on its own thread and runtime, so it outlives each test's
//! runtime (the in-process exporter is global and sends to it from every test).
//! Tests wait for what they expect to arrive; nothing here sleeps.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::post;
use axum::Router;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use opentelemetry_proto::tonic::metrics::v1::number_data_point::Value as Number;
use prost::Message;
use serde_json::{Map, Value};
use tokio::sync::watch;

use crate::helpers::PATIENCE;

/// One exported span.
#[derive(Debug, Clone)]
pub struct SpanRecord {
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: String,
    pub name: String,
    /// OTLP's `SpanKind`: 2 server, 3 client.
    pub kind: i32,
    pub attributes: Map<String, Value>,
    pub events: Vec<String>,
    /// (trace id, span id) of each link.
    pub links: Vec<(String, String)>,
    /// OTLP's status code: 0 unset, 1 ok, 2 error.
    pub status: i32,
    pub resource: Map<String, Value>,
    /// The `content-type` and `x-api-key` headers of the export that carried it.
    pub sent_with: (String, String),
}

impl SpanRecord {
    pub fn attr(&self, key: &str) -> Option<&Value> {
        self.attributes.get(key)
    }
}

/// One metric of one export, its points flattened.
#[derive(Debug, Clone)]
pub struct MetricRecord {
    pub name: String,
    pub unit: String,
    /// `histogram`, `sum` or `gauge`.
    pub kind: &'static str,
    pub points: Vec<Point>,
    pub resource: Map<String, Value>,
}

#[derive(Debug, Clone)]
pub struct Point {
    pub attributes: Map<String, Value>,
    /// A sum's or gauge's value; a histogram's sum.
    pub value: f64,
    /// A histogram's count.
    pub count: u64,
}

#[derive(Default)]
struct Received {
    spans: Vec<SpanRecord>,
    metrics: Vec<MetricRecord>,
}

pub struct Collector {
    pub addr: SocketAddr,
    received: Mutex<Received>,
    changed: watch::Sender<u64>,
}

impl Collector {
    /// Starts a receiver on its own thread; `init` runs inside its runtime first
    /// (the in-process exporters are built there).
    pub fn start(init: impl FnOnce(SocketAddr) + Send + 'static) -> Arc<Collector> {
        let (ready, started) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                let addr = listener.local_addr().unwrap();
                let collector = Arc::new(Collector { addr, received: Mutex::default(), changed: watch::channel(0).0 });
                init(addr);
                ready.send(collector.clone()).unwrap();
                let app = Router::new().route("/v1/traces", post(traces)).route("/v1/metrics", post(metrics)).with_state(collector);
                axum::serve(listener, app).await.unwrap();
            });
        });
        started.recv().unwrap()
    }

    /// The first span for which `matches` holds, once it has arrived.
    pub async fn span(&self, what: &str, matches: impl Fn(&SpanRecord) -> bool) -> SpanRecord {
        self.wait(what, |received| received.spans.iter().find(|s| matches(s)).cloned()).await
    }

    /// Every span received so far for which `matches` holds.
    pub fn spans(&self, matches: impl Fn(&SpanRecord) -> bool) -> Vec<SpanRecord> {
        self.received.lock().unwrap().spans.iter().filter(|s| matches(s)).cloned().collect()
    }

    /// The latest export of metric `name` for which `matches` holds, once one arrived.
    pub async fn metric(&self, name: &str, matches: impl Fn(&MetricRecord) -> bool) -> MetricRecord {
        self.wait(name, |received| received.metrics.iter().rev().find(|m| m.name == name && matches(m)).cloned()).await
    }

    async fn wait<T>(&self, what: &str, find: impl Fn(&Received) -> Option<T>) -> T {
        let mut changed = self.changed.subscribe();
        let waited = tokio::time::timeout(PATIENCE, async {
            loop {
                if let Some(found) = find(&self.received.lock().unwrap()) {
                    return found;
                }
                changed.changed().await.expect("the collector lives as long as the tests");
            }
        });
        waited.await.unwrap_or_else(|_| panic!("the collector received no {what} within {PATIENCE:?}"))
    }
}

async fn traces(State(collector): State<Arc<Collector>>, headers: HeaderMap, body: Bytes) -> &'static [u8] {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let sent_with = (header("content-type"), header("x-api-key"));
    let request = ExportTraceServiceRequest::decode(body).expect("an OTLP trace export");
    let mut spans = Vec::new();
    for resource_spans in request.resource_spans {
        let resource = resource_spans.resource.map(|r| attributes(&r.attributes)).unwrap_or_default();
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                spans.push(SpanRecord {
                    trace_id: hex::encode(&span.trace_id),
                    span_id: hex::encode(&span.span_id),
                    parent_span_id: hex::encode(&span.parent_span_id),
                    name: span.name,
                    kind: span.kind,
                    attributes: attributes(&span.attributes),
                    events: span.events.into_iter().map(|e| e.name).collect(),
                    links: span.links.into_iter().map(|l| (hex::encode(l.trace_id), hex::encode(l.span_id))).collect(),
                    status: span.status.map_or(0, |s| s.code),
                    resource: resource.clone(),
                    sent_with: sent_with.clone(),
                });
            }
        }
    }
    collector.received.lock().unwrap().spans.extend(spans);
    collector.changed.send_modify(|n| *n += 1);
    b""
}

async fn metrics(State(collector): State<Arc<Collector>>, body: Bytes) -> &'static [u8] {
    let request = ExportMetricsServiceRequest::decode(body).expect("an OTLP metrics export");
    let mut records = Vec::new();
    for resource_metrics in request.resource_metrics {
        let resource = resource_metrics.resource.map(|r| attributes(&r.attributes)).unwrap_or_default();
        for scope in resource_metrics.scope_metrics {
            for metric in scope.metrics {
                let number = |p: &opentelemetry_proto::tonic::metrics::v1::NumberDataPoint| Point {
                    attributes: attributes(&p.attributes),
                    value: match p.value {
                        Some(Number::AsDouble(v)) => v,
                        Some(Number::AsInt(v)) => v as f64,
                        None => f64::NAN,
                    },
                    count: 0,
                };
                let (kind, points) = match &metric.data {
                    Some(Data::Histogram(h)) => (
                        "histogram",
                        h.data_points
                            .iter()
                            .map(|p| Point { attributes: attributes(&p.attributes), value: p.sum.unwrap_or(f64::NAN), count: p.count })
                            .collect(),
                    ),
                    Some(Data::Sum(s)) => ("sum", s.data_points.iter().map(number).collect()),
                    Some(Data::Gauge(g)) => ("gauge", g.data_points.iter().map(number).collect()),
                    _ => ("other", Vec::new()),
                };
                records.push(MetricRecord { name: metric.name, unit: metric.unit, kind, points, resource: resource.clone() });
            }
        }
    }
    collector.received.lock().unwrap().metrics.extend(records);
    collector.changed.send_modify(|n| *n += 1);
    b""
}

fn attributes(pairs: &[KeyValue]) -> Map<String, Value> {
    pairs.iter().map(|kv| (kv.key.clone(), kv.value.as_ref().map_or(Value::Null, any))).collect()
}

fn any(value: &AnyValue) -> Value {
    match &value.value {
        Some(Any::StringValue(s)) => Value::String(s.clone()),
        Some(Any::BoolValue(b)) => Value::Bool(*b),
        Some(Any::IntValue(i)) => Value::from(*i),
        Some(Any::DoubleValue(d)) => Value::from(*d),
        Some(Any::ArrayValue(array)) => Value::Array(array.values.iter().map(any).collect()),
        _ => Value::Null,
    }
}
