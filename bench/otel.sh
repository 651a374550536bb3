#!/usr/bin/env bash
# Issue 24: what OpenTelemetry export costs. A release live-ai per mode (off,
# export with every trace sampled, export sampling a tenth), unpaced SSE
# events/s and server CPU per event, exporting to a sink inside the load
# generator on loopback. Every server is stopped when its measurement ends.
# Then the same modes at a paced load: PACED (default 1,000; 0 skips it) streams
# of 50 tokens/s at once, and the server's CPU per event over them.
# Usage: bench/otel.sh [RUNS] [SECONDS] [CONNECTIONS] [PACED]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-5}
seconds=${2:-8}
connections=${3:-64}
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
(cd backend && cargo build --release --quiet && cargo build --release --quiet --example load)
uptime
backend/target/release/examples/load otel --live-ai backend/target/release/live-ai \
  --runs "$runs" --seconds "$seconds" --connections "$connections" --paced "${4:-1000}"
uptime
