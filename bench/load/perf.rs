//! Issue 10's benchmark in one command: `live-ai` (demo model, memory store) beside
//! the floor (bench/floor.rs), each run starting fresh processes, the order of the
//! servers rotating from run to run:
//!
//! 1. paced (`DEMO_TOKENS_PER_SECOND`, no first-token delay): the start burst of
//!    N streams on each server — time to first chunk, stretch, errors, memory per
//!    live stream; then `live-ai`'s retained finished logs from `/metrics`;
//! 2. unpaced (`DEMO_TOKENS_PER_SECOND=0`): resume replay of 1,000 events; events/s
//!    over SSE with C connections (the 50), and with enough connections to
//!    make the servers' CPU the bound; events/s over `live-ai`'s WebSocket.
//!
//! The floor runs twice: with `live-ai`'s socket defaults (every ratio is against
//! this one) and with tuned sockets (TCP_NODELAY, a listen backlog of 4096), to show
//! what the defaults cost: without TCP_NODELAY a stream's last small write waits for
//! the client's delayed ACK (~40 ms), which bounds 50 connections to about 22
//! streams/s each on any server, and the default backlog (128) overflows in a burst
//! of thousands of connects, each overflow costing a SYN retransmit (1 s).
//!
//! It prints every run, the medians, and the median of the per-run ratios to the
//! floor (a ratio within one run is what the shared machine keeps honest).
//! `live-ai` runs with `RUST_LOG=warn` (no per-generation log line), and in the
//! paced phase with a retention bound high enough that no finished log is evicted,
//! so `live_ai_retained_log_bytes` holds every stream of the burst.

use std::path::PathBuf;
use std::time::Duration;

use super::burst::{self, BurstConfig, BurstResult};
use super::replay::{self, ReplayResult};
use super::servers::{load_average, metric, wait_until_idle, Server};
use super::stats::median;
use super::unpaced::{self, UnpacedConfig, UnpacedResult};
use super::Flags;

struct PerfConfig {
    runs: usize,
    burst: BurstConfig,
    unpaced: UnpacedConfig,
    /// A second unpaced measurement with this many connections (0: none), enough
    /// for the servers' CPU rather than the Nagle stall to bound throughput.
    saturating_connections: usize,
    replays: usize,
    live_ai: PathBuf,
    floor: PathBuf,
}

/// The servers of every run: `live-ai`, the floor with `live-ai`'s socket defaults
/// (the reference of every ratio), and the floor with tuned sockets (TCP_NODELAY,
/// listen backlog 4096), which shows what those defaults cost.
const LIVE: usize = 0;
const FLOOR: usize = 1;
const TUNED: usize = 2;
const NAMES: [&str; 3] = ["live-ai", "floor", "floor, tuned sockets"];

#[derive(Default)]
struct Run {
    load_before: String,
    load_after: String,
    /// Indexed by server.
    burst: [BurstResult; 3],
    burst_cpu_seconds: [f64; 3],
    retained_log_bytes: f64,
    replay: [Option<ReplayResult>; 3],
    sse: [UnpacedResult; 3],
    saturated: [UnpacedResult; 3],
    websocket: UnpacedResult,
}

