//! Ended spans as an OTLP `ExportTraceServiceRequest`, written straight into
//! protobuf bytes.
//!
//! The OTLP crate first converts each span into `opentelemetry-proto`'s structs
//! (every key and value copied into a `String`, scopes grouped through a
//! `HashMap`), then encodes and drops them: about 15,000 instructions per
//! span, over a third of what OpenTelemetry added per streamed event
//! (`bench/RESULTS.md`).
//! Here each field is written once from the span itself, as the span ends
//! ([`scope_span`]); the resource and each instrumentation scope are encoded
//! once and copied around a batch's spans ([`TraceEncoder::request`]). The
//! bytes decode to the same message as the OTLP crate's (the test below holds
//! it to that).

use std::time::{SystemTime, UNIX_EPOCH};

use opentelemetry::trace::{SpanContext, SpanId, SpanKind, Status, TraceState};
use opentelemetry::{Array, InstrumentationScope, KeyValue, Value};
use opentelemetry_sdk::trace::SpanData;
use opentelemetry_sdk::Resource;
use prost::encoding::{encode_key, encode_varint, encoded_len_varint, WireType};

/// OTLP's span flags: the trace flags in the low byte, then whether the parent
/// (of a span; the linked span, of a link) is known to be remote, and is.
const FLAGS_HAS_IS_REMOTE: u32 = 0x100;
const FLAGS_IS_REMOTE: u32 = 0x200;

/// Encodes spans for one resource: each span on its own ([`scope_span`]), and
/// the request around spans already written ([`TraceEncoder::request`]).
#[derive(Debug, Default, Clone)]
pub struct TraceEncoder {
    /// `ResourceSpans`' `resource` and `schema_url` fields, encoded once.
    resource: Vec<u8>,
    /// Each scope seen, with its `ScopeSpans` `scope` and `schema_url` fields.
    scopes: Vec<(InstrumentationScope, Vec<u8>)>,
}

impl TraceEncoder {
    pub fn new(resource: &Resource) -> Self {
        let mut encoder = Self::default();
        encoder.set_resource(resource);
        encoder
    }

    pub fn set_resource(&mut self, resource: &Resource) {
        self.resource.clear();
        message(&mut self.resource, 1, |buf| {
            for (key, value) in resource.iter() {
                key_value(buf, 1, key.as_str(), value);
            }
        });
        if let Some(schema) = resource.schema_url() {
            string(&mut self.resource, 3, schema);
        }
    }

    /// The number of `scope` among the scopes seen (nearly always the one
    /// scope there is), learning it the first time.
    pub fn scope(&mut self, scope: &InstrumentationScope) -> usize {
        match self.scopes.iter().position(|(known, _)| known == scope) {
            Some(index) => index,
            None => {
                self.scopes.push((scope.clone(), encode_scope(scope)));
                self.scopes.len() - 1
            }
        }
    }

    /// Appends one `ExportTraceServiceRequest` to `buf`: one `ResourceSpans`,
    /// and a `ScopeSpans` for each scope with spans, in the order the scopes
    /// were learned. `by_scope[n]` holds the spans of scope `n`, each written
    /// by [`scope_span`].
    pub fn request(&self, by_scope: &[Vec<u8>], buf: &mut Vec<u8>) {
        message(buf, 1, |buf| {
            buf.extend_from_slice(&self.resource);
            for ((_, scope), spans) in self.scopes.iter().zip(by_scope).filter(|(_, spans)| !spans.is_empty()) {
                message(buf, 2, |buf| {
                    buf.extend_from_slice(scope);
                    buf.extend_from_slice(spans);
                });
            }
        });
    }

    /// Appends `spans` to `buf` as one `ExportTraceServiceRequest`: the
    /// tests' reference, made of the two pieces the span processor uses.
    #[cfg(test)]
    pub fn encode(&mut self, spans: &[SpanData], buf: &mut Vec<u8>) {
        let mut by_scope: Vec<Vec<u8>> = Vec::new();
        for span in spans {
            let index = self.scope(&span.instrumentation_scope);
            by_scope.resize_with(by_scope.len().max(index + 1), Vec::new);
            scope_span(&mut by_scope[index], span);
        }
        self.request(&by_scope, buf);
    }
}

/// Appends `span` to `buf` as one entry of `ScopeSpans`' `spans`.
pub fn scope_span(buf: &mut Vec<u8>, span: &SpanData) {
    message(buf, 2, |buf| encode_span(buf, span));
}

