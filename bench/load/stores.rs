//! Issue 7's benchmark in one command: the memory store against the Redis store at
//! the same paced load, with the readers of the Redis runs on another `live-ai`
//! process than the generator — `POST /api/streams` on process A, `GET
//! /api/streams/{id}/events` on process B, both on one Redis under a fresh
//! `REDIS_KEY_PREFIX`. The memory store cannot share streams between processes, so
//! its runs start and read on one process: that is all it can do.
//!
//! Redis commands per appended event come from `INFO commandstats`, reset with
//! `CONFIG RESETSTAT` once both processes are up, read after the run: every command
//! Redis executed (commands run inside a Lua script count too, and the harness's own
//! `CONFIG`/`INFO` do not), over the events appended, which is the events the readers
//! received when every stream completed with one reader each. The stats are
//! server-wide, so another client of the same Redis would count too: the number of
//! other connected clients is reported. A last, smaller run samples `MONITOR`,
//! keeping the lines that name this run's key prefix, to split the commands into
//! round trips the processes sent and commands run inside scripts.
//!
//! Around each mode's streams the harness reads how busy the whole machine was
//! (`/proc/stat`, every process counted) and what the load generator itself spent:
//! the lag ratio means little once a mode needs nearly all the cores, because the
//! extra processes of Redis mode then wait for a core at every hop.
//!
//! With `--spread K` the Redis runs use K processes instead, each starting a
//! K-th of the streams and reading a K-th, started on the others (issue 22,
//! item 2): each process's bytes received from Redis are read from the kernel's
//! TCP counters (`ss -tin`, `bytes_received` of its connections to Redis's port;
//! Redis 7.0's `CLIENT LIST` does not count them), and shown as a share of all
//! the processes' bytes — with every stream read on one process, about what one
//! process received when every process was sent every event.
//!
//! With `--cluster` the Redis-mode processes share a private Redis Cluster of
//! three primaries (no replicas) started for the benchmark on free loopback
//! ports (`REDIS_CLUSTER_URLS`; the tests' own cluster, `test_server.rs`) instead
//! of the Redis at `--redis-url`: commands are summed over every node's `INFO
//! commandstats`, Redis CPU is shown per node, and a process's bytes received
//! are summed over its connections to every node. The nodes stop with the
//! benchmark.
//!
//! The stream resume grace stays at its default (30 s); B's readers keep A's
//! generations alive through the presence keys, and the endings column would show
//! a generation cancelled as abandoned.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use redis::AsyncCommands;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use super::lag::{self, LagConfig, LagResult, Route};
use super::perf::live_ai_env;
use super::servers::{cpu_seconds_of, load_average, MachineBusy, Server};
use super::stats::median;
use super::test_server::TestCluster;
use super::Flags;

/// The Redis the Redis-mode processes share: the machine's one node, or a
/// cluster of three primaries of the benchmark's own (`--cluster`).
struct SharedRedis {
    /// Each node's URL, for its own stats.
    nodes: Vec<String>,
    /// The processes' setting that names it.
    setting: (&'static str, String),
    /// The private cluster, stopped when dropped.
    cluster: Option<TestCluster>,
}

impl SharedRedis {
    fn node(url: &str) -> Self {
        Self { nodes: vec![url.to_owned()], setting: ("REDIS_URL", url.to_owned()), cluster: None }
    }

    fn cluster() -> Self {
        let cluster = TestCluster::with_replicas(0);
        let nodes = cluster.ports.iter().map(|port| format!("redis://127.0.0.1:{port}")).collect();
        Self { nodes, setting: ("REDIS_CLUSTER_URLS", cluster.urls()), cluster: Some(cluster) }
    }

    fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|url| url.rsplit(':').next().and_then(|p| p.trim_end_matches('/').parse().ok()).unwrap_or(6379)).collect()
    }

    async fn reset_stats(&self) {
        for url in &self.nodes {
            let _: () = redis::cmd("CONFIG")
                .arg("RESETSTAT")
                .query_async(&mut redis_connection(url).await)
                .await
                .expect("CONFIG RESETSTAT answers");
        }
    }

    /// Calls per command name since the reset, summed over the nodes.
    async fn commands(&self) -> BTreeMap<String, u64> {
        let mut all = BTreeMap::new();
        for url in &self.nodes {
            for (name, calls) in command_calls(&info(&mut redis_connection(url).await, "commandstats").await) {
                *all.entry(name).or_default() += calls;
            }
        }
        all
    }

    /// Each node's CPU seconds so far.
    async fn cpu(&self) -> Vec<f64> {
        let mut cpu = Vec::new();
        for url in &self.nodes {
            cpu.push(redis_cpu(&info(&mut redis_connection(url).await, "cpu").await));
        }
        cpu
    }

    /// Bytes received so far, per process id, over its connections to every node.
    fn received(&self) -> BTreeMap<u32, u64> {
        let mut all = BTreeMap::new();
        for port in self.ports() {
            for (pid, bytes) in received_from_port(port) {
                *all.entry(pid).or_default() += bytes;
            }
        }
        all
    }

    /// Deletes a run's keys on one node; a cluster goes with the benchmark.
    async fn clean_up(&self, prefix: &str) {
        if self.cluster.is_none() {
            clean_up(&mut redis_connection(&self.nodes[0]).await, prefix).await;
        }
    }
}

fn minus(after: &[f64], before: &[f64]) -> Vec<f64> {
    after.iter().zip(before).map(|(a, b)| a - b).collect()
}

struct StoresConfig {
    runs: usize,
    lag: LagConfig,
    redis_url: String,
    redis: SharedRedis,
    live_ai: PathBuf,
    monitor_streams: usize,
    /// Tokio workers of each Redis-mode process (`TOKIO_WORKER_THREADS`); 0 keeps
    /// tokio's default, one per core.
    redis_workers: usize,
    /// Tokio workers of the reading process B alone (`--reader-workers`); 0 keeps
    /// `redis_workers`. Shows which process's scheduling a setting's lag comes from.
    reader_workers: usize,
    /// Redis mode on one process (`--one-process`): A generates and reads, no B.
    /// Its append path without the announcements' hop to another process.
    one_process: bool,
    /// Processes sharing the streams (`--spread K`); 0 for the A → B runs.
    spread: usize,
    /// `COALESCE` of every process (`--coalesce on|off`); the server's default if unset.
    coalesce: Option<String>,
}

/// One run of `--spread K`.
#[derive(Default)]
struct SpreadRun {
    lag: LagResult,
    machine: Machine,
    commands: BTreeMap<String, u64>,
    /// Bytes each process received from Redis during the run.
    received: Vec<u64>,
    redis_cpu_seconds: f64,
    /// Each node's share of it.
    redis_cpu_per_node: Vec<f64>,
    live_ai_cpu_seconds: f64,
}

impl SpreadRun {
    fn commands_per_event(&self) -> f64 {
        self.commands.values().sum::<u64>() as f64 / self.lag.events.max(1) as f64
    }

    /// Each process's share of the bytes all of them received.
    fn shares(&self) -> Vec<f64> {
        let total = self.received.iter().sum::<u64>().max(1) as f64;
        self.received.iter().map(|bytes| *bytes as f64 / total).collect()
    }
}

/// Bytes received so far, per process id, over its TCP connections to `port`,
/// from the kernel's counters (`ss -tinp`).
fn received_from_port(port: u16) -> BTreeMap<u32, u64> {
    let output = std::process::Command::new("ss")
        .args(["-tinpH", "state", "established", &format!("( dport = :{port} )")])
        .output()
        .expect("ss (iproute2) is installed");
    let text = String::from_utf8_lossy(&output.stdout);
    let mut received = BTreeMap::new();
    let mut pid = None;
    for line in text.lines() {
        if let Some(at) = line.find("pid=") {
            pid = line[at + 4..].split(|c: char| !c.is_ascii_digit()).next().and_then(|p| p.parse::<u32>().ok());
        } else if let (Some(pid), Some(at)) = (pid, line.find("bytes_received:")) {
            let bytes = line[at + 15..].split(' ').next().and_then(|b| b.parse::<u64>().ok()).unwrap_or(0);
            *received.entry(pid).or_insert(0) += bytes;
        }
    }
    received
}

