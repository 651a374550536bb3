#!/usr/bin/env bash
# Issue 10's benchmark: live-ai (release build, demo model, memory store) beside the
# floor (bench/floor.rs, a minimal axum SSE server with the same framing), fresh
# processes of both in every run, on 127.0.0.1 only. Prints every run, medians and
# live-ai / floor ratios as Markdown (bench/RESULTS.md explains each measure).
# Usage: bench/perf.sh [RUNS] [STREAMS] [TPS]; more knobs: bench/load.rs `perf`.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
streams=${2:-5000}
tps=${3:-20}
# Every stream holds a socket in the client and one in the server.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
(cd backend && cargo build --release --quiet --bin live-ai --example load --example floor)
echo "machine: $(nproc) cores; uptime: $(uptime)"
exec backend/target/release/examples/load perf --live-ai backend/target/release/live-ai \
  --floor backend/target/release/examples/floor --runs "$runs" --streams "$streams" --tps "$tps" "${@:4}"
