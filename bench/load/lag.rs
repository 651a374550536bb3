//! Delivery lag of paced streams: N concurrent streams of the demo model, every event
//! read, and for each chunk the delay the whole path added (bench/RESULTS.md).
//!
//! Lag: the demo model emits token n at `first_token + n / tps` after its generation
//! starts, so a chunk's offset is its arrival minus that schedule counted from a
//! per-stream anchor (when the request was sent, or when `POST /api/streams`
//! answered); a chunk's lag is its offset minus the smallest offset of the same
//! stream. The anchor's own delay cancels out: no clock is shared between server and
//! client, and what remains is the extra delay a chunk got on the whole path —
//! engine, log, fan-out, store, SSE, kernel and the client's own scheduling.
//!
//! Streams start either with the one-shot `GET /api/stream/ai-block/ask-question`, or
//! split: `POST /api/streams` on one process and `GET /api/streams/{id}/events` on
//! another (the scale-out case of issue 7). Split streams open their connections
//! first and all start together once every connection is open.

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::Barrier;

use super::burst::question_path;
use super::http::{address, Connection};
use super::sse::{is_terminal, Scanner};
use super::stats::{quantile, sorted};

#[derive(Debug, Clone)]
pub struct LagConfig {
    pub streams: usize,
    pub tokens_per_second: f64,
    pub first_token: Duration,
    pub patience: Duration,
    /// Stream n starts `stagger × n / streams` after the others' connections
    /// are open: zero starts them all at once, so every stream's tokens fall due
    /// in the same instant (the worst case for a path of several stages, each
    /// taking the whole burst before the next); one token interval spreads them
    /// as arrivals over time would.
    pub stagger: Duration,
}

/// Where streams are started and where they are read.
#[derive(Debug, Clone)]
pub enum Route {
    OneShot {
        base: String,
    },
    Split {
        create: String,
        read: String,
    },
    /// Stream n starts on `bases[n % k]` and is read on another of them, each
    /// reading a k-th of the streams, started evenly on the others.
    Spread {
        bases: Vec<String>,
    },
}

impl Route {
    /// Where stream `n` goes.
    fn for_stream(&self, n: usize) -> Route {
        match self {
            Route::Spread { bases } if bases.len() > 1 => {
                let k = bases.len();
                let read = (n + 1 + (n / k) % (k - 1)) % k;
                Route::Split { create: bases[n % k].clone(), read: bases[read].clone() }
            }
            Route::Spread { bases } => Route::Split { create: bases[0].clone(), read: bases[0].clone() },
            other => other.clone(),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct LagResult {
    pub completed: usize,
    pub failed: usize,
    pub first_errors: Vec<String>,
    /// How streams ended, by terminal event type (`complete`, `cancelled`, …).
    pub endings: BTreeMap<String, usize>,
    pub events: u64,
    pub chunks: u64,
    /// From the start of the streams (their connections open) to the end of the last.
    pub wall_seconds: f64,
    pub lag_ms_p50: f64,
    pub lag_ms_p90: f64,
    pub lag_ms_p99: f64,
    pub lag_ms_max: f64,
    /// Lag by when the chunks arrived: shows whether it comes in waves or grows
    /// through the run (a backlog: more work than the machine does in time).
    pub timeline: Timeline,
}

/// Width of a `Timeline` bucket.
const TIMELINE_BUCKET_MS: u32 = 250;

/// Client lag p50/p99 (ms) of the chunks that arrived in each `TIMELINE_BUCKET_MS`
/// from the start of the streams, as `(bucket start ms, p50, p99)`.
#[derive(Clone, Default)]
pub struct Timeline(Vec<(u32, f64, f64)>);

impl std::fmt::Debug for Timeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "\"p50/p99 ms by {TIMELINE_BUCKET_MS} ms:")?;
        for (from, p50, p99) in &self.0 {
            write!(f, " {from}:{p50:.0}/{p99:.0}")?;
        }
        write!(f, "\"")
    }
}

impl LagResult {
    pub fn events_per_second(&self) -> f64 {
        self.events as f64 / self.wall_seconds
    }
}

struct StreamLags {
    events: u64,
    chunks: u64,
    lags_us: Vec<u64>,
    /// When each chunk arrived, from the start of the streams.
    arrivals_ms: Vec<u32>,
    ending: String,
}

