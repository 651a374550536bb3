//! `load otel --live-ai BIN …`: what OpenTelemetry export costs (issue 24).
//! Modes, rotated within each run so a noisy neighbour hits them alike:
//!
//! - `off`: no OTLP endpoint (the default);
//! - `on-1.0`: traces and metrics exported over http/protobuf, every trace sampled;
//! - `on-0.1`: the same, `parentbased_traceidratio` at 0.1.
//!
//! The collector is a sink in this process, on its own thread, on loopback: it
//! answers every export at once without decoding it, so what is measured is the
//! server's cost of tracing and exporting, not a collector's. Unpaced: events/s
//! of back-to-back SSE streams of the demo model at full speed, and the server's
//! CPU per event (less sensitive to the neighbours than events/s); plus what the
//! sink received and the spans the server dropped. With `--paced N`, also N
//! paced streams per mode and run, and the server's CPU per event over them.
//!
//! With `--side-by-side`, the modes' servers (and one more, `on-0`: export with
//! no trace sampled) run at the same time instead, each with its own load
//! (`--connections` each unpaced, `--paced` streams each paced): whatever a
//! neighbour on the host does in a window, it does to all of them alike, so
//! the per-run ratios spread far less than when the modes take turns
//! (bench/RESULTS.md). They share the two cores, so each runs slower than
//! alone; the ratio of their CPU per event is what is compared.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::routing::post;
use axum::Router;

use super::lag::{self, LagConfig, Route};
use super::servers::{metric, Server};
use super::stats::median;
use super::unpaced::{self, UnpacedConfig, UnpacedResult};
use super::Flags;

const MODES: [&str; 3] = ["off", "on-1.0", "on-0.1"];
/// Side by side, also export with no trace sampled: what the metrics, the
/// per-chunk observation and the request spans cost without any span exported.
const SIDE_MODES: [&str; 4] = ["off", "on-1.0", "on-0.1", "on-0"];

#[derive(Default)]
struct Received {
    exports: AtomicU64,
    bytes: AtomicU64,
}

/// `load otel-sink`: the sink alone, for a server under a profiler
/// (bench/otel-instructions.sh): prints its address, then serves until killed.
pub async fn sink_main() {
    let (address, _) = sink().await;
    println!("http://{address}");
    std::future::pending::<()>().await;
}

/// An OTLP/HTTP sink on its own runtime: `200` with an empty body to every export.
async fn sink() -> (SocketAddr, Arc<Received>) {
    let received = Arc::new(Received::default());
    let counted = received.clone();
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
        runtime.block_on(async move {
            let count = move |body: Bytes| {
                let counted = counted.clone();
                async move {
                    counted.exports.fetch_add(1, Ordering::Relaxed);
                    counted.bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
                    ""
                }
            };
            let app = Router::new().route("/v1/traces", post(count.clone())).route("/v1/metrics", post(count));
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a loopback port");
            let _ = tx.send(listener.local_addr().unwrap());
            axum::serve(listener, app).await.expect("the sink serves");
        });
    });
    (rx.await.expect("the sink starts"), received)
}

/// The server's settings for `mode`; `paced`: the demo model at 50 tokens/s
/// after 200 ms (the paced measurement), else unpaced.
fn env(mode: &str, sink: SocketAddr, paced: bool) -> Vec<(String, String)> {
    let (tps, first_token) = if paced { ("50", "200") } else { ("0", "0") };
    let mut vars = vec![
        ("AI_STREAMING_ENABLED", "true".to_owned()),
        ("DEMO_TOKENS_PER_SECOND", tps.into()),
        ("DEMO_FIRST_TOKEN_MS", first_token.into()),
        ("MAX_CONCURRENT_STREAMS", "4096".into()),
        ("RUST_LOG", "warn".into()),
    ];
    let Some(ratio) = mode.strip_prefix("on-") else {
        return vars.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
    };
    vars.push(("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{sink}")));
    vars.push(("OTEL_TRACES_SAMPLER", "parentbased_traceidratio".into()));
    vars.push(("OTEL_TRACES_SAMPLER_ARG", ratio.into()));
    // Metrics at the SDK's default interval would export once or twice per
    // window; every 5 s keeps their export in the measurement.
    vars.push(("OTEL_METRIC_EXPORT_INTERVAL", "5000".into()));
    vars.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

