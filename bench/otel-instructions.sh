#!/usr/bin/env bash
# Issue 24: what OpenTelemetry export costs, in instructions per event, which a
# shared 2-core box cannot disturb (callgrind counts instructions, not seconds).
# For each mode (off; export with every trace sampled; sampling a tenth) a
# release live-ai runs under callgrind twice: started and stopped idle, then
# started, STREAMS unpaced streams of the demo model on CONNECTIONS keep-alive
# connections, and stopped with SIGTERM (so the last spans and the metrics are
# exported, as a rolling deploy would). Instructions per event are the
# difference over the events the client received. Export goes to a sink on
# loopback (`load otel-sink`) that answers at once; metrics are exported once,
# at the stop, so each run exports the same number of times.
# Usage: bench/otel-instructions.sh [STREAMS] [CONNECTIONS]   (default 640 on 64)
set -eu
cd "$(dirname "$0")/.."
streams=${1:-640}
connections=${2:-64}
out=$(realpath -m "${PROFILE_DIR:-backend/target/profile}")
mkdir -p "$out"
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
command -v valgrind >/dev/null || { echo "valgrind is missing: apt-get install valgrind"; exit 1; }
(cd backend && cargo build --release --quiet --bin live-ai --example load)
bin=$PWD/backend/target/release
load=$bin/examples/load

server="" sink=""
stop() {
  if [[ -n $server ]]; then
    kill -TERM "$server" 2>/dev/null || true
    wait "$server" 2>/dev/null || true
    server=""
  fi
}
trap 'stop; [[ -n $sink ]] && kill "$sink" 2>/dev/null' EXIT

"$load" otel-sink >"$out/otel-sink.address" &
sink=$!
for _ in $(seq 100); do [[ -s $out/otel-sink.address ]] && break; sleep 0.1; done
endpoint=$(cat "$out/otel-sink.address")

# run MODE STREAMS: sets `instructions` (the server's total, start to exit) and `events`.
run() {
  local mode=$1 count=$2 file=$out/callgrind.otel.$1.$2.out
  local export=()
  case $mode in
    on-1.0 | on-0.1)
      export=(OTEL_EXPORTER_OTLP_ENDPOINT="$endpoint" OTEL_TRACES_SAMPLER=parentbased_traceidratio
        OTEL_TRACES_SAMPLER_ARG="${mode#on-}" OTEL_METRIC_EXPORT_INTERVAL=3600000) ;;
  esac
  port=$((20000 + RANDOM % 20000))
  while (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do port=$((20000 + RANDOM % 20000)); done
  # Only these settings, and no `.env`: run from the report directory.
  (cd "$out" && exec env -i PATH="$PATH" HOST=127.0.0.1 PORT="$port" AI_STREAMING_ENABLED=true \
    RUST_LOG=warn DEMO_TOKENS_PER_SECOND=0 DEMO_FIRST_TOKEN_MS=0 MAX_CONCURRENT_STREAMS=256 \
    LIMIT_CONCURRENT_STREAMS=unlimited LIMIT_STARTS_PER_MINUTE=unlimited LIMIT_STREAMS_PER_SOCKET=unlimited \
    "${export[@]}" valgrind --tool=callgrind --callgrind-out-file="$file" "$bin/live-ai" >"$file.log" 2>&1) &
  server=$!
  local up=""
  for _ in $(seq 1800); do
    curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && { up=1; break; }
    # Exited (a port taken between the check above and its bind, say): say why.
    kill -0 "$server" 2>/dev/null || { echo "live-ai ($mode) exited at start:"; tail -5 "$file.log"; exit 1; }
    sleep 0.1
  done
  [[ -n $up ]] || { echo "live-ai ($mode) did not answer within 180 s (log: $file.log)"; exit 1; }
  events=0
  if [[ $count -gt 0 ]]; then
    local report
    report=$("$load" streams "http://127.0.0.1:$port" "$count" "$connections")
    events=$(echo "$report" | sed -n 's/.*events=\([0-9]*\).*/\1/p')
    [[ $report == *errors=0* ]] || echo "warning ($mode): $report"
  fi
  stop
  instructions=$(callgrind_annotate "$file" 2>/dev/null | awk '/PROGRAM TOTALS/ && !seen { gsub(",", ""); print $1; seen = 1 }')
}

echo "callgrind, $streams unpaced streams on $connections connections, export to a sink at $endpoint"
declare -A per_event
for mode in off on-1.0 on-0.1; do
  run "$mode" 0
  idle=$instructions
  run "$mode" "$streams"
  per_event[$mode]=$(( (instructions - idle) / events ))
  echo "$mode: ${per_event[$mode]} instructions per event ($events events; idle start and stop $idle, with the streams $instructions)"
  callgrind_annotate --inclusive=no "$out/callgrind.otel.$mode.$streams.out" 2>/dev/null | sed -n '/^Ir/,$p' | head -40 >"$out/callgrind-otel-$mode.self.txt"
done
for mode in on-1.0 on-0.1; do
  echo "$mode / off: $(awk -v a="${per_event[$mode]}" -v b="${per_event[off]}" 'BEGIN { printf "%.3f", a / b }')"
done
echo "top functions by own instructions: $out/callgrind-otel-*.self.txt"