async fn spread_run(config: &StoresConfig, label: &str) -> SpreadRun {
    let prefix = prefix(label);
    let env = redis_env(config, &prefix);
    let mut servers = Vec::new();
    for _ in 0..config.spread {
        servers.push(Server::start("live-ai (spread)", &config.live_ai, &env).await);
    }
    config.redis.reset_stats().await;
    let cpu_before = config.redis.cpu().await;
    let cpu: f64 = servers.iter().map(Server::cpu_seconds).sum();
    let before = config.redis.received();
    let route = Route::Spread { bases: servers.iter().map(|s| s.base.clone()).collect() };
    let (lag, machine) = streams(&route, &config.lag).await;
    let after = config.redis.received();
    let live_ai_cpu_seconds = servers.iter().map(Server::cpu_seconds).sum::<f64>() - cpu;
    let commands = config.redis.commands().await;
    let redis_cpu_per_node = minus(&config.redis.cpu().await, &cpu_before);
    let received = servers
        .iter()
        .map(|s| after.get(&s.pid()).copied().unwrap_or(0).saturating_sub(before.get(&s.pid()).copied().unwrap_or(0)))
        .collect();
    for server in servers {
        server.stop(Duration::from_secs(10)).await;
    }
    config.redis.clean_up(&prefix).await;
    let redis_cpu_seconds = redis_cpu_per_node.iter().sum();
    SpreadRun { lag, machine, commands, received, redis_cpu_seconds, redis_cpu_per_node, live_ai_cpu_seconds }
}

fn report_spread(config: &StoresConfig, runs: &[SpreadRun]) {
    let n = runs.len();
    println!();
    for (i, r) in runs.iter().enumerate() {
        println!("- run {}: endings {:?}; bytes received per process {:?}", i + 1, r.lag.endings, r.received);
        for error in &r.lag.first_errors {
            println!("  - error: {error}");
        }
    }
    println!();
    let headers: Vec<String> = (1..=n).map(|i| format!("run {i}")).collect();
    println!("| measure ({} processes) | {} | median |", config.spread, headers.join(" | "));
    println!("|---|{}---|", "---|".repeat(n));
    let row = |label: &str, digits: usize, f: &dyn Fn(&SpreadRun) -> f64| {
        let values: Vec<f64> = runs.iter().map(f).collect();
        let cells: Vec<String> = values.iter().map(|v| format!("{v:.digits$}")).collect();
        println!("| {label} | {} | **{:.digits$}** |", cells.join(" | "), median(&values));
    };
    row("completed streams", 0, &|r| r.lag.completed as f64);
    row("events/s", 0, &|r| r.lag.events_per_second());
    row("client lag p50 (ms)", 2, &|r| r.lag.lag_ms_p50);
    row("client lag p99 (ms)", 2, &|r| r.lag.lag_ms_p99);
    row("largest share of all processes' received bytes (%)", 1, &|r| 100.0 * r.shares().iter().cloned().fold(0.0, f64::max));
    row("smallest share (%)", 1, &|r| 100.0 * r.shares().iter().cloned().fold(1.0, f64::min));
    row("bytes received per process (MB, mean)", 2, &|r| r.received.iter().sum::<u64>() as f64 / r.received.len().max(1) as f64 / 1e6);
    row("live-ai CPU seconds (all processes)", 2, &|r| r.live_ai_cpu_seconds);
    row("Redis CPU seconds", 2, &|r| r.redis_cpu_seconds);
    for node in 0..nodes(config) {
        row(&format!("Redis CPU seconds, node {}", node + 1), 2, &|r| r.redis_cpu_per_node.get(node).copied().unwrap_or(0.0));
    }
    row("CPU µs per event (all processes + Redis)", 1, &|r| {
        1e6 * (r.live_ai_cpu_seconds + r.redis_cpu_seconds) / r.lag.events.max(1) as f64
    });
    row("machine busy while streaming (% of all cores)", 0, &|r| r.machine.busy_percent);
    row("Redis commands per appended event (INFO commandstats, all nodes)", 2, &|r| r.commands_per_event());
    println!();
    let mut names: Vec<&String> = runs.iter().flat_map(|r| r.commands.keys()).collect();
    names.sort();
    names.dedup();
    println!("| command, per appended event | {} | median |", headers.join(" | "));
    println!("|---|{}---|", "---|".repeat(n));
    for name in names {
        let values: Vec<f64> = runs.iter().map(|r| *r.commands.get(name).unwrap_or(&0) as f64 / r.lag.events.max(1) as f64).collect();
        let cells: Vec<String> = values.iter().map(|v| format!("{v:.3}")).collect();
        println!("| {name} | {} | {:.3} |", cells.join(" | "), median(&values));
    }
}

