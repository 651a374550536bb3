//! The start burst: N streams opened at once, paced by the server (the demo model,
//! or the floor with the same pace). Per stream, measured on the client:
//!
//! - time to first chunk: from sending the request to the arrival of the first
//!   `chunk` event (connect, accept, start path, first token; the scheduled first
//!   token delay is part of it, so the bench runs the burst with none);
//! - stretch: from sending the request to the arrival of the last chunk, over the
//!   scheduled duration `first_token + (chunks - 1) / tps` (1.0 = on schedule);
//! - errors: a status other than 200, a transport error, or a terminal event other
//!   than `complete`, or no terminal event within the patience.
//!
//! Meanwhile the server's resident memory is sampled from `/proc/<pid>/status` every
//! 100 ms next to how many streams are live (their `start` arrived, their terminal
//! has not), so memory per live stream is (RSS with the most streams live − idle
//! RSS) / those streams.

use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::http::{address, Connection};
use super::servers::{listen_overflows, memory_of};
use super::sse::{is_terminal, token_len, Scanner};
use super::stats::{quantile, sorted};

#[derive(Debug, Clone)]
pub struct BurstConfig {
    pub streams: usize,
    pub tokens_per_second: f64,
    pub first_token: Duration,
    /// Bound on the whole burst; streams not done by then count as errors.
    pub patience: Duration,
}

#[derive(Debug, Clone, Default)]
pub struct BurstResult {
    pub completed: usize,
    pub errors: usize,
    pub first_errors: Vec<String>,
    pub ttfc_ms_p50: f64,
    pub ttfc_ms_p99: f64,
    pub ttfc_ms_max: f64,
    pub stretch_p50: f64,
    pub stretch_p99: f64,
    pub stretch_max: f64,
    pub events: u64,
    pub chunks: u64,
    /// Decoded bytes of every chunk's token.
    pub token_bytes: u64,
    /// JSON bytes of the events that are not chunks (start, complete).
    pub other_event_bytes: u64,
    pub idle_rss: u64,
    /// The largest RSS sampled while the most streams were live at once.
    pub live_rss: u64,
    pub live_streams: usize,
    /// VmHWM after the burst: the process's peak over its whole life.
    pub peak_rss: u64,
    pub listen_overflows: u64,
    pub wall_seconds: f64,
}

impl BurstResult {
    /// (RSS with the most streams live − idle RSS) / those streams, in bytes.
    pub fn bytes_per_live_stream(&self) -> f64 {
        self.live_rss.saturating_sub(self.idle_rss) as f64 / self.live_streams.max(1) as f64
    }
}

#[derive(Default)]
struct StreamRecord {
    ttfc: Option<Duration>,
    last_chunk: Option<Duration>,
    events: u64,
    chunks: u64,
    token_bytes: u64,
    other_event_bytes: u64,
}

/// Counts a stream as finished however its task ends.
struct Finished(Arc<AtomicUsize>);

