//! The load generator of the benchmarks in bench/ (results in bench/RESULTS.md):
//!
//! - `load lag URL [STREAMS] [TPS] [FIRST_TOKEN_MS]`: N paced streams against one
//!   running `live-ai`, delivery lag percentiles (bench/load.sh, `make bench-load`);
//! - `load perf --live-ai BIN --floor BIN …`: issue 10's side-by-side benchmark of
//!   `live-ai` and the floor (bench/perf.sh, `make bench-perf`);
//! - `load stores --live-ai BIN …`: issue 7's memory vs Redis store benchmark
//!   (bench/stores.sh, `make bench-stores`);
//! - `load moderation --live-ai BIN …`: issue 21's cost of moderation, off
//!   against the local filter and a 50 ms remote moderator (bench/moderation.sh);
//! - `load otel --live-ai BIN …`: issue 24's cost of OpenTelemetry export, off
//!   against sampling 1.0 and 0.1, to a sink in this process (bench/otel.sh);
//!   `load otel-sink`: that sink alone, until killed (bench/otel-instructions.sh);
//! - `load classes --live-ai BIN …`: issue 23's class asking at once, coalescing
//!   on against off (bench/classes.sh);
//! - `load burst|unpaced|streams|replay URL …`: one measurement against a running
//!   server (bench/profile.sh runs them under profilers);
//! - `load massif FILE STREAMS`: a massif heap profile's peak, by owner.
//!
//! Every measurement stays on loopback, is bounded in count and time, and kills the
//! servers it started when it ends.

#[path = "load/burst.rs"]
mod burst;
#[path = "load/classes.rs"]
mod classes;
#[path = "load/http.rs"]
mod http;
#[path = "load/lag.rs"]
mod lag;
#[path = "load/massif.rs"]
mod massif;
#[path = "load/moderation.rs"]
mod moderation;
#[path = "load/otel.rs"]
mod otel;
#[path = "load/perf.rs"]
mod perf;
#[path = "load/replay.rs"]
mod replay;
#[path = "load/servers.rs"]
mod servers;
#[path = "load/sse.rs"]
mod sse;
#[path = "load/stats.rs"]
mod stats;
#[path = "load/stores.rs"]
mod stores;
#[path = "load/unpaced.rs"]
mod unpaced;
// The tests' private Redis Cluster, shared by path (`load stores --cluster`).
#[allow(dead_code)]
#[path = "../backend/src/ai/streaming/store/redis/test_server.rs"]
mod test_server;

use std::collections::HashMap;
use std::path::PathBuf;
use std::str::FromStr;

/// `--name value` flags; a `--name` followed by another flag (or nothing) is `true`.
pub struct Flags(HashMap<String, String>);

impl Flags {
    pub fn parse(args: &[String]) -> Self {
        let mut flags = HashMap::new();
        let mut args = args.iter().peekable();
        while let Some(arg) = args.next() {
            let name = arg.strip_prefix("--").unwrap_or_else(|| panic!("expected a --flag, got {arg:?}"));
            let value = match args.peek() {
                Some(next) if !next.starts_with("--") => args.next().expect("peeked").clone(),
                _ => "true".to_owned(),
            };
            flags.insert(name.to_owned(), value);
        }
        Self(flags)
    }

    pub fn get<T: FromStr>(&self, name: &str, default: T) -> T {
        self.0.get(name).map_or(default, |v| v.parse().unwrap_or_else(|_| panic!("--{name}: cannot use {v:?}")))
    }

    pub fn path(&self, name: &str) -> PathBuf {
        let path = PathBuf::from(self.0.get(name).unwrap_or_else(|| panic!("--{name} is required")));
        assert!(path.is_file(), "--{name}: no file at {}", path.display());
        path
    }
}

/// Each stream holds a socket on both ends: warn when the open-file limit (which
/// the server processes inherit) cannot hold them.
pub fn warn_if_few_files(streams: usize) {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let soft = limits.lines().find(|l| l.starts_with("Max open files")).and_then(|l| l.split_whitespace().nth(3)?.parse::<usize>().ok());
    if let Some(soft) = soft.filter(|soft| *soft < streams + 256) {
        eprintln!("warning: the open-file limit is {soft}, too low for {streams} streams: raise it with `ulimit -n`");
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rest = args.get(1..).unwrap_or_default();
    match args.first().map(String::as_str) {
        Some("lag") => lag::main(rest).await,
        Some("perf") => perf::main(rest).await,
        Some("moderation") => moderation::main(rest).await,
        Some("otel") => otel::main(rest).await,
        Some("otel-sink") => otel::sink_main().await,
        Some("classes") => classes::main(rest).await,
        Some("stores") => stores::main(rest).await,
        Some("burst") => burst::main(rest).await,
        Some("unpaced") => unpaced::main(rest).await,
        Some("streams") => unpaced::fixed_main(rest).await,
        Some("replay") => replay::main(rest).await,
        Some("massif") => massif::main(rest),
        _ => {
            eprintln!(
                "usage: load lag|perf|stores|moderation|otel|otel-sink|classes|burst|unpaced|streams|replay|massif … (see bench/load.rs)"
            );
            std::process::exit(2);
        }
    }
}
