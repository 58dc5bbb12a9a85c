#!/usr/bin/env bash
# make deploy-check: creates the SAM stack in moto's CloudFormation and runs the real
# handlers against it (see infra/deploy_check.py).
# Usage: infra/deploy-check.sh <txpipe binary> <chunker binary> <detector binary> <db-setup binary>
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
[ $# -eq 4 ] || { echo "usage: infra/deploy-check.sh <txpipe binary> <chunker binary> <detector binary> <db-setup binary>" >&2; exit 2; }
eval "$("$root/tests/ensure-tools.sh")"
moto_venv=$("$root/infra/tools.sh" moto)
export AWS_DEFAULT_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true
exec "$moto_venv/bin/python" "$root/infra/deploy_check.py" "$1" "$2" "$3" "$4"