/// One stream: with `Route::Split`, both connections are opened first and the
/// stream starts only when every stream's connections are open (`ready`), so a
/// burst of connects overflowing the listen queue (a SYN retransmit costs ~1 s)
/// delays the start, not the reader behind its own stream.
async fn one_stream(
    route: Route,
    ready: Arc<(Barrier, OnceLock<Instant>)>,
    n: usize,
    tps: f64,
    first_token: Duration,
    delay: Duration,
) -> Result<StreamLags, String> {
    let (anchor, mut connection, response) = match &route {
        Route::OneShot { base } => {
            ready.0.wait().await;
            ready.1.get_or_init(Instant::now);
            starting_after(delay).await;
            let anchor = Instant::now();
            let mut connection = Connection::connect(address(base)).await.map_err(|e| format!("connect: {e}"))?;
            let response = connection.get(&question_path(n), &[]).await.map_err(|e| format!("read: {e}"))?;
            (anchor, connection, response)
        }
        Route::Spread { .. } => unreachable!("spread into a split route per stream"),
        Route::Split { create, read } => {
            let creator = Connection::connect(address(create)).await;
            let reader = Connection::connect(address(read)).await;
            ready.0.wait().await;
            ready.1.get_or_init(Instant::now);
            starting_after(delay).await;
            let (mut creator, mut reader) = (creator.map_err(|e| format!("connect: {e}"))?, reader.map_err(|e| format!("connect: {e}"))?);
            let body = json!({"block_type": "ask-question", "input": {"question": format!("Benchmark question number {n}: how do streams scale?")}});
            let (status, created) = creator.post_json("/api/streams", &body.to_string()).await.map_err(|e| format!("create: {e}"))?;
            let anchor = Instant::now();
            if status != 201 {
                return Err(format!("create: status {status}"));
            }
            let created: serde_json::Value = serde_json::from_slice(&created).map_err(|e| format!("create: {e}"))?;
            let id = created["stream_id"].as_str().ok_or("create: no stream_id")?.to_owned();
            let response = reader.get(&format!("/api/streams/{id}/events"), &[]).await.map_err(|e| format!("read: {e}"))?;
            (anchor, reader, response)
        }
    };
    if response.status != 200 {
        return Err(format!("read: status {}", response.status));
    }
    let mut scanner = Scanner::default();
    let (mut events, mut chunks, mut offsets_us, mut ending) = (0u64, 0u64, Vec::new(), None::<String>);
    let started = *ready.1.get().expect("set before any stream starts");
    let mut arrivals_ms = Vec::new();
    let read = connection.read_body(&response, |bytes, now| {
        scanner.push(bytes, |frame| {
            if frame.event.is_empty() {
                return;
            }
            events += 1;
            if frame.event == b"chunk" {
                let due = anchor + first_token + Duration::from_secs_f64(chunks as f64 / tps);
                let offset = if now >= due { (now - due).as_micros() as i64 } else { -((due - now).as_micros() as i64) };
                offsets_us.push(offset);
                arrivals_ms.push((now - started).as_millis() as u32);
                chunks += 1;
            } else if is_terminal(frame.event) {
                ending = Some(String::from_utf8_lossy(frame.event).into_owned());
            }
        });
        ControlFlow::Continue(())
    });
    read.await.map_err(|e| format!("read: {e}"))?;
    let best = offsets_us.iter().copied().min().unwrap_or(0);
    let lags_us = offsets_us.iter().map(|o| (o - best) as u64).collect();
    Ok(StreamLags { events, chunks, lags_us, arrivals_ms, ending: ending.unwrap_or_else(|| "closed without a terminal event".into()) })
}

/// Waits `delay`; no timer at all for none (a zero sleep still waits for the
/// timer wheel's next tick).
async fn starting_after(delay: Duration) {
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
}