/// `ScopeSpans`' `scope` (an `InstrumentationScope`) and `schema_url` fields.
fn encode_scope(scope: &InstrumentationScope) -> Vec<u8> {
    let mut buf = Vec::new();
    message(&mut buf, 1, |buf| {
        string(buf, 1, scope.name());
        if let Some(version) = scope.version() {
            string(buf, 2, version);
        }
        attributes(buf, 3, scope.attributes());
    });
    if let Some(schema) = scope.schema_url() {
        string(&mut buf, 3, schema);
    }
    buf
}

/// The fields of one `Span` message.
fn encode_span(buf: &mut Vec<u8>, span: &SpanData) {
    let context = &span.span_context;
    bytes(buf, 1, &context.trace_id().to_bytes());
    bytes(buf, 2, &context.span_id().to_bytes());
    trace_state(buf, 3, context.trace_state());
    if span.parent_span_id != SpanId::INVALID {
        bytes(buf, 4, &span.parent_span_id.to_bytes());
    }
    string(buf, 5, &span.name);
    varint(buf, 6, span_kind(&span.span_kind));
    fixed64(buf, 7, nanos(span.start_time));
    fixed64(buf, 8, nanos(span.end_time));
    attributes(buf, 9, &span.attributes);
    varint(buf, 10, span.dropped_attributes_count.into());
    for event in &span.events.events {
        message(buf, 11, |buf| {
            fixed64(buf, 1, nanos(event.timestamp));
            string(buf, 2, &event.name);
            attributes(buf, 3, &event.attributes);
            varint(buf, 4, event.dropped_attributes_count.into());
        });
    }
    varint(buf, 12, span.events.dropped_count.into());
    for link in &span.links.links {
        message(buf, 13, |buf| {
            let linked = &link.span_context;
            bytes(buf, 1, &linked.trace_id().to_bytes());
            bytes(buf, 2, &linked.span_id().to_bytes());
            trace_state(buf, 3, linked.trace_state());
            attributes(buf, 4, &link.attributes);
            varint(buf, 5, link.dropped_attributes_count.into());
            fixed32(buf, 6, flags(linked, linked.is_remote()));
        });
    }
    varint(buf, 14, span.links.dropped_count.into());
    // Always present, as the OTLP crate sends it (an unset status is an empty message).
    message(buf, 15, |buf| {
        let code = match &span.status {
            Status::Unset => 0,
            Status::Ok => 1,
            Status::Error { description } => {
                string(buf, 2, description);
                2
            }
        };
        varint(buf, 3, code);
    });
    fixed32(buf, 16, flags(context, span.parent_span_is_remote));
}

fn flags(context: &SpanContext, remote: bool) -> u32 {
    let mut flags = u32::from(context.trace_flags().to_u8()) | FLAGS_HAS_IS_REMOTE;
    if remote {
        flags |= FLAGS_IS_REMOTE;
    }
    flags
}

fn span_kind(kind: &SpanKind) -> u64 {
    match kind {
        SpanKind::Internal => 1,
        SpanKind::Server => 2,
        SpanKind::Client => 3,
        SpanKind::Producer => 4,
        SpanKind::Consumer => 5,
    }
}

/// `time` as OTLP's nanoseconds since the Unix epoch.
pub fn nanos(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |since| since.as_nanos() as u64)
}

fn trace_state(buf: &mut Vec<u8>, tag: u32, state: &TraceState) {
    // Nearly always empty: compared, not rendered.
    if *state != TraceState::NONE {
        string(buf, tag, &state.header());
    }
}

fn attributes<'a>(buf: &mut Vec<u8>, tag: u32, attributes: impl IntoIterator<Item = &'a KeyValue>) {
    for attribute in attributes {
        key_value(buf, tag, attribute.key.as_str(), &attribute.value);
    }
}

/// A `KeyValue` message as field `tag`.
fn key_value(buf: &mut Vec<u8>, tag: u32, key: &str, value: &Value) {
    message(buf, tag, |buf| {
        string(buf, 1, key);
        message(buf, 2, |buf| any_value(buf, value));
    });
}

