//! The provider call, as the OpenTelemetry GenAI semantic conventions
//! ([`super::otlp::SEMCONV_VERSION`]) describe it: a client span named
//! `chat {gen_ai.request.model}` per call (each retry is its own call), and the
//! four client metrics — `gen_ai.client.operation.duration`,
//! `gen_ai.client.token.usage`, `gen_ai.client.operation.time_to_first_chunk` and
//! `gen_ai.client.operation.time_per_output_chunk`.
//!
//! A decorator around the provider whose calls the engine watches
//! ([`crate::ai::providers::watch`]): the engine tells each call's [`Call`] of
//! its first chunk, the gaps between later chunks a batch at a time, its usage,
//! end marker or error, and drops it when the call's stream is dropped. The gaps
//! go to the provider's own histogram ([`super::chunk_gaps`], one lock per
//! batch) over http/protobuf, else to an SDK histogram bound to the provider's
//! attributes: no span, no event, no allocation, no lookup of the attributes
//! per chunk (an earlier attempt with a span per chunk cost 23 % of the CPU per
//! event; an unbound observation, hashing four attributes per chunk, about 7 %).
//! The first chunk is the span's one event.
//!
//! The span is made directly on the SDK's tracer, as a child of the
//! generation's span (also an SDK span, found in the task), not through
//! `tracing`, like every span here ([`super`]). It is made only when the
//! generation's trace is sampled (the sampler is parent-based, so an unsampled
//! generation's call would not be exported either); the metrics are recorded
//! for every call.
//!
//! A call the engine drops before the provider's end marker (the learner
//! cancelled, nobody read, the engine's own timeout or an invalid answer) ends
//! with `error.type` = `cancelled` but no error status: the provider did not fail.
//! Prompt and answer text go on the span only with
//! `OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use opentelemetry::global::{BoxedSpan, BoxedTracer};
use opentelemetry::metrics::{BoundHistogram, Histogram, Meter};
use opentelemetry::trace::{Span as _, SpanBuilder, SpanKind, Status, TraceContextExt, Tracer as _};
use opentelemetry::{Array, Context, KeyValue, StringValue, Value};
use serde_json::json;

use super::chunk_gaps::{self, ChunkGaps};
use crate::ai::providers::{CallWatch, Provider, ProviderError, ProviderRequest, ProviderStream, TokenCounter};
use crate::ai::streaming::events::{FinishReason, Usage};

/// The operation every provider call is: a chat completion.
const OPERATION: &str = "chat";

/// The GenAI client instruments, with the bucket boundaries the conventions advise.
#[derive(Clone)]
pub struct GenAiInstruments {
    duration: Histogram<f64>,
    tokens: Histogram<u64>,
    first_chunk: Histogram<f64>,
    /// None when live-ai aggregates the chunk gaps itself (`own_chunk_gaps`).
    per_chunk: Option<Histogram<f64>>,
}

impl GenAiInstruments {
    pub fn new(meter: &Meter, own_chunk_gaps: bool) -> Self {
        let seconds = |name: &'static str, description: &'static str, boundaries: &[f64]| {
            meter.f64_histogram(name).with_unit("s").with_description(description).with_boundaries(boundaries.to_vec()).build()
        };
        Self {
            duration: seconds(
                "gen_ai.client.operation.duration",
                "GenAI operation duration.",
                &[0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92],
            ),
            tokens: meter
                .u64_histogram("gen_ai.client.token.usage")
                .with_unit("{token}")
                .with_description("Number of input and output tokens used.")
                .with_boundaries(
                    [1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864].map(f64::from).to_vec(),
                )
                .build(),
            first_chunk: seconds(
                "gen_ai.client.operation.time_to_first_chunk",
                "Time from issuing the request to receiving the first chunk of the response stream.",
                &[0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0],
            ),
            per_chunk: (!own_chunk_gaps).then(|| seconds(chunk_gaps::NAME, chunk_gaps::DESCRIPTION, &chunk_gaps::BOUNDS)),
        }
    }
}

/// The instruments bound to one provider's attributes: what every call records
/// unless it failed (a failed call's duration carries its `error.type`).
#[derive(Clone)]
struct Bound {
    first_chunk: BoundHistogram<f64>,
    per_chunk: PerChunk,
    input_tokens: BoundHistogram<u64>,
    output_tokens: BoundHistogram<u64>,
    duration: BoundHistogram<f64>,
}