/// The machine around one mode's streams: how near its two cores were to full,
/// and what the load generator itself spent of them (the same in both modes).
#[derive(Default)]
struct Machine {
    busy_percent: f64,
    client_cpu_seconds: f64,
}

/// Runs the streams of `route`, reading the machine around them.
async fn streams(route: &Route, config: &LagConfig) -> (LagResult, Machine) {
    let (busy, client) = (MachineBusy::start(), cpu_seconds_of(std::process::id()));
    let result = lag::run(route, config).await;
    let machine = Machine { busy_percent: busy.percent(), client_cpu_seconds: cpu_seconds_of(std::process::id()) - client };
    (result, machine)
}

#[derive(Default)]
struct RedisRun {
    lag: LagResult,
    machine: Machine,
    /// Calls per command name during the run.
    commands: BTreeMap<String, u64>,
    other_clients: i64,
    redis_cpu_seconds: f64,
    /// Each node's share of it.
    redis_cpu_per_node: Vec<f64>,
    live_ai_cpu_seconds: f64,
    /// Bytes A and B received from Redis during the run.
    received: [u64; 2],
}

/// What `MONITOR` showed of one run: commands by name, per source.
struct Monitored {
    /// Sent by the `live-ai` processes: one round trip each (or part of a pipeline).
    sent: BTreeMap<String, u64>,
    /// Run by Redis inside Lua scripts.
    scripted: BTreeMap<String, u64>,
    /// Events appended during the run.
    events: u64,
}

#[derive(Default)]
struct Run {
    load: String,
    memory: MemoryRun,
    redis: RedisRun,
}

impl RedisRun {
    fn commands_per_event(&self) -> f64 {
        self.commands.values().sum::<u64>() as f64 / self.lag.events.max(1) as f64
    }

    /// Both processes' CPU and Redis's, per delivered event.
    fn cpu_us_per_event(&self) -> f64 {
        1e6 * (self.live_ai_cpu_seconds + self.redis_cpu_seconds) / self.lag.events.max(1) as f64
    }
}

fn prefix(run: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("live-ai-bench-{}-{run}-{nanos}", std::process::id())
}

fn server_env(config: &StoresConfig, store: &str, extra: &[(&str, String)]) -> Vec<(String, String)> {
    let max = (config.lag.streams * 2).to_string();
    let mut all = vec![("STREAM_STORE", store.to_owned()), ("MAX_CONCURRENT_STREAMS", max)];
    if let Some(coalesce) = &config.coalesce {
        all.push(("COALESCE", coalesce.clone()));
    }
    all.extend(extra.iter().cloned());
    live_ai_env(config.lag.tokens_per_second, config.lag.first_token, &all)
}

/// Nodes of the shared Redis (1, or 3 with `--cluster`).
fn nodes(config: &StoresConfig) -> usize {
    if config.redis.nodes.len() > 1 {
        config.redis.nodes.len()
    } else {
        0
    }
}

/// The environment of the Redis-mode processes under `prefix`.
fn redis_env(config: &StoresConfig, prefix: &str) -> Vec<(String, String)> {
    let mut extra = vec![config.redis.setting.clone(), ("REDIS_KEY_PREFIX", prefix.to_owned())];
    if config.redis_workers > 0 {
        extra.push(("TOKIO_WORKER_THREADS", config.redis_workers.to_string()));
    }
    server_env(config, "redis", &extra)
}

/// B's environment: `env` with its own worker count, if one is set.
fn reader_env(config: &StoresConfig, mut env: Vec<(String, String)>) -> Vec<(String, String)> {
    if config.reader_workers > 0 {
        env.retain(|(name, _)| name != "TOKIO_WORKER_THREADS");
        env.push(("TOKIO_WORKER_THREADS".to_owned(), config.reader_workers.to_string()));
    }
    env
}

async fn redis_connection(url: &str) -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(url).unwrap_or_else(|e| panic!("REDIS_URL {url}: {e}"));
    client.get_multiplexed_async_connection().await.unwrap_or_else(|e| panic!("cannot reach Redis at {url}: {e}"))
}

