#!/usr/bin/env bash
# Lints infra/template.yaml with `sam validate --lint`, cfn-lint and checkov, installing
# them with pip into a project-local venv on first use (.venv-infra, or
# $TXPIPE_INFRA_VENV). Every suppression lives in the template's Metadata with its reason.
#   infra/lint.sh                 install if missing, then lint (exit 1 on any finding)
#   infra/lint.sh --install-only  install if missing (used by make deploy / teardown)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv="${TXPIPE_INFRA_VENV:-$root/.venv-infra}"
template="$root/infra/template.yaml"

if [ ! -x "$venv/bin/sam" ] || [ ! -x "$venv/bin/cfn-lint" ] || [ ! -x "$venv/bin/checkov" ]; then
    command -v python3 >/dev/null || { echo "lint-infra: python3 is required (apt-get install python3 python3-venv)" >&2; exit 1; }
    echo "lint-infra: installing aws-sam-cli, cfn-lint and checkov into $venv with pip (first run only)" >&2
    [ -x "$venv/bin/pip" ] || python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check \
        'aws-sam-cli>=1.148,<2' 'cfn-lint>=1.41,<2' 'checkov>=3.3,<4' >&2
fi
[ "${1:-}" = "--install-only" ] && exit 0

# Validation is offline, but the SAM translator wants a region; no credentials needed.
export AWS_DEFAULT_REGION="${AWS_DEFAULT_REGION:-${AWS_REGION:-us-east-1}}"
export SAM_CLI_TELEMETRY=0
# checkov: offline (no guideline mapping download).
export BC_SKIP_MAPPING=TRUE

echo "== sam validate --lint"
"$venv/bin/sam" validate --lint -t "$template"
echo "== cfn-lint"
"$venv/bin/cfn-lint" "$template"
echo "cfn-lint: no findings"
echo "== checkov"
"$venv/bin/checkov" -f "$template" --framework cloudformation --quiet --compact --skip-download
