#!/usr/bin/env bash
# The project's Python tools, each in a venv of its own built from an exact lock file
# (infra/requirements/<name>.txt: every package pinned with ==, installed with
# pip --no-deps, so pip resolves nothing). A venv is reused while its lock file and the
# Python version are unchanged, and rebuilt when either changes.
#
# Where: $TXPIPE_TOOLS_DIR/<name>, by default <repo>/.tools/<name> (gitignored). CI sets
# TXPIPE_TOOLS_DIR outside the clone (.ci/run) so that later runs reuse the venvs.
#
#   infra/tools.sh NAME...          make sure the venvs exist; print the path of each, one a line
#   infra/tools.sh --relock NAME    re-resolve NAME's top-level requirements (the `# top:`
#                                   line of its lock file) in a scratch venv and rewrite the lock
# NAME: sam (aws-sam-cli + cfn-lint), checkov, moto (moto_server, samtranslator, boto3),
# cargo-lambda (with ziglang).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
tools_dir="${TXPIPE_TOOLS_DIR:-$root/.tools}"
locks="$root/infra/requirements"
python="${TXPIPE_PYTHON:-python3}"
log() { echo "tools: $*" >&2; }

need_python() {
    command -v "$python" >/dev/null || { log "python3 is required (apt-get install python3 python3-venv)"; exit 1; }
    "$python" -c 'import venv, ensurepip' 2>/dev/null \
        || { log "$python cannot make venvs (apt-get install python3-venv)"; exit 1; }
}

fingerprint() { # lock file + interpreter version
    { cat "$1"; "$python" -c 'import sys; print(sys.version)'; } | sha256sum | cut -d' ' -f1
}

ensure() {
    local name=$1 lock="$locks/$1.txt" venv="$tools_dir/$1"
    [ -f "$lock" ] || { log "no lock file $lock"; exit 1; }
    need_python
    mkdir -p "$tools_dir"
    local want; want=$(fingerprint "$lock")
    if [ "$(cat "$venv/.txpipe-lock" 2>/dev/null)" = "$want" ]; then echo "$venv"; return; fi
    # One installer at a time per venv (make -j, or two checkouts sharing the tools dir).
    exec 9>"$tools_dir/.$name.lock"
    flock 9
    if [ "$(cat "$venv/.txpipe-lock" 2>/dev/null)" != "$want" ]; then
        local start=$SECONDS
        log "installing $name into $venv from infra/requirements/$name.txt (pinned, no resolving)"
        rm -rf "$venv"
        "$python" -m venv "$venv"
        "$venv/bin/pip" install --quiet --disable-pip-version-check --no-input --no-deps \
            -r "$lock" >&2 || { log "pip failed installing $name (see above)"; rm -rf "$venv"; exit 1; }
        echo "$want" > "$venv/.txpipe-lock"
        log "$name installed in $((SECONDS - start)) s"
    fi
    exec 9>&-
    echo "$venv"
}

relock() {
    local name=$1 lock="$locks/$1.txt"
    local top; top=$(sed -n 's/^# top: //p' "$lock")
    [ -n "$top" ] || { log "$lock has no '# top:' line"; exit 1; }
    local scratch; scratch=$(mktemp -d)
    need_python
    "$python" -m venv "$scratch/venv"
    # shellcheck disable=SC2086 # the top-level specs are words
    "$scratch/venv/bin/pip" install --quiet --disable-pip-version-check $top >&2
    { sed -n '/^#/p' "$lock"; "$scratch/venv/bin/pip" freeze --all --exclude pip; } > "$lock.new"
    mv "$lock.new" "$lock"
    rm -rf "$scratch"
    log "rewrote $lock; commit it"
}

[ $# -gt 0 ] || { sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
if [ "$1" = "--relock" ]; then
    shift
    for n in "$@"; do relock "$n"; done
    exit 0
fi
if [ $# -eq 1 ]; then ensure "$1"; exit 0; fi
# Several: installed side by side (pip spends most of its time waiting on downloads).
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
pids=()
for n in "$@"; do ensure "$n" > "$out/$n" & pids+=($!); done
failed=0
for p in "${pids[@]}"; do wait "$p" || failed=1; done
[ $failed -eq 0 ] || exit 1
for n in "$@"; do cat "$out/$n"; done
