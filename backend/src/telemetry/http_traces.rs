//! The http/protobuf span path: [`HttpTraceProcessor`] writes each span to
//! protobuf on the thread where it ends, into the batch being filled, and a
//! thread of its own posts the batches to the traces endpoint with the
//! configured headers, within the configured timeout.
//!
//! It replaces both the SDK's batch processor and the OTLP crate's http
//! exporter for traces over http/protobuf (metrics and gRPC keep theirs):
//! handing every `SpanData` to another thread through a queue, converting it
//! there and freeing its values where they were not allocated was most of
//! what exporting a span cost (`bench/RESULTS.md`, issue 24). Here a span is
//! written where it ends ([`super::span_proto`], about a microsecond) and
//! freed there; only bytes cross threads.
//!
//! The rules are the batch processor's, read from the same variables: a
//! batch is posted when it holds `OTEL_BSP_MAX_EXPORT_BATCH_SIZE` spans or
//! `OTEL_BSP_SCHEDULE_DELAY` after the last timer; at most
//! `OTEL_BSP_MAX_QUEUE_SIZE` spans wait (counted from their end until a post
//! takes them), beyond which a span is dropped and counted (`queue_full`). A
//! collector that is slow or down holds the posting thread, never a stream; a
//! batch it refuses (not 2xx) or cannot be reached for is counted
//! (`export_failed`) and not retried, as the crate's is not by default.
//! Batches go out in the order their spans ended. The posting thread runs at a
//! lower priority than the streams' (niceness 10).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use opentelemetry::Context;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{Span, SpanData, SpanProcessor};
use opentelemetry_sdk::Resource;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE, USER_AGENT};

use super::export_queue::SPANS_DROPPED;
use super::span_proto::{self, TraceEncoder};
use super::ExportSetupError;

/// The niceness of the thread that posts spans: on a machine whose cores
/// the streams keep busy, the scheduler runs the export in the gaps rather
/// than preempting a stream's thread for it (spans it cannot keep up with wait
/// in the bounded queue, and past it are dropped and counted).
const EXPORT_NICENESS: libc::c_int = 10;

/// How many spans a batch holds, how many may wait, how often the timer
/// posts what there is.
#[derive(Debug, Clone, Copy)]
pub struct Batching {
    pub max_batch: usize,
    pub max_queue: usize,
    pub delay: Duration,
}

/// The span processor for http/protobuf export.
#[derive(Debug)]
pub struct HttpTraceProcessor {
    shared: Arc<Shared>,
    max_batch: usize,
    max_queue: usize,
    poster: Mutex<Option<JoinHandle<()>>>,
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    /// Wakes the posting thread: a batch was sealed, or it is to stop.
    sealed: Condvar,
    /// Wakes those waiting for a flush or the stop: a batch was posted, or
    /// the thread stopped.
    posted: Condvar,
}

#[derive(Debug, Default)]
struct State {
    /// The resource and the scopes seen; cloned by the posting thread for each
    /// batch (a few hundred bytes), so a post never holds the lock.
    encoder: TraceEncoder,
    /// The batch being filled.
    open: Batch,
    /// Batches ready to post, oldest first.
    sealed: VecDeque<Batch>,
    /// Spans in `open` and `sealed`: the bound's count.
    waiting: usize,
    /// Batches sealed and posted since the start: a flush waits until every
    /// batch sealed before it was posted.
    sealed_count: u64,
    posted_count: u64,
    stopping: bool,
    stopped: bool,
}

#[derive(Debug, Default)]
struct Batch {
    spans: usize,
    /// The spans' bytes, by scope number (see `TraceEncoder::scope`).
    by_scope: Vec<Vec<u8>>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl State {
    /// Moves the open batch, if it holds anything, to those ready to post.
    fn seal(&mut self) -> bool {
        if self.open.spans == 0 {
            return false;
        }
        let batch = std::mem::take(&mut self.open);
        self.sealed.push_back(batch);
        self.sealed_count += 1;
        true
    }
}

impl HttpTraceProcessor {
    /// A processor posting to `endpoint` (used verbatim), sending `headers`
    /// with each request and giving up on one after `timeout`.
    pub fn new(endpoint: &str, headers: &[(String, String)], timeout: Duration, batching: Batching) -> Result<Self, ExportSetupError> {
        let poster = Poster::new(endpoint, headers, timeout)?;
        // A timer of zero would seal and wake without end (the settings refuse it).
        let delay = batching.delay.max(Duration::from_millis(1));
        let shared = Arc::new(Shared::default());
        let thread = {
            let shared = shared.clone();
            std::thread::Builder::new().name("otlp-traces".into()).spawn(move || post_batches(&shared, &poster, delay)).map_err(
                |error| ExportSetupError { endpoint: endpoint.into(), message: format!("cannot start the export thread: {error}") },
            )?
        };
        Ok(Self { shared, max_batch: batching.max_batch.max(1), max_queue: batching.max_queue, poster: Mutex::new(Some(thread)) })
    }

