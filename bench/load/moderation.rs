//! `load moderation --live-ai BIN …`: what moderation costs (issue 21). Modes, in
//! alternating order within each run so a noisy neighbour hits them alike:
//!
//! - `off`: `MODERATION=off`;
//! - `local`: the default, the local word filter, buffered;
//! - `remote-buffered` / `remote-async`: `MODERATION_PROVIDER=openai` against a
//!   moderation server in this process that answers every request after 50 ms
//!   (OpenAI's clean answer, byte for byte; to an array `input`, one clean
//!   entry per text), on loopback, keep-alive; checks batched as by default
//!   (`MODERATION_BATCH_WAIT_MS=5`, `MODERATION_BATCH_MAX=32`);
//! - `remote-buffered-unbatched`: the same, buffered, with
//!   `MODERATION_BATCH_WAIT_MS=0` (one request per check).
//!
//! Paced: N one-shot streams of the demo model at TPS tokens/s: time from the
//! request to the first visible chunk (p50/p99), events/s delivered, the
//! server's CPU per event and the requests the moderator received. Unpaced (`off` and `local` only): events/s of
//! back-to-back streams with no pacing (the demo model as fast as it goes), and
//! the server's CPU per event — where a filter's cost shows, since paced load
//! leaves the machine idle.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::routing::post;
use axum::Router;

use super::burst::question_path;
use super::http::address;
use super::servers::{cpu_seconds_of, metric, Server};
use super::sse::watch;
use super::stats::{median, quantile, sorted};
use super::unpaced::{self, UnpacedConfig};
use super::{warn_if_few_files, Flags};

const MODES: [&str; 5] = ["off", "local", "remote-buffered", "remote-buffered-unbatched", "remote-async"];

/// OpenAI's answer for harmless text, as the tests replay it.
const CLEAN: &str = include_str!("../../backend/tests/fixtures/moderation/openai_moderation_clean.json");

/// A moderation API on loopback, with the requests it received.
#[derive(Clone)]
struct Moderator {
    addr: SocketAddr,
    requests: Arc<AtomicU64>,
}

/// A moderation API that answers every request with [`CLEAN`] after `delay`
/// (to an array `input`, one clean entry per text), on a runtime of its own
/// (its own thread), so the load generator's work on a thousand streams does
/// not delay its answers.
async fn slow_moderator(delay: Duration) -> Moderator {
    let requests = Arc::new(AtomicU64::new(0));
    let (tx, rx) = tokio::sync::oneshot::channel();
    let counted = requests.clone();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
        runtime.block_on(async move {
            let _ = tx.send(serve_moderator(delay, counted).await);
            futures::future::pending::<()>().await;
        });
    });
    Moderator { addr: rx.await.expect("the moderator starts"), requests }
}

/// OpenAI's clean answer, or for `texts` inputs an answer of that shape with
/// its one entry repeated, one per input.
fn clean_answer(texts: Option<usize>) -> String {
    let Some(texts) = texts else { return CLEAN.to_owned() };
    let mut answer: serde_json::Value = serde_json::from_str(CLEAN).expect("the fixture is JSON");
    let entry = answer["results"][0].clone();
    answer["results"] = serde_json::Value::Array(vec![entry; texts]);
    answer.to_string()
}