impl Bound {
    fn new(instruments: &GenAiInstruments, attributes: &[KeyValue]) -> Self {
        let tokens = |kind: &'static str| {
            let mut attributes = attributes.to_vec();
            attributes.push(KeyValue::new("gen_ai.token.type", kind));
            instruments.tokens.bind(&attributes)
        };
        Self {
            first_chunk: instruments.first_chunk.bind(attributes),
            per_chunk: match &instruments.per_chunk {
                Some(histogram) => PerChunk::Sdk(histogram.bind(attributes)),
                None => PerChunk::Own(chunk_gaps::series(attributes)),
            },
            input_tokens: tokens("input"),
            output_tokens: tokens("output"),
            duration: instruments.duration.bind(attributes),
        }
    }
}

/// Where a provider's chunk gaps are recorded.
#[derive(Clone)]
enum PerChunk {
    /// live-ai's histogram, appended to the metrics' requests over http/protobuf.
    Own(Arc<ChunkGaps>),
    /// The SDK's, bound to the provider's attributes (gRPC).
    Sdk(BoundHistogram<f64>),
}

impl PerChunk {
    fn record(&self, gaps: &[u32]) {
        match self {
            PerChunk::Own(histogram) => histogram.record(gaps),
            PerChunk::Sdk(histogram) => {
                for gap in gaps {
                    histogram.record(f64::from(*gap) / 1e6);
                }
            }
        }
    }
}

/// `inner`, its calls traced on `tracer` and measured.
pub fn instrumented(
    inner: Arc<dyn Provider>,
    instruments: GenAiInstruments,
    tracer: BoxedTracer,
    capture_content: bool,
) -> Arc<dyn Provider> {
    let server = inner.server();
    // Shared text: each call's span copies these attributes, and a clone of an
    // `Arc<str>` value is a count, not an allocation.
    let shared = |text: &str| Value::from(Arc::<str>::from(text));
    let model = shared(inner.model());
    let mut attributes = vec![
        KeyValue::new("gen_ai.operation.name", OPERATION),
        KeyValue::new("gen_ai.provider.name", shared(inner.name())),
        KeyValue::new("gen_ai.request.model", model.clone()),
        // The model the provider was asked for is the one that answers: the
        // wire events this project reads do not name another.
        KeyValue::new("gen_ai.response.model", model),
    ];
    if let Some((host, port)) = &server {
        attributes.push(KeyValue::new("server.address", shared(host)));
        attributes.push(KeyValue::new("server.port", i64::from(*port)));
    }
    let bound = Bound::new(&instruments, &attributes);
    // Kept for the process's life (a provider is built once per app): each
    // call's span then names itself without allocating.
    let span_name: &'static str = Box::leak(format!("{OPERATION} {}", inner.model()).into_boxed_str());
    Arc::new(GenAiProvider { inner, instruments, bound, tracer, capture_content, server, attributes: attributes.into(), span_name })
}

struct GenAiProvider {
    inner: Arc<dyn Provider>,
    instruments: GenAiInstruments,
    bound: Bound,
    tracer: BoxedTracer,
    capture_content: bool,
    server: Option<(String, u16)>,
    /// The attributes every measurement of a call carries.
    attributes: Arc<[KeyValue]>,
    /// `chat {gen_ai.request.model}`.
    span_name: &'static str,
}

impl GenAiProvider {
    /// The call's client span, child of `parent` (the generation's span).
    fn span(&self, request: &ProviderRequest, parent: &Context) -> BoxedSpan {
        // At the size the call's end leaves them (the SDK keeps this vector):
        // up to three here, up to five when it ends.
        let mut attributes = Vec::with_capacity(self.attributes.len() + 8);
        attributes.extend(self.attributes.iter().cloned());
        attributes.push(KeyValue::new("gen_ai.request.max_tokens", i64::from(request.prompt.max_tokens)));
        if self.capture_content {
            let text = |content: &str| json!([{"type": "text", "content": content}]);
            attributes.push(KeyValue::new("gen_ai.system_instructions", text(&request.prompt.system).to_string()));
            attributes
                .push(KeyValue::new("gen_ai.input.messages", json!([{"role": "user", "parts": text(&request.prompt.user)}]).to_string()));
        }
        let builder = SpanBuilder::from_name(self.span_name).with_kind(SpanKind::Client).with_attributes(attributes);
        self.tracer.build_with_context(builder, parent)
    }
}

