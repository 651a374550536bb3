#!/usr/bin/env bash
# Issue 24: what OpenTelemetry export costs, the modes side by side. Per run, a
# release live-ai of each mode (off; export sampling 1.0, 0.1 and nothing) runs
# at the same time as the others, each under a load of its own: unpaced SSE
# streams of the demo model on CONNECTIONS connections each, then PACED streams
# each at 50 tokens/s. A neighbour on a shared host slows all of them alike, so
# the ratios of their CPU per event spread far less than when the modes take
# turns (bench/otel.sh). The order of the servers rotates from run to run.
# `MODES=off,off,off,off bench/otel-side.sh` is the A/A check: what the places
# alone do. Every server is stopped when its measurement ends.
# Usage: bench/otel-side.sh [RUNS] [SECONDS] [CONNECTIONS] [PACED]   (default 8 6 24 300)
set -euo pipefail
cd "$(dirname "$0")/.."
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
(cd backend && cargo build --release --quiet --bin live-ai --example load)
uptime
backend/target/release/examples/load otel --side-by-side --live-ai backend/target/release/live-ai \
  --runs "${1:-8}" --seconds "${2:-6}" --connections "${3:-24}" --paced "${4:-300}" \
  --modes "${MODES:-off,on-1.0,on-0.1,on-0}"
uptime