async fn info(conn: &mut redis::aio::MultiplexedConnection, section: &str) -> String {
    redis::cmd("INFO").arg(section).query_async(conn).await.expect("INFO answers")
}

fn info_field(info: &str, name: &str) -> Option<f64> {
    info.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(':')?.trim().parse().ok())
}

/// `cmdstat_<name>:calls=<n>,…` lines, without the harness's own commands.
fn command_calls(info: &str) -> BTreeMap<String, u64> {
    info.lines()
        .filter_map(|line| {
            let (name, rest) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest.split(',').find_map(|f| f.strip_prefix("calls="))?.parse().ok()?;
            Some((name.to_owned(), calls))
        })
        .filter(|(name, _)| !(name == "info" || name.starts_with("config|")))
        .collect()
}

fn redis_cpu(info: &str) -> f64 {
    info_field(info, "used_cpu_user").unwrap_or(0.0) + info_field(info, "used_cpu_sys").unwrap_or(0.0)
}

/// Deletes this run's keys (they would expire anyway, but the Redis is shared).
async fn clean_up(conn: &mut redis::aio::MultiplexedConnection, prefix: &str) {
    let keys: Vec<String> = match conn.scan_match::<_, String>(format!("{prefix}:*")).await {
        Ok(iter) => {
            use futures::StreamExt;
            iter.filter_map(|k| async move { k.ok() }).collect().await
        }
        Err(_) => return,
    };
    for batch in keys.chunks(500) {
        let _: Result<(), _> = redis::cmd("UNLINK").arg(batch).query_async(conn).await;
    }
}

#[derive(Default)]
struct MemoryRun {
    lag: LagResult,
    machine: Machine,
    live_ai_cpu_seconds: f64,
}

impl MemoryRun {
    fn cpu_us_per_event(&self) -> f64 {
        1e6 * self.live_ai_cpu_seconds / self.lag.events.max(1) as f64
    }
}

async fn memory_run(config: &StoresConfig) -> MemoryRun {
    let server = Server::start("live-ai (memory)", &config.live_ai, &server_env(config, "memory", &[])).await;
    let cpu = server.cpu_seconds();
    let route = Route::Split { create: server.base.clone(), read: server.base.clone() };
    let (lag, machine) = streams(&route, &config.lag).await;
    let live_ai_cpu_seconds = server.cpu_seconds() - cpu;
    server.stop(Duration::from_secs(10)).await;
    MemoryRun { lag, machine, live_ai_cpu_seconds }
}

async fn redis_run(config: &StoresConfig, label: &str) -> RedisRun {
    let prefix = prefix(label);
    let env = redis_env(config, &prefix);
    let generator = Server::start("live-ai A (generates)", &config.live_ai, &env).await;
    let reader =
        if config.one_process { None } else { Some(Server::start("live-ai B (reads)", &config.live_ai, &reader_env(config, env)).await) };
    let servers: Vec<&Server> = [Some(&generator), reader.as_ref()].into_iter().flatten().collect();
    config.redis.reset_stats().await;
    let clients = info(&mut redis_connection(&config.redis.nodes[0]).await, "clients").await;
    let cpu_before = config.redis.cpu().await;
    let cpu: f64 = servers.iter().map(|s| s.cpu_seconds()).sum();
    let before = config.redis.received();
    let route = match &reader {
        Some(reader) => Route::Split { create: generator.base.clone(), read: reader.base.clone() },
        None => Route::OneShot { base: generator.base.clone() },
    };
    let (lag, machine) = streams(&route, &config.lag).await;
    let after = config.redis.received();
    let live_ai_cpu_seconds = servers.iter().map(|s| s.cpu_seconds()).sum::<f64>() - cpu;
    let ours = 1 + 2 * servers.len() as i64;
    let received_by = |s: &Server| after.get(&s.pid()).copied().unwrap_or(0).saturating_sub(before.get(&s.pid()).copied().unwrap_or(0));
    let received = [received_by(&generator), reader.as_ref().map_or(0, received_by)];
    let commands = config.redis.commands().await;
    let redis_cpu_per_node = minus(&config.redis.cpu().await, &cpu_before);
    generator.stop(Duration::from_secs(10)).await;
    if let Some(reader) = reader {
        reader.stop(Duration::from_secs(10)).await;
    }
    config.redis.clean_up(&prefix).await;
    // Ours: each process's command connection and subscription, and this one
    // (on one node; a cluster is the benchmark's own).
    let other_clients =
        if config.redis.cluster.is_some() { 0 } else { info_field(&clients, "connected_clients").unwrap_or(0.0) as i64 - ours };
    let redis_cpu_seconds = redis_cpu_per_node.iter().sum();
    RedisRun { lag, machine, commands, other_clients, redis_cpu_seconds, redis_cpu_per_node, live_ai_cpu_seconds, received }
}