/// The fields of an `AnyValue` (a oneof: its one field is written even when it
/// holds its type's default).
fn any_value(buf: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Bool(value) => {
            encode_key(2, WireType::Varint, buf);
            encode_varint(u64::from(*value), buf);
        }
        Value::I64(value) => {
            encode_key(3, WireType::Varint, buf);
            encode_varint(*value as u64, buf);
        }
        Value::F64(value) => {
            encode_key(4, WireType::SixtyFourBit, buf);
            buf.extend_from_slice(&value.to_bits().to_le_bytes());
        }
        Value::String(value) => string_always(buf, 1, value.as_str()),
        Value::Array(array) => message(buf, 5, |buf| match array {
            Array::Bool(values) => values.iter().for_each(|v| message(buf, 1, |buf| any_value(buf, &Value::Bool(*v)))),
            Array::I64(values) => values.iter().for_each(|v| message(buf, 1, |buf| any_value(buf, &Value::I64(*v)))),
            Array::F64(values) => values.iter().for_each(|v| message(buf, 1, |buf| any_value(buf, &Value::F64(*v)))),
            Array::String(values) => values.iter().for_each(|v| message(buf, 1, |buf| string_always(buf, 1, v.as_str()))),
            // A kind of array added to the API after this was written: as text.
            other => message(buf, 1, |buf| string_always(buf, 1, &other.to_string())),
        }),
        // A kind of value added to the API after this was written: as text.
        other => string_always(buf, 1, &other.as_str()),
    }
}

/// Writes field `tag` as a length-delimited message whose fields `body` writes.
fn message(buf: &mut Vec<u8>, tag: u32, body: impl FnOnce(&mut Vec<u8>)) {
    encode_key(tag, WireType::LengthDelimited, buf);
    // One byte for the length, the usual case; moved along when it needs more.
    buf.push(0);
    let start = buf.len();
    body(buf);
    let length = buf.len() - start;
    if length < 0x80 {
        buf[start - 1] = length as u8;
        return;
    }
    let mut prefix = [0u8; 10];
    let width = encoded_len_varint(length as u64);
    encode_varint(length as u64, &mut &mut prefix[..]);
    buf.splice(start - 1..start, prefix[..width].iter().copied());
}

fn varint(buf: &mut Vec<u8>, tag: u32, value: u64) {
    if value != 0 {
        encode_key(tag, WireType::Varint, buf);
        encode_varint(value, buf);
    }
}

fn fixed64(buf: &mut Vec<u8>, tag: u32, value: u64) {
    if value != 0 {
        encode_key(tag, WireType::SixtyFourBit, buf);
        buf.extend_from_slice(&value.to_le_bytes());
    }
}

fn fixed32(buf: &mut Vec<u8>, tag: u32, value: u32) {
    if value != 0 {
        encode_key(tag, WireType::ThirtyTwoBit, buf);
        buf.extend_from_slice(&value.to_le_bytes());
    }
}

fn bytes(buf: &mut Vec<u8>, tag: u32, value: &[u8]) {
    if !value.is_empty() {
        string_always_bytes(buf, tag, value);
    }
}

fn string(buf: &mut Vec<u8>, tag: u32, value: &str) {
    bytes(buf, tag, value.as_bytes());
}

fn string_always(buf: &mut Vec<u8>, tag: u32, value: &str) {
    string_always_bytes(buf, tag, value.as_bytes());
}

