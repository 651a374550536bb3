//! The generation span: one per stream, from launch to its terminal event, child
//! of the request that started it (and so of the host app's trace), made
//! directly on the SDK's tracer. It carries the stream id, the block, the
//! learner as a salted hash (`enduser.pseudo.id`, never the principal itself),
//! the outcome and how many times a reader resumed.
//!
//! A reader that resumes a stream links its own span to the generation's: in
//! this process through [`GenerationTrace`]; from another process through the
//! generator's `traceparent`, kept with the stream's metadata in the store.
//! Nothing here runs per event.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, OnceLock};

use futures::future::Either;
use opentelemetry::trace::{
    Span as _, SpanBuilder, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId, TraceState, Tracer as _,
};
use opentelemetry::{Context, KeyValue, Value};
use sha2::{Digest, Sha256};
use tokio::task::futures::TaskLocalFuture;
use tracing::field::Empty;
use tracing::Span;

use crate::ai::blocks::BlockType;
use crate::ai::streaming::events::StreamId;
use crate::ai::streaming::store::EventStore;
use crate::metrics::Metrics;

static PRINCIPAL_SALT: OnceLock<Vec<u8>> = OnceLock::new();

/// Sets the salt of principals' hashes (`TELEMETRY_PRINCIPAL_SALT`); without one, a
/// random salt is drawn once per process. The first call wins.
pub fn set_principal_salt(salt: Option<&str>) {
    let _ = PRINCIPAL_SALT.set(match salt {
        Some(salt) => salt.as_bytes().to_vec(),
        None => random_salt(),
    });
}

fn random_salt() -> Vec<u8> {
    [uuid::Uuid::new_v4(), uuid::Uuid::new_v4()].iter().flat_map(|u| *u.as_bytes()).collect()
}

/// Pseudonyms already computed, by principal: a learner starts many streams,
/// and each would otherwise hash again. Emptied when full.
static PSEUDONYMS: LazyLock<Mutex<HashMap<String, Arc<str>>>> = LazyLock::new(Default::default);
const PSEUDONYMS_KEPT: usize = 4096;

/// The principal as it may appear in telemetry: 16 bytes of SHA-256 over the salt
/// and the principal, hex. Stable for one salt; not reversible without it.
pub fn pseudonym(principal: &str) -> Arc<str> {
    if let Some(known) = PSEUDONYMS.lock().unwrap().get(principal) {
        return known.clone();
    }
    let salt = PRINCIPAL_SALT.get_or_init(random_salt);
    let mut hash = Sha256::new();
    hash.update((salt.len() as u64).to_be_bytes());
    hash.update(salt);
    hash.update(principal.as_bytes());
    let pseudonym: Arc<str> = hex::encode(&hash.finalize()[..16]).into();
    let mut known = PSEUDONYMS.lock().unwrap();
    if known.len() >= PSEUDONYMS_KEPT {
        known.clear();
    }
    known.insert(principal.to_owned(), pseudonym.clone());
    pseudonym
}

/// Whether log lines show spans' fields (the log filter lets info spans
/// through): only then are the trace's ids formatted and recorded on the
/// log-only spans, which would otherwise cost every traced request and
/// generation for lines nobody sees.
static LOGS_SHOW_SPANS: AtomicBool = AtomicBool::new(true);

pub fn set_logs_show_spans(show: bool) {
    LOGS_SHOW_SPANS.store(show, Ordering::Relaxed);
}

pub fn logs_show_spans() -> bool {
    LOGS_SHOW_SPANS.load(Ordering::Relaxed)
}

/// The target of the `tracing` spans that only give log lines their fields (a
/// request's, a generation's): every exported span is made on the SDK.
pub const LOG_ONLY: &str = "live_ai::log_only";

/// Whether spans are exported (set once at init): only then does a generation
/// have a span on the SDK.
static TRACES_EXPORTED: AtomicBool = AtomicBool::new(false);

pub fn set_traces_exported(exported: bool) {
    TRACES_EXPORTED.store(exported, Ordering::Relaxed);
}

pub fn traces_exported() -> bool {
    TRACES_EXPORTED.load(Ordering::Relaxed)
}

