//! The http/protobuf span exporter: each batch the SDK's batch processor hands
//! over is written by [`TraceEncoder`] and posted to the traces endpoint, with
//! the configured headers, within the configured timeout.
//!
//! It replaces the OTLP crate's http exporter for traces only (metrics and gRPC
//! keep the crate's), because converting spans is most of what exporting them
//! costs ([`super::span_proto`]). Like the crate's, it runs on the batch
//! processor's own thread with a blocking client: a collector that is slow or
//! down holds that thread, never a stream; and that thread runs at a lower
//! priority than the streams' (niceness 10). A batch the collector refuses (not
//! 2xx) or cannot be reached for is an error the processor reports and the
//! spans are counted as dropped ([`super::export_queue`]); it is not retried,
//! as the crate's is not by default. Once encoded, a batch is freed on the
//! server's runtime, whose threads allocated its values.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use opentelemetry_sdk::Resource;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE, USER_AGENT};

use super::span_proto::TraceEncoder;
use super::ExportSetupError;

/// The niceness of the thread that exports spans: on a machine whose cores
/// the streams keep busy, the scheduler runs the export in the gaps rather
/// than preempting a stream's thread for it (spans it cannot keep up with wait
/// in the bounded queue, and past it are dropped and counted).
const EXPORT_NICENESS: libc::c_int = 10;

/// Lowers the priority of the calling thread (the batch processor's, which
/// only exports) once.
fn yield_to_streams() {
    thread_local! {
        static LOWERED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }
    if !LOWERED.replace(true) {
        // Only where `who = 0` with `PRIO_PROCESS` names the calling thread, not
        // the whole process (Linux; elsewhere it would slow the streams too).
        #[cfg(target_os = "linux")]
        // SAFETY: a plain system call on scalars.
        let _ = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, EXPORT_NICENESS) };
    }
}

#[derive(Debug)]
pub struct HttpTraceExporter {
    client: reqwest::blocking::Client,
    endpoint: String,
    headers: HeaderMap,
    encoder: Mutex<TraceEncoder>,
    shut_down: AtomicBool,
    /// The server's runtime, where exported spans are freed.
    runtime: Option<tokio::runtime::Handle>,
}

impl HttpTraceExporter {
    /// An exporter to `endpoint` (used verbatim), sending `headers` with each
    /// request and giving up on one after `timeout`.
    pub fn new(endpoint: &str, headers: &[(String, String)], timeout: Duration) -> Result<Self, ExportSetupError> {
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
        Ok(Self {
            client,
            endpoint: endpoint.to_owned(),
            headers: map,
            encoder: Mutex::new(TraceEncoder::default()),
            shut_down: AtomicBool::new(false),
            runtime: tokio::runtime::Handle::try_current().ok(),
        })
    }

    /// Frees the spans on one of the runtime's threads, where their values were
    /// allocated: freed here, each would go back to another thread's arena
    /// under its lock (glibc), and the streams' threads would then allocate
    /// on the slow path; freed there, they are reused at once. Here when there
    /// is no runtime (or it is shutting down: the task is dropped at once).
    fn free(&self, batch: Vec<SpanData>) {
        match &self.runtime {
            Some(runtime) => drop(runtime.spawn(async move { drop(batch) })),
            None => drop(batch),
        }
    }
}

impl SpanExporter for HttpTraceExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        yield_to_streams();
        if self.shut_down.load(Ordering::Relaxed) {
            return Err(OTelSdkError::AlreadyShutdown);
        }
        if batch.is_empty() {
            return Ok(());
        }
        let mut body = Vec::with_capacity(batch.len() * 512);
        self.encoder.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).encode(&batch, &mut body);
        self.free(batch);
        let response = self
            .client
            .post(&self.endpoint)
            .headers(self.headers.clone())
            .body(body)
            .send()
            .map_err(|error| OTelSdkError::InternalFailure(format!("HTTP export failed: {error}")))?;
        let status = response.status();
        if !status.is_success() {
            return Err(OTelSdkError::InternalFailure(format!("HTTP export failed with status code: {}", status.as_u16())));
        }
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        if self.shut_down.swap(true, Ordering::Relaxed) {
            return Err(OTelSdkError::AlreadyShutdown);
        }
        Ok(())
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.encoder.get_mut().unwrap_or_else(|poisoned| poisoned.into_inner()).set_resource(resource);
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

    fn span() -> SpanData {
        use opentelemetry::trace::{SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState};
        SpanData {
            span_context: SpanContext::new(TraceId::from(1), SpanId::from(2), TraceFlags::SAMPLED, false, TraceState::NONE),
            parent_span_id: SpanId::INVALID,
            parent_span_is_remote: false,
            span_kind: SpanKind::Internal,
            name: "generate quiz".into(),
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

    #[test]
    fn a_refused_batch_is_an_error_and_the_next_one_goes_through_with_its_headers() {
        let (endpoint, received) = collector(vec![503, 200]);
        let headers = [("x-api-key".to_owned(), "k1".to_owned())];
        let mut exporter = HttpTraceExporter::new(&endpoint, &headers, Duration::from_secs(10)).unwrap();
        exporter.set_resource(&Resource::builder_empty().with_service_name("live-ai").build());
        let refused = futures::executor::block_on(exporter.export(vec![span()]));
        assert!(matches!(&refused, Err(OTelSdkError::InternalFailure(why)) if why.contains("503")), "{refused:?}");
        assert!(futures::executor::block_on(exporter.export(vec![span(), span()])).is_ok());
        let (key, first) = received.recv().unwrap();
        assert_eq!(key, "k1");
        assert_eq!(first.resource_spans[0].scope_spans[0].spans.len(), 1);
        let (_, second) = received.recv().unwrap();
        assert_eq!(second.resource_spans[0].scope_spans[0].spans[0].name, "generate quiz");
        assert_eq!(second.resource_spans[0].scope_spans[0].spans.len(), 2);
        exporter.shutdown_with_timeout(Duration::from_secs(1)).unwrap();
        let after = futures::executor::block_on(exporter.export(vec![span()]));
        assert!(matches!(after, Err(OTelSdkError::AlreadyShutdown)), "{after:?}");
    }
}