    /// Seals what is open and waits until every batch sealed so far was posted
    /// or `deadline` passed.
    fn flush_until(&self, deadline: Option<Instant>, stop: bool) -> OTelSdkResult {
        let mut state = self.shared.lock();
        if state.stopped || (state.stopping && !stop) {
            return Err(OTelSdkError::AlreadyShutdown);
        }
        state.seal();
        state.stopping |= stop;
        let target = state.sealed_count;
        self.shared.sealed.notify_one();
        while state.posted_count < target && !state.stopped {
            state = match deadline {
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(OTelSdkError::Timeout(Duration::ZERO));
                    }
                    self.shared.posted.wait_timeout(state, left).unwrap_or_else(|poisoned| poisoned.into_inner()).0
                }
                None => self.shared.posted.wait(state).unwrap_or_else(|poisoned| poisoned.into_inner()),
            };
        }
        Ok(())
    }
}

/// The most room a thread keeps for writing spans from one to the next.
const KEPT_ROOM: usize = 64 * 1024;

thread_local! {
    /// Where a span is written before the lock is taken.
    static WRITTEN: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

impl SpanProcessor for HttpTraceProcessor {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        WRITTEN.with_borrow_mut(|written| {
            // A span with captured content can be large: that room is not kept.
            if written.capacity() > KEPT_ROOM {
                *written = Vec::new();
            }
            written.clear();
            span_proto::scope_span(written, &span);
            let mut state = self.shared.lock();
            if state.stopping {
                return;
            }
            if state.waiting >= self.max_queue {
                drop(state);
                SPANS_DROPPED.with_label_values(&["queue_full"]).inc();
                return;
            }
            let scope = state.encoder.scope(&span.instrumentation_scope);
            let batch = &mut state.open;
            batch.by_scope.resize_with(batch.by_scope.len().max(scope + 1), Vec::new);
            batch.by_scope[scope].extend_from_slice(written);
            batch.spans += 1;
            state.waiting += 1;
            if state.open.spans >= self.max_batch && state.seal() {
                drop(state);
                self.shared.sealed.notify_one();
            }
        });
        // `span` is freed here, on the thread that allocated most of its values.
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.flush_until(None, false)
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.flush_until(Some(Instant::now() + timeout), true)?;
        if let Some(thread) = self.poster.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take() {
            let _ = thread.join();
        }
        Ok(())
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.shared.lock().encoder.set_resource(resource);
    }
}

/// The posting thread: posts each sealed batch in turn, seals the open one
/// every `delay`, and returns once told to stop and nothing sealed is left.
fn post_batches(shared: &Shared, poster: &Poster, delay: Duration) {
    yield_to_streams();
    let mut failing = false;
    let mut next_timer = Instant::now() + delay;
    let mut state = shared.lock();
    loop {
        if let Some(batch) = state.sealed.pop_front() {
            state.waiting -= batch.spans;
            let encoder = state.encoder.clone();
            drop(state);
            let mut body = Vec::with_capacity(batch.by_scope.iter().map(Vec::len).sum::<usize>() + 512);
            encoder.request(&batch.by_scope, &mut body);
            match poster.post(body) {
                Ok(()) => failing = false,
                Err(why) => {
                    SPANS_DROPPED.with_label_values(&["export_failed"]).inc_by(batch.spans as u64);
                    // Once per outage: the count says the rest.
                    if !std::mem::replace(&mut failing, true) {
                        tracing::warn!(spans = batch.spans, %why, "could not export spans; dropped spans are counted in live_ai_telemetry_spans_dropped_total");
                    }
                }
            }
            state = shared.lock();
            state.posted_count += 1;
            shared.posted.notify_all();
            continue;
        }
        if state.stopping {
            state.stopped = true;
            shared.posted.notify_all();
            return;
        }
        let now = Instant::now();
        if now >= next_timer {
            state.seal();
            next_timer = now + delay;
            continue;
        }
        state = shared.sealed.wait_timeout(state, next_timer - now).unwrap_or_else(|poisoned| poisoned.into_inner()).0;
    }
}

/// Lowers the priority of the calling thread (the posting thread) only.
fn yield_to_streams() {
    // Only where `who = 0` with `PRIO_PROCESS` names the calling thread, not
    // the whole process (Linux; elsewhere it would slow the streams too).
    #[cfg(target_os = "linux")]
    // SAFETY: a plain system call on scalars.
    let _ = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, EXPORT_NICENESS) };
}

