#!/usr/bin/env bash
# Profiles live-ai and the floor under the benchmark's loads, so the cost of the
# stream manager is located by measurement rather than by reading the code:
# - perf: sampled CPU time (cpu-clock, DWARF call graphs) of each server while 50
#   unpaced connections run, and during a burst of 5,000 streams × 20 tok/s;
# - callgrind: instructions of each server over a fixed workload of unpaced streams,
#   minus an idle start and stop, per event delivered: exact and repeatable, which a
#   shared, noisy machine's timings are not;
# - massif: the heap of each server at its peak, by allocation site, while a burst
#   of paced streams is live (finished logs are evicted at once, so the peak is the
#   live streams'), divided by the streams: where the bytes of a live stream go.
# Builds a release with debug symbols into backend/target/profiling; writes reports
# and raw data to $PROFILE_DIR (default backend/target/profile) and prints the top
# entries. Everything on 127.0.0.1; the servers are stopped on exit.
# Usage: bench/profile.sh [perf|callgrind|massif|all] (default all)
# No pipefail: reports are cut with `head`, whose early exit is not a failure.
set -eu
cd "$(dirname "$0")/.."
what=${1:-all}
out=$(realpath -m "${PROFILE_DIR:-backend/target/profile}")
streams=${PROFILE_STREAMS:-5000}
fixed=${PROFILE_FIXED_STREAMS:-300}
mkdir -p "$out"
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
if [[ $what == all || $what == perf ]] && ! perf stat -e task-clock true >/dev/null 2>&1; then
  echo "perf does not work here: install Debian's linux-perf, and allow it (kernel.perf_event_paranoid)"; exit 1
fi
if [[ $what != perf ]] && ! command -v valgrind >/dev/null; then
  echo "valgrind is missing: apt-get install valgrind"; exit 1
fi
(cd backend && CARGO_PROFILE_RELEASE_DEBUG=true CARGO_TARGET_DIR=target/profiling \
  cargo build --release --quiet --bin live-ai --example load --example floor)
bin=$PWD/backend/target/profiling/release
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
  # Only these settings, and no `.env`: run from the report directory.
  (cd "$out" && exec env -i PATH="$PATH" HOST=127.0.0.1 PORT="$port" AI_STREAMING_ENABLED=true STATIC_DIR=no-frontend-in-the-bench \
    RUST_LOG=warn DEMO_TOKENS_PER_SECOND="$tps" DEMO_FIRST_TOKEN_MS=0 MAX_CONCURRENT_STREAMS=$((streams + 1000)) \
    "$@" "$binary" >/dev/null 2>&1) &
  server=$!
  for _ in $(seq 600); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && return; sleep 0.1; done
  echo "$name did not start"; exit 1
}

# perf_report NAME: flat (self) and inclusive (children) top entries, and by binary.
perf_report() {
  local data=$out/$1.perf.data
  perf report -i "$data" --no-children -F overhead,sym --stdio -g none --percent-limit 0.5 2>/dev/null | grep -v '^$' >"$out/$1.self.txt"
  # Inclusive time of the functions that are not runtime plumbing (inlined frames
  # repeat their caller's figure, so they are left out).
  perf report -i "$data" --children --sort symbol --stdio -g none --percent-limit 1 2>/dev/null | grep -v '^$' |
    grep -v '(inlined)' | sed 's/ \+- \+- *$//' >"$out/$1.children.txt" || true
  perf report -i "$data" --no-children -F overhead,dso --stdio -g none 2>/dev/null | grep -v '^$' >"$out/$1.dso.txt"
  echo "== $1: CPU by binary"
  grep -v '^#' "$out/$1.dso.txt" | head -6
  echo "== $1: top functions by self time"
  grep -v '^#' "$out/$1.self.txt" | head -30
  echo "== $1: the application's functions by inclusive time"
  grep -E 'live_ai|floor::|serde_json|axum::response::sse|writev|malloc|free' "$out/$1.children.txt" | head -30
}

