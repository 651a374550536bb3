#!/usr/bin/env bash
# Issue 7's benchmark: the memory store against the Redis store at the same paced
# load, the Redis runs with streams started on one live-ai process and read on
# another, both on the Redis at REDIS_URL (default 127.0.0.1:6379) under a fresh key
# prefix that is deleted afterwards. Prints Markdown tables (see bench/RESULTS.md).
# Usage: bench/stores.sh [RUNS] [STREAMS] [TPS]; more knobs: bench/load.rs `stores`.
# `bench/stores.sh 3 1000 50 --spread 4`: four processes share the streams (each
# starts and reads a quarter), and each one's bytes received from Redis are shown.
# `--cluster`: the Redis-mode processes share a private Redis Cluster of three
# primaries started (and stopped) by the benchmark instead of REDIS_URL.
# `--coalesce off`: every process runs with COALESCE=off (default: the server's).
# `--stagger-ms 20`: stream n starts 20 ms × n / STREAMS after the others' connections
# are open, so their tokens do not all fall due in the same instant (default 0).
# `--one-process`: Redis mode on one process that both generates and reads (no B):
# the append path without the announcements' hop. `--reader-workers N`: B alone
# runs N tokio workers (`--redis-workers N` sets both A's and B's).
# Seven runs by default: on a shared 2-core box the ratio moves 2-3x between runs.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-7}
streams=${2:-1000}
tps=${3:-50}
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
(cd backend && cargo build --release --quiet --bin live-ai --example load)
echo "machine: $(nproc) cores; uptime: $(uptime)"
exec backend/target/release/examples/load stores --live-ai backend/target/release/live-ai \
  --redis-url "${REDIS_URL:-redis://127.0.0.1:6379}" --runs "$runs" --streams "$streams" --tps "$tps" "${@:4}"