/// Commands naming the run's key prefix seen by `MONITOR` during a small split run.
async fn monitor_run(config: &StoresConfig) -> Option<Monitored> {
    let address = config.redis_url.trim_start_matches("redis://").split('/').next().unwrap_or("127.0.0.1:6379").to_owned();
    let prefix = prefix("monitor");
    let env = redis_env(config, &prefix);
    let generator = Server::start("live-ai A (generates)", &config.live_ai, &env).await;
    let reader = Server::start("live-ai B (reads)", &config.live_ai, &env).await;
    let mut monitor = tokio::net::TcpStream::connect(&address).await.ok()?;
    monitor.write_all(b"MONITOR\r\n").await.ok()?;
    let mut lines = BufReader::new(monitor).lines();
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let counting = tokio::spawn({
        let prefix = prefix.clone();
        async move {
            let (mut sent, mut scripted) = (BTreeMap::<String, u64>::new(), BTreeMap::<String, u64>::new());
            loop {
                let line = tokio::select! {
                    _ = &mut stopped => break,
                    line = lines.next_line() => match line {
                        Ok(Some(line)) => line,
                        _ => break,
                    },
                };
                // `+<time> [<db> <client address or lua>] "<COMMAND>" "<arg>" …`
                let Some((source, command)) = line.split_once("] ") else { continue };
                if !line.contains(&prefix) {
                    continue;
                }
                let name = command.split('"').nth(1).unwrap_or("?").to_lowercase();
                let bucket = if source.ends_with(" lua") { &mut scripted } else { &mut sent };
                *bucket.entry(name).or_default() += 1;
            }
            (sent, scripted)
        }
    });
    let route = Route::Split { create: generator.base.clone(), read: reader.base.clone() };
    let small = LagConfig { streams: config.monitor_streams, ..config.lag.clone() };
    let result = lag::run(&route, &small).await;
    generator.stop(Duration::from_secs(10)).await;
    reader.stop(Duration::from_secs(10)).await;
    // Give the monitor a moment for the last lines, then stop it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _ = stop.send(());
    let (sent, scripted) = counting.await.ok()?;
    let mut conn = redis_connection(&config.redis_url).await;
    clean_up(&mut conn, &prefix).await;
    Some(Monitored { sent, scripted, events: result.events })
}

