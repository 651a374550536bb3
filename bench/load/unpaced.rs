//! Unpaced throughput: C connections each run streams back to back, as fast as the
//! server produces them (the demo model, or the floor, with no pacing). Events/s is
//! the count of events that arrived during the measured window over its length,
//! after a warm-up; every stream is a new generation (`GET
//! /api/stream/ai-block/ask-question`, or a WebSocket `start`), so starting and
//! ending streams is part of the cost, as it is in service.

use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use super::burst::question_path;
use super::http::{address, Connection};
use super::servers::cpu_seconds_of;
use super::sse::Scanner;

#[derive(Debug, Clone)]
pub struct UnpacedConfig {
    pub connections: usize,
    pub warmup: Duration,
    pub window: Duration,
    /// The server's pid, to charge its CPU time to the events of the window.
    pub pid: Option<u32>,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct UnpacedResult {
    pub events_per_second: f64,
    pub streams_per_second: f64,
    /// Server CPU (user + system) spent during the window per event delivered in it:
    /// less sensitive to the neighbours' load than events/s.
    pub cpu_us_per_event: f64,
    pub errors: u64,
}

#[derive(Default)]
struct Counters {
    events: AtomicU64,
    streams: AtomicU64,
    errors: AtomicU64,
    stop: AtomicBool,
}

/// Measures the counters over the window after the warm-up, then stops the workers.
async fn measure(counters: &Counters, config: &UnpacedConfig) -> UnpacedResult {
    let cpu = || config.pid.map_or(f64::NAN, cpu_seconds_of);
    tokio::time::sleep(config.warmup).await;
    let (e0, s0, c0, started) = (counters.events.load(Ordering::Relaxed), counters.streams.load(Ordering::Relaxed), cpu(), Instant::now());
    tokio::time::sleep(config.window).await;
    let (e1, s1, c1, elapsed) =
        (counters.events.load(Ordering::Relaxed), counters.streams.load(Ordering::Relaxed), cpu(), started.elapsed());
    counters.stop.store(true, Ordering::Relaxed);
    UnpacedResult {
        events_per_second: (e1 - e0) as f64 / elapsed.as_secs_f64(),
        streams_per_second: (s1 - s0) as f64 / elapsed.as_secs_f64(),
        cpu_us_per_event: (c1 - c0) * 1e6 / (e1 - e0).max(1) as f64,
        errors: counters.errors.load(Ordering::Relaxed),
    }
}

/// One stream on `connection`, counting its events; `None` on any failure.
async fn one_sse_stream(connection: &mut Connection, path: &str, counters: &Counters) -> Option<()> {
    let response = connection.get(path, &[]).await.ok()?;
    if response.status != 200 {
        return None;
    }
    let mut scanner = Scanner::default();
    let read = connection.read_body(&response, |bytes, _| {
        let mut events = 0;
        scanner.push(bytes, |frame| events += !frame.event.is_empty() as u64);
        counters.events.fetch_add(events, Ordering::Relaxed);
        if counters.stop.load(Ordering::Relaxed) {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    });
    if read.await.ok()? {
        counters.streams.fetch_add(1, Ordering::Relaxed);
        return Some(());
    }
    None
}

/// Streams back to back on one keep-alive connection (a new one after a failure).
async fn sse_worker(address: SocketAddr, worker: usize, counters: Arc<Counters>) {
    let mut n = worker * 1_000_000;
    let mut connection = None;
    while !counters.stop.load(Ordering::Relaxed) {
        n += 1;
        if connection.is_none() {
            connection = Connection::connect(address).await.ok();
        }
        let ok = match connection.as_mut() {
            Some(connection) => one_sse_stream(connection, &question_path(n), &counters).await.is_some(),
            None => false,
        };
        if !ok && !counters.stop.load(Ordering::Relaxed) {
            connection = None;
            counters.errors.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Events/s over SSE with `connections` clients against `base`.
pub async fn sse(base: &str, config: &UnpacedConfig) -> UnpacedResult {
    let address = address(base);
    let counters = Arc::new(Counters::default());
    let workers: Vec<_> = (0..config.connections).map(|w| tokio::spawn(sse_worker(address, w, counters.clone()))).collect();
    let result = measure(&counters, config).await;
    for worker in workers {
        worker.abort();
    }
    result
}

async fn ws_worker(base: String, worker: usize, counters: Arc<Counters>) {
    let url = format!("{}/api/stream/ws", base.replacen("http://", "ws://", 1));
    let Ok((mut socket, _)) = tokio_tungstenite::connect_async(&url).await else {
        counters.errors.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let mut n = worker * 1_000_000;
    while !counters.stop.load(Ordering::Relaxed) {
        n += 1;
        let start = json!({"type": "start", "block_type": "ask-question", "input": {"question": format!("Benchmark question number {n}: how do streams scale?")}});
        if socket.send(Message::text(start.to_string())).await.is_err() {
            counters.errors.fetch_add(1, Ordering::Relaxed);
            return;
        }
        loop {
            let Some(Ok(message)) = socket.next().await else {
                counters.errors.fetch_add(1, Ordering::Relaxed);
                return;
            };
            let Message::Text(text) = message else { continue };
            // Stream events carry `"seq":`; keep-alives and protocol errors do not.
            if !text.contains("\"seq\":") {
                if text.contains("protocol_error") {
                    counters.errors.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                continue;
            }
            counters.events.fetch_add(1, Ordering::Relaxed);
            // The type follows seq in the event's JSON; a token's quotes are escaped.
            if ["\"type\":\"complete\"", "\"type\":\"error\"", "\"type\":\"cancelled\""].iter().any(|t| text.contains(t)) {
                counters.streams.fetch_add(1, Ordering::Relaxed);
                break;
            }
        }
    }
}

/// Events/s over `live-ai`'s WebSocket: one socket per connection, one stream at a time.
pub async fn websocket(base: &str, config: &UnpacedConfig) -> UnpacedResult {
    let counters = Arc::new(Counters::default());
    let workers: Vec<_> = (0..config.connections).map(|w| tokio::spawn(ws_worker(base.to_owned(), w, counters.clone()))).collect();
    let result = measure(&counters, config).await;
    for worker in workers {
        worker.abort();
    }
    result
}

/// Exactly `total` streams over `connections` keep-alive connections, for a
/// profiler that counts instructions: a fixed amount of work, not a fixed time.
/// Returns (events, failed streams).
pub async fn fixed(base: &str, total: usize, connections: usize) -> (u64, u64) {
    let address = address(base);
    let counters = Arc::new(Counters::default());
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let workers: Vec<_> = (0..connections)
        .map(|_| {
            let (counters, next) = (counters.clone(), next.clone());
            tokio::spawn(async move {
                let mut connection = None;
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= total {
                        return;
                    }
                    if connection.is_none() {
                        connection = Connection::connect(address).await.ok();
                    }
                    let ok = match connection.as_mut() {
                        Some(connection) => one_sse_stream(connection, &question_path(n), &counters).await.is_some(),
                        None => false,
                    };
                    if !ok {
                        connection = None;
                        counters.errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for worker in workers {
        let _ = worker.await;
    }
    (counters.events.load(Ordering::Relaxed), counters.errors.load(Ordering::Relaxed))
}

/// `load streams URL TOTAL [CONNECTIONS]`: a fixed number of streams; prints the events.
pub async fn fixed_main(args: &[String]) {
    let base = args.first().expect("usage: load streams URL TOTAL [CONNECTIONS]").clone();
    super::sse::require_loopback(&base);
    let total = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(300);
    let connections = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(50);
    let (events, errors) = fixed(&base, total, connections).await;
    println!("streams={total} events={events} errors={errors}");
}

/// `load unpaced URL [sse|ws] [CONNECTIONS] [SECONDS]` against a running, unpaced server.
pub async fn main(args: &[String]) {
    let base = args.first().expect("usage: load unpaced URL [sse|ws] [CONNECTIONS] [SECONDS]").clone();
    super::sse::require_loopback(&base);
    let config = UnpacedConfig {
        connections: args.get(2).and_then(|s| s.parse().ok()).unwrap_or(50),
        warmup: Duration::from_secs(1),
        window: Duration::from_secs_f64(args.get(3).and_then(|s| s.parse().ok()).unwrap_or(5.0)),
        pid: None,
    };
    let result = match args.get(1).map(String::as_str) {
        Some("ws") => websocket(&base, &config).await,
        _ => sse(&base, &config).await,
    };
    println!("{result:?}");
}
