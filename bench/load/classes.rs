//! `load classes --live-ai BIN …`: a class asks at once (issue 23). LEARNERS
//! learners in each of CLASSES classes press "Explain" on the same block: every
//! class's first learner at the same instant, the others of the class spread
//! evenly over the next SPREAD ms (as a class answering the teacher is), each on
//! an SSE connection of its own (the one-shot GET), with a learner JWT (HS256,
//! signed here with the secret the server is given) whose `class_id` claim is its
//! class. Every class asks the very same question: only the scope tells classes
//! apart, so with coalescing on the model is asked once per class.
//!
//! Two modes, alternating first within each run so a noisy neighbour hits them
//! alike: `COALESCE=on` and `off`, each on a fresh release `live-ai` (no answer
//! cached from before) with the demo model paced (TPS tokens/s after a first-token
//! delay). Per mode: the generations (the demo model's provider requests, from
//! `live_ai_stream_outcomes_total`, which counts a shared generation once), joins
//! and replays, time from a learner's request to its first chunk for the first
//! and for the last learner of each class (p50/p99 over the classes), the
//! server's CPU, and the streams that completed. `--moderation off` takes the
//! output window's wait out of the first chunk, leaving coalescing's own latency.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};

use super::http::address;
use super::servers::{cpu_seconds_of, metric, wait_until_idle, Server};
use super::sse::{http_client, watch};
use super::stats::{median, quantile, sorted};
use super::{warn_if_few_files, Flags};

const MODES: [&str; 2] = ["on", "off"];

/// The HS256 secret the benchmark shares with the server it starts (loopback
/// only, a fresh server each time: it guards nothing).
const JWT_SECRET: &str = "bench-classes-host-app-secret-0123456789";
const AUDIENCE: &str = "live-ai";
/// What every learner of every class asks.
const QUESTION: &str = "/api/stream/ai-block/explain-eli10?topic=why%20the%20sea%20is%20salty";
/// How long one learner's stream may take before it counts as failed.
const PATIENCE: Duration = Duration::from_secs(120);

/// What a benchmark run asks of the server.
#[derive(Debug, Clone, Copy)]
struct Load {
    learners: usize,
    classes: usize,
    spread: Duration,
    tps: f64,
    first_token_ms: u64,
    /// `local` (the server's default: the local filter, buffered, so a chunk is
    /// seen once its output window is checked) or `off` (chunks as generated:
    /// the latency of coalescing itself).
    moderation: &'static str,
}

fn env(mode: &str, load: &Load) -> Vec<(String, String)> {
    let streams = load.learners * load.classes;
    [
        ("AI_STREAMING_ENABLED", "true".to_owned()),
        ("DEMO_TOKENS_PER_SECOND", load.tps.to_string()),
        ("DEMO_FIRST_TOKEN_MS", load.first_token_ms.to_string()),
        ("MAX_CONCURRENT_STREAMS", (streams * 2).to_string()),
        ("AUTH_MODE", "jwt".into()),
        ("AUTH_JWT_SECRET", JWT_SECRET.into()),
        ("AUTH_JWT_AUDIENCE", AUDIENCE.into()),
        ("COALESCE", mode.into()),
        ("COALESCE_SCOPE_CLAIM", "class_id".into()),
        ("RUST_LOG", "warn".into()),
    ]
    .into_iter()
    // `local` is the server's default (both stages), so nothing is set for it.
    .chain((load.moderation == "off").then(|| ("MODERATION", "off".to_owned())))
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// A learner's token, as the host app mints it: `sub`, `aud`, `class_id`, an hour to live.
fn learner_token(class: usize, learner: usize) -> String {
    let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("after 1970").as_secs() + 3600;
    let claims = serde_json::json!({
        "sub": format!("learner-{class}-{learner}"),
        "aud": AUDIENCE,
        "exp": exp,
        "class_id": format!("class-{class}"),
    });
    encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(JWT_SECRET.as_bytes())).expect("a token signs")
}

/// One learner's stream: ms from its request to its first chunk, and whether it completed.
async fn one_learner(address: SocketAddr, token: String) -> Result<(f64, bool), String> {
    let authorization = format!("Bearer {token}");
    let watched = watch(address, QUESTION, &[("authorization", &authorization)]).await?;
    Ok((watched.first_chunk_ms, watched.complete))
}

#[derive(Debug, Default, Clone)]
struct Measured {
    /// Generations the server ran: the demo model's provider requests.
    generations: f64,
    joins: f64,
    cache_hits: f64,
    first_learner_ms_p50: f64,
    first_learner_ms_p99: f64,
    last_learner_ms_p50: f64,
    last_learner_ms_p99: f64,
    /// User + system CPU seconds of the server over the run.
    server_cpu_seconds: f64,
    wall_seconds: f64,
    completed: usize,
    failed: usize,
}

