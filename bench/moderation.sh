#!/usr/bin/env bash
# Issue 21: what moderation costs. A release live-ai per mode (off, local
# buffered, a 50 ms remote moderator buffered with checks batched and unbatched,
# and async), 1,000 paced streams;
# then unpaced events/s of off against local. Loopback only; every server is
# stopped when its measurement ends. Usage: bench/moderation.sh [STREAMS] [TPS] [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
streams=${1:-1000}
tps=${2:-20}
runs=${3:-3}
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
(cd backend && cargo build --release --quiet && cargo build --release --quiet --example load)
backend/target/release/examples/load moderation --live-ai backend/target/release/live-ai \
  --streams "$streams" --tps "$tps" --runs "$runs"
