#!/usr/bin/env bash
# The engine's figures on three cardinality shapes, side by side, and DuckDB doing the
# same incremental job on the same chunks as a yardstick (a ratio measured in this run).
#
#   bench/run.sh                 # what `make bench` runs first
#   SIZE=1000000 bench/run.sh    # smaller large shapes (default 3,000,000 rows)
#
# Per shape: the engine on one thread as the detector runs it per chunk (apply + delta
# encode + detection records; median of RUNS replays, by the clock and by CPU time), the
# whole `txpipe replay` process (median wall time of REPLAYS runs, and its peak resident
# memory per distinct (merchant, customer) pair, read from /proc by the process itself),
# delta bytes per chunk, snapshot size and decode time, and DuckDB's time for the same
# chunks. Data goes to data/bench/<shape> (regenerated when its parameters change).
#
# Needs: cargo, python3 (DuckDB is installed, pinned, into a venv outside the repo:
# ${TXPIPE_TOOLS_DIR:-<repo>/.tools}/bench-venv, like the other tools). Linux (reads /proc).
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO=${CARGO:-cargo}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
BIN=${BIN:-$CARGO_TARGET_DIR/release/txpipe}
SIZE=${SIZE:-3000000}
RUNS=${RUNS:-5}
REPLAYS=${REPLAYS:-3}
DUCKDB_VERSION=1.1.3
TOOLS_DIR=${TXPIPE_TOOLS_DIR:-$PWD/.tools}
VENV=$TOOLS_DIR/bench-venv
OUT=${OUT:-data/bench}

[ -x "$BIN" ] || $CARGO build --release -p txpipe-cli

# DuckDB, pinned, in its own venv (created once).
if ! "$VENV/bin/python" -c "import duckdb, sys; sys.exit(duckdb.__version__ != '$DUCKDB_VERSION')" 2>/dev/null; then
  echo "installing duckdb==$DUCKDB_VERSION into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "duckdb==$DUCKDB_VERSION"
fi

# shape -> generate arguments
declare -A ARGS=(
  [banksim]="--shape banksim"
  [high-cardinality]="--shape high-cardinality --rows $SIZE"
  [new-pairs]="--shape new-pairs --rows $SIZE"
)
SHAPES=(banksim high-cardinality new-pairs)

for shape in "${SHAPES[@]}"; do
  dir=$OUT/$shape
  if [ "$(cat "$dir/.args" 2>/dev/null)" != "${ARGS[$shape]}" ]; then
    echo "generating $dir (${ARGS[$shape]})"
    # shellcheck disable=SC2086
    "$BIN" generate ${ARGS[$shape]} --out "$dir" >/dev/null
    echo "${ARGS[$shape]}" >"$dir/.args"
  fi
done

# Every pattern at its default, for the engine bench, the replays and the yardstick
# alike (DuckDB reads them from here: the engine's values, never restated).
for var in $("$BIN" patterns --env | cut -d= -f1); do unset "$var"; done
# shellcheck disable=SC2046
export $("$BIN" patterns --env)

median() { sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
field() { tr ' ' '\n' | sed -n "s/^$1=//p"; }

declare -A ROW
for shape in "${SHAPES[@]}"; do
  dir=$PWD/$OUT/$shape
  echo "== $shape"
  # The engine runs on one thread; snapshot decoding also on all cores, so no pinning.
  engine=$(TXPIPE_BENCH_DATA=$dir TXPIPE_BENCH_RUNS=$RUNS \
    $CARGO bench -q -p txpipe-core --bench engine 2>/dev/null | tee /dev/stderr | grep '^summary')
  walls=() peaks=()
  for _ in $(seq "$REPLAYS"); do
    start=$(date +%s.%N)
    report=$("$BIN" replay --transactions "$dir/transactions.csv" \
      --importance "$dir/CustomerImportance.csv" --out "$PWD/out/bench-$shape")
    end=$(date +%s.%N)
    walls+=("$(echo "$end - $start" | bc -l)")
    peaks+=("$(echo "$report" | sed -n 's/.*process peak \([0-9.]*\) MB = \([0-9.]*\) bytes per pair.*/\1 \2/p')")
  done
  wall=$(printf '%s\n' "${walls[@]}" | median)
  peak=$(printf '%s\n' "${peaks[@]}" | awk '{ print $1 }' | median)
  per_pair=$(printf '%s\n' "${peaks[@]}" | awk '{ print $2 }' | median)
  duck=$("$VENV/bin/python" bench/duckdb_ref.py "$dir" | tee /dev/stderr)
  rows=$(echo "$engine" | field rows)
  rate=$(echo "$engine" | field rows_per_s)
  engine_s=$(echo "$rows / $rate" | bc -l)
  duck_s=$(echo "$(echo "$duck" | field load_s) + $(echo "$duck" | field chunks_s)" | bc -l)
  ROW[$shape]=$(printf '%-17s %9s %9s %7.2f %7.2f %8.2f %7.2f %7.0f %6.1f %8.0f %7.1f %6.0f/%-6.0f %7.1f %6.0fx' \
    "$shape" "$rows" "$(echo "$engine" | field pairs)" \
    "$(echo "$rate / 1000000" | bc -l)" "$(echo "$(echo "$engine" | field cpu_rows_per_s) / 1000000" | bc -l)" \
    "$wall" "$(echo "$rows / $wall / 1000000" | bc -l)" "$peak" "$per_pair" \
    "$(echo "$engine" | field delta_bytes)" "$(echo "$(echo "$engine" | field snapshot_bytes) / 1000000" | bc -l)" \
    "$(echo "$engine" | field decode_ms_1)" "$(echo "$engine" | field decode_ms_n)" \
    "$duck_s" "$(echo "$duck_s / $engine_s" | bc -l)")
  # The yardstick must have done the same work.
  for pattern in child:1 dei:2; do
    name=${pattern%:*}
    index=${pattern#*:}
    mine=$(echo "$engine" | field "detections" | cut -d/ -f"$((index + 1))")
    theirs=$(echo "$duck" | field "$name")
    if [ -n "$mine" ] && [ "$mine" != "$theirs" ]; then
      echo "MISMATCH on $shape: $name engine $mine, duckdb $theirs" >&2
      exit 1
    fi
  done
done

echo "== csv scanning (the hand fast path against csv-core alone, on banksim)"
TXPIPE_BENCH_DATA=$PWD/$OUT/banksim $CARGO bench -q -p txpipe-core --bench scan 2>/dev/null

echo
echo "eng: one thread, apply + delta encode + detection records per chunk, M rows/s by the clock (eng-cpu: by CPU time)"
echo "replay: whole 'txpipe replay' process, median of $REPLAYS (M/s = rows / replay-s); peakMB = its VmHWM; B/pair = peak / distinct pairs"
echo "delta-B: median bytes per chunk; snapMB: one-blob snapshot; decode-ms: on 1 thread / on all cores"
echo "duckdb: same chunks, pair and merchant upserts + CHILD + DEI, one thread, load + chunks; ratio = duckdb time / engine time"
printf '%-17s %9s %9s %7s %7s %8s %7s %7s %6s %8s %7s %13s %7s %7s\n' \
  shape rows pairs eng eng-cpu replay-s M/s peakMB B/pair delta-B snapMB decode-ms1/n duck-s ratio
for shape in "${SHAPES[@]}"; do echo "${ROW[$shape]}"; done