async fn serve_moderator(delay: Duration, requests: Arc<AtomicU64>) -> SocketAddr {
    let app = Router::new().route(
        "/v1/moderations",
        post(move |body: Bytes| {
            let requests = requests.clone();
            async move {
                requests.fetch_add(1, Ordering::Relaxed);
                let texts =
                    serde_json::from_slice::<serde_json::Value>(&body).ok().and_then(|request| request["input"].as_array().map(Vec::len));
                tokio::time::sleep(delay).await;
                ([(axum::http::header::CONTENT_TYPE, "application/json")], clean_answer(texts))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a loopback port");
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.expect("the moderator serves") });
    addr
}

fn env(mode: &str, tps: f64, streams: usize, moderator: SocketAddr) -> Vec<(String, String)> {
    let mut vars = vec![
        ("AI_STREAMING_ENABLED", "true".to_owned()),
        ("DEMO_TOKENS_PER_SECOND", tps.to_string()),
        ("DEMO_FIRST_TOKEN_MS", "200".into()),
        ("MAX_CONCURRENT_STREAMS", (streams * 2).to_string()),
        ("RUST_LOG", "warn".into()),
    ];
    match mode {
        "off" => vars.push(("MODERATION", "off".into())),
        "local" => vars.push(("MODERATION_PROVIDER", "local".into())),
        remote => {
            vars.push(("MODERATION_PROVIDER", "openai".into()));
            vars.push(("MODERATION_BASE_URL", format!("http://{moderator}/v1")));
            vars.push(("MODERATION_OUTPUT_MODE", if remote == "remote-async" { "async" } else { "buffered" }.into()));
            if remote == "remote-buffered-unbatched" {
                vars.push(("MODERATION_BATCH_WAIT_MS", "0".into()));
            }
        }
    }
    vars.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

#[derive(Debug, Default, Clone)]
struct Paced {
    first_chunk_ms_p50: f64,
    first_chunk_ms_p99: f64,
    events_per_second: f64,
    cpu_us_per_event: f64,
    /// Mean time of one moderation check as the server measured it (retries included).
    check_ms_mean: f64,
    /// Requests the moderator received during the run.
    moderator_requests: u64,
    completed: usize,
    failed: usize,
}

/// One stream: ms from the request to its first chunk, its events, how it ended.
async fn one_stream(address: SocketAddr, n: usize) -> Result<(f64, u64, bool), String> {
    let watched = watch(address, &question_path(n), &[]).await?;
    Ok((watched.first_chunk_ms, watched.events, watched.complete))
}

async fn paced(server: &Server, streams: usize, moderator: &Moderator) -> Paced {
    let address = address(&server.base);
    let requests0 = moderator.requests.load(Ordering::Relaxed);
    let (cpu0, started) = (cpu_seconds_of(server.pid()), Instant::now());
    let tasks: Vec<_> = (0..streams).map(|n| tokio::spawn(one_stream(address, n))).collect();
    let (mut firsts, mut events, mut result) = (Vec::new(), 0u64, Paced::default());
    for task in tasks {
        match tokio::time::timeout(Duration::from_secs(120), task).await {
            Ok(Ok(Ok((first, n, complete)))) => {
                firsts.push(first);
                events += n;
                if complete {
                    result.completed += 1;
                } else {
                    result.failed += 1;
                }
            }
            _ => result.failed += 1,
        }
    }
    let wall = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds_of(server.pid()) - cpu0;
    let firsts = sorted(&mut firsts);
    result.first_chunk_ms_p50 = quantile(firsts, 0.5);
    result.first_chunk_ms_p99 = quantile(firsts, 0.99);
    result.events_per_second = events as f64 / wall;
    result.cpu_us_per_event = cpu * 1e6 / events.max(1) as f64;
    let http = reqwest::Client::new();
    let sum = metric(&http, &server.base, "live_ai_moderation_check_seconds_sum").await;
    let count = metric(&http, &server.base, "live_ai_moderation_check_seconds_count").await;
    result.check_ms_mean = if count > 0.0 { sum / count * 1000.0 } else { 0.0 };
    result.moderator_requests = moderator.requests.load(Ordering::Relaxed) - requests0;
    result
}

pub async fn main(args: &[String]) {
    let args = Flags::parse(args);
    let binary: PathBuf = args.path("live-ai");
    let streams: usize = args.get("streams", 1000);
    let tps: f64 = args.get("tps", 20.0);
    let runs: usize = args.get("runs", 3);
    let unpaced_seconds: f64 = args.get("unpaced-seconds", 5.0);
    warn_if_few_files(streams * 2);
    let moderator = slow_moderator(Duration::from_millis(50)).await;
    println!("moderation benchmark: {streams} streams x {tps} tokens/s, {runs} runs, remote moderator answering in 50 ms");
    let mut results: Vec<(&str, Paced)> = Vec::new();
    let mut unpaced_results: Vec<(&str, unpaced::UnpacedResult)> = Vec::new();
    for run in 0..runs {
        // Rotate the order each run.
        for k in 0..MODES.len() {
            let mode = MODES[(k + run) % MODES.len()];
            let server = Server::start("live-ai", &binary, &env(mode, tps, streams, moderator.addr)).await;
            let result = paced(&server, streams, &moderator).await;
            println!("run {run} {mode:>15} paced: {result:?}");
            results.push((mode, result));
            server.stop(Duration::from_secs(10)).await;
        }
        for k in 0..2 {
            let mode = ["off", "local"][(k + run) % 2];
            let server = Server::start("live-ai", &binary, &env(mode, 0.0, 64, moderator.addr)).await;
            let config = UnpacedConfig {
                connections: 64,
                warmup: Duration::from_secs(2),
                window: Duration::from_secs_f64(unpaced_seconds),
                pid: Some(server.pid()),
            };
            let result = unpaced::sse(&server.base, &config).await;
            println!("run {run} {mode:>15} unpaced: {result:?}");
            unpaced_results.push((mode, result));
            server.stop(Duration::from_secs(10)).await;
        }
    }
    println!("\nmedians over {runs} runs:");
    println!("| mode | first visible chunk p50 (ms) | p99 (ms) | events/s | server CPU µs/event | mean check (ms) | moderator requests | completed |");
    println!("|---|---|---|---|---|---|---|---|");
    for mode in MODES {
        let of = |f: fn(&Paced) -> f64| median(&results.iter().filter(|(m, _)| *m == mode).map(|(_, r)| f(r)).collect::<Vec<_>>());
        let completed = of(|r| r.completed as f64);
        println!(
            "| {mode} | {:.0} | {:.0} | {:.0} | {:.1} | {:.2} | {:.0} | {completed:.0}/{streams} |",
            of(|r| r.first_chunk_ms_p50),
            of(|r| r.first_chunk_ms_p99),
            of(|r| r.events_per_second),
            of(|r| r.cpu_us_per_event),
            of(|r| r.check_ms_mean),
            of(|r| r.moderator_requests as f64)
        );
    }
    // What a remote moderator adds beyond the window's own fill time (local
    // buffered, whose check takes microseconds), within each run, then the median.
    println!("\n| beyond local buffered, per run | p50 (ms) | p99 (ms) | runs' p99 deltas (ms) |");
    println!("|---|---|---|---|");
    for mode in ["remote-buffered", "remote-buffered-unbatched"] {
        let deltas = |f: fn(&Paced) -> f64| -> Vec<f64> {
            results
                .chunks(MODES.len())
                .map(|run| {
                    let of = |wanted: &str| run.iter().find(|(m, _)| *m == wanted).map(|(_, r)| f(r)).expect("every mode ran");
                    of(mode) - of("local")
                })
                .collect()
        };
        let p99s = deltas(|r| r.first_chunk_ms_p99);
        let listed: Vec<String> = p99s.iter().map(|d| format!("{d:+.0}")).collect();
        println!("| {mode} | {:+.0} | {:+.0} | {} |", median(&deltas(|r| r.first_chunk_ms_p50)), median(&p99s), listed.join(", "));
    }
    println!("\n| unpaced | events/s | server CPU µs/event |");
    println!("|---|---|---|");
    for mode in ["off", "local"] {
        let of = |f: fn(&unpaced::UnpacedResult) -> f64| {
            median(&unpaced_results.iter().filter(|(m, _)| *m == mode).map(|(_, r)| f(r)).collect::<Vec<_>>())
        };
        println!("| {mode} | {:.0} | {:.1} |", of(|r| r.events_per_second), of(|r| r.cpu_us_per_event));
    }
    // Ratios within runs, pooled: each run's local over that run's off.
    let ratio = |f: fn(&unpaced::UnpacedResult) -> f64| {
        let per_run: Vec<f64> = unpaced_results
            .chunks(2)
            .map(|pair| {
                let (off, local) = if pair[0].0 == "off" { (&pair[0].1, &pair[1].1) } else { (&pair[1].1, &pair[0].1) };
                f(local) / f(off)
            })
            .collect();
        median(&per_run)
    };
    println!(
        "\nlocal / off, median of per-run ratios: events/s {:.3}, CPU per event {:.3}",
        ratio(|r| r.events_per_second),
        ratio(|r| r.cpu_us_per_event)
    );
}
