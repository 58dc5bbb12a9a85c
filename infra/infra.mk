# Deployment targets, included by the top-level Makefile (which exports CARGO_TARGET_DIR).
# See docs/deploy.md. Tools go into a project-local venv with pip, on first use.
INFRA_VENV ?= $(CURDIR)/.venv-infra
export TXPIPE_INFRA_VENV := $(INFRA_VENV)
SAM := $(INFRA_VENV)/bin/sam
CARGO_LAMBDA := $(INFRA_VENV)/bin/cargo-lambda
# cargo-lambda, zig (python -m ziglang) and sam from the venv, cargo from the usual place.
INFRA_PATH := PATH="$(INFRA_VENV)/bin:$$PATH" SAM_CLI_TELEMETRY=0
# Optional: STACK=<name> for deploy/teardown without a samconfig.toml default.
STACK ?=
STACK_ARG := $(if $(STACK),--stack-name $(STACK))

.PHONY: lint-infra infra-tools build-lambdas deploy teardown

# sam validate --lint, cfn-lint and checkov on infra/template.yaml (part of make test).
lint-infra:
	infra/lint.sh

# aws-sam-cli, cfn-lint, checkov (infra/lint.sh installs them if missing).
infra-tools:
	@infra/lint.sh --install-only

# cargo-lambda from PyPI brings ziglang, which it uses as the arm64 cross-linker.
$(CARGO_LAMBDA):
	@echo "installing cargo-lambda (with ziglang) into $(INFRA_VENV) with pip (first run only)"
	@[ -x $(INFRA_VENV)/bin/pip ] || python3 -m venv $(INFRA_VENV)
	$(INFRA_VENV)/bin/pip install --quiet --disable-pip-version-check 'cargo-lambda>=1.8,<2'

# Both bootstrap binaries for arm64 (Graviton), then their sizes.
build-lambdas: rust $(CARGO_LAMBDA)
	$(INFRA_PATH) $(CARGO_LAMBDA) lambda build --release --arm64 -p chunker -p detector
	@for f in chunker detector; do stat -c '%s %n' $(CARGO_TARGET_DIR)/lambda/$$f/bootstrap; done \
	  | awk '{ printf "%6.1f MB  %s\n", $$1 / 1e6, $$2 }'

# sam build runs cargo lambda in the workspace root (CodeUri) and copies
# <root>/target/lambda/<bin>/bootstrap, so it needs the target dir there, whatever
# CARGO_TARGET_DIR says. Then sam deploy (--guided the first time: it writes samconfig.toml).
deploy: lint-infra $(CARGO_LAMBDA)
	$(INFRA_PATH) CARGO_TARGET_DIR=$(CURDIR)/target $(SAM) build -t infra/template.yaml --beta-features
	@if [ -f samconfig.toml ]; then \
	  echo "$(SAM) deploy $(STACK_ARG)"; $(INFRA_PATH) $(SAM) deploy $(STACK_ARG); \
	else \
	  echo "$(SAM) deploy --guided"; $(INFRA_PATH) $(SAM) deploy --guided $(STACK_ARG) --capabilities CAPABILITY_IAM; \
	fi

# Deletes the stack (empty the versioned bucket and lift DeletionProtection first: see docs/deploy.md).
teardown: infra-tools
	$(INFRA_PATH) $(SAM) delete $(STACK_ARG)
