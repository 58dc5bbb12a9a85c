#!/usr/bin/env bash
# Installs what the local pipeline, the end-to-end tests and make deploy-check need, only
# if missing, and prints shell exports telling them where it is:
#   - moto with its server extras, pinned (infra/requirements/moto.txt), in a venv
#     under $TXPIPE_TOOLS_DIR (default <repo>/.tools; CI keeps it outside the clone)
#                                                                  -> TXPIPE_MOTO_CMD
#   - PostgreSQL server binaries (Debian package `postgresql`)     -> TXPIPE_PG_BIN
#   - a headless browser for the report page's test (Debian package `chromium`)
#                                                                  -> TXPIPE_CHROMIUM
# Usage: eval "$(tests/ensure-tools.sh)"
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
log() { echo "tools: $*" >&2; }

moto_venv=$("$root/infra/tools.sh" moto)
moto_cmd="$moto_venv/bin/moto_server"

find_pg() {
    if [ -n "${TXPIPE_PG_BIN:-}" ] && [ -x "$TXPIPE_PG_BIN/initdb" ]; then echo "$TXPIPE_PG_BIN"; return; fi
    if command -v initdb >/dev/null && command -v pg_ctl >/dev/null; then dirname "$(readlink -f "$(command -v initdb)")"; return; fi
    for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
        if [ -x "$d/initdb" ]; then echo "$d"; return; fi
    done
}
sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"
pg_bin=$(find_pg)
if [ -z "$pg_bin" ]; then
    log "installing the PostgreSQL server (Debian package postgresql) with apt-get (first run only)"
    $sudo apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq postgresql >&2
    pg_bin=$(find_pg)
    [ -n "$pg_bin" ] || { log "PostgreSQL server binaries still not found; set TXPIPE_PG_BIN"; exit 1; }
fi
# Postgres refuses to run as root; the tests then run it as `nobody` through setpriv.
if [ "$(id -u)" -eq 0 ] && ! command -v setpriv >/dev/null; then
    log "setpriv (util-linux) is needed to run Postgres as nobody when root"; exit 1
fi

find_chromium() {
    if [ -n "${TXPIPE_CHROMIUM:-}" ] && [ -x "$TXPIPE_CHROMIUM" ]; then echo "$TXPIPE_CHROMIUM"; return; fi
    for c in chromium chromium-browser; do
        if command -v "$c" >/dev/null; then command -v "$c"; return; fi
    done
}
chromium=$(find_chromium)
if [ -z "$chromium" ]; then
    log "installing a headless browser (Debian package chromium) with apt-get (first run only)"
    $sudo apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium >&2
    chromium=$(find_chromium)
    [ -n "$chromium" ] || { log "chromium still not found; set TXPIPE_CHROMIUM"; exit 1; }
fi

echo "export TXPIPE_MOTO_CMD='$moto_cmd'"
echo "export TXPIPE_CHROMIUM='$chromium'"
echo "export TXPIPE_PG_BIN='$pg_bin'"
