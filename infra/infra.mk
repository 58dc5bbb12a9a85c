# Deployment targets, included by the top-level Makefile. See docs/deploy.md.
INFRA_VENV := $(CURDIR)/.venv-infra
SAM := $(INFRA_VENV)/bin/sam
CARGO_LAMBDA := $(INFRA_VENV)/bin/cargo-lambda

.PHONY: lint-infra build-lambdas deploy teardown

# sam validate --lint, cfn-lint and checkov on infra/template.yaml.
lint-infra:
	infra/lint.sh

$(CARGO_LAMBDA):
	@echo "installing cargo-lambda (with zig for cross-compiling) into $(INFRA_VENV)"
	python3 -m venv $(INFRA_VENV)
	$(INFRA_VENV)/bin/pip install --quiet --disable-pip-version-check cargo-lambda

# Both bootstrap binaries for arm64 (Graviton), then their sizes.
build-lambdas: rust $(CARGO_LAMBDA)
	PATH=$(INFRA_VENV)/bin:$$PATH $(CARGO_LAMBDA) lambda build --release --arm64 -p chunker -p detector
	@ls -l $(CARGO_TARGET_DIR)/lambda/chunker/bootstrap $(CARGO_TARGET_DIR)/lambda/detector/bootstrap

# sam build (cargo-lambda under the hood) + sam deploy (--guided the first time).
deploy: lint-infra $(CARGO_LAMBDA)
	PATH=$(INFRA_VENV)/bin:$$PATH $(SAM) build -t infra/template.yaml --beta-features
	@if [ -f samconfig.toml ]; then PATH=$(INFRA_VENV)/bin:$$PATH $(SAM) deploy; \
	else PATH=$(INFRA_VENV)/bin:$$PATH $(SAM) deploy --guided --capabilities CAPABILITY_IAM; fi

teardown:
	$(SAM) delete
