#!/usr/bin/env bash
# Issue 23: a class asks at once. LEARNERS learners in each of CLASSES classes
# ask the same question (a class's learners within 500 ms), with coalescing on
# and off, against a release live-ai with the demo model paced at TPS tokens/s;
# modes alternate within each run, medians over RUNS. Loopback only; every server
# is stopped when its measurement ends.
# MODERATION: local (the default: the first chunk waits for its output window) or off.
# Usage: bench/classes.sh [LEARNERS] [CLASSES] [TPS] [RUNS] [MODERATION]
set -euo pipefail
cd "$(dirname "$0")/.."
learners=${1:-30}
classes=${2:-20}
tps=${3:-20}
runs=${4:-3}
moderation=${5:-local}
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
(cd backend && cargo build --release --quiet && cargo build --release --quiet --example load)
backend/target/release/examples/load classes --live-ai backend/target/release/live-ai \
  --learners "$learners" --classes "$classes" --tps "$tps" --runs "$runs" --moderation "$moderation"