/// Posts encoded requests to the traces endpoint.
#[derive(Debug)]
struct Poster {
    client: reqwest::blocking::Client,
    endpoint: String,
    headers: HeaderMap,
}

impl Poster {
    fn new(endpoint: &str, headers: &[(String, String)], timeout: Duration) -> Result<Self, ExportSetupError> {
        let failed = |message: String| ExportSetupError { endpoint: endpoint.into(), message };
        let mut map = HeaderMap::new();
        map.insert(CONTENT_TYPE, HeaderValue::from_static("application/x-protobuf"));
        map.insert(USER_AGENT, HeaderValue::from_static(concat!("live-ai/", env!("CARGO_PKG_VERSION"))));
        for (name, value) in headers {
            let name = HeaderName::try_from(name.as_str()).map_err(|_| failed(format!("`{name}` is not an HTTP header name")))?;
            let value = HeaderValue::try_from(value.as_str())
                .map_err(|_| failed(format!("the value of `{name}` is not a valid HTTP header value")))?;
            map.insert(name, value);
        }
        let client = super::otlp::blocking_client(endpoint, timeout)?;
        Ok(Self { client, endpoint: endpoint.to_owned(), headers: map })
    }

    fn post(&self, body: Vec<u8>) -> Result<(), String> {
        let response = self
            .client
            .post(&self.endpoint)
            .headers(self.headers.clone())
            .body(body)
            .send()
            .map_err(|error| format!("HTTP export failed: {error}"))?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("HTTP export failed with status code: {}", status.as_u16()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpListener;

    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use prost::Message;

    use super::*;

    /// A collector on loopback that answers each request with the next of
    /// `statuses`, and hands back each request's `x-api-key` and decoded body.
    fn collector(statuses: Vec<u16>) -> (String, std::sync::mpsc::Receiver<(String, ExportTraceServiceRequest)>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}/v1/traces", listener.local_addr().unwrap());
        let (sent, received) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for status in statuses {
                let (stream, _) = listener.accept().unwrap();
                let mut reader = BufReader::new(stream);
                let (mut length, mut key) = (0, String::new());
                loop {
                    let mut line = String::new();
                    reader.read_line(&mut line).unwrap();
                    let line = line.trim_end();
                    if line.is_empty() {
                        break;
                    }
                    let (name, value) = line.split_once(": ").unwrap_or((line, ""));
                    match name.to_ascii_lowercase().as_str() {
                        "content-length" => length = value.parse().unwrap(),
                        "x-api-key" => key = value.to_owned(),
                        _ => {}
                    }
                }
                let mut body = vec![0; length];
                reader.read_exact(&mut body).unwrap();
                sent.send((key, ExportTraceServiceRequest::decode(body.as_slice()).unwrap())).unwrap();
                let answer = format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                reader.into_inner().write_all(answer.as_bytes()).unwrap();
            }
        });
        (endpoint, received)
    }

    /// A collector that accepts connections and never answers.
    fn black_hole() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}/v1/traces", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept() {
                held.push(socket);
            }
        });
        endpoint
    }

    fn span(name: &'static str) -> SpanData {
        use opentelemetry::trace::{SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState};
        SpanData {
            span_context: SpanContext::new(TraceId::from(1), SpanId::from(2), TraceFlags::SAMPLED, false, TraceState::NONE),
            parent_span_id: SpanId::INVALID,
            parent_span_is_remote: false,
            span_kind: SpanKind::Internal,
            name: name.into(),
            start_time: std::time::SystemTime::now(),
            end_time: std::time::SystemTime::now(),
            attributes: vec![],
            dropped_attributes_count: 0,
            events: Default::default(),
            links: Default::default(),
            status: Status::Unset,
            instrumentation_scope: opentelemetry::InstrumentationScope::builder("live-ai").build(),
        }
    }

    fn processor(endpoint: &str, headers: &[(String, String)], batching: Batching) -> HttpTraceProcessor {
        // The timeout never ends a post in a test: a post to the black hole
        // must not be counted as failed while another test counts failures.
        let mut processor = HttpTraceProcessor::new(endpoint, headers, Duration::from_secs(3600), batching).unwrap();
        processor.set_resource(&Resource::builder_empty().with_service_name("live-ai").build());
        processor
    }

    fn names(request: &ExportTraceServiceRequest) -> Vec<&str> {
        request.resource_spans[0].scope_spans[0].spans.iter().map(|span| span.name.as_str()).collect()
    }

    fn dropped(reason: &str) -> u64 {
        SPANS_DROPPED.with_label_values(&[reason]).get()
    }

    const SLOW_TIMER: Duration = Duration::from_secs(3600);
    /// How long a test waits for a request it expects: fails rather than hangs.
    const ANSWER: Duration = Duration::from_secs(30);

    #[test]
    fn a_refused_batch_is_counted_and_the_next_one_goes_through_with_its_headers() {
        let (endpoint, received) = collector(vec![503, 200]);
        let headers = [("x-api-key".to_owned(), "k1".to_owned())];
        let processor = processor(&endpoint, &headers, Batching { max_batch: 512, max_queue: 2048, delay: SLOW_TIMER });
        let failed_before = dropped("export_failed");
        processor.on_end(span("refused"));
        processor.force_flush().unwrap();
        assert_eq!(dropped("export_failed") - failed_before, 1);
        processor.on_end(span("first"));
        processor.on_end(span("second"));
        processor.force_flush().unwrap();
        let (key, refused) = received.recv_timeout(ANSWER).unwrap();
        assert_eq!((key.as_str(), names(&refused)), ("k1", vec!["refused"]));
        let (key, accepted) = received.recv_timeout(ANSWER).unwrap();
        assert_eq!((key.as_str(), names(&accepted)), ("k1", vec!["first", "second"]), "in the order they ended");
        assert_eq!(accepted.resource_spans[0].resource.as_ref().unwrap().attributes[0].key, "service.name");
        processor.shutdown_with_timeout(Duration::from_secs(5)).unwrap();
        assert!(matches!(processor.force_flush(), Err(OTelSdkError::AlreadyShutdown)));
    }

    #[test]
    fn a_full_batch_is_posted_at_once_and_the_rest_when_the_timer_fires() {
        let (endpoint, received) = collector(vec![200, 200]);
        let processor = processor(&endpoint, &[], Batching { max_batch: 2, max_queue: 2048, delay: Duration::from_millis(50) });
        for name in ["a", "b", "c"] {
            processor.on_end(span(name));
        }
        // No flush: the full batch goes at once, the third span with the timer.
        assert_eq!(names(&received.recv_timeout(ANSWER).unwrap().1), ["a", "b"]);
        assert_eq!(names(&received.recv_timeout(ANSWER).unwrap().1), ["c"]);
        processor.shutdown_with_timeout(Duration::from_secs(5)).unwrap();
    }

    #[test]
    fn at_the_smallest_settings_accepted_each_span_goes_alone_and_in_order() {
        // One millisecond, one span a batch, one span waiting: the least the settings take.
        let (endpoint, received) = collector(vec![200; 3]);
        let processor = processor(&endpoint, &[], Batching { max_batch: 1, max_queue: 1, delay: Duration::from_millis(1) });
        for name in ["a", "b", "c"] {
            processor.on_end(span(name));
            assert_eq!(names(&received.recv_timeout(ANSWER).unwrap().1), [name]);
        }
        processor.shutdown_with_timeout(Duration::from_secs(5)).unwrap();
    }

    #[test]
    fn a_large_span_does_not_leave_its_room_to_the_thread() {
        let (endpoint, received) = collector(vec![200]);
        let processor = processor(&endpoint, &[], Batching { max_batch: 512, max_queue: 2048, delay: SLOW_TIMER });
        let room = || WRITTEN.with_borrow(Vec::capacity);
        let mut answer = span("answer with its content captured");
        answer.attributes.push(opentelemetry::KeyValue::new("gen_ai.output.messages", "x".repeat(4 * KEPT_ROOM)));
        processor.on_end(answer);
        assert!(room() > KEPT_ROOM);
        processor.on_end(span("next"));
        assert!(room() <= KEPT_ROOM, "{} bytes kept", room());
        processor.force_flush().unwrap();
        assert_eq!(received.recv_timeout(ANSWER).unwrap().1.resource_spans[0].scope_spans[0].spans.len(), 2);
        processor.shutdown_with_timeout(Duration::from_secs(5)).unwrap();
    }

    #[test]
    fn spans_beyond_the_queue_are_dropped_and_counted_while_the_collector_does_not_answer() {
        let endpoint = black_hole();
        let processor = processor(&endpoint, &[], Batching { max_batch: 1, max_queue: 2, delay: SLOW_TIMER });
        let full_before = dropped("queue_full");
        // One batch at most is being posted (and no longer waits); two wait.
        for name in ["a", "b", "c", "d"] {
            processor.on_end(span(name));
        }
        assert!(dropped("queue_full") - full_before >= 1);
        // The post in flight holds the thread: the stop gives up at its deadline.
        let stop = processor.shutdown_with_timeout(Duration::from_millis(50));
        assert!(matches!(stop, Err(OTelSdkError::Timeout(_))), "{stop:?}");
    }
}
