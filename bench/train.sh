#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Training benchmark: the same XGBoost training (the same `loom demo data fraud` CSV, split,
# parameters, rounds and threads) through loom's trainer and straight through libxgboost's C
# API (bench/train_capi.c, compiled here), in the same run, in interleaved rounds. The trainer's
# time is its job report's submit_to_trained (from the create request to the last round: queue,
# CSV load and split, training with per-round progress); the C API's is from its start to the
# last round (CSV load and split, training with the same per-round evaluation). Both print the
# model's SHA-256: equal digests show that both did exactly the same work.
# Usage: bench/train.sh [ROUNDS] [ROWS] [TREES]     (defaults: 5 rounds, 200000 rows, 100 trees)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
rounds=${1:-${ROUNDS:-5}}
rows=${2:-${ROWS:-200000}}
trees=${3:-${TREES:-100}}
[ -x "$LOOM" ] || { echo "bench/train.sh: build loom first (make)" >&2; exit 1; }
[ -f /usr/include/xgboost/c_api.h ] || { echo "bench/train.sh: libxgboost-dev is missing (scripts/deps.sh build)" >&2; exit 1; }

bench_work

cc -O2 -std=c17 -Wall "$here/train_capi.c" -o "$work/train_capi" -lxgboost -lcrypto -lm
"$LOOM" demo data fraud --rows "$rows" --seed 1 --out "$work/fraud.csv" 2>/dev/null

tport=$(free_port)
rport=$(free_port)
"$LOOM" serve trainer registry --data-dir="$work/data" --log-level=warn \
    --trainer.listen=127.0.0.1:$tport --registry.listen=127.0.0.1:$rport \
    --trainer.registry=http://127.0.0.1:$rport 2>"$work/loom.log" &
pids+=($!)
wait_http "http://127.0.0.1:$tport/readyz"
wait_http "http://127.0.0.1:$rport/readyz"

# One trainer job: prints "<submit_to_trained ms> <nthread> <model digest>".
trainer_job() {
    $PY - "http://127.0.0.1:$tport" "$work/fraud.csv" "$trees" <<'PY'
import json, sys, time, urllib.request
base, path, trees = sys.argv[1], sys.argv[2], int(sys.argv[3])
def call(method, url, body=None):
    req = urllib.request.Request(base + url, data=body, method=method)
    req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.load(r)
digest = call("POST", "/api/v1/datasets", open(path, "rb").read())["digest"]
spec = {"model": "bench", "dataset": digest, "label": "is_fraud", "sensitive": "region",
        "params": {"max_depth": 6, "eta": 0.1}, "rounds": trees,
        "split": {"validation": 0.2, "seed": 42}}
job = call("POST", "/api/v1/training-jobs", json.dumps(spec).encode())
while job["status"] in ("queued", "running"):
    time.sleep(0.05)
    job = call("GET", f"/api/v1/training-jobs/{job['id']}?history=false")
if job["status"] != "succeeded":
    sys.exit(f"trainer job {job['status']}: {job['error']}")
rep = job["report"]
print(f"{rep['timings_ms']['submit_to_trained']:.1f} {rep['parameters']['nthread']} {job['model_digest']}")
PY
}

median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

# A warm-up of each (page cache, first allocations), not counted.
read -r _ nthread _ < <(trainer_job)
capi() { "$work/train_capi" "$work/fraud.csv" is_fraud region "$trees" "$nthread" 42 0.2 max_depth=6 eta=0.1; }
capi >/dev/null

echo "bench/train.sh: $rows rows, $trees rounds of max_depth 6, $nthread threads, $rounds interleaved rounds"
t_runs=() c_runs=()
for r in $(seq 1 "$rounds"); do
    read -r t _ tdigest < <(trainer_job)
    cline=$(capi)
    c=$(sed -E 's/.*capi_ms=([0-9.]+).*/\1/' <<<"$cline")
    cdigest=$(sed -E 's/.*digest=([a-z0-9:]+).*/\1/' <<<"$cline")
    same=$([ "$tdigest" = "$cdigest" ] && echo "same model" || echo "DIFFERENT MODELS")
    t_runs+=("$t")
    c_runs+=("$c")
    printf '  round %d: trainer %8.1f ms   C API %8.1f ms   ratio %s   (%s)\n' "$r" "$t" "$c" "$(ratio "$t" "$c")" "$same"
done
tm=$(median "${t_runs[@]}")
cm=$(median "${c_runs[@]}")
printf 'median: trainer %.1f ms, C API %.1f ms, trainer/C API = %s (target <= 1.10)\n' "$tm" "$cm" "$(ratio "$tm" "$cm")"
