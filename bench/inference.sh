#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Inference benchmark (the acceptance benchmark of the inference service): one-row KServe v2
# REST predictions (POST /v2/models/cancer/infer, the breast-cancer XGBoost model of
# tests/models/train.py: binary:logistic, 100 trees, depth 6, 30 features) against three peers
# in the same run: loom (--inference.threads=1), FastAPI + uvicorn (one worker, uvloop,
# httptools) predicting with Python XGBoost's inplace_predict (bench/peers/fastapi_v2.py), and
# nginx (one worker) returning a fixed copy of loom's answer (the ceiling of the HTTP path).
# The servers are pinned to the last cpu, the load generators to cpu 0. Before measuring, loom's
# and FastAPI's answers are compared (to 1e-6) on every test row without NaN, and nginx's bytes
# with loom's. Then: interleaved rounds of wrk -t1 -c50 (max req/s, p50, p99), the medians, the
# ratios, each server's RSS after the load; then interleaved rounds of bench/loadgen.c (open
# loop, latency from the scheduled time) at half of loom's median max rate against loom, and at
# the same rate against the peers whose max reaches it, and their medians. Targets are printed
# next to the figures. Exits non-zero if a peer fails to start or answers wrong (a missed target
# is reported, not fatal).
# Usage: bench/inference.sh [ROUNDS] [DURATION]     (defaults: 3 rounds of 10s; also ROUNDS=,
# DURATION=, LOOM=binary, BATCHING=off to drop the dynamic batching of train.py's config.json)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
rounds=${1:-${ROUNDS:-3}}
dur=${2:-${DURATION:-10s}}
fail() { echo "bench/inference.sh: $*" >&2; exit 1; }
for tool in wrk nginx taskset cc; do
    command -v $tool >/dev/null || fail "$tool is missing (scripts/deps.sh bench)"
done
$PY -c 'import fastapi, uvicorn, uvloop, httptools, xgboost, numpy, sklearn' 2>/dev/null ||
    fail "Debian's python3-fastapi, -uvicorn, -uvloop, -httptools, -xgboost, -sklearn are" \
        "needed (scripts/deps.sh bench)"
[ -x "$LOOM" ] || fail "build loom first (make)"

bench_work

# The model (only cancer in the repository, so loom's RSS is that of this one model), the request
# (the first test row without NaN) and the rows to check the answers on (every row without NaN).
$PY "$here/../tests/models/train.py" "$work/train" 2>/dev/null || fail "tests/models/train.py failed"
mkdir -p "$work/models" "$work/data"
cp -r "$work/train/cancer" "$work/models/"
# BATCHING=off drops train.py's dynamic_batching (max_queue_delay_microseconds 100) from loom's copy.
if [ "${BATCHING:-on}" = off ]; then
    $PY - "$work/models/cancer/config.json" <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))
c.pop("dynamic_batching", None)
json.dump(c, open(sys.argv[1], "w"), indent=2)
PY
fi
$PY - "$work" <<'PY'
import json, math, sys
work = sys.argv[1]
d = json.load(open(f"{work}/train/cancer.rows.json"))
rows = [(x, e[0]) for x, e in zip(d["inputs"], d["expected"]) if not any(map(math.isnan, x))]
def request(x):
    inp = {"name": "input__0", "shape": [1, len(x)], "datatype": "FP32", "data": x}
    return json.dumps({"inputs": [inp]}, separators=(",", ":"))
open(f"{work}/body.json", "w").write(request(rows[0][0]))
json.dump([[request(x), e] for x, e in rows], open(f"{work}/check.json", "w"))
PY
cat >"$work/post.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = assert(io.open("$work/body.json", "rb"))
wrk.body = f:read("*a")
f:close()
LUA
cc -O2 -o "$work/loadgen" "$here/loadgen.c" || fail "bench/loadgen.c does not build"

path=/v2/models/cancer/infer
lport=$(free_port)
taskset -c $SERVER_CPU "$LOOM" serve inference --inference.model-repository="$work/models" \
    --inference.listen=127.0.0.1:$lport --inference.threads=1 --data-dir="$work/data" \
    --log-level=info >/dev/null 2>"$work/loom.log" &
loom_pid=$!
pids+=("$loom_pid")
fport=$(free_port)
OMP_NUM_THREADS=1 taskset -c $SERVER_CPU $PY "$here/peers/fastapi_v2.py" cancer \
    "$work/models/cancer/1/model.json" "$fport" >/dev/null 2>"$work/fastapi.log" &
