# Deployment targets, included by the top-level Makefile (which exports CARGO_TARGET_DIR).
# See docs/deploy.md. The Python tools (sam, cfn-lint, checkov, moto, cargo-lambda) come
# from infra/tools.sh: exact pins, one venv each under $(TXPIPE_TOOLS_DIR), reused.
export TXPIPE_TOOLS_DIR ?= $(CURDIR)/.tools
SAM := $(TXPIPE_TOOLS_DIR)/sam/bin/sam
CARGO_LAMBDA := $(TXPIPE_TOOLS_DIR)/cargo-lambda/bin/cargo-lambda
# cargo-lambda, zig (python -m ziglang) and sam from the venvs, cargo from the usual place.
INFRA_PATH := PATH="$(TXPIPE_TOOLS_DIR)/cargo-lambda/bin:$(TXPIPE_TOOLS_DIR)/sam/bin:$$PATH" SAM_CLI_TELEMETRY=0
# Optional: STACK=<name> for deploy/teardown without a samconfig.toml default.
STACK ?=
STACK_ARG := $(if $(STACK),--stack-name $(STACK))
# Optional: DETECTOR_CONCURRENCY=N asks for a detector reservation (make deploy checks
# the account can grant it, else deploys it unreserved and says so).
DETECTOR_CONCURRENCY ?=
# The binaries the deploy check drives (debug: they reuse make lint's build): the txpipe
# CLI (test data), and the three Lambda binaries, run as Lambda runs them (db-setup as
# the DbSetup custom resource).
DEPLOY_CHECK_BIN := $(CARGO_TARGET_DIR)/debug/txpipe
DEPLOY_CHECK_CHUNKER := $(CARGO_TARGET_DIR)/debug/chunker
DEPLOY_CHECK_DETECTOR := $(CARGO_TARGET_DIR)/debug/detector
DEPLOY_CHECK_DB_SETUP := $(CARGO_TARGET_DIR)/debug/db-setup

.PHONY: lint-infra infra-tools build-lambdas deploy deploy-check teardown

# sam validate --lint, cfn-lint and checkov on infra/template.yaml (part of make test).
lint-infra:
	infra/lint.sh

# aws-sam-cli + cfn-lint, checkov, moto, cargo-lambda: pinned venvs, installed if missing.
infra-tools:
	@infra/tools.sh sam checkov moto cargo-lambda >/dev/null

# The stack in moto's CloudFormation and the real handlers against it (part of make test).
deploy-check: rust
	$(CARGO) build -p txpipe-cli -p chunker -p detector -p db-setup
	infra/deploy-check.sh $(DEPLOY_CHECK_BIN) $(DEPLOY_CHECK_CHUNKER) $(DEPLOY_CHECK_DETECTOR) $(DEPLOY_CHECK_DB_SETUP)

$(CARGO_LAMBDA):
	@infra/tools.sh cargo-lambda >/dev/null

# The three bootstrap binaries for arm64 (Graviton), then their sizes.
build-lambdas: rust $(CARGO_LAMBDA)
	$(INFRA_PATH) $(CARGO_LAMBDA) lambda build --release --arm64 -p chunker -p detector -p db-setup
	@for f in chunker detector db-setup; do stat -c '%s %n' $(CARGO_TARGET_DIR)/lambda/$$f/bootstrap; done \
	  | awk '{ printf "%6.1f MB  %s\n", $$1 / 1e6, $$2 }'

# Lint, then infra/preflight.py: the stack name's length, the account's Lambda quotas
# (reservation, memory), an existing database's subnets, AlarmEmail, and how a failure
# is handled (a first create runs with rollback disabled, updates roll back); then sam
# build, sam deploy (--guided the first time: it writes samconfig.toml; STACK=<name> is
# needed then), and what to do next (a failed first create, the alarm e-mail to
# confirm). sam build runs cargo lambda in the workspace root (CodeUri) and copies
# <root>/target/lambda/<bin>/bootstrap, so it needs the target dir there, whatever
# CARGO_TARGET_DIR says.
# Optional: DETECTOR_MEMORY=MB overrides DetectorMemory.
DETECTOR_MEMORY ?=
PREFLIGHT := STACK=$(STACK) DETECTOR_CONCURRENCY=$(DETECTOR_CONCURRENCY) DETECTOR_MEMORY=$(DETECTOR_MEMORY) \
  $(TXPIPE_TOOLS_DIR)/sam/bin/python infra/preflight.py
deploy: lint-infra $(CARGO_LAMBDA)
	@out=$$($(PREFLIGHT)) || exit 1; \
	failure=$$(sed -n 1p <<<"$$out"); overrides=$$(sed -n 2p <<<"$$out"); \
	$(INFRA_PATH) CARGO_TARGET_DIR=$(CURDIR)/target $(SAM) build -t infra/template.yaml --beta-features || exit 1; \
	guided=$$([ -f samconfig.toml ] || echo --guided); \
	echo "$(SAM) deploy $$guided $(STACK_ARG) $$failure --parameter-overrides $$overrides"; \
	$(INFRA_PATH) $(SAM) deploy $$guided $(STACK_ARG) --capabilities CAPABILITY_IAM --no-fail-on-empty-changeset $$failure --parameter-overrides "$$overrides"; \
	status=$$?; $(PREFLIGHT) --after $$status; exit $$status

# infra/teardown.py: stops the functions, lifts deletion protection, empties the bucket,
# deletes the stack and waits. PURGE=1 also deletes what the template keeps on purpose
# (the state table, the database's final snapshot); without it they are listed.
teardown: infra-tools
	STACK=$(STACK) $(TXPIPE_TOOLS_DIR)/sam/bin/python infra/teardown.py $(if $(PURGE),--purge)