fn string_always_bytes(buf: &mut Vec<u8>, tag: u32, value: &[u8]) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(value.len() as u64, buf);
    buf.extend_from_slice(value);
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;
    use std::time::Duration;

    use opentelemetry::trace::{Event, Link, SpanContext, TraceFlags, TraceId};
    use opentelemetry::StringValue;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::any_value;
    use opentelemetry_proto::tonic::trace::v1::ResourceSpans;
    use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
    use opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope;
    use opentelemetry_sdk::trace::{SpanEvents, SpanLinks};
    use prost::Message;

    use super::*;

    fn context(trace: u128, span: u64, flags: u8, state: TraceState, remote: bool) -> SpanContext {
        SpanContext::new(TraceId::from(trace), SpanId::from(span), TraceFlags::new(flags), remote, state)
    }

    fn scope(name: &'static str) -> InstrumentationScope {
        InstrumentationScope::builder(name)
            .with_version("1.2.3")
            .with_schema_url("https://opentelemetry.io/schemas/1.41.0")
            .with_attributes([KeyValue::new("scope.attr", true)])
            .build()
    }

    /// Spans with every kind of field and value, over two scopes, one of them a
    /// scope with nothing but a name.
    fn spans() -> Vec<SpanData> {
        let at = |ms: u64| UNIX_EPOCH + Duration::from_millis(1_800_000_000_000 + ms);
        let long = "x".repeat(300);
        let mut events = SpanEvents::default();
        events.events.push(Event::new("gen_ai.first_chunk", at(3), vec![KeyValue::new("seconds", 0.25)], 0));
        events.events.push(Event::new("second", at(4), vec![], 2));
        events.dropped_count = 1;
        let mut links = SpanLinks::default();
        links.links.push(Link::new(
            context(7, 8, 1, TraceState::from_key_value([("vendor", "v1")]).unwrap(), true),
            vec![KeyValue::new("why", "resumed")],
            1,
        ));
        links.links.push(Link::new(context(9, 10, 0, TraceState::NONE, false), vec![], 0));
        links.dropped_count = 3;
        let generation = SpanData {
            span_context: context(0x0af7651916cd43dd8448eb211c80319c, 0xb7ad6b7169203331, 1, TraceState::NONE, false),
            parent_span_id: SpanId::from(0x1122334455667788),
            parent_span_is_remote: true,
            span_kind: SpanKind::Server,
            name: Cow::Borrowed("POST /api/streams"),
            start_time: at(0),
            end_time: at(10),
            attributes: vec![
                KeyValue::new("http.request.method", "POST"),
                KeyValue::new("http.response.status_code", 200_i64),
                KeyValue::new("negative", -5_i64),
                KeyValue::new("zero", 0_i64),
                KeyValue::new("ratio", 0.5),
                KeyValue::new("flag", false),
                KeyValue::new("empty", ""),
                KeyValue::new("long", long.clone()),
                KeyValue::new("gen_ai.response.finish_reasons", Value::Array(Array::String(vec![StringValue::from("stop")]))),
                KeyValue::new("bools", Value::Array(Array::Bool(vec![true, false]))),
                KeyValue::new("ints", Value::Array(Array::I64(vec![1, -2]))),
                KeyValue::new("floats", Value::Array(Array::F64(vec![1.5]))),
            ],
            dropped_attributes_count: 4,
            events,
            links,
            status: Status::error("upstream failed"),
            instrumentation_scope: scope("live-ai"),
        };
        let mut other = generation.clone();
        other.span_context = context(5, 6, 0, TraceState::NONE, false);
        other.parent_span_id = SpanId::INVALID;
        other.parent_span_is_remote = false;
        other.span_kind = SpanKind::Client;
        other.name = Cow::Owned(long);
        other.status = Status::Ok;
        other.events = SpanEvents::default();
        other.links = SpanLinks::default();
        other.instrumentation_scope = InstrumentationScope::builder("bare").build();
        let mut internal = generation.clone();
        internal.span_kind = SpanKind::Internal;
        internal.status = Status::Unset;
        internal.start_time = UNIX_EPOCH;
        vec![generation, other, internal]
    }

    fn resource() -> Resource {
        Resource::builder_empty()
            .with_service_name("live-ai")
            .with_schema_url([KeyValue::new("service.version", "0.1.0")], "https://opentelemetry.io/schemas/1.41.0")
            .build()
    }

    #[test]
    fn spans_decode_to_the_message_the_otlp_crate_sends() {
        // One resource for both: its attributes are a hash map, whose order
        // differs from one map to the next.
        let resource = resource();
        let mut buf = Vec::new();
        TraceEncoder::new(&resource).encode(&spans(), &mut buf);
        let ours = ExportTraceServiceRequest::decode(buf.as_slice()).expect("valid protobuf");
        let theirs = ExportTraceServiceRequest {
            resource_spans: group_spans_by_resource_and_scope(spans(), &ResourceAttributesWithSchema::from(&resource)),
        };
        assert_eq!(ours, theirs);
        let spans: Vec<_> = ours.resource_spans[0].scope_spans.iter().map(|scope| scope.spans.len()).collect();
        assert_eq!(spans, [2, 1], "grouped by scope, in order of first appearance");
    }

    #[test]
    fn an_empty_string_and_a_false_value_are_still_sent() {
        let mut buf = Vec::new();
        TraceEncoder::new(&resource()).encode(&spans()[..1], &mut buf);
        let request = ExportTraceServiceRequest::decode(buf.as_slice()).unwrap();
        let ResourceSpans { scope_spans, .. } = &request.resource_spans[0];
        let value = |key: &str| {
            let attribute = scope_spans[0].spans[0].attributes.iter().find(|a| a.key == key).unwrap();
            attribute.value.as_ref().unwrap().value.clone()
        };
        assert_eq!(value("empty"), Some(any_value::Value::StringValue(String::new())));
        assert_eq!(value("flag"), Some(any_value::Value::BoolValue(false)));
        assert_eq!(value("zero"), Some(any_value::Value::IntValue(0)));
    }

    #[test]
    fn a_batch_encodes_the_same_after_the_scopes_were_learned() {
        let mut encoder = TraceEncoder::new(&resource());
        let (mut first, mut second) = (Vec::new(), Vec::new());
        encoder.encode(&spans(), &mut first);
        encoder.encode(&spans(), &mut second);
        assert_eq!(first, second);
        assert_eq!(encoder.scopes.len(), 2, "each scope encoded once, not per batch");
    }
}
