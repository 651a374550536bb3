#!/usr/bin/env bash
# Profiles live-ai and the floor under the benchmark's loads, so the cost of the
# stream manager is located by measurement rather than by reading the code:
# - perf: sampled CPU time (cpu-clock, DWARF call graphs) of each server while 50
#   unpaced connections run, and during a burst of 5,000 streams × 20 tok/s;
# - callgrind: instructions of each server over a fixed workload of unpaced streams,
#   minus an idle start and stop, per event delivered: exact and repeatable, which a
#   shared, noisy machine's timings are not.
# Builds a release with debug symbols into backend/target/profiling; writes reports
# and raw data to $PROFILE_DIR (default backend/target/profile) and prints the top
# entries. Everything on 127.0.0.1; the servers are stopped on exit.
# Usage: bench/profile.sh [perf|callgrind|all] (default all)
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:-all}
out=${PROFILE_DIR:-backend/target/profile}
streams=${PROFILE_STREAMS:-5000}
fixed=${PROFILE_FIXED_STREAMS:-300}
mkdir -p "$out"
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
if [[ $what != callgrind ]] && ! perf stat -e task-clock true >/dev/null 2>&1; then
  echo "perf does not work here: install Debian's linux-perf, and allow it (kernel.perf_event_paranoid)"; exit 1
fi
if [[ $what != perf ]] && ! command -v valgrind >/dev/null; then
  echo "valgrind is missing: apt-get install valgrind"; exit 1
fi
(cd backend && CARGO_PROFILE_RELEASE_DEBUG=true CARGO_TARGET_DIR=target/profiling \
  cargo build --release --quiet --bin live-ai --example load --example floor)
bin=backend/target/profiling/release
load=$bin/examples/load

server=""
stop_server() {
  if [[ -n $server ]]; then
    kill -TERM "$server" 2>/dev/null || true
    wait "$server" 2>/dev/null || true
    server=""
  fi
}
trap stop_server EXIT

# start_server NAME TPS [wrapper…]: starts live-ai or the floor on a free port,
# paced at TPS (0 = unpaced), under the optional wrapper (valgrind), and waits for it.
start_server() {
  local name=$1 tps=$2
  shift 2
  port=$((20000 + RANDOM % 20000))
  while (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do port=$((20000 + RANDOM % 20000)); done
  local binary=$bin/live-ai
  [[ $name == floor ]] && binary=$bin/examples/floor
  env HOST=127.0.0.1 PORT="$port" AI_STREAMING_ENABLED=true STATIC_DIR=no-frontend-in-the-bench RUST_LOG=warn \
    DEMO_TOKENS_PER_SECOND="$tps" DEMO_FIRST_TOKEN_MS=0 MAX_CONCURRENT_STREAMS=$((streams + 1000)) \
    "$@" "$binary" >/dev/null 2>&1 &
  server=$!
  for _ in $(seq 600); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && return; sleep 0.1; done
  echo "$name did not start"; exit 1
}

# perf_report NAME: flat (self) and inclusive (children) top entries, and by binary.
perf_report() {
  local data=$out/$1.perf.data
  perf report -i "$data" --no-children --sort symbol --stdio -g none --percent-limit 0.5 2>/dev/null | grep -v '^$' >"$out/$1.self.txt"
  perf report -i "$data" --children --sort symbol --stdio -g none --percent-limit 2 2>/dev/null | grep -v '^$' >"$out/$1.children.txt"
  perf report -i "$data" --no-children --sort dso --stdio -g none 2>/dev/null | grep -v '^$' >"$out/$1.dso.txt"
  echo "== $1: CPU by binary"
  grep -v '^#' "$out/$1.dso.txt" | head -6
  echo "== $1: top functions by self time"
  grep -v '^#' "$out/$1.self.txt" | head -30
}

if [[ $what != callgrind ]]; then
  for name in live-ai floor; do
    start_server "$name" 0
    perf record -F 299 --call-graph dwarf,16384 -p "$server" -o "$out/unpaced-$name.perf.data" -- sleep 8 2>/dev/null &
    recorder=$!
    sleep 0.5
    "$load" unpaced "http://127.0.0.1:$port" sse 50 6
    wait "$recorder" || true
    stop_server
    perf_report "unpaced-$name"

    start_server "$name" 20
    perf record -F 299 --call-graph dwarf,16384 -p "$server" -o "$out/burst-$name.perf.data" -- sleep 12 2>/dev/null &
    recorder=$!
    sleep 0.5
    "$load" burst "http://127.0.0.1:$port" "$server" "$streams" 20 0 | grep -E 'completed|errors|ttfc_ms_p99|stretch_p99|bytes_per_live'
    wait "$recorder" || true
    stop_server
    perf_report "burst-$name"
  done
fi

# callgrind_instructions NAME STREAMS: sets `instructions` to the server's total
# (Ir) over a start, STREAMS unpaced streams on 50 connections, and a graceful
# stop, and `events` to the events the client received.
callgrind_instructions() {
  local file=$out/callgrind.$1.$2.out
  start_server "$1" 0 valgrind --tool=callgrind --callgrind-out-file="$file"
  events=0
  if [[ $2 -gt 0 ]]; then
    events=$("$load" streams "http://127.0.0.1:$port" "$2" 50 | sed -n 's/.*events=\([0-9]*\).*/\1/p')
  fi
  stop_server
  instructions=$(callgrind_annotate "$file" 2>/dev/null | grep -m1 'PROGRAM TOTALS' | tr -d ',' | awk '{print $1}')
}

if [[ $what != perf ]]; then
  for name in live-ai floor; do
    callgrind_instructions "$name" 0
    idle=$instructions
    callgrind_instructions "$name" "$fixed"
    busy=$instructions
    echo "== callgrind $name: $fixed unpaced streams, $events events: $(( (busy - idle) / events )) instructions per event (idle start and stop: $idle, with the streams: $busy)"
    callgrind_annotate --inclusive=no "$out/callgrind.$name.$fixed.out" 2>/dev/null | sed -n '/^Ir/,$p' | head -32 >"$out/callgrind-$name.self.txt"
    callgrind_annotate --inclusive=yes "$out/callgrind.$name.$fixed.out" 2>/dev/null | sed -n '/^Ir/,$p' | head -60 >"$out/callgrind-$name.inclusive.txt"
    echo "== callgrind $name: top functions by own instructions"
    head -32 "$out/callgrind-$name.self.txt"
  done
fi
echo "reports in $out"