# perf_counts NAME TPS: the server's CPU time, context switches and the system
# calls that move events (writev) or wake threads (futex), per event delivered, over
# 3,000 unpaced streams on 50 connections (TPS 0) or a burst of 2,000 paced ones.
perf_counts() {
  start_server "$1" "$2"
  local counters='task-clock,context-switches,syscalls:sys_enter_writev,syscalls:sys_enter_futex,syscalls:sys_enter_epoll_wait'
  local client
  if [[ $2 == 0 ]]; then
    client=$(perf stat -x, -e "$counters" -p "$server" -o "$out/counts-$1-unpaced.txt" -- "$load" streams "http://127.0.0.1:$port" 3000 50)
  else
    client=$(perf stat -x, -e "$counters" -p "$server" -o "$out/counts-$1-paced.txt" -- "$load" burst "http://127.0.0.1:$port" "$server" 2000 "$2" 0)
  fi
  stop_server
  local events
  events=$(echo "$client" | sed -n 's/.*events[=:] *\([0-9]*\).*/\1/p' | head -1)
  local file=$out/counts-$1-$([[ $2 == 0 ]] && echo unpaced || echo paced).txt
  echo "== $1, $([[ $2 == 0 ]] && echo "3,000 unpaced streams" || echo "2,000 streams × $2 tok/s"): $events events; per event:"
  awk -F, -v events="$events" '!/^#/ && NF > 2 { unit = ($3 == "task-clock") ? " µs CPU" : ""; scale = ($3 == "task-clock") ? 1000 : 1; printf "   %10.3f%s  %s\n", $1 * scale / events, unit, $3 }' "$file"
}

if [[ $what == all || $what == perf ]]; then
  for name in live-ai floor; do
    start_server "$name" 0
    perf record -F 999 --call-graph dwarf,8192 -p "$server" -o "$out/unpaced-$name.perf.data" -- sleep 8 2>/dev/null &
    recorder=$!
    sleep 0.5
    "$load" unpaced "http://127.0.0.1:$port" sse 50 6
    wait "$recorder" || true
    stop_server
    perf_report "unpaced-$name"

    start_server "$name" 20
    perf record -F 999 --call-graph dwarf,8192 -p "$server" -o "$out/burst-$name.perf.data" -- sleep 12 2>/dev/null &
    recorder=$!
    sleep 0.5
    "$load" burst "http://127.0.0.1:$port" "$server" "$streams" 20 0 | grep -E 'completed|errors|ttfc_ms_p99|stretch_p99|bytes_per_live'
    wait "$recorder" || true
    stop_server
    perf_report "burst-$name"
  done
  for name in live-ai floor; do
    perf_counts "$name" 0
    perf_counts "$name" 20
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
  instructions=$(callgrind_annotate "$file" 2>/dev/null | awk '/PROGRAM TOTALS/ && !seen { gsub(",", ""); print $1; seen = 1 }')
}

if [[ $what == all || $what == callgrind ]]; then
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
if [[ $what == all || $what == massif ]]; then
  live=${PROFILE_MASSIF_STREAMS:-200}
  for name in live-ai floor; do
    file=$out/massif.$name.out
    if [[ $name == live-ai ]]; then
      # The demo model goes silent one token before the end of an answer, so every
      # stream stays live with its log all but full; the server is stopped once all
      # have got there, and the peak is theirs (not finished logs kept for resume).
      start_server "$name" 20 DEMO_STALL_AFTER_TOKENS=125 valgrind --tool=massif --threshold=0.1 --massif-out-file="$file"
      "$load" burst "http://127.0.0.1:$port" "$server" "$live" 20 0 >/dev/null &
      client=$!
      for _ in $(seq 300); do
        sent=$(curl -sf "http://127.0.0.1:$port/metrics" | awk '/^live_ai_events_sent_total\{transport="sse"\}/ {print $2}')
        [[ ${sent:-0} -ge $((live * 126)) ]] && break
        sleep 1
      done
      stop_server
      wait "$client" || true
    else
      # The floor keeps nothing after a stream, so its peak is its live streams'.
      start_server "$name" 20 valgrind --tool=massif --threshold=0.1 --massif-out-file="$file"
      "$load" burst "http://127.0.0.1:$port" "$server" "$live" 20 0 | grep -E 'completed|errors'
      stop_server
    fi
    echo "== massif $name: heap at the peak with $live live streams, by owner"
    "$load" massif "$file" "$live" | tee "$out/massif-$name.md"
  done
fi
echo "reports in $out"
