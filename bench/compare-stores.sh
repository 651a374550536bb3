#!/usr/bin/env bash
# Issue 7's A/B test of two `live-ai` binaries: `load stores` runs each in turn, in
# alternating sets, so both meet the same moments of a shared, noisy box; then the
# runs of each binary are pooled. One set of each is not enough here: the same
# binary's median ratio moved 3.3-4.1 between sets (bench/RESULTS.md, fifth session).
# Prints every set, then per binary the median over all its runs of the lag p99
# ratio (Redis / memory), the CPU-per-event ratio (Redis mode with Redis itself /
# memory), the Redis-mode lag p99, the live-ai CPU in Redis mode and how busy the
# machine was in Redis mode (near 100 %, the lag ratio is saturation).
# Usage: bench/compare-stores.sh BINARY_A BINARY_B [SETS=5] [RUNS_PER_SET=3] [STREAMS=1000] [TPS=50] [LOAD_FLAGS...]
# (build the other binary from a worktree of the commit to compare with). Further
# flags go to both binaries' `load stores` runs as they are, e.g. `--coalesce off`
# or `--redis-workers 1` (issue 22's runs:
# LOAD_SERVER_ENV="MODERATION=off" bench/compare-stores.sh A B 5 3 1000 50 --coalesce off).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ $# -lt 2 ]]; then
  sed -n '2,14p' "$0"; exit 2
fi
binaries=("$(realpath "$1")" "$(realpath "$2")")
sets=${3:-5}
runs=${4:-3}
streams=${5:-1000}
tps=${6:-50}
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
(cd backend && cargo build --release --quiet --example load)
pooled=$(mktemp)
trap 'rm -f "$pooled"' EXIT

# The run values of one row of `load stores`'s summary table (without the median).
row() {
  grep -F "| $2 |" <<<"$1" | awk -F'|' '{ for (i = 4; i < NF - 1; i++) { gsub(/ /, "", $i); printf "%s ", $i } }'
}

# The Redis-mode rows' store label (`load stores --one-process` names its one process).
store="redis (A → B)"
[[ " ${*:7} " == *" --one-process "* ]] && store="redis (A alone)"

echo "machine: $(nproc) cores; uptime: $(uptime)"
for set in $(seq 1 "$sets"); do
  for n in 0 1; do
    out=$(backend/target/release/examples/load stores --live-ai "${binaries[$n]}" --runs "$runs" \
      --streams "$streams" --tps "$tps" --monitor-streams 0 "${@:7}" 2>/dev/null)
    ratio=$(row "$out" "lag p99 redis / memory")
    cpu_ratio=$(row "$out" "CPU per event redis / memory")
    p99=$(row "$out" "client lag p99 (ms) | $store")
    cpu=$(row "$out" "live-ai CPU seconds (all processes) | $store")
    busy=$(row "$out" "machine busy while streaming (% of all cores) | $store")
    echo "set $set, $(basename "${binaries[$n]}") ($n): lag ratio $ratio| CPU ratio $cpu_ratio| Redis p99 ms $p99| live-ai CPU s $cpu| machine busy % $busy"
    for value in $ratio; do echo "$n ratio $value"; done >>"$pooled"
    for value in $cpu_ratio; do echo "$n cpu_ratio $value"; done >>"$pooled"
    for value in $p99; do echo "$n p99 $value"; done >>"$pooled"
    for value in $cpu; do echo "$n cpu $value"; done >>"$pooled"
    for value in $busy; do echo "$n busy $value"; done >>"$pooled"
  done
done

median() {
  awk -v n="$1" -v what="$2" '$1 == n && $2 == what { print $3 }' "$pooled" | sort -g |
    awk '{ v[NR] = $1 } END { if (NR == 0) print "-"; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
echo
echo "| binary | runs | lag p99 Redis / memory | CPU per event Redis / memory | Redis-mode lag p99 (ms) | live-ai CPU s, Redis mode | machine busy, Redis mode (%) |"
echo "|---|---|---|---|---|---|---|"
for n in 0 1; do
  count=$(awk -v n="$n" '$1 == n && $2 == "ratio"' "$pooled" | wc -l)
  echo "| $(basename "${binaries[$n]}") ($n) | $count | $(median "$n" ratio) | $(median "$n" cpu_ratio) | $(median "$n" p99) | $(median "$n" cpu) | $(median "$n" busy) |"
done