fastapi_pid=$!
pids+=("$fastapi_pid")
wait_http "http://127.0.0.1:$lport/v2/models/cancer/ready" 10 ||
    { cat "$work/loom.log" >&2; fail "loom did not start"; }
wait_http "http://127.0.0.1:$fport/v2/models/cancer/ready" 30 ||
    { cat "$work/fastapi.log" >&2; fail "FastAPI did not start"; }

# loom and FastAPI agree (to 1e-6, with each other and with train.py's libxgboost predictions),
# with the same response shape; loom's exact answer to the request becomes nginx's fixed answer.
$PY - "$work" "$lport" "$fport" "$path" <<'PY' || fail "loom and FastAPI do not agree"
import json, sys, urllib.request
work, lport, fport, path = sys.argv[1:5]
def post(port, body):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", body.encode(),
                                 {"Content-Type": "application/json"})
    return urllib.request.urlopen(req, timeout=10).read()
def shape(a):
    o = a["outputs"][0]
    return (a["model_name"], a["model_version"], len(a["outputs"]), o["name"], o["datatype"],
            o["shape"])
want = ("cancer", "1", 1, "output__0", "FP32", [1, 1])
measured = open(f"{work}/body.json").read()
rows = json.load(open(f"{work}/check.json"))
bad = 0
for body, expected in rows:
    lraw = post(lport, body)
    l, f = json.loads(lraw), json.loads(post(fport, body))
    lv, fv = l["outputs"][0]["data"][0], f["outputs"][0]["data"][0]
    if shape(l) != want or shape(f) != want or abs(lv - fv) > 1e-6 or abs(lv - expected) > 1e-6:
        print(f"  differ: loom {lraw.decode()}, FastAPI {json.dumps(f)}, libxgboost {expected}",
              file=sys.stderr)
        bad += 1
    if body == measured:
        open(f"{work}/answer.json", "wb").write(lraw)
print(f"answers: loom and FastAPI agree to 1e-6 on {len(rows) - bad} of {len(rows)} rows without"
      " NaN, with each other and with train.py's libxgboost predictions")
sys.exit(1 if bad or len(rows) < 3 else 0)
PY
answer=$(cat "$work/answer.json")
case $answer in *"'"* | *'$'* | *'\'*) fail "loom's answer cannot be quoted for nginx: $answer" ;; esac

nport=$(free_port)
cat >"$work/nginx.conf" <<NGINX
worker_processes 1;
daemon off;
pid $work/nginx.pid;
error_log $work/nginx-error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    keepalive_requests 1000000;
    server {
        listen 127.0.0.1:$nport;
        location = /ready { return 200 "ok\n"; }
        location = $path { default_type application/json; return 200 '$answer'; }
    }
}
NGINX
taskset -c $SERVER_CPU nginx -c "$work/nginx.conf" -p "$work" >/dev/null 2>&1 &
nginx_pid=$!
pids+=("$nginx_pid")
wait_http "http://127.0.0.1:$nport/ready" 10 || fail "nginx did not start"
$PY - "$work" "$nport" "$path" <<'PY' || fail "nginx's answer is not loom's"
import sys, urllib.request
work, port, path = sys.argv[1:4]
req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", open(f"{work}/body.json", "rb").read(),
                             {"Content-Type": "application/json"})
sys.exit(urllib.request.urlopen(req, timeout=10).read() != open(f"{work}/answer.json", "rb").read())
PY

