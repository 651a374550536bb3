# Live AI Blocks — the two entry points of the README: `make demo` and `make test`.
# Each installs what it needs first, so both work on a fresh machine.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
CARGO := cargo
NPM := npm
BACKEND := backend
FRONTEND := frontend

.PHONY: demo test deps frontend-deps browser redis python backend-test openapi-fuzz frontend-test e2e-test bench-load bench-perf bench-stores bench-moderation bench-otel bench-otel-side bench-otel-instructions bench-classes bench-profile

## demo: build everything and run the server with the demo model on http://127.0.0.1:8000
## (16 streams at once per visitor instead of 4: a reload leaves the page's four blocks
## generating for the resume grace, and the demo should not answer the next four with 429)
demo: frontend-deps
	cd $(FRONTEND) && $(NPM) run build
	cd $(BACKEND) && $(CARGO) build --release
	AI_STREAMING_ENABLED=true STATIC_DIR=$(FRONTEND)/dist HOST=$${HOST:-127.0.0.1} PORT=$${PORT:-8000} \
		LIMIT_CONCURRENT_STREAMS=$${LIMIT_CONCURRENT_STREAMS:-16} MODERATION_PROVIDER=$${MODERATION_PROVIDER:-local} \
		$(BACKEND)/target/release/live-ai

## test: every test — Rust (unit + integration + property tests), OpenAPI fuzz, TypeScript (Vitest), browser (Chromium)
test: deps backend-test openapi-fuzz frontend-test e2e-test

deps: frontend-deps browser redis python

# npm ci installs the workspace (the demo app and the @live-ai packages); the packages are
# then built (contract validators and types generated from the YAML, dist/ with .d.ts files),
# since the demo app and the tests import them by name.
frontend-deps:
	@command -v node >/dev/null || { echo "Node.js 20+ is required"; exit 1; }
	cd $(FRONTEND) && $(NPM) ci --no-audit --no-fund
	cd $(FRONTEND) && $(NPM) run build:packages

# Debian's chromium: playwright's own browser download does not work offline.
browser:
	@if ! command -v chromium >/dev/null; then \
		echo "installing Debian's chromium for the browser tests"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; \
	fi

# The scale-out tests need a Redis at REDIS_URL (default 127.0.0.1:6379): start
# one if none answers. Debian's redis-server (7.0 or newer) and redis-cli
# (redis-tools) are installed when missing: the cluster tests start their own
# nodes and join them with `redis-cli --cluster create`. The TLS test makes its
# certificates with openssl.
redis:
	@if ! command -v openssl >/dev/null; then \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq openssl >/dev/null; \
	fi
	@if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then \
		echo "installing Debian's redis-server and redis-tools (redis-cli) for the scale-out and cluster tests"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq redis-server redis-tools >/dev/null; \
	fi
	@if ! (exec 3<>/dev/tcp/127.0.0.1/6379) 2>/dev/null; then \
		redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no >/dev/null; \
		for i in $$(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/6379) 2>/dev/null && break; sleep 0.1; done; \
	fi

# The OpenAPI fuzz installs schemathesis from PyPI into a venv: Python's venv
# module comes separately on Debian.
python:
	@if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then \
		echo "installing Debian's python3-venv for the OpenAPI fuzz"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq python3-venv curl >/dev/null; \
	fi

# Four test threads on two cores: the integration tests mostly wait on the live-ai
# processes, Redis nodes and timers they start (60 s of CPU in 83 s of wall time at
# four threads), so four halve the Rust tests' time against libtest's one per core.
backend-test:
	cd $(BACKEND) && RUST_TEST_THREADS=$${RUST_TEST_THREADS:-4} $(CARGO) test --all-targets

## openapi-fuzz: schemathesis against a running live-ai, a few hundred cases per operation (FUZZ_EXAMPLES)
openapi-fuzz: python
	bash $(BACKEND)/fuzz/openapi.sh

frontend-test:
	cd $(FRONTEND) && $(NPM) test

# Browser tests, the client against the real server, and the packaging test (the packed
# packages installed in a fresh Vite app, which needs the npm registry or npm's cache).
e2e-test:
	cd $(BACKEND) && $(CARGO) build
	cd $(FRONTEND) && LIVE_AI_BIN=../$(BACKEND)/target/debug/live-ai $(NPM) run test:e2e

## bench-load: N concurrent streams against a release build (see bench/RESULTS.md)
bench-load:
	bash bench/load.sh

## bench-perf: live-ai beside the bare axum floor, side by side (issue 10; see bench/RESULTS.md)
bench-perf:
	bash bench/perf.sh

## bench-stores: memory store vs Redis store, readers on another process (issue 7; see bench/RESULTS.md)
bench-stores: redis
	bash bench/stores.sh

## bench-moderation: what moderation costs: off, local, a 50 ms remote moderator buffered and async (issue 21; see bench/RESULTS.md)
bench-moderation:
	bash bench/moderation.sh

## bench-otel: what OpenTelemetry export costs: off, sampling 1.0 and 0.1, to a sink on loopback (issue 24; see bench/RESULTS.md)
bench-otel:
	bash bench/otel.sh

## bench-otel-side: the same cost with the modes' servers side by side, so a noisy neighbour slows them alike (issue 24)
bench-otel-side:
	bash bench/otel-side.sh

## bench-otel-instructions: the same cost in instructions per event under callgrind, which a noisy box cannot move (issue 24)
bench-otel-instructions:
	bash bench/otel-instructions.sh

## bench-classes: a class asks at once: N learners x M classes, coalescing on vs off (issue 23; see bench/RESULTS.md)
bench-classes:
	bash bench/classes.sh

## bench-profile: perf profiles and callgrind instruction counts of live-ai and the floor (see bench/RESULTS.md)
bench-profile:
	bash bench/profile.sh
