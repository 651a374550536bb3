//! Load generator: N concurrent SSE streams against a running `live-ai` with the
//! demo model; reports events/s and per-chunk delivery lag percentiles.
//!
//! Lag: the demo model emits token n at `first_token_ms + n / tokens_per_second`
//! after the `start` event, so a chunk's offset is its arrival time minus that
//! schedule (measured from the `start` event's arrival). A stream's lag for each
//! chunk is its offset minus the stream's smallest offset: the delay the whole path
//! — engine, log, fan-out, SSE, HTTP, client — adds to a chunk beyond the best the
//! same stream saw, without any clock shared between server and client.
//!
//! Usage: cargo run --release --example load -- URL STREAMS TOKENS_PER_SECOND FIRST_TOKEN_MS
//! (run by bench/load.sh, which also starts the server).

use std::time::{Duration, Instant};

use eventsource_stream::Eventsource;
use futures::StreamExt;

struct StreamStats {
    chunks: u64,
    events: u64,
    lags_us: Vec<u64>,
    completed: bool,
}

async fn one_stream(client: reqwest::Client, base: String, n: usize, tps: f64, first_token: Duration) -> Result<StreamStats, String> {
    // The one-shot endpoint starts and streams in one request, so `start` arrives as
    // it is emitted rather than replayed.
    let question =
        format!("Benchmark question number {n}: how do streams scale?").replace(' ', "%20").replace('?', "%3F").replace(':', "%3A");
    let response =
        client.get(format!("{base}/api/stream/ai-block/ask-question?question={question}")).send().await.map_err(|e| e.to_string())?;
    if response.status() != 200 {
        return Err(format!("status {}", response.status()));
    }
    let mut events = response.bytes_stream().eventsource();
    let mut stats = StreamStats { chunks: 0, events: 0, lags_us: Vec::new(), completed: false };
    let mut offsets_us: Vec<i64> = Vec::new();
    let mut start_at = None;
    while let Some(event) = events.next().await {
        let event = event.map_err(|e| e.to_string())?;
        let now = Instant::now();
        stats.events += 1;
        match event.event.as_str() {
            "start" => start_at = Some(now),
            "chunk" => {
                let due = start_at.ok_or("chunk before start")? + first_token + Duration::from_secs_f64(stats.chunks as f64 / tps);
                let offset = if now >= due { (now - due).as_micros() as i64 } else { -((due - now).as_micros() as i64) };
                offsets_us.push(offset);
                stats.chunks += 1;
            }
            "complete" => {
                stats.completed = true;
                break;
            }
            "error" | "cancelled" => return Err(format!("stream ended with {}: {}", event.event, event.data)),
            _ => {}
        }
    }
    let best = offsets_us.iter().copied().min().unwrap_or(0);
    stats.lags_us = offsets_us.iter().map(|o| (o - best) as u64).collect();
    Ok(stats)
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize] as f64 / 1000.0
}

/// Cumulative bucket counts of the server's `chunk_delivery_seconds` histogram.
async fn delivery_buckets(client: &reqwest::Client, base: &str) -> Vec<(f64, f64)> {
    let text = client.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
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

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let base = args.get(1).cloned().unwrap_or_else(|| "http://127.0.0.1:8000".into());
    assert!(base.starts_with("http://127.0.0.1") || base.starts_with("http://[::1]"), "load goes to loopback only");
    let streams: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(1000);
    let tps: f64 = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(50.0);
    let first_token = Duration::from_millis(args.get(4).and_then(|s| s.parse().ok()).unwrap_or(200));
    let client = reqwest::Client::builder().pool_max_idle_per_host(streams).build().unwrap();
    let buckets_before = delivery_buckets(&client, &base).await;
    let started = Instant::now();
    let tasks: Vec<_> = (0..streams).map(|n| tokio::spawn(one_stream(client.clone(), base.clone(), n, tps, first_token))).collect();
    let mut lags = Vec::new();
    let (mut events, mut chunks, mut completed, mut failed) = (0u64, 0u64, 0usize, 0usize);
    for task in tasks {
        match tokio::time::timeout(Duration::from_secs(300), task).await {
            Ok(Ok(Ok(stats))) => {
                events += stats.events;
                chunks += stats.chunks;
                completed += stats.completed as usize;
                lags.extend(stats.lags_us);
            }
            Ok(Ok(Err(error))) => {
                failed += 1;
                if failed <= 3 {
                    eprintln!("stream failed: {error}");
                }
            }
            _ => failed += 1,
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let buckets_after = delivery_buckets(&client, &base).await;
    lags.sort_unstable();
    println!("streams={streams} completed={completed} failed={failed} tokens_per_second_per_stream={tps}");
    println!("wall={elapsed:.2}s events={events} chunks={chunks} events_per_second={:.0}", events as f64 / elapsed);
    println!(
        "chunk_lag_ms p50={:.2} p90={:.2} p99={:.2} max={:.2}",
        percentile(&lags, 0.5),
        percentile(&lags, 0.9),
        percentile(&lags, 0.99),
        percentile(&lags, 1.0)
    );
    println!(
        "server_chunk_delivery_ms (bucket upper bounds) p50<={} p90<={} p99<={}",
        bucket_quantile(&buckets_before, &buckets_after, 0.5),
        bucket_quantile(&buckets_before, &buckets_after, 0.9),
        bucket_quantile(&buckets_before, &buckets_after, 0.99)
    );
}