tokio::task_local! {
    /// The OpenTelemetry context of the generation a task runs: the parent of
    /// its provider calls, and of the generation an answer is handed over to.
    static GENERATION: Context;
}

/// The span of one generation: a span made directly on the SDK's tracer, child
/// of the current request's (and so of the host app's trace), or of the
/// generation running in this task (a handed-over answer's); and a log-only
/// `tracing` span, so its log lines carry the stream id and, when logs show
/// spans, the trace's ids.
///
/// Not through `tracing`: a generation's `tracing` span is entered at every
/// poll of its task, and a bridge would copy every field into a `String` of
/// its own; at `RUST_LOG=warn` the log-only span is disabled and costs nothing
/// per poll. When the trace is not sampled there is no SDK span
/// (the sampler is parent-based, so it would not be exported either).
pub fn span(id: &StreamId, block: BlockType, principal: &str) -> (Span, GenerationTrace) {
    let log = tracing::info_span!(
        target: LOG_ONLY,
        "generation",
        stream_id = %id,
        block = block.as_str(),
        outcome = Empty,
        resumes = Empty,
        trace_id = Empty,
        span_id = Empty,
    );
    if !traces_exported() {
        return (log, GenerationTrace::untraced());
    }
    let parent = parent();
    let parent_ids = parent.span().span_context().clone();
    if parent_ids.is_valid() && !parent_ids.is_sampled() {
        if logs_show_spans() && !log.is_disabled() {
            log.record("trace_id", tracing::field::display(parent_ids.trace_id()));
        }
        return (log, GenerationTrace::untraced());
    }
    let tracer = super::tracer();
    // At the size `ended` leaves them: the SDK keeps this vector.
    let mut attributes = Vec::with_capacity(5);
    attributes.push(KeyValue::new("stream_id", Value::from(id.shared())));
    attributes.push(KeyValue::new("block", block.as_str()));
    attributes.push(KeyValue::new("enduser.pseudo.id", Value::from(pseudonym(principal))));
    let builder = SpanBuilder::from_name(span_name(block)).with_kind(SpanKind::Internal).with_attributes(attributes);
    let span = tracer.build_with_context(builder, &parent);
    let context = span.span_context().clone();
    if !context.is_sampled() {
        return (log, GenerationTrace::untraced());
    }
    if logs_show_spans() && !log.is_disabled() {
        record_ids(&log, &context);
    }
    (log, GenerationTrace { context, otel: Some(parent.with_span(span)), resumes: AtomicU64::new(0) })
}

/// `generate {block}`, without formatting it for each generation.
fn span_name(block: BlockType) -> &'static str {
    match block {
        BlockType::AskQuestion => "generate ask-question",
        BlockType::ExplainEli10 => "generate explain-eli10",
        BlockType::Quiz => "generate quiz",
        BlockType::Diagram => "generate diagram",
    }
}

/// `generation`, run with `trace`'s context as its task's generation (when
/// traced): what its provider calls and a hand-over find as their parent.
pub fn within<F: Future>(trace: &GenerationTrace, generation: F) -> Either<TaskLocalFuture<Context, F>, F> {
    match &trace.otel {
        Some(context) => Either::Left(GENERATION.scope(context.clone(), generation)),
        None => Either::Right(generation),
    }
}

/// The parent of a span made in this task: the generation it runs (when
/// traced), else the request it serves (when traced), else none: a new trace.
pub fn parent() -> Context {
    GENERATION.try_with(Context::clone).ok().or_else(super::http::current).unwrap_or_default()
}

/// Records the ids of `context` (the span's own) as the span's fields, so every
/// log line inside it carries them.
pub fn record_ids(span: &Span, context: &SpanContext) {
    span.record("trace_id", tracing::field::display(context.trace_id()));
    span.record("span_id", tracing::field::display(context.span_id()));
}

/// Ends the generation's span with how it ended (the outcome of
/// `live_ai_stream_outcomes_total`, and the resumes it had; anything but
/// completion or a cancel is an error), and records them on its log lines.
pub fn ended(outcome: &str, trace: &GenerationTrace) {
    let resumes = trace.resumes.load(Ordering::Relaxed) as i64;
    let log = Span::current();
    log.record("outcome", outcome);
    log.record("resumes", resumes);
    let Some(context) = &trace.otel else { return };
    let span = context.span();
    span.set_attribute(KeyValue::new("outcome", outcome.to_owned()));
    span.set_attribute(KeyValue::new("resumes", resumes));
    if outcome != "complete" && !outcome.starts_with("cancelled") {
        span.set_status(Status::error(""));
    }
    span.end();
}