/// The environment of a `live-ai` under test; `extra` adds or overrides variables.
pub fn live_ai_env(tps: f64, first_token: Duration, extra: &[(&str, String)]) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = [
        ("AI_STREAMING_ENABLED", "true"),
        ("AI_PROVIDER", "demo"),
        ("STREAM_STORE", "memory"),
        ("STATIC_DIR", "no-frontend-in-the-bench"),
        ("RUST_LOG", "warn"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    env.push(("DEMO_TOKENS_PER_SECOND".into(), tps.to_string()));
    env.push(("DEMO_FIRST_TOKEN_MS".into(), first_token.as_millis().to_string()));
    for (k, v) in extra.iter().map(|(k, v)| (k.to_string(), v.clone())).chain(server_settings_from_env()) {
        env.retain(|(name, _)| *name != k);
        env.push((k, v));
    }
    env
}

/// Settings for every `live-ai` a benchmark starts, from `LOAD_SERVER_ENV`
/// (`NAME=value` pairs separated by spaces), after the benchmark's own: e.g.
/// `LOAD_SERVER_ENV="MODERATION=off COALESCE=off"` measures the store alone.
fn server_settings_from_env() -> Vec<(String, String)> {
    let pairs = std::env::var("LOAD_SERVER_ENV").unwrap_or_default();
    pairs
        .split_whitespace()
        .map(|pair| match pair.split_once('=') {
            Some((name, value)) => (name.to_owned(), value.to_owned()),
            None => panic!("LOAD_SERVER_ENV: {pair:?} is not NAME=value"),
        })
        .collect()
}

async fn start_servers(config: &PerfConfig, tps: f64, live_extra: &[(&str, String)]) -> [Server; 3] {
    let first_token = config.burst.first_token;
    let live = Server::start(NAMES[LIVE], &config.live_ai, &live_ai_env(tps, first_token, live_extra)).await;
    let pace = vec![
        ("DEMO_TOKENS_PER_SECOND".to_owned(), tps.to_string()),
        ("DEMO_FIRST_TOKEN_MS".to_owned(), first_token.as_millis().to_string()),
    ];
    let floor = Server::start(NAMES[FLOOR], &config.floor, &pace).await;
    let mut tuned_env = pace.clone();
    tuned_env.push(("FLOOR_TCP_NODELAY".to_owned(), "true".to_owned()));
    tuned_env.push(("FLOOR_LISTEN_BACKLOG".to_owned(), "4096".to_owned()));
    let tuned = Server::start(NAMES[TUNED], &config.floor, &tuned_env).await;
    // Let them all finish starting up before the idle memory is read.
    tokio::time::sleep(Duration::from_secs(1)).await;
    [live, floor, tuned]
}

async fn stop_all(servers: [Server; 3]) {
    for server in servers {
        server.stop(Duration::from_secs(10)).await;
    }
}

async fn one_run(config: &PerfConfig, index: usize) -> Run {
    let mut run = Run { load_before: load_average(), ..Run::default() };
    // The order rotates from run to run, so no server is always measured first.
    let order = [[LIVE, FLOOR, TUNED], [FLOOR, TUNED, LIVE], [TUNED, LIVE, FLOOR]][index % 3];
    let http = super::sse::http_client();

    let max_streams = (config.burst.streams + 1000).to_string();
    let live_extra = [("MAX_CONCURRENT_STREAMS", max_streams), ("STREAM_RETENTION_MAX_BYTES", (8u64 << 30).to_string())];
    let servers = start_servers(config, config.burst.tokens_per_second, &live_extra).await;
    for &who in &order {
        let server = &servers[who];
        let cpu = server.cpu_seconds();
        eprintln!("  burst of {} streams on {}", config.burst.streams, server.name);
        run.burst[who] = burst::run(&server.base, server.pid(), &config.burst).await;
        run.burst_cpu_seconds[who] = server.cpu_seconds() - cpu;
        if who == LIVE {
            if !wait_until_idle(&http, &server.base, Duration::from_secs(60)).await {
                eprintln!("  live-ai still runs generations a minute after the burst");
            }
            run.retained_log_bytes = metric(&http, &server.base, "live_ai_retained_log_bytes").await;
        }
        eprintln!("    {:?}", run.burst[who]);
        // Let the sockets of the burst close before the next one.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    stop_all(servers).await;

    let servers = start_servers(config, 0.0, &[]).await;
    for &who in &order {
        let server = &servers[who];
        let replayed = if who == LIVE {
            replay::live_ai(&server.base, config.replays, Some(server.pid())).await
        } else {
            replay::floor(&server.base, config.replays, Some(server.pid())).await
        };
        match replayed {
            Ok(result) => run.replay[who] = Some(result),
            Err(error) => eprintln!("  replay on {} failed: {error}", server.name),
        }
    }
    let measurements = [(config.unpaced.connections, false), (config.saturating_connections, true)];
    for (connections, saturating) in measurements.into_iter().filter(|(c, _)| *c > 0) {
        for &who in &order {
            let server = &servers[who];
            eprintln!("  unpaced SSE, {connections} connections, on {}", server.name);
            let unpaced_config = UnpacedConfig { pid: Some(server.pid()), connections, ..config.unpaced.clone() };
            let result = unpaced::sse(&server.base, &unpaced_config).await;
            eprintln!("    {result:?}");
            if saturating {
                run.saturated[who] = result;
            } else {
                run.sse[who] = result;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    let live = &servers[LIVE];
    eprintln!("  unpaced WebSocket, {} sockets, on live-ai", config.unpaced.connections);
    run.websocket = unpaced::websocket(&live.base, &UnpacedConfig { pid: Some(live.pid()), ..config.unpaced.clone() }).await;
    eprintln!("    {:?}", run.websocket);
    stop_all(servers).await;
    run.load_after = load_average();
    run
}

/// A table row: label, server, the runs' values, their median, and the median of
/// the per-run ratios against `reference` (the floor's values of the same runs).
fn row(label: &str, server: &str, values: &[f64], reference: Option<&[f64]>, digits: usize) {
    let cells: Vec<String> = values.iter().map(|v| format!("{v:.digits$}")).collect();
    let ratio = reference.map_or(String::new(), |reference| {
        let ratios: Vec<f64> = values.iter().zip(reference).map(|(v, f)| v / f).filter(|r| r.is_finite()).collect();
        let ratio = median(&ratios);
        if ratio.is_nan() {
            "—".to_owned()
        } else {
            format!("{ratio:.2}")
        }
    });
    println!("| {label} | {server} | {} | **{:.digits$}** | {ratio} |", cells.join(" | "), median(values));
}

fn report(config: &PerfConfig, runs: &[Run]) {
    let n = runs.len();
    let per = |f: &dyn Fn(&Run) -> f64| runs.iter().map(f).collect::<Vec<f64>>();
    // The three servers' rows of one measure, each with its ratio to the floor.
    let all = |label: &str, digits: usize, f: &dyn Fn(&Run, usize) -> f64| {
        let floor = per(&|r| f(r, FLOOR));
        row(label, NAMES[LIVE], &per(&|r| f(r, LIVE)), Some(&floor), digits);
        row(label, NAMES[FLOOR], &floor, None, digits);
        row(label, NAMES[TUNED], &per(&|r| f(r, TUNED)), Some(&floor), digits);
    };
    println!();
    println!("Machine load (1/5/15-min averages) per run, before → after:");
    for (i, r) in runs.iter().enumerate() {
        println!("- run {}: {} → {}", i + 1, r.load_before, r.load_after);
    }
    println!();
    let run_headers: Vec<String> = (1..=n).map(|i| format!("run {i}")).collect();
    println!("| measure | server | {} | median | ratio to floor |", run_headers.join(" | "));
    println!("|---|---|{}---|---|", "---|".repeat(n));
    let c = config.unpaced.connections;
    all(&format!("unpaced SSE events/s, {c} connections"), 0, &|r, w| r.sse[w].events_per_second);
    all(&format!("unpaced SSE streams/s, {c} connections"), 0, &|r, w| r.sse[w].streams_per_second);
    let floor_sse = per(&|r| r.sse[FLOOR].events_per_second);
    row(
        &format!("unpaced WebSocket events/s, {c} sockets (ratio to the floor's SSE)"),
        "live-ai",
        &per(&|r| r.websocket.events_per_second),
        Some(&floor_sse),
        0,
    );
    all(&format!("server CPU µs per event, unpaced SSE, {c} connections"), 2, &|r, w| r.sse[w].cpu_us_per_event);
    let floor_cpu = per(&|r| r.sse[FLOOR].cpu_us_per_event);
    row(
        "server CPU µs per event, unpaced WebSocket (ratio to the floor's SSE)",
        "live-ai",
        &per(&|r| r.websocket.cpu_us_per_event),
        Some(&floor_cpu),
        2,
    );
    all(&format!("unpaced SSE stream errors, {c} connections"), 0, &|r, w| r.sse[w].errors as f64);
    row("unpaced WebSocket stream errors", "live-ai", &per(&|r| r.websocket.errors as f64), None, 0);
    let s = config.saturating_connections;
    if s > 0 {
        all(&format!("unpaced SSE events/s, {s} connections"), 0, &|r, w| r.saturated[w].events_per_second);
        all(&format!("server CPU µs per event, unpaced SSE, {s} connections"), 2, &|r, w| r.saturated[w].cpu_us_per_event);
    }
    let b = &config.burst;
    let burst_label = |what: &str| format!("burst {} × {} tok/s: {what}", b.streams, b.tokens_per_second);
    all(&burst_label("time to first chunk p50 (ms)"), 1, &|r, w| r.burst[w].ttfc_ms_p50);
    all(&burst_label("time to first chunk p99 (ms)"), 1, &|r, w| r.burst[w].ttfc_ms_p99);
    all(&burst_label("stretch p50"), 3, &|r, w| r.burst[w].stretch_p50);
    all(&burst_label("stretch p99"), 3, &|r, w| r.burst[w].stretch_p99);
    all(&burst_label("errors"), 0, &|r, w| r.burst[w].errors as f64);
    all(&burst_label("listen queue overflows"), 0, &|r, w| r.burst[w].listen_overflows as f64);
    all(&burst_label("RSS per live stream (KiB)"), 1, &|r, w| r.burst[w].bytes_per_live_stream() / 1024.0);
    all(&burst_label("streams live at that RSS sample"), 0, &|r, w| r.burst[w].live_streams as f64);
    all(&burst_label("peak RSS − idle RSS (MiB)"), 1, &|r, w| r.burst[w].peak_rss.saturating_sub(r.burst[w].idle_rss) as f64 / 1048576.0);
    all(&burst_label("idle RSS (MiB)"), 1, &|r, w| r.burst[w].idle_rss as f64 / 1048576.0);
    all(&burst_label("server CPU seconds"), 2, &|r, w| r.burst_cpu_seconds[w]);
    all("1,000-event replay: request → last byte, median (ms)", 2, &|r, w| r.replay[w].map_or(f64::NAN, |x| x.median_ms));
    all("1,000-event replay: request → last byte, p90 (ms)", 2, &|r, w| r.replay[w].map_or(f64::NAN, |x| x.p90_ms));
    all("1,000-event replay: server CPU per replay (ms)", 2, &|r, w| r.replay[w].map_or(f64::NAN, |x| x.cpu_ms));
    println!();
    println!("live-ai's event log after the burst (every stream finished and retained):");
    println!();
    println!("| measure | {} | median |", run_headers.join(" | "));
    println!("|---|{}---|", "---|".repeat(n));
    let log_row = |label: &str, digits: usize, f: &dyn Fn(&Run) -> f64| {
        let values = per(f);
        let cells: Vec<String> = values.iter().map(|v| format!("{v:.digits$}")).collect();
        println!("| {label} | {} | **{:.digits$}** |", cells.join(" | "), median(&values));
    };
    log_row("live_ai_retained_log_bytes (MiB)", 1, &|r| r.retained_log_bytes / 1048576.0);
    log_row("retained bytes per event", 1, &|r| r.retained_log_bytes / r.burst[LIVE].events as f64);
    log_row("mean token text per chunk (bytes)", 2, &|r| r.burst[LIVE].token_bytes as f64 / r.burst[LIVE].chunks as f64);
    log_row("log overhead per chunk beyond its token (bytes)", 1, &|r| {
        let b = &r.burst[LIVE];
        (r.retained_log_bytes - b.other_event_bytes as f64 - b.token_bytes as f64) / b.chunks as f64
    });
    for (i, r) in runs.iter().enumerate() {
        for who in [LIVE, FLOOR, TUNED] {
            for error in &r.burst[who].first_errors {
                println!("- run {}, {}: burst error: {error}", i + 1, NAMES[who]);
            }
        }
    }
}

/// `load perf --live-ai BIN --floor BIN [--runs 3] [--streams 5000] [--tps 20]
/// [--first-token-ms 0] [--connections 50] [--saturating-connections 400]
/// [--seconds 5] [--replays 50]`
pub async fn main(args: &[String]) {
    let flags = Flags::parse(args);
    let config = PerfConfig {
        runs: flags.get("runs", 3),
        burst: BurstConfig {
            streams: flags.get("streams", 5000),
            tokens_per_second: flags.get("tps", 20.0),
            first_token: Duration::from_millis(flags.get("first-token-ms", 0)),
            patience: Duration::from_secs(flags.get("patience-seconds", 180)),
        },
        unpaced: UnpacedConfig {
            connections: flags.get("connections", 50),
            warmup: Duration::from_secs(1),
            window: Duration::from_secs_f64(flags.get("seconds", 5.0)),
            pid: None,
        },
        saturating_connections: flags.get("saturating-connections", 400),
        replays: flags.get("replays", 50),
        live_ai: flags.path("live-ai"),
        floor: flags.path("floor"),
    };
    super::warn_if_few_files(config.burst.streams.max(config.saturating_connections));
    println!(
        "bench perf: {} runs; burst {} streams × {} tok/s (first token after {} ms); unpaced {} and {} connections, {:?} windows",
        config.runs,
        config.burst.streams,
        config.burst.tokens_per_second,
        config.burst.first_token.as_millis(),
        config.unpaced.connections,
        config.saturating_connections,
        config.unpaced.window
    );
    let mut runs = Vec::new();
    for index in 0..config.runs {
        eprintln!("run {} of {} (load {})", index + 1, config.runs, load_average());
        runs.push(one_run(&config, index).await);
    }
    report(&config, &runs);
}