# wrk_lat_us LABEL LOG: wrk's latency percentile LABEL (50%, 99%) in microseconds.
wrk_lat_us() {
    awk -v p="$1" '$1 == p { v = $2 + 0
        if ($2 ~ /ms$/) v *= 1000; else if ($2 ~ /[0-9]s$/) v *= 1000000
        print v }' "$2"
}
# run NAME PORT ROUND: one wrk run; prints "req/s p50_us p99_us"; fails on errors or non-2xx.
run() {
    local log=$work/wrk.$1.$3 rps
    rps=$(WRK_LOG=$log wrk_rps "http://127.0.0.1:$2$path" "$dur" "$work/post.lua") ||
        fail "wrk failed against $1"
    if [ -z "$rps" ] || grep -qE 'Non-2xx|Socket errors' "$log"; then
        cat "$log" >&2
        fail "$1 answered with errors under wrk"
    fi
    echo "$rps $(wrk_lat_us 50% "$log") $(wrk_lat_us 99% "$log")"
}
# alive NAME PID LOG: fails (with the end of LOG and the exit status) if the server is gone.
alive() {
    kill -0 "$2" 2>/dev/null && return 0
    local status=0
    wait "$2" || status=$?
    tail -20 "$3" >&2
    fail "$1 exited during the benchmark (status $status)"
}
median() {
    printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'
}
# verdict VALUE OP THRESHOLD [SHOWN]: "target OP SHOWN: met" or "...: MISSED".
verdict() {
    awk -v v="$1" -v op="$2" -v t="$3" -v s="${4:-$3}" 'BEGIN {
        ok = (op == ">=" ? v >= t : v < t); printf "target %s %s: %s", op, s, (ok ? "met" : "MISSED") }'
}
# cpu_wait_ns PID: how long the threads of PID have waited, runnable, for their cpu (schedstat):
# the time other processes took from a server, which shows in its latencies.
cpu_wait_ns() { cat /proc/"$1"/task/*/schedstat 2>/dev/null | awk '{s += $2} END {printf "%.0f", s}'; }
ms_since() { awk -v a="$1" -v b="$(cpu_wait_ns "$2")" 'BEGIN { printf "%.0f", (b - a) / 1e6 }'; }
# Other processes on the machine move every figure (latencies most): say how busy the cpus were.
busy() {
    local psi=
    [ -r /proc/pressure/cpu ] &&
        psi=", cpu pressure $(awk -F'[= ]' 'NR == 1 {print $3}' /proc/pressure/cpu)% (some, avg10)"
    echo "load average $(cut -d' ' -f1-3 /proc/loadavg)$psi"
}

echo "bench/inference.sh: $LOOM, POST $path (1 row, 30 features), dynamic batching ${BATCHING:-on}"
echo "wrk -t1 -c50 -d$dur on cpu $CLIENT_CPU, servers on cpu $SERVER_CPU, $rounds interleaved" \
    "rounds; $(busy)"
echo "(cpu wait: how long a process was runnable while others had its cpu; it inflates latencies)"
names=(loom fastapi nginx)
ports=("$lport" "$fport" "$nport")
spids=("$loom_pid" "$fastapi_pid" "$nginx_pid")
logs=("$work/loom.log" "$work/fastapi.log" "$work/nginx-error.log")
# the processes that serve (nginx's worker, not its master), for their cpu wait
wpids=("$loom_pid" "$fastapi_pid" "$(ps -o pid= --ppid "$nginx_pid" | head -1 | tr -d ' ')")
declare -A rps p50 p99
for r in $(seq 1 "$rounds"); do
    for i in 0 1 2; do
        n=${names[$i]}
        w0=$(cpu_wait_ns "${wpids[$i]}")
        out=$(run "$n" "${ports[$i]}" "$r")
        alive "$n" "${spids[$i]}" "${logs[$i]}"
        read -r a b c <<<"$out"
        rps[$n]+=" $a"
        p50[$n]+=" $b"
        p99[$n]+=" $c"
        printf '  round %d  %-8s %8.0f req/s   p50 %6.0f us   p99 %7.0f us   (cpu wait %s ms)\n' \
            "$r" "$n" "$a" "$b" "$c" "$(ms_since "$w0" "${wpids[$i]}")"
    done
done
declare -A med mp50 mp99
for n in "${names[@]}"; do
    # shellcheck disable=SC2086
    { med[$n]=$(median ${rps[$n]}); mp50[$n]=$(median ${p50[$n]}); mp99[$n]=$(median ${p99[$n]}); }
done
workers_rss=$(for w in $(ps -o pid= --ppid "$nginx_pid"); do rss_kb "$w"; done | awk '{s += $1} END {print s + 0}')
declare -A rss=([loom]=$(rss_kb "$loom_pid") [fastapi]=$(rss_kb "$fastapi_pid")
    [nginx]=$(($(rss_kb "$nginx_pid") + workers_rss)))
echo "medians (wrk -c50, closed loop), RSS after the load:"
for n in "${names[@]}"; do
    printf '  %-8s %8.0f req/s   p50 %6.0f us   p99 %7.0f us   RSS %7d KiB%s\n' "$n" "${med[$n]}" \
        "${mp50[$n]}" "${mp99[$n]}" "${rss[$n]}" "$([ "$n" != nginx ] || echo ' (master + worker)')"
done
lf=$(ratio "${med[loom]}" "${med[fastapi]}")
ln=$(ratio "${med[loom]}" "${med[nginx]}")
echo "  loom/FastAPI = $lf ($(verdict "$lf" ">=" 25)), loom/nginx = $ln ($(verdict "$ln" ">=" 0.6))"
echo "  loom RSS $(awk -v k="${rss[loom]}" 'BEGIN { printf "%.1f", k / 1024 }') MiB with the model" \
    "loaded ($(verdict "${rss[loom]}" "<" 20480 "20 MiB"))"

# Open loop at half of loom's max rate, in interleaved rounds too: loom's p99, and the peers' at
# the same absolute rate when their max reaches it.
secs=$(awk -v d="$dur" 'BEGIN { v = d + 0; if (d ~ /m$/) v *= 60; else if (d ~ /h$/) v *= 3600; print v }')
rate=$(awk -v m="${med[loom]}" 'BEGIN { printf "%d", m / 2 }')
echo "open loop at $rate req/s = 50% of loom's max (bench/loadgen.c on cpu $CLIENT_CPU," \
    "50 connections, ${secs}s after 1s of warm-up, latency from the scheduled time, in us):"
open=()
for i in 0 1 2; do
    n=${names[$i]}
    if [ "$n" != loom ] && awk -v m="${med[$n]}" -v r="$rate" 'BEGIN { exit !(m < r) }'; then
        printf '  %-8s cannot sustain %d req/s (its max is %.0f req/s): not run\n' "$n" "$rate" "${med[$n]}"
    else
        open+=("$i")
    fi
done
declare -A lg
for r in $(seq 1 "$rounds"); do
    for i in "${open[@]}"; do
        n=${names[$i]}
        alive "$n" "${spids[$i]}" "${logs[$i]}"
        w0=$(cpu_wait_ns "${wpids[$i]}")
        taskset -c $CLIENT_CPU "$work/loadgen" -c 50 -r "$rate" -d "$secs" -w 1 -b "$work/body.json" \
            "http://127.0.0.1:${ports[$i]}$path" >"$work/loadgen.$n.$r" 2>&1 ||
            { cat "$work/loadgen.$n.$r" >&2; fail "loadgen failed against $n"; }
        alive "$n" "${spids[$i]}" "${logs[$i]}"
        res=$(awk '/^RESULT/' "$work/loadgen.$n.$r")
        declare -A g=()
        for kv in ${res#RESULT }; do g[${kv%%=*}]=${kv#*=}; done
        [ "${g[non2xx]}" = 0 ] || fail "$n answered non-2xx under loadgen: $res"
        held=$(awk -v a="${g[achieved]}" -v t="${g[target]}" -v u="${g[unfinished]}" -v e="${g[errors]}" \
            'BEGIN { print (a >= 0.99 * t && u == 0 && e == 0 ? "held" : "NOT held") }')
        for k in achieved p50 p90 p99 p999 max; do lg[$n.$k]+=" ${g[$k]}"; done
        printf '  round %d  %-8s %6.0f req/s (rate %s, %d failed)  p50 %s  p90 %s  p99 %s  p99.9 %s' \
            "$r" "$n" "${g[achieved]}" "$held" "${g[errors]}" "${g[p50]}" "${g[p90]}" "${g[p99]}" "${g[p999]}"
        printf '  max %s   (cpu wait: server %s ms, loadgen %.0f ms)\n' "${g[max]}" \
            "$(ms_since "$w0" "${wpids[$i]}")" "${g[cpu_wait_ms]}"
    done
done
echo "medians (open loop at $rate req/s), in us:"
for i in "${open[@]}"; do
    n=${names[$i]}
    # shellcheck disable=SC2086
    printf '  %-8s %6.0f req/s   p50 %.0f  p90 %.0f  p99 %.0f  p99.9 %.0f  max %.0f\n' "$n" "$(median ${lg[$n.achieved]})" \
        "$(median ${lg[$n.p50]})" "$(median ${lg[$n.p90]})" "$(median ${lg[$n.p99]})" \
        "$(median ${lg[$n.p999]})" "$(median ${lg[$n.max]})"
done
# shellcheck disable=SC2086
lp99=$(median ${lg[loom.p99]} | awk '{printf "%.0f", $1}')
echo "  loom p99 at 50% of its max: $lp99 us ($(verdict "$lp99" "<" 1000 "1000 us"))"
echo "end: $(busy)"
