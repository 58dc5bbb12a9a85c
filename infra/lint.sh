#!/usr/bin/env bash
# Lints infra/template.yaml with `sam validate --lint`, cfn-lint and checkov. The tools
# come from infra/tools.sh: pinned venvs under $TXPIPE_TOOLS_DIR (default <repo>/.tools),
# installed on first use and reused. Every suppression lives in the template's Metadata
# with its reason.
#   infra/lint.sh                 install if missing, then lint (exit 1 on any finding)
#   infra/lint.sh --install-only  install if missing (used by make deploy / teardown)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
template="$root/infra/template.yaml"

venvs=$("$root/infra/tools.sh" sam checkov)
sam_venv=$(sed -n 1p <<<"$venvs")
checkov_venv=$(sed -n 2p <<<"$venvs")
[ "${1:-}" = "--install-only" ] && exit 0

# Validation is offline, but the SAM translator wants a region; no credentials needed.
export AWS_DEFAULT_REGION="${AWS_DEFAULT_REGION:-${AWS_REGION:-us-east-1}}"
export SAM_CLI_TELEMETRY=0
# checkov: offline (no guideline mapping download).
export BC_SKIP_MAPPING=TRUE

echo "== sam validate --lint"
"$sam_venv/bin/sam" validate --lint -t "$template"
echo "== cfn-lint"
"$sam_venv/bin/cfn-lint" "$template"
echo "cfn-lint: no findings"
echo "== checkov"
"$checkov_venv/bin/checkov" -f "$template" --framework cloudformation --quiet --compact --skip-download