async fn measure(server: &Server, load: &Load) -> Measured {
    let address = address(&server.base);
    // Signed before the clock starts: the host app mints tokens long before a class asks.
    let tokens: Vec<Vec<String>> =
        (0..load.classes).map(|class| (0..load.learners).map(|learner| learner_token(class, learner)).collect()).collect();
    let step = load.spread.checked_div(load.learners.saturating_sub(1) as u32).unwrap_or_default();
    let (cpu0, started) = (cpu_seconds_of(server.pid()), Instant::now());
    let at = tokio::time::Instant::now();
    let mut tasks = Vec::new();
    for (class, tokens) in tokens.into_iter().enumerate() {
        for (learner, token) in tokens.into_iter().enumerate() {
            let when = at + step * learner as u32;
            let task = tokio::spawn(async move {
                tokio::time::sleep_until(when).await;
                tokio::time::timeout(PATIENCE, one_learner(address, token)).await.unwrap_or_else(|_| Err("timed out".into()))
            });
            tasks.push((class, learner, task));
        }
    }
    let (mut firsts, mut lasts, mut result) = (Vec::new(), Vec::new(), Measured::default());
    for (_, learner, task) in tasks {
        match task.await {
            Ok(Ok((first_chunk_ms, complete))) => {
                if learner == 0 {
                    firsts.push(first_chunk_ms);
                }
                if learner == load.learners - 1 {
                    lasts.push(first_chunk_ms);
                }
                if complete {
                    result.completed += 1;
                } else {
                    result.failed += 1;
                }
            }
            Ok(Err(error)) => {
                eprintln!("a learner's stream failed: {error}");
                result.failed += 1;
            }
            Err(_) => result.failed += 1,
        }
    }
    result.wall_seconds = started.elapsed().as_secs_f64();
    let http = http_client();
    // Outcomes are counted as generations end, after their last event is sent.
    if !wait_until_idle(&http, &server.base, Duration::from_secs(30)).await {
        eprintln!("warning: {} still ran generations 30 s after every stream ended", server.base);
    }
    result.server_cpu_seconds = cpu_seconds_of(server.pid()) - cpu0;
    // `+ 0.0`: a counter with no label set yet sums to -0.0.
    result.generations = metric(&http, &server.base, "live_ai_stream_outcomes_total").await + 0.0;
    result.joins = metric(&http, &server.base, "live_ai_coalesce_joins_total").await + 0.0;
    result.cache_hits = metric(&http, &server.base, "live_ai_coalesce_cache_hits_total").await + 0.0;
    let (firsts, lasts) = (sorted(&mut firsts), sorted(&mut lasts));
    (result.first_learner_ms_p50, result.first_learner_ms_p99) = (quantile(firsts, 0.5), quantile(firsts, 0.99));
    (result.last_learner_ms_p50, result.last_learner_ms_p99) = (quantile(lasts, 0.5), quantile(lasts, 0.99));
    result
}

pub async fn main(args: &[String]) {
    let args = Flags::parse(args);
    let binary: PathBuf = args.path("live-ai");
    let load = Load {
        learners: args.get("learners", 30).max(1),
        classes: args.get("classes", 20).max(1),
        spread: Duration::from_millis(args.get("spread-ms", 500)),
        tps: args.get("tps", 20.0),
        first_token_ms: args.get("first-token-ms", 200),
        moderation: match args.get("moderation", "local".to_owned()).as_str() {
            "local" => "local",
            "off" => "off",
            other => panic!("--moderation: local or off, not {other:?}"),
        },
    };
    let runs: usize = args.get("runs", 3);
    let streams = load.learners * load.classes;
    warn_if_few_files(streams * 2);
    println!(
        "classes benchmark: {} learners x {} classes ({streams} streams), a class's learners within {} ms, demo model at {} tokens/s after {} ms, moderation {}, {runs} runs",
        load.learners,
        load.classes,
        load.spread.as_millis(),
        load.tps,
        load.first_token_ms,
        load.moderation
    );
    let mut results: Vec<(&str, Measured)> = Vec::new();
    for run in 0..runs {
        for k in 0..MODES.len() {
            let mode = MODES[(k + run) % MODES.len()];
            let server = Server::start("live-ai", &binary, &env(mode, &load)).await;
            let result = measure(&server, &load).await;
            println!("run {run} coalesce {mode:>3}: {result:?}");
            results.push((mode, result));
            server.stop(Duration::from_secs(10)).await;
        }
    }
    println!("\nmedians over {runs} runs:");
    println!(
        "| coalesce | generations (provider requests) | joins | replays | first learner's first chunk p50 / p99 (ms) | last learner's p50 / p99 (ms) | server CPU (s) | CPU per learner (ms) | completed |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for mode in MODES {
        let of = |f: fn(&Measured) -> f64| median(&results.iter().filter(|(m, _)| *m == mode).map(|(_, r)| f(r)).collect::<Vec<_>>());
        println!(
            "| {mode} | {:.0} | {:.0} | {:.0} | {:.0} / {:.0} | {:.0} / {:.0} | {:.2} | {:.2} | {:.0}/{streams} |",
            of(|r| r.generations),
            of(|r| r.joins),
            of(|r| r.cache_hits),
            of(|r| r.first_learner_ms_p50),
            of(|r| r.first_learner_ms_p99),
            of(|r| r.last_learner_ms_p50),
            of(|r| r.last_learner_ms_p99),
            of(|r| r.server_cpu_seconds),
            of(|r| r.server_cpu_seconds * 1000.0) / streams as f64,
            of(|r| r.completed as f64),
        );
    }
    let failed: usize = results.iter().map(|(_, r)| r.failed).sum();
    if failed > 0 {
        eprintln!("{failed} streams did not complete over all runs");
        std::process::exit(1);
    }
}