impl Provider for GenAiProvider {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn model(&self) -> &str {
        self.inner.model()
    }

    fn token_counter(&self) -> TokenCounter {
        self.inner.token_counter()
    }

    fn server(&self) -> Option<(String, u16)> {
        self.server.clone()
    }

    fn stream(&self, request: ProviderRequest) -> ProviderStream {
        self.inner.stream(request)
    }

    fn watch(&self, request: &ProviderRequest) -> Option<Box<dyn CallWatch>> {
        let parent = super::generation::parent();
        let span = parent.span().span_context().is_sampled().then(|| self.span(request, &parent));
        Some(Box::new(Call {
            output: (self.capture_content && span.is_some()).then(String::new),
            span,
            instruments: self.instruments.clone(),
            bound: self.bound.clone(),
            attributes: self.attributes.clone(),
            started: Instant::now(),
            usage: None,
            finished: None,
            error: None,
        }))
    }
}

/// One provider call in flight, as the engine shows it to us; dropping it (with
/// the call's stream) ends the span and records the call's metrics.
struct Call {
    /// None when the trace is not sampled.
    span: Option<BoxedSpan>,
    instruments: GenAiInstruments,
    bound: Bound,
    attributes: Arc<[KeyValue]>,
    started: Instant,
    usage: Option<Usage>,
    finished: Option<FinishReason>,
    error: Option<&'static str>,
    /// The answer so far, only when content is captured.
    output: Option<String>,
}

impl CallWatch for Call {
    fn first_chunk(&mut self, waited: Duration) {
        let waited = waited.as_secs_f64();
        self.bound.first_chunk.record(waited);
        if let Some(span) = &mut self.span {
            span.add_event("gen_ai.first_chunk", vec![KeyValue::new("gen_ai.response.time_to_first_chunk", waited)]);
        }
    }

    fn chunk_gaps(&mut self, gaps: &[u32]) {
        self.bound.per_chunk.record(gaps);
    }

    fn wants_text(&self) -> bool {
        self.output.is_some()
    }

    fn text(&mut self, token: &str) {
        if let Some(output) = &mut self.output {
            output.push_str(token);
        }
    }

    fn usage(&mut self, usage: &Usage) {
        self.usage = Some(*usage);
    }

    fn finished(&mut self, reason: FinishReason) {
        self.finished = Some(reason);
    }

    fn failed(&mut self, error: &ProviderError) {
        self.error = Some(error.code().as_str());
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        let error = self.error.or(if self.finished.is_none() { Some("cancelled") } else { None });
        if let Some(usage) = self.usage {
            self.bound.input_tokens.record(usage.prompt_tokens);
            self.bound.output_tokens.record(usage.completion_tokens);
        }
        let duration = self.started.elapsed().as_secs_f64();
        match error {
            None => self.bound.duration.record(duration),
            Some(error) => {
                let mut attributes = self.attributes.to_vec();
                attributes.push(KeyValue::new("error.type", error));
                self.instruments.duration.record(duration, &attributes);
            }
        }
        let Some(span) = &mut self.span else { return };
        if let Some(usage) = self.usage {
            span.set_attribute(KeyValue::new("gen_ai.usage.input_tokens", usage.prompt_tokens as i64));
            span.set_attribute(KeyValue::new("gen_ai.usage.output_tokens", usage.completion_tokens as i64));
        }
        let reason = self.finished.map(|reason| match reason {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        });
        if let Some(reason) = reason {
            span.set_attribute(KeyValue::new(
                "gen_ai.response.finish_reasons",
                Value::Array(Array::String(vec![StringValue::from(reason)])),
            ));
        }
        if let Some(output) = self.output.take() {
            let message =
                json!([{"role": "assistant", "parts": [{"type": "text", "content": output}], "finish_reason": reason.unwrap_or("error")}]);
            span.set_attribute(KeyValue::new("gen_ai.output.messages", message.to_string()));
        }
        if let Some(error) = error {
            span.set_attribute(KeyValue::new("error.type", error));
            if self.error.is_some() {
                span.set_status(Status::error(error));
            }
        }
        span.end();
    }
}
