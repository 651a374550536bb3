//! Resume replay: how long a server takes to send 1,000 events a client missed.
//!
//! On `live-ai`: one finished stream of more than 1,000 events (a 10-question quiz on
//! a topic of many one-letter words, which the demo model repeats token by token in
//! every question), then `GET /api/streams/{id}/events?after=<len - 1001>` replays
//! its last 1,000 events. On the floor, which has no log, the nearest equivalent: an
//! unpaced stream of 1,000 events (`chunks=998`), i.e. framing and writing 1,000
//! events that need no waiting. Each replay is timed on the client from sending the
//! request (on a warm keep-alive connection) to the arrival of the terminal event's
//! last byte on loopback: the server's time plus one loopback round trip and the
//! client's own reading, which the floor's figure carries too. Neither server sets
//! `TCP_NODELAY` (axum's default), so a replay can also wait on the client's delayed
//! ACK (~40 ms): hence the median and the p90, and the server's own CPU time per
//! replay, read from `/proc` around all the replays, which no wait inflates.

use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use serde_json::json;

use super::http::{address, Connection};
use super::servers::cpu_seconds_of;
use super::sse::{is_terminal, Scanner};
use super::stats::{median, quantile, sorted};

pub const REPLAYED: u64 = 1000;

#[derive(Debug, Clone, Copy, Default)]
pub struct ReplayResult {
    pub median_ms: f64,
    pub p90_ms: f64,
    /// The server's CPU time (user + system) per replay.
    pub cpu_ms: f64,
    /// Events the replay held (checked to be `REPLAYED`).
    pub events: u64,
}

/// Reads one SSE response to its terminal event; (events, time of the terminal).
async fn read_all(connection: &mut Connection, path: &str) -> Result<(u64, Duration), String> {
    let sent = Instant::now();
    let response = connection.get(path, &[]).await.map_err(|e| e.to_string())?;
    if response.status != 200 {
        return Err(format!("status {} for {path}", response.status));
    }
    let mut scanner = Scanner::default();
    let (mut events, mut done) = (0u64, None);
    let read = connection.read_body(&response, |bytes, read_at| {
        scanner.push(bytes, |frame| {
            if !frame.event.is_empty() {
                events += 1;
                if is_terminal(frame.event) {
                    done = Some(read_at - sent);
                }
            }
        });
        ControlFlow::Continue(())
    });
    read.await.map_err(|e| e.to_string())?;
    done.map(|at| (events, at)).ok_or_else(|| "closed before the terminal event".to_owned())
}

/// Times `replays` reads of `path` on one warm keep-alive connection.
async fn time_replays(base: &str, path: &str, replays: usize, pid: Option<u32>) -> Result<ReplayResult, String> {
    let mut connection = Connection::connect(address(base)).await.map_err(|e| e.to_string())?;
    read_all(&mut connection, path).await?; // warms the connection
    let cpu = || pid.map_or(f64::NAN, cpu_seconds_of);
    let cpu_before = cpu();
    let mut times = Vec::new();
    let mut events = 0;
    for _ in 0..replays {
        let (n, at) = read_all(&mut connection, path).await?;
        events = n;
        times.push(at.as_secs_f64() * 1000.0);
    }
    let cpu_ms = (cpu() - cpu_before) * 1000.0 / replays as f64;
    let p90 = quantile(sorted(&mut times), 0.9);
    Ok(ReplayResult { median_ms: median(&times), p90_ms: p90, cpu_ms, events })
}

/// Replays of the last 1,000 events of a finished `live-ai` stream.
pub async fn live_ai(base: &str, replays: usize, pid: Option<u32>) -> Result<ReplayResult, String> {
    let http = super::sse::http_client();
    let topic = (0..40).map(|n| char::from(b'a' + (n % 26) as u8).to_string()).collect::<Vec<_>>().join(" ");
    let body = json!({"block_type": "quiz", "input": {"topic": topic, "count": 10}});
    let created: serde_json::Value = http
        .post(format!("{base}/api/streams"))
        .json(&body)
        .send()
        .await
        .map_err(|e| e.to_string())?
        .json()
        .await
        .map_err(|e| e.to_string())?;
    let id = created["stream_id"].as_str().ok_or(format!("no stream_id in {created}"))?.to_owned();
    let mut connection = Connection::connect(address(base)).await.map_err(|e| e.to_string())?;
    let (len, _) = read_all(&mut connection, &format!("/api/streams/{id}/events")).await?;
    if len <= REPLAYED {
        return Err(format!("the stream has {len} events, fewer than {} (did the demo content change?)", REPLAYED + 1));
    }
    let after = len - REPLAYED - 1;
    let result = time_replays(base, &format!("/api/streams/{id}/events?after={after}"), replays, pid).await?;
    if result.events != REPLAYED {
        return Err(format!("a replay after {after} held {} events, not {REPLAYED}", result.events));
    }
    Ok(result)
}

/// The floor's unpaced 1,000-event stream, timed the same way.
pub async fn floor(base: &str, replays: usize, pid: Option<u32>) -> Result<ReplayResult, String> {
    let path = format!("/api/stream/ai-block/ask-question?chunks={}&tps=0&first_token_ms=0", REPLAYED - 2);
    time_replays(base, &path, replays, pid).await
}

/// `load replay URL [live-ai|floor] [REPLAYS] [PID]` against a running server.
pub async fn main(args: &[String]) {
    let base = args.first().expect("usage: load replay URL [live-ai|floor] [REPLAYS] [PID]").clone();
    super::sse::require_loopback(&base);
    let replays = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(50);
    let pid = args.get(3).and_then(|s| s.parse().ok());
    let result = match args.get(1).map(String::as_str) {
        Some("floor") => floor(&base, replays, pid).await,
        _ => live_ai(&base, replays, pid).await,
    };
    println!("{result:?}");
}