/// What the manager keeps of a live generation's trace: its span (ended by
/// [`ended`]; readers hold the generation after it ended) and its ids.
pub struct GenerationTrace {
    context: SpanContext,
    /// The span, in a context whose parent is the generation's: `None` when
    /// the generation is not traced.
    otel: Option<Context>,
    resumes: AtomicU64,
}

impl GenerationTrace {
    fn untraced() -> Self {
        Self { context: SpanContext::empty_context(), otel: None, resumes: AtomicU64::new(0) }
    }

    /// A reader resumed the stream here: counted for the generation's span, and
    /// the reader's span links to it.
    pub fn resumed(&self) {
        self.resumes.fetch_add(1, Ordering::Relaxed);
        if self.context.is_valid() {
            if let Some(reader) = super::http::current() {
                reader.span().add_link(self.context.clone(), Vec::new());
            }
        }
    }

    /// The generation's span context as a W3C `traceparent`, for readers in other
    /// processes; `None` when it is not traced.
    pub fn traceparent(&self) -> Option<String> {
        let ids = &self.context;
        ids.is_valid().then(|| format!("00-{}-{}-{:02x}", ids.trace_id(), ids.span_id(), ids.trace_flags().to_u8()))
    }
}

/// Keeps a traced generation's `traceparent` with its stream, for readers in
/// other processes (one store command per generation, only when traced).
pub async fn publish(store: &dyn EventStore, id: &StreamId, trace: &GenerationTrace) {
    if let Some(traceparent) = trace.traceparent() {
        if let Err(error) = store.set_traceparent(id, &traceparent).await {
            tracing::debug!(stream_id = %id, %error, "could not keep the generation's traceparent");
        }
    }
}

/// A reader resumes stream `id` (`after` a seq): counted in
/// `live_ai_stream_resumes_total`, on the generation's span when it runs here,
/// and the reader's span links to the generator's — through the store when the
/// generation runs elsewhere (one read, only when the reader is traced).
pub async fn resumed(metrics: &Metrics, store: &dyn EventStore, id: &StreamId, here: Option<&GenerationTrace>) {
    metrics.stream_resumes.inc();
    if let Some(trace) = here {
        trace.resumed();
        return;
    }
    let Some(reader) = super::http::current().filter(|reader| reader.span().is_recording()) else {
        return;
    };
    if let Some(generator) = store.traceparent(id).await.ok().flatten().as_deref().and_then(parse_traceparent) {
        reader.span().add_link(generator, Vec::new());
    }
}

fn parse_traceparent(value: &str) -> Option<SpanContext> {
    let mut parts = value.split('-');
    let (version, trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if version != "00" || parts.next().is_some() {
        return None;
    }
    let trace = TraceId::from_hex(trace).ok()?;
    let span = SpanId::from_hex(span).ok()?;
    let flags = TraceFlags::new(u8::from_str_radix(flags, 16).ok()?);
    let context = SpanContext::new(trace, span, flags, true, TraceState::default());
    context.is_valid().then_some(context)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pseudonym_is_stable_and_never_the_principal() {
        let once = pseudonym("jwt:ada");
        assert_eq!(once, pseudonym("jwt:ada"));
        PSEUDONYMS.lock().unwrap().clear();
        assert_eq!(once, pseudonym("jwt:ada"), "the same once computed again");
        assert_ne!(once, pseudonym("jwt:bob"));
        assert!(!once.contains("ada"));
        assert_eq!(once.len(), 32);
    }

    #[test]
    fn a_traceparent_parses_back_and_malformed_ones_are_ignored() {
        let parsed = parse_traceparent("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01").unwrap();
        assert_eq!(parsed.trace_id().to_string(), "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(parsed.span_id().to_string(), "b7ad6b7169203331");
        assert!(parsed.is_sampled());
        for bad in [
            "",
            "00-xyz-b7ad6b7169203331-01",
            "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad}");
        }
    }
}
