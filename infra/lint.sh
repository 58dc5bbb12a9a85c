#!/usr/bin/env bash
# Lints the SAM template with sam validate --lint, cfn-lint and checkov, installing them
# into .venv-infra (pip) on first use. Every suppression lives in the template's
# Metadata with its reason.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv="$root/.venv-infra"
template="$root/infra/template.yaml"
if [ ! -x "$venv/bin/checkov" ] || [ ! -x "$venv/bin/sam" ] || [ ! -x "$venv/bin/cfn-lint" ]; then
    echo "lint-infra: installing cfn-lint, checkov and aws-sam-cli into $venv (first run only)" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check cfn-lint checkov aws-sam-cli >&2
fi
export AWS_DEFAULT_REGION="${AWS_DEFAULT_REGION:-us-east-1}"
export SAM_CLI_TELEMETRY=0
echo "== sam validate --lint"
"$venv/bin/sam" validate --lint -t "$template"
echo "== cfn-lint"
"$venv/bin/cfn-lint" "$template"
echo "cfn-lint: no findings"
echo "== checkov"
"$venv/bin/checkov" -f "$template" --framework cloudformation --quiet --compact --skip-download
