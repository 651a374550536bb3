#!/usr/bin/env bash
# OpenAPI-driven fuzzing of a running `live-ai`: schemathesis (from PyPI, installed
# into a git-ignored venv on first use) generates requests from /api/openapi.json —
# valid and invalid ones, a few hundred per operation — and checks every answer:
# no 5xx, every status and media type documented, valid requests accepted,
# invalid ones refused, response bodies matching their schemas.
#
# The server runs with AUTH_MODE=api_key (so credentials are exercised) and no
# per-principal limits (a 429 would hide what the request itself deserves), and no
# moderation: the word filter rightly refuses some of the random text the fuzzer
# writes (look-alike letters spell "hoe"), which the fuzzer would take for a valid
# request refused; moderation's answers are tested in tests/api/moderation.rs.
# Usage: backend/fuzz/openapi.sh [EXAMPLES_PER_OPERATION]   (default 300; or FUZZ_EXAMPLES)
# FUZZ_PHASES and FUZZ_PATHS (a path regex) narrow a run while investigating.
set -euo pipefail
cd "$(dirname "$0")/../.."
examples=${1:-${FUZZ_EXAMPLES:-300}}
venv=.cache/schemathesis
schemathesis_version=4.32.5
if ! "$venv/bin/schemathesis" --version 2>/dev/null | grep -q "$schemathesis_version"; then
  echo "installing schemathesis $schemathesis_version into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$schemathesis_version"
fi
(cd backend && cargo build --quiet)
work=$(mktemp -d)
key="fuzz-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
printf 'fuzzer:%s\n' "$(printf %s "$key" | sha256sum | cut -d' ' -f1)" > "$work/keys"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
AUTH_MODE=api_key AUTH_API_KEYS_FILE="$work/keys" AI_STREAMING_ENABLED=true HOST=127.0.0.1 PORT=$port \
  DEMO_TOKENS_PER_SECOND=0 DEMO_FIRST_TOKEN_MS=0 STATIC_DIR="$work/no-frontend" \
  LIMIT_CONCURRENT_STREAMS=unlimited LIMIT_STARTS_PER_MINUTE=unlimited MODERATION=off RUST_LOG=warn \
  backend/target/debug/live-ai > "$work/server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null || true; rm -rf "$work"' EXIT
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
status=0
# Run from the git-ignored cache folder: schemathesis keeps its own state (.schemathesis/) there.
# One worker: with two, hypothesis can call `ast.parse` from both threads at once, which
# CPython 3.11 answers with "SystemError: AST constructor recursion depth mismatch" (a
# runtime error of the fuzzer, not a finding; seen once in CI on 2026-11-28).
mkdir -p .cache/fuzz
(cd .cache/fuzz && "../schemathesis/bin/schemathesis" --config-file ../../backend/fuzz/schemathesis.toml run "http://127.0.0.1:$port/api/openapi.json" \
  --header "Authorization: Bearer $key" \
  --max-examples "$examples" \
  --workers 1 \
  --seed "${FUZZ_SEED:-20260101}" \
  --request-timeout 20 \
  --no-color --phases ${FUZZ_PHASES:-examples,coverage,fuzzing,stateful} --include-path-regex "${FUZZ_PATHS:-.}") || status=$?
if ! kill -0 $server 2>/dev/null; then
  echo "live-ai died during the fuzz run:"; tail -50 "$work/server.log"; exit 1
fi
if grep -q "panicked" "$work/server.log"; then
  echo "live-ai panicked during the fuzz run:"; grep -A5 panicked "$work/server.log"; exit 1
fi
exit $status