impl Drop for Finished {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

pub fn question_path(n: usize) -> String {
    let question = format!("Benchmark question number {n}: how do streams scale?");
    let encoded = question.replace(' ', "%20").replace('?', "%3F").replace(':', "%3A");
    format!("/api/stream/ai-block/ask-question?question={encoded}")
}

async fn one_stream(address: SocketAddr, path: String, live: Arc<AtomicUsize>, finished: Arc<AtomicUsize>) -> Result<StreamRecord, String> {
    let _finished = Finished(finished);
    let sent = Instant::now();
    let mut connection = Connection::connect(address).await.map_err(|e| format!("connect: {e}"))?;
    let response = connection.get(&path, &[]).await.map_err(|e| format!("request: {e}"))?;
    if response.status != 200 {
        return Err(format!("status {}", response.status));
    }
    let mut record = StreamRecord::default();
    let mut scanner = Scanner::default();
    let mut terminal: Option<String> = None;
    let mut started = false;
    let read = connection
        .read_body(&response, |bytes, read_at| {
            let at = read_at - sent;
            scanner.push(bytes, |frame| {
                if frame.event.is_empty() {
                    return;
                }
                record.events += 1;
                match frame.event {
                    b"chunk" => {
                        record.ttfc.get_or_insert(at);
                        record.last_chunk = Some(at);
                        record.chunks += 1;
                        record.token_bytes += token_len(frame.data).unwrap_or(0) as u64;
                    }
                    b"start" => {
                        started = true;
                        live.fetch_add(1, Ordering::Relaxed);
                        record.other_event_bytes += frame.data.len() as u64;
                    }
                    other => {
                        record.other_event_bytes += frame.data.len() as u64;
                        if is_terminal(other) {
                            terminal = Some(String::from_utf8_lossy(other).into_owned());
                        }
                    }
                }
            });
            ControlFlow::Continue(())
        })
        .await;
    if started {
        live.fetch_sub(1, Ordering::Relaxed);
    }
    read.map_err(|e| format!("body: {e}"))?;
    match terminal.as_deref() {
        Some("complete") => Ok(record),
        Some(other) => Err(format!("ended with {other}")),
        None => Err("closed before its terminal event".into()),
    }
}

/// Runs the burst against `base`; samples the memory of process `pid`.
pub async fn run(base: &str, pid: u32, config: &BurstConfig) -> BurstResult {
    let address = address(base);
    let live = Arc::new(AtomicUsize::new(0));
    let finished = Arc::new(AtomicUsize::new(0));
    let idle = memory_of(pid);
    let overflows_before = listen_overflows();
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = tokio::spawn({
        let (live, sampling) = (live.clone(), sampling.clone());
        async move {
            // (live streams, largest RSS seen with that many live)
            let mut best = (0usize, 0u64);
            while sampling.load(Ordering::Relaxed) {
                let now_live = live.load(Ordering::Relaxed);
                let rss = memory_of(pid).rss;
                if now_live > best.0 || (now_live == best.0 && rss > best.1) {
                    best = (now_live, rss);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            best
        }
    });
    let started = Instant::now();
    let tasks: Vec<_> =
        (0..config.streams).map(|n| tokio::spawn(one_stream(address, question_path(n), live.clone(), finished.clone()))).collect();
    let deadline = tokio::time::Instant::now() + config.patience;
    let mut result = BurstResult { idle_rss: idle.rss, ..BurstResult::default() };
    let (mut ttfc, mut stretch) = (Vec::new(), Vec::new());
    let scheduled = |chunks: u64| {
        if config.tokens_per_second > 0.0 {
            config.first_token.as_secs_f64() + chunks.saturating_sub(1) as f64 / config.tokens_per_second
        } else {
            f64::NAN
        }
    };
    for task in tasks {
        let outcome = match tokio::time::timeout_at(deadline, task).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(panic)) => Err(format!("task: {panic}")),
            Err(_) => Err("no terminal event within the patience".into()),
        };
        match outcome {
            Ok(record) => {
                result.completed += 1;
                result.events += record.events;
                result.chunks += record.chunks;
                result.token_bytes += record.token_bytes;
                result.other_event_bytes += record.other_event_bytes;
                if let (Some(first), Some(last)) = (record.ttfc, record.last_chunk) {
                    ttfc.push(first.as_secs_f64() * 1000.0);
                    stretch.push(last.as_secs_f64() / scheduled(record.chunks));
                }
            }
            Err(error) => {
                result.errors += 1;
                if result.first_errors.len() < 3 {
                    result.first_errors.push(error);
                }
            }
        }
    }
    result.wall_seconds = started.elapsed().as_secs_f64();
    sampling.store(false, Ordering::Relaxed);
    let (live_streams, live_rss) = sampler.await.unwrap_or_default();
    result.live_streams = live_streams;
    result.live_rss = live_rss;
    result.peak_rss = memory_of(pid).peak;
    result.listen_overflows = listen_overflows() - overflows_before;
    let ttfc = sorted(&mut ttfc);
    (result.ttfc_ms_p50, result.ttfc_ms_p99, result.ttfc_ms_max) = (quantile(ttfc, 0.5), quantile(ttfc, 0.99), quantile(ttfc, 1.0));
    let stretch = sorted(&mut stretch);
    (result.stretch_p50, result.stretch_p99, result.stretch_max) =
        (quantile(stretch, 0.5), quantile(stretch, 0.99), quantile(stretch, 1.0));
    result
}

/// `load burst URL PID [STREAMS] [TPS] [FIRST_TOKEN_MS]` against a running server.
pub async fn main(args: &[String]) {
    let base = args.first().expect("usage: load burst URL PID [STREAMS] [TPS] [FIRST_TOKEN_MS]").clone();
    super::sse::require_loopback(&base);
    let pid: u32 = args.get(1).and_then(|s| s.parse().ok()).expect("the server's pid");
    let config = BurstConfig {
        streams: args.get(2).and_then(|s| s.parse().ok()).unwrap_or(5000),
        tokens_per_second: args.get(3).and_then(|s| s.parse().ok()).unwrap_or(20.0),
        first_token: Duration::from_millis(args.get(4).and_then(|s| s.parse().ok()).unwrap_or(0)),
        patience: Duration::from_secs(120),
    };
    let result = run(&base, pid, &config).await;
    println!("{result:#?}");
    println!("bytes_per_live_stream={:.0}", result.bytes_per_live_stream());
}