fn report(config: &StoresConfig, runs: &[Run], monitored: Option<Monitored>) {
    let redis = if config.one_process { "redis (A alone)" } else { "redis (A → B)" };
    let n = runs.len();
    println!();
    for (i, r) in runs.iter().enumerate() {
        println!(
            "- run {}: load before {}; memory endings {:?}; redis endings {:?}; other Redis clients during the run: {}",
            i + 1,
            r.load,
            r.memory.lag.endings,
            r.redis.lag.endings,
            r.redis.other_clients
        );
        for error in r.memory.lag.first_errors.iter().chain(&r.redis.lag.first_errors) {
            println!("  - error: {error}");
        }
    }
    println!();
    let headers: Vec<String> = (1..=n).map(|i| format!("run {i}")).collect();
    println!("| measure | store | {} | median |", headers.join(" | "));
    println!("|---|---|{}---|", "---|".repeat(n));
    let row = |label: &str, store: &str, digits: usize, f: &dyn Fn(&Run) -> f64| {
        let values: Vec<f64> = runs.iter().map(f).collect();
        let cells: Vec<String> = values.iter().map(|v| format!("{v:.digits$}")).collect();
        println!("| {label} | {store} | {} | **{:.digits$}** |", cells.join(" | "), median(&values));
    };
    let both = |label: &str, digits: usize, f: &dyn Fn(&LagResult) -> f64| {
        row(label, "memory (1 process)", digits, &|r| f(&r.memory.lag));
        row(label, redis, digits, &|r| f(&r.redis.lag));
    };
    both("completed streams", 0, &|l| l.completed as f64);
    both("events/s", 0, &|l| l.events_per_second());
    both("client lag p50 (ms)", 2, &|l| l.lag_ms_p50);
    both("client lag p90 (ms)", 2, &|l| l.lag_ms_p90);
    both("client lag p99 (ms)", 2, &|l| l.lag_ms_p99);
    row("live-ai CPU seconds (all processes)", "memory (1 process)", 2, &|r| r.memory.live_ai_cpu_seconds);
    row("live-ai CPU seconds (all processes)", redis, 2, &|r| r.redis.live_ai_cpu_seconds);
    row("Redis CPU seconds", redis, 2, &|r| r.redis.redis_cpu_seconds);
    for node in 0..nodes(config) {
        row(&format!("Redis CPU seconds, node {}", node + 1), redis, 2, &|r| r.redis.redis_cpu_per_node.get(node).copied().unwrap_or(0.0));
    }
    row("CPU µs per event (live-ai processes + Redis)", "memory (1 process)", 1, &|r| r.memory.cpu_us_per_event());
    row("CPU µs per event (live-ai processes + Redis)", redis, 1, &|r| r.redis.cpu_us_per_event());
    row("load generator CPU seconds", "memory (1 process)", 2, &|r| r.memory.machine.client_cpu_seconds);
    row("load generator CPU seconds", redis, 2, &|r| r.redis.machine.client_cpu_seconds);
    row("machine busy while streaming (% of all cores)", "memory (1 process)", 0, &|r| r.memory.machine.busy_percent);
    row("machine busy while streaming (% of all cores)", redis, 0, &|r| r.redis.machine.busy_percent);
    row("Redis commands per appended event (INFO commandstats, all nodes)", redis, 2, &|r| r.redis.commands_per_event());
    row("bytes received from Redis, A (MB)", redis, 2, &|r| r.redis.received[0] as f64 / 1e6);
    if !config.one_process {
        row("bytes received from Redis, B (MB)", redis, 2, &|r| r.redis.received[1] as f64 / 1e6);
    }
    row("lag p99 redis / memory", "", 1, &|r| r.redis.lag.lag_ms_p99 / r.memory.lag.lag_ms_p99);
    row("CPU per event redis / memory", "", 2, &|r| r.redis.cpu_us_per_event() / r.memory.cpu_us_per_event());
    println!();
    let mut names: Vec<&String> = runs.iter().flat_map(|r| r.redis.commands.keys()).collect();
    names.sort();
    names.dedup();
    println!("Redis commands per appended event, by command (INFO commandstats; includes commands run inside Lua scripts):");
    println!();
    println!("| command | {} | median |", headers.join(" | "));
    println!("|---|{}---|", "---|".repeat(n));
    for name in names {
        let values: Vec<f64> =
            runs.iter().map(|r| *r.redis.commands.get(name).unwrap_or(&0) as f64 / r.redis.lag.events.max(1) as f64).collect();
        let cells: Vec<String> = values.iter().map(|v| format!("{v:.3}")).collect();
        println!("| {name} | {} | {:.3} |", cells.join(" | "), median(&values));
    }
    if let Some(Monitored { sent, scripted, events }) = monitored {
        println!();
        println!(
            "MONITOR sample: {} streams × {} tok/s, {events} events appended; commands naming the run's key prefix, per appended event:",
            config.monitor_streams, config.lag.tokens_per_second
        );
        println!();
        println!("| command | sent by live-ai (round trips) | run inside Lua scripts |");
        println!("|---|---|---|");
        let mut names: Vec<&String> = sent.keys().chain(scripted.keys()).collect();
        names.sort();
        names.dedup();
        let per = |map: &BTreeMap<String, u64>, name: &String| *map.get(name).unwrap_or(&0) as f64 / events.max(1) as f64;
        for name in names {
            println!("| {name} | {:.3} | {:.3} |", per(&sent, name), per(&scripted, name));
        }
        let total = |map: &BTreeMap<String, u64>| map.values().sum::<u64>() as f64 / events.max(1) as f64;
        println!("| **total** | **{:.2}** | **{:.2}** |", total(&sent), total(&scripted));
    }
}

