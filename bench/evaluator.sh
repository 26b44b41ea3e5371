#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Model evaluator benchmark: loom's XGBoost evaluator against libxgboost itself, in one process.
# Trains the breast-cancer model (binary:logistic, 100 trees, depth 6) with Python XGBoost
# (tests/models/train.py, into a temporary directory), then bench_evaluator times one row per
# call and 10,000 rows on every core (XGBoost with nthread = nproc, loom splitting the rows over
# nproc threads) and compares every prediction. Prints times and ratios; exits non-zero if loom
# and XGBoost differ by more than 1e-6 anywhere. Targets: >= 30x faster for one row, >= 2x for
# 10,000 rows (printed as PASS/MISS; only disagreement fails the script).
# Usage: bench/evaluator.sh [ROWS]     (default 10000)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
. "$here/lib.sh"
rows=${1:-10000}

"$root/scripts/deps.sh" test
BIN=${BENCH_EVALUATOR:-$root/build/bench/bench_evaluator}
if [ ! -x "$BIN" ] || [ -n "$(find "$root/lib" "$root/include" "$here/evaluator.c" -newer "$BIN" -print -quit)" ]; then
    cmake --preset release >/dev/null
    cmake --build --preset release --target bench_evaluator -j "$NCPU" >/dev/null
fi
[ -x "$BIN" ] || { echo "bench/evaluator.sh: no bench_evaluator (is libxgboost-dev installed?)" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
$PY "$root/tests/models/train.py" "$work" 2>/dev/null

out=$("$BIN" "$work/cancer/1/model.json" "$work/cancer.rows.json" "$rows") || status=$?
echo "$out"
status=${status:-0}
if [ "$status" -ne 0 ]; then
    echo "FAIL: loom and XGBoost disagree by more than 1e-6" >&2
    exit "$status"
fi
one=$(awk '/^1 row:/ {print $(NF-1)}' <<<"$out" | tr -d x)
many=$(awk '/rows:/ && !/^1 row:/ {print $(NF-1)}' <<<"$out" | tr -d x)
verdict() { awk -v r="$1" -v t="$2" 'BEGIN { print (r >= t ? "PASS" : "MISS") }'; }
echo "targets: 1 row >= 30x: $(verdict "$one" 30) (${one}x); $rows rows >= 2x: $(verdict "$many" 2) (${many}x)"
