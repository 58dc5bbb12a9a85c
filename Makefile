# txpipe: the two commands a newcomer needs are `make run` and `make test`.
SHELL := /bin/bash
CARGO ?= cargo
export CARGO_TARGET_DIR ?= $(CURDIR)/target
PARTS ?=
# PARTS=N runs a prefix stream over the data set cut into N files.
DATA ?= $(if $(PARTS),data-parts-$(PARTS),data)
RATE ?= 1
BIN := $(CARGO_TARGET_DIR)/release/txpipe
# Installs moto / PostgreSQL if missing and exports where they are.
TOOLS := eval "$$(tests/ensure-tools.sh)"

.PHONY: test run bench build data rust tools replay fmt lint services chaos

# Rust cannot be fetched on this network; say so clearly.
rust:
	@command -v $(CARGO) >/dev/null || { echo "cargo not found: install Rust 1.87+ (https://rustup.rs)"; exit 1; }

# moto[server] (pinned, into a venv under $TXPIPE_TOOLS_DIR, default .tools/) and the
# PostgreSQL server (apt), if missing.
tools:
	@$(TOOLS) && echo "moto: $$TXPIPE_MOTO_CMD; PostgreSQL: $$TXPIPE_PG_BIN"

build: rust
	$(CARGO) build --release -p txpipe-cli

$(DATA)/transactions.csv: | build
	$(BIN) generate --out $(DATA)

# PARTS=N: the data set as a transactions/ folder of N parts, for a stream over a prefix.
data-parts-$(PARTS)/CustomerImportance.csv: | build
	$(BIN) generate --out data-parts-$(PARTS) --parts $(PARTS)

data: build $(if $(PARTS),data-parts-$(PARTS)/CustomerImportance.csv,$(DATA)/transactions.csv)

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
	@# The Lambdas carry no local stand-ins or test seams: the test kit stays out of them.
	@! $(CARGO) tree -p chunker -p detector -p db-setup -e normal --prefix none | grep -E '^txpipe-(testkit|cli|e2e) ' \
	  || { echo "a Lambda depends on the test kit or the CLI"; exit 1; }
	@# ... and the built binaries show it: none of the stand-ins' commands is in them.
	$(CARGO) build -q -p chunker -p detector -p db-setup
	@for f in chunker detector db-setup; do \
	  if grep -aqE 'initdb|pg_ctl|moto_server|moto\.server' "$(CARGO_TARGET_DIR)/debug/$$f"; then \
	    echo "the $$f Lambda binary contains local stand-in code (initdb/pg_ctl/moto)"; exit 1; fi; \
	done; echo "Lambda binaries: no initdb, pg_ctl or moto strings"

# ... then the SAM stack in moto with the real handlers (infra/infra.mk: deploy-check).
test: rust lint lint-infra
	@$(TOOLS) && $(CARGO) test --workspace
	@$(MAKE) --no-print-directory deploy-check

# The chaos run (docs/chaos.md): the real chunker and detector against moto + Postgres
# through random schedules of crashes, event chaos, overlaps, outages, poison rows,
# parked chunks and pauses, each ending exactly as the offline replay. `make test` runs
# a few schedules of a fixed seed; this runs SCHEDULES of SEED (random when unset; it
# is printed). ONLY=<n> replays one schedule, VERBOSE=1 prints every step, KEEP_GOING=1
# runs every schedule and lists the failed ones.
SCHEDULES ?= 20
ROWS ?= 6000
chaos: rust
	@$(TOOLS) && seed="$(SEED)" && seed=$${seed:-$$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')} && \
	TXPIPE_CHAOS_SEED=$$seed TXPIPE_CHAOS_SCHEDULES=$(SCHEDULES) TXPIPE_CHAOS_ROWS=$(ROWS) \
	TXPIPE_CHAOS_ONLY=$(ONLY) TXPIPE_CHAOS_VERBOSE=$(VERBOSE) TXPIPE_CHAOS_KEEP_GOING=$(KEEP_GOING) \
	RUST_LIB_BACKTRACE=0 $(CARGO) test -p txpipe-e2e --test chaos -- --nocapture

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
