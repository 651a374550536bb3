#!/usr/bin/env bash
# Runs the load generator against a release `live-ai` with the demo model, on
# loopback, and stops the server afterwards. Usage: bench/load.sh [STREAMS] [TPS] [RUNS]
# STREAM_STORE=redis (with REDIS_URL) measures the scale-out store instead of memory.
set -euo pipefail
cd "$(dirname "$0")/.."
streams=${1:-1000}
tps=${2:-50}
runs=${3:-3}
port=${BENCH_PORT:-18080}
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
(cd backend && cargo build --release --quiet && cargo build --release --quiet --example load)
STREAM_STORE=${STREAM_STORE:-memory} REDIS_KEY_PREFIX=live-ai-bench \
AI_STREAMING_ENABLED=true HOST=127.0.0.1 PORT=$port DEMO_TOKENS_PER_SECOND=$tps DEMO_FIRST_TOKEN_MS=200 \
  MAX_CONCURRENT_STREAMS=$((streams * 2)) STREAM_RESUME_GRACE_SECONDS=30 RUST_LOG=warn \
  LIMIT_CONCURRENT_STREAMS=unlimited LIMIT_STARTS_PER_MINUTE=unlimited LIMIT_STREAMS_PER_SOCKET=unlimited \
  backend/target/release/live-ai &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null || true' EXIT
for _ in $(seq 50); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
echo "store: ${STREAM_STORE:-memory}"
for run in $(seq "$runs"); do
  echo "--- run $run"
  /usr/bin/time -f "client: %e s wall, %U s user, %S s sys, %M KB max RSS" \
    backend/target/release/examples/load lag "http://127.0.0.1:$port" "$streams" "$tps" 200
  grep -E '^(VmRSS|VmHWM)' "/proc/$server/status" | tr -s ' \t' ' ' | sed 's/^/server: /'
  ps -o cputime= -p "$server" | sed 's/^/server cpu total: /'
done
