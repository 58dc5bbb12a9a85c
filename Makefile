# txpipe: the two commands a newcomer needs are `make run` and `make test`.
SHELL := /bin/bash
CARGO ?= cargo
export CARGO_TARGET_DIR ?= $(CURDIR)/target
DATA ?= data
BIN := $(CARGO_TARGET_DIR)/release/txpipe

.PHONY: test run bench lint fmt build data rust

# Checks for a Rust toolchain (installing one automatically is not done yet).
rust:
	@command -v $(CARGO) >/dev/null || { echo "cargo not found: install Rust (https://rustup.rs)"; exit 1; }

build: rust
	$(CARGO) build --release -p txpipe-cli

test: rust
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) test --workspace

$(DATA)/transactions.csv: | build
	$(BIN) generate --out $(DATA)

data: build $(DATA)/transactions.csv

# Today: the engine over generated data, chunk by chunk, offline (no AWS services yet).
run: data
	$(BIN) replay --transactions $(DATA)/transactions.csv --importance $(DATA)/CustomerImportance.csv --out out/replay

bench: data
	TXPIPE_BENCH_DATA=$(CURDIR)/$(DATA) taskset -c 0 $(CARGO) bench -p txpipe --bench engine