pub async fn main(args: &[String]) {
    let args = Flags::parse(args);
    let binary: PathBuf = args.path("live-ai");
    let runs: usize = args.get("runs", 3);
    let connections: usize = args.get("connections", 64);
    let seconds: f64 = args.get("seconds", 8.0);
    let (sink, received) = sink().await;
    if args.get("side-by-side", false) {
        let modes: String = args.get("modes", SIDE_MODES.join(","));
        let modes: Vec<String> = modes.split(',').map(str::to_owned).collect();
        return side_by_side(&binary, sink, runs, connections, seconds, args.get("paced", 0), &modes).await;
    }
    println!("OpenTelemetry benchmark: unpaced SSE, {connections} connections, {seconds} s windows, {runs} runs; sink at {sink}");
    let mut results: Vec<(&str, UnpacedResult)> = Vec::new();
    for run in 0..runs {
        for k in 0..MODES.len() {
            let mode = MODES[(k + run) % MODES.len()];
            let server = Server::start("live-ai", &binary, &env(mode, sink, false)).await;
            let (exports0, bytes0) = (received.exports.load(Ordering::Relaxed), received.bytes.load(Ordering::Relaxed));
            let config = UnpacedConfig {
                connections,
                warmup: Duration::from_secs(2),
                window: Duration::from_secs_f64(seconds),
                pid: Some(server.pid()),
            };
            let result = unpaced::sse(&server.base, &config).await;
            let http = reqwest::Client::new();
            let dropped = metric(&http, &server.base, "live_ai_telemetry_spans_dropped_total").await;
            println!(
                "run {run} {mode:>7}: {:.0} events/s, {:.2} µs CPU/event, {:.0} streams/s, errors {}; sink got {} exports, {} KB; spans dropped {dropped}",
                result.events_per_second,
                result.cpu_us_per_event,
                result.streams_per_second,
                result.errors,
                received.exports.load(Ordering::Relaxed) - exports0,
                (received.bytes.load(Ordering::Relaxed) - bytes0) / 1024,
            );
            results.push((mode, result));
            server.stop(Duration::from_secs(10)).await;
        }
    }
    println!("\nmedians over {runs} runs:");
    println!("| mode | events/s | server CPU µs/event |");
    println!("|---|---|---|");
    for mode in MODES {
        let of = |f: fn(&UnpacedResult) -> f64| median(&results.iter().filter(|(m, _)| *m == mode).map(|(_, r)| f(r)).collect::<Vec<_>>());
        println!("| {mode} | {:.0} | {:.2} |", of(|r| r.events_per_second), of(|r| r.cpu_us_per_event));
    }
    // Each run's ratio to that run's `off`, then the median over runs.
    for mode in ["on-1.0", "on-0.1"] {
        let ratio = |f: fn(&UnpacedResult) -> f64| {
            let per_run: Vec<f64> = results
                .chunks(MODES.len())
                .map(|run| {
                    let of = |m: &str| f(&run.iter().find(|(name, _)| *name == m).expect("every mode ran").1);
                    of(mode) / of("off")
                })
                .collect();
            median(&per_run)
        };
        println!(
            "{mode} / off, median of per-run ratios: events/s {:.3}, CPU per event {:.3}",
            ratio(|r| r.events_per_second),
            ratio(|r| r.cpu_us_per_event)
        );
    }
    let paced: usize = args.get("paced", 0);
    if paced > 0 {
        paced_runs(&binary, sink, runs, paced).await;
    }
}

/// `--paced N`: N streams of the demo model at 50 tokens/s started at once,
/// per mode and run (rotated), and the server's CPU per event over them: the
/// cost at a load the server keeps up with, where the unpaced measurement's
/// saturation (a slower mode batches less, so pays more per event) is absent.
async fn paced_runs(binary: &std::path::Path, sink: SocketAddr, runs: usize, streams: usize) {
    println!("\npaced: {streams} streams × 50 tokens/s (first token after 200 ms), {runs} runs");
    let config = paced_load(streams);
    let mut cpu: Vec<(&str, f64)> = Vec::new();
    for run in 0..runs {
        for k in 0..MODES.len() {
            let mode = MODES[(k + run) % MODES.len()];
            let server = Server::start("live-ai", binary, &env(mode, sink, true)).await;
            let before = server.cpu_seconds();
            let result = lag::run(&Route::OneShot { base: server.base.clone() }, &config).await;
            let per_event = (server.cpu_seconds() - before) * 1e6 / result.events.max(1) as f64;
            println!(
                "run {run} {mode:>7}: {} of {streams} complete, {} events, {per_event:.2} µs CPU/event, lag p99 {:.1} ms",
                result.completed, result.events, result.lag_ms_p99
            );
            cpu.push((mode, per_event));
            server.stop(Duration::from_secs(10)).await;
        }
    }
    for mode in ["on-1.0", "on-0.1"] {
        let per_run: Vec<f64> = cpu
            .chunks(MODES.len())
            .map(|run| {
                let of = |m: &str| run.iter().find(|(name, _)| *name == m).expect("every mode ran").1;
                of(mode) / of("off")
            })
            .collect();
        println!("paced {mode} / off, median of per-run ratios: CPU per event {:.3} (runs {per_run:.3?})", median(&per_run));
    }
}

/// The paced load of both measurements: `streams` × 50 tokens/s, all at once.
fn paced_load(streams: usize) -> LagConfig {
    LagConfig {
        streams,
        tokens_per_second: 50.0,
        first_token: Duration::from_millis(200),
        patience: Duration::from_secs(120),
        stagger: Duration::ZERO,
    }
}