pub async fn run(route: &Route, config: &LagConfig) -> LagResult {
    let ready = Arc::new((Barrier::new(config.streams), OnceLock::new()));
    let tasks: Vec<_> = (0..config.streams)
        .map(|n| {
            let delay = config.stagger.mul_f64(n as f64 / config.streams as f64);
            tokio::spawn(one_stream(route.for_stream(n), ready.clone(), n, config.tokens_per_second, config.first_token, delay))
        })
        .collect();
    let deadline = tokio::time::Instant::now() + config.patience;
    let mut result = LagResult::default();
    let mut lags = Vec::new();
    let mut timeline: BTreeMap<u32, Vec<f64>> = BTreeMap::new();
    for task in tasks {
        let outcome = match tokio::time::timeout_at(deadline, task).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(panic)) => Err(format!("task: {panic}")),
            Err(_) => Err("not done within the patience".into()),
        };
        match outcome {
            Ok(stream) => {
                result.events += stream.events;
                result.chunks += stream.chunks;
                lags.extend(stream.lags_us.iter().map(|us| *us as f64 / 1000.0));
                for (at, us) in stream.arrivals_ms.iter().zip(&stream.lags_us) {
                    timeline.entry(at / TIMELINE_BUCKET_MS).or_default().push(*us as f64 / 1000.0);
                }
                if stream.ending == "complete" {
                    result.completed += 1;
                } else {
                    result.failed += 1;
                }
                *result.endings.entry(stream.ending).or_default() += 1;
            }
            Err(error) => {
                result.failed += 1;
                *result.endings.entry("failed".into()).or_default() += 1;
                if result.first_errors.len() < 3 {
                    result.first_errors.push(error);
                }
            }
        }
    }
    // From the moment the streams started (all connections open) to the last one's end.
    result.wall_seconds = ready.1.get().map_or(f64::NAN, |started| started.elapsed().as_secs_f64());
    result.timeline = Timeline(
        timeline
            .into_iter()
            .map(|(bucket, mut lags)| {
                let lags = sorted(&mut lags);
                (bucket * TIMELINE_BUCKET_MS, quantile(lags, 0.5), quantile(lags, 0.99))
            })
            .collect(),
    );
    let lags = sorted(&mut lags);
    (result.lag_ms_p50, result.lag_ms_p90, result.lag_ms_p99, result.lag_ms_max) =
        (quantile(lags, 0.5), quantile(lags, 0.9), quantile(lags, 0.99), quantile(lags, 1.0));
    result
}

/// Cumulative bucket counts of a `live-ai`'s `chunk_delivery_seconds` histogram.
async fn delivery_buckets(http: &reqwest::Client, base: &str) -> Vec<(f64, f64)> {
    let Ok(response) = http.get(format!("{base}/metrics")).send().await else { return Vec::new() };
    let text = response.text().await.unwrap_or_default();
    text.lines()
        .filter_map(|line| line.strip_prefix("live_ai_chunk_delivery_seconds_bucket{le=\""))
        .filter_map(|rest| {
            let (le, count) = rest.split_once("\"} ")?;
            Some((if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? }, count.parse().ok()?))
        })
        .collect()
}

/// The upper bound of the bucket holding quantile `q` of the difference `after - before`.
fn bucket_quantile(before: &[(f64, f64)], after: &[(f64, f64)], q: f64) -> f64 {
    let counts: Vec<(f64, f64)> = after.iter().zip(before).map(|((le, a), (_, b))| (*le, a - b)).collect();
    let total = counts.last().map_or(0.0, |c| c.1);
    counts.iter().find(|(_, c)| *c >= total * q).map_or(f64::NAN, |(le, _)| le * 1000.0)
}

/// `load lag URL [STREAMS] [TPS] [FIRST_TOKEN_MS]`: the one-shot endpoint of one
/// running server (bench/load.sh), with its server-side delivery histogram.
pub async fn main(args: &[String]) {
    let base = args.first().cloned().unwrap_or_else(|| "http://127.0.0.1:8000".into());
    super::sse::require_loopback(&base);
    let config = LagConfig {
        streams: args.get(1).and_then(|s| s.parse().ok()).unwrap_or(1000),
        tokens_per_second: args.get(2).and_then(|s| s.parse().ok()).unwrap_or(50.0),
        first_token: Duration::from_millis(args.get(3).and_then(|s| s.parse().ok()).unwrap_or(200)),
        patience: Duration::from_secs(300),
        stagger: Duration::ZERO,
    };
    let http = super::sse::http_client();
    let before = delivery_buckets(&http, &base).await;
    let result = run(&Route::OneShot { base: base.clone() }, &config).await;
    let after = delivery_buckets(&http, &base).await;
    for error in &result.first_errors {
        eprintln!("stream failed: {error}");
    }
    println!(
        "streams={} completed={} failed={} tokens_per_second_per_stream={}",
        config.streams, result.completed, result.failed, config.tokens_per_second
    );
    println!(
        "wall={:.2}s events={} chunks={} events_per_second={:.0}",
        result.wall_seconds,
        result.events,
        result.chunks,
        result.events_per_second()
    );
    println!(
        "chunk_lag_ms p50={:.2} p90={:.2} p99={:.2} max={:.2}",
        result.lag_ms_p50, result.lag_ms_p90, result.lag_ms_p99, result.lag_ms_max
    );
    println!("chunk_lag_timeline {:?}", result.timeline);
    println!(
        "server_chunk_delivery_ms (bucket upper bounds) p50<={} p90<={} p99<={}",
        bucket_quantile(&before, &after, 0.5),
        bucket_quantile(&before, &after, 0.9),
        bucket_quantile(&before, &after, 0.99)
    );
}
