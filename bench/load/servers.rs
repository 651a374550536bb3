//! The servers under test, as child processes on loopback ports: started with the
//! environment a measurement needs, probed through `/proc`, and killed when dropped
//! (so an interrupted or failed run leaves nothing behind).

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

pub struct Server {
    pub name: &'static str,
    pub base: String,
    child: Child,
}

/// A port that was free a moment ago.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("a loopback port").local_addr().unwrap().port()
}

impl Server {
    /// Starts `binary` with only `env` (and `PATH`) on a free loopback port, in the
    /// temporary directory so no `.env` file is read, and waits until it answers
    /// `/healthz`: a developer's settings never leak into a measurement. Its output
    /// is discarded unless `BENCH_SERVER_LOGS` is set.
    pub async fn start(name: &'static str, binary: &Path, env: &[(String, String)]) -> Self {
        let port = free_port();
        let binary = binary.canonicalize().unwrap_or_else(|e| panic!("no server at {}: {e}", binary.display()));
        let mut command = Command::new(&binary);
        command
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .current_dir(std::env::temp_dir())
            .env("HOST", "127.0.0.1")
            .env("PORT", port.to_string())
            // One load generator is one client address: per-learner limits would
            // measure themselves, not the server.
            .env("LIMIT_CONCURRENT_STREAMS", "unlimited")
            .env("LIMIT_STARTS_PER_MINUTE", "unlimited")
            .env("LIMIT_STREAMS_PER_SOCKET", "unlimited")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .kill_on_drop(true);
        if std::env::var_os("BENCH_SERVER_LOGS").is_none() {
            command.stdout(Stdio::null()).stderr(Stdio::null());
        }
        let child = command.spawn().unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        let server = Self { name, base: format!("http://127.0.0.1:{port}"), child };
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        for _ in 0..300 {
            if http.get(format!("{}/healthz", server.base)).send().await.is_ok_and(|r| r.status().is_success()) {
                return server;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{name} did not answer on {} within 30 s", server.base);
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("the server is running")
    }

    /// User + system CPU seconds the process has used so far.
    pub fn cpu_seconds(&self) -> f64 {
        cpu_seconds_of(self.pid())
    }

    /// Stops the server with SIGTERM (a graceful exit, so profilers write their
    /// data), and kills it if it has not exited after `patience`.
    pub async fn stop(mut self, patience: Duration) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status();
        }
        if tokio::time::timeout(patience, self.child.wait()).await.is_err() {
            let _ = self.child.kill().await;
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct Memory {
    pub rss: u64,
    pub peak: u64,
}

pub fn memory_of(pid: u32) -> Memory {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())
    };
    Memory { rss: field("VmRSS:").unwrap_or(0) * 1024, peak: field("VmHWM:").unwrap_or(0) * 1024 }
}

/// CPU seconds (user + system) the process's threads have used so far: the sum of
/// their `schedstat` on-CPU nanoseconds, which is far finer than `stat`'s 10 ms ticks
/// (those are the fallback).
pub fn cpu_seconds_of(pid: u32) -> f64 {
    let from_schedstat = std::fs::read_dir(format!("/proc/{pid}/task")).ok().map(|tasks| {
        tasks
            .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok())
            .filter_map(|line| line.split(' ').next()?.parse::<u64>().ok())
            .sum::<u64>() as f64
            / 1e9
    });
    match from_schedstat {
        Some(seconds) if seconds > 0.0 => seconds,
        _ => {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // Fields after the command name (which may hold spaces) start at `) `.
            let fields: Vec<&str> = stat.rsplit_once(") ").map_or(vec![], |(_, rest)| rest.split(' ').collect());
            let ticks = |n: usize| fields.get(n).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
            // utime and stime are fields 14 and 15 of the whole line, in clock ticks (100/s on Linux).
            (ticks(11) + ticks(12)) / 100.0
        }
    }
}

/// The machine's CPU time from `/proc/stat`: `(busy, all)` in clock ticks, summed
/// over every core; busy is all but idle and I/O wait. Only the first eight
/// fields (user to steal): the guest fields after them are already in user.
fn machine_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else { return (0, 0) };
    let ticks: Vec<u64> = line.split_whitespace().skip(1).take(8).filter_map(|v| v.parse().ok()).collect();
    let all: u64 = ticks.iter().sum();
    let idle = ticks.get(3).unwrap_or(&0) + ticks.get(4).unwrap_or(&0);
    (all - idle, all)
}

/// How busy the whole machine was, every process counted, from one reading to
/// another: 100 % is every core busy the whole time, where work queues for a core.
pub struct MachineBusy((u64, u64));

impl MachineBusy {
    pub fn start() -> Self {
        Self(machine_ticks())
    }

    /// Percent of all cores' time spent busy since `start`.
    pub fn percent(&self) -> f64 {
        let ((busy_then, all_then), (busy, all)) = (self.0, machine_ticks());
        100.0 * busy.saturating_sub(busy_then) as f64 / all.saturating_sub(all_then).max(1) as f64
    }
}

/// The machine's 1-minute load average, as `uptime` shows it.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg").map(|l| l.split(' ').take(3).collect::<Vec<_>>().join(" ")).unwrap_or_default()
}

/// The kernel's count of connections refused by a full accept queue (`ListenOverflows`): a
/// connection burst larger than the accept backlog shows here, and costs the client
/// a SYN retransmit (about a second).
pub fn listen_overflows() -> u64 {
    let text = std::fs::read_to_string("/proc/net/netstat").unwrap_or_default();
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else { return 0 };
    names.split(' ').zip(values.split(' ')).filter(|(n, _)| *n == "ListenOverflows").filter_map(|(_, v)| v.parse::<u64>().ok()).sum()
}

/// A metric's value from a `live-ai` `/metrics` page, summed over its label sets.
pub async fn metric(http: &reqwest::Client, base: &str, name: &str) -> f64 {
    let Ok(response) = http.get(format!("{base}/metrics")).send().await else { return f64::NAN };
    let text = response.text().await.unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with(&format!("{name} ")) || l.starts_with(&format!("{name}{{")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Waits (up to `patience`) until a `live-ai` runs no generation.
pub async fn wait_until_idle(http: &reqwest::Client, base: &str, patience: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + patience;
    while tokio::time::Instant::now() < deadline {
        if metric(http, base, "live_ai_active_streams").await == 0.0 {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}