/// `--side-by-side`: per run, a server of each mode (`--modes a,b,…`, default
/// `SIDE_MODES`; ratios are to the first) started together and loaded
/// together, unpaced then (with `paced > 0`) paced; each run's ratios to that
/// run's first mode, and their medians. Which server starts and is loaded first
/// rotates from run to run, so no mode always has the same place.
/// `--modes off,off,off,off` measures what the places alone do (an A/A check);
/// `--modes off@A,on-1.0@A,off@B,on-1.0@B` compares two builds in the same windows,
/// and `on-1.0;NAME=VALUE` gives one server a setting of its own.
async fn side_by_side(
    binary: &std::path::Path,
    sink: SocketAddr,
    runs: usize,
    connections: usize,
    seconds: f64,
    paced: usize,
    modes: &[String],
) {
    println!(
        "OpenTelemetry benchmark, the modes side by side ({}): unpaced SSE, {connections} connections each, {seconds} s windows; \
         paced {paced} streams each; {runs} runs; sink at {sink}",
        modes.join(", ")
    );
    let count = modes.len();
    let mut unpaced_cpu: Vec<Vec<f64>> = Vec::new();
    let mut paced_cpu: Vec<Vec<f64>> = Vec::new();
    for run in 0..runs {
        // Places in this run: place p holds mode (p + run) % count.
        let order: Vec<usize> = (0..count).map(|p| (p + run) % count).collect();
        let servers = start_all(binary, sink, false, modes, &order).await;
        let loads = servers.iter().map(|server| {
            let config = UnpacedConfig {
                connections,
                warmup: Duration::from_secs(2),
                window: Duration::from_secs_f64(seconds),
                pid: Some(server.pid()),
            };
            async move { unpaced::sse(&server.base, &config).await }
        });
        let results = by_mode(&order, futures::future::join_all(loads).await);
        for (mode, result) in modes.iter().zip(&results) {
            println!(
                "run {run} {mode:>7}: {:.0} events/s, {:.2} µs CPU/event, errors {}",
                result.events_per_second, result.cpu_us_per_event, result.errors
            );
        }
        unpaced_cpu.push(results.iter().map(|result| result.cpu_us_per_event).collect());
        stop_all(servers).await;
        if paced == 0 {
            continue;
        }
        let servers = start_all(binary, sink, true, modes, &order).await;
        let config = paced_load(paced);
        let loads = servers.iter().map(|server| {
            let config = &config;
            async move {
                let before = server.cpu_seconds();
                let result = lag::run(&Route::OneShot { base: server.base.clone() }, config).await;
                ((server.cpu_seconds() - before) * 1e6 / result.events.max(1) as f64, result)
            }
        });
        let results = by_mode(&order, futures::future::join_all(loads).await);
        for (mode, (per_event, result)) in modes.iter().zip(&results) {
            println!(
                "run {run} {mode:>7} paced: {} of {paced} complete, {} events, {per_event:.2} µs CPU/event, lag p99 {:.1} ms",
                result.completed, result.events, result.lag_ms_p99
            );
        }
        paced_cpu.push(results.iter().map(|(per_event, _)| *per_event).collect());
        stop_all(servers).await;
    }
    for (what, cpu) in [("unpaced", &unpaced_cpu), ("paced", &paced_cpu)] {
        if cpu.is_empty() {
            continue;
        }
        for k in 1..count {
            let per_run: Vec<f64> = cpu.iter().map(|run| run[k] / run[0]).collect();
            let of = |k: usize| median(&cpu.iter().map(|run| run[k]).collect::<Vec<_>>());
            println!(
                "{what} {} (#{k}) / {}: CPU per event, median of per-run ratios {:.3}, ratio of the medians {:.3} ({:.2} / {:.2} µs) (runs {per_run:.3?})",
                modes[k],
                modes[0],
                median(&per_run),
                of(k) / of(0),
                of(k),
                of(0)
            );
        }
    }
}

/// Results by place, reordered by mode.
fn by_mode<T>(order: &[usize], by_place: Vec<T>) -> Vec<T> {
    let mut slots: Vec<Option<T>> = order.iter().map(|_| None).collect();
    for (place, result) in by_place.into_iter().enumerate() {
        slots[order[place]] = Some(result);
    }
    slots.into_iter().map(|slot| slot.expect("every mode ran")).collect()
}

/// A server of each mode, in the order of places. A mode may name its own
/// binary, `MODE@PATH` (two builds side by side), else it runs `binary`; and
/// settings of its own, `MODE;NAME=VALUE;…`.
async fn start_all(binary: &std::path::Path, sink: SocketAddr, paced: bool, modes: &[String], order: &[usize]) -> Vec<Server> {
    let mut servers = Vec::new();
    for &mode in order {
        let (mode, path) = match modes[mode].split_once('@') {
            Some((mode, path)) => (mode, std::path::Path::new(path)),
            None => (modes[mode].as_str(), binary),
        };
        // `MODE;NAME=VALUE;…`: settings of that server's own.
        let mut settings = mode.split(';');
        let mut vars = env(settings.next().unwrap_or_default(), sink, paced);
        vars.extend(settings.filter_map(|setting| setting.split_once('=')).map(|(k, v)| (k.to_owned(), v.to_owned())));
        servers.push(Server::start("live-ai", path, &vars).await);
    }
    servers
}

async fn stop_all(servers: Vec<Server>) {
    for server in servers {
        server.stop(Duration::from_secs(10)).await;
    }
}