/// `load stores --live-ai BIN [--runs 3] [--streams 1000] [--tps 50]
/// [--first-token-ms 200] [--redis-url redis://127.0.0.1:6379] [--monitor-streams 100]
/// [--redis-workers 0] [--reader-workers 0] [--one-process] [--spread 0] [--cluster] [--coalesce on|off]`
pub async fn main(args: &[String]) {
    let flags = Flags::parse(args);
    let redis_url = flags.get("redis-url", "redis://127.0.0.1:6379".to_owned());
    let redis = if flags.get("cluster", false) { SharedRedis::cluster() } else { SharedRedis::node(&redis_url) };
    let config = StoresConfig {
        runs: flags.get("runs", 3),
        lag: LagConfig {
            streams: flags.get("streams", 1000),
            tokens_per_second: flags.get("tps", 50.0),
            first_token: Duration::from_millis(flags.get("first-token-ms", 200)),
            patience: Duration::from_secs(flags.get("patience-seconds", 120)),
            stagger: Duration::from_millis(flags.get("stagger-ms", 0)),
        },
        redis_url,
        redis,
        live_ai: flags.path("live-ai"),
        // `MONITOR` watches one node, and its small run is always A → B.
        monitor_streams: if flags.get("cluster", false) || flags.get("one-process", false) { 0 } else { flags.get("monitor-streams", 100) },
        redis_workers: flags.get("redis-workers", 0),
        reader_workers: flags.get("reader-workers", 0),
        one_process: flags.get("one-process", false),
        spread: flags.get("spread", 0),
        coalesce: Some(flags.get("coalesce", String::new())).filter(|c| !c.is_empty()),
    };
    let host = config.redis_url.trim_start_matches("redis://");
    assert!(
        host.starts_with("127.0.0.1:") || host.starts_with("localhost:"),
        "the bench uses a loopback Redis only, not {}",
        config.redis_url
    );
    super::warn_if_few_files(config.lag.streams * 2);
    println!(
        "bench stores: {} runs; {} streams × {} tok/s (first token after {} ms; starts spread over {} ms); Redis {}; workers per Redis-mode process: {}{}; COALESCE {}{}",
        config.runs,
        config.lag.streams,
        config.lag.tokens_per_second,
        config.lag.first_token.as_millis(),
        config.lag.stagger.as_millis(),
        if config.redis.cluster.is_some() {
            format!("cluster of 3 primaries at {}", config.redis.setting.1)
        } else {
            config.redis_url.clone()
        },
        if config.redis_workers > 0 { config.redis_workers.to_string() } else { "one per core".to_owned() },
        if config.reader_workers > 0 { format!(" (B: {})", config.reader_workers) } else { String::new() },
        config.coalesce.as_deref().unwrap_or("(default)"),
        if config.one_process { "; Redis mode on one process (A reads its own streams)" } else { "" }
    );
    if config.spread > 0 {
        let mut runs = Vec::new();
        for index in 0..config.runs {
            eprintln!("spread run {} of {} (load {})", index + 1, config.runs, load_average());
            let run = spread_run(&config, &format!("spread{index}")).await;
            eprintln!("  {:?} received {:?} commands {:?}", run.lag, run.received, run.commands);
            runs.push(run);
        }
        report_spread(&config, &runs);
        return;
    }
    let mut runs = Vec::new();
    for index in 0..config.runs {
        eprintln!("run {} of {} (load {})", index + 1, config.runs, load_average());
        let mut run = Run { load: load_average(), ..Run::default() };
        let memory_first = index % 2 == 0;
        if memory_first {
            run.memory = memory_run(&config).await;
        }
        run.redis = redis_run(&config, &format!("run{index}")).await;
        if !memory_first {
            run.memory = memory_run(&config).await;
        }
        eprintln!("  memory: {:?}", run.memory.lag);
        eprintln!("  redis: {:?} commands {:?}", run.redis.lag, run.redis.commands);
        runs.push(run);
    }
    let monitored = if config.monitor_streams > 0 { monitor_run(&config).await } else { None };
    report(&config, &runs, monitored);
}
