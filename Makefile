# txpipe: the two commands a newcomer needs are `make run` and `make test`.
SHELL := /bin/bash
CARGO ?= cargo
export CARGO_TARGET_DIR ?= $(CURDIR)/target
DATA ?= data
RATE ?= 1
BIN := $(CARGO_TARGET_DIR)/release/txpipe
# Installs moto / PostgreSQL if missing and exports where they are.
TOOLS := eval "$$(tests/ensure-tools.sh)"

.PHONY: test run bench build data rust tools replay fmt lint services

# Rust cannot be fetched on this network; say so clearly.
rust:
	@command -v $(CARGO) >/dev/null || { echo "cargo not found: install Rust 1.87+ (https://rustup.rs)"; exit 1; }

# moto[server] (pip, into .tools/venv) and the PostgreSQL server (apt), if missing.
tools:
	@$(TOOLS) && echo "moto: $$TXPIPE_MOTO_CMD; PostgreSQL: $$TXPIPE_PG_BIN"

build: rust
	$(CARGO) build --release -p txpipe-cli

$(DATA)/transactions.csv: | build
	$(BIN) generate --out $(DATA)

data: build $(DATA)/transactions.csv

# The whole pipeline on this machine: moto + throwaway Postgres + the real chunker and
# detector. RATE=max replays as fast as possible; KEEP=1 keeps the services up after.
run: data
	@$(TOOLS) && RATE=$(RATE) $(BIN) run --data $(DATA)

# The engine alone over the data, offline (no services).
replay: data
	$(BIN) replay --transactions $(DATA)/transactions.csv --importance $(DATA)/CustomerImportance.csv --out out/replay

fmt:
	$(CARGO) fmt --all

lint: rust
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

test: rust lint lint-infra
	@$(TOOLS) && $(CARGO) test --workspace

# The engine on three cardinality shapes with DuckDB as a yardstick (bench/run.sh;
# SIZE=rows for the large shapes, default 3,000,000), then the pipeline's figures against
# local services.
bench: data
	BIN=$(BIN) CARGO=$(CARGO) bench/run.sh
	@$(TOOLS) && $(BIN) bench --data $(DATA)

-include infra/infra.mk

# moto + Postgres with the data uploaded, for `cargo lambda watch` (see README).
services: data
	@$(TOOLS) && $(BIN) run --data $(DATA) --services-only
