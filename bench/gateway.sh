#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# API gateway benchmark: one-row KServe v2 predictions (POST /v2/models/cancer/infer, the
# breast-cancer XGBoost model of tests/models/train.py) sent three ways in the same run, to
# `loom serve inference --inference.threads=1` (two identical processes: one on TCP for the
# direct path, one on a unix socket behind both proxies, as a proxy on the same host as its
# replicas reaches them; only one is under load at a time):
#   direct   straight to inference over TCP;
#   gateway  through `loom serve gateway --gateway.threads=1` with everything on: a JWT from
#            identity (verified, then served from the verified-token cache), the infer scope
#            checked, the in-memory GCRA rate limit applied (limits high enough not to refuse),
#            the traffic-split lookup, header rewriting, deadline propagation, keep-alive
#            upstream connections carrying up to 16 pipelined requests each (the default
#            --gateway.inference-pipeline); access log off (--log-level=warn), as nginx's;
#   nginx    nginx with one worker as a plain reverse proxy (proxy_pass to an upstream block with
#            keepalive 64, HTTP/1.1, no auth), to the same unix socket.
# Two placements, each with interleaved rounds of wrk -t1 -c50 for req/s, p50 and p99:
#   shared   the servers share the last cpu and wrk has cpu 0: a proxy competes with inference
#            for one core, so this measures the CPU each path costs per request;
#   spread   nothing pinned: the kernel spreads wrk and the servers over every cpu, so a proxy
#            is not confined to inference's core (nearer a gateway with CPU of its own).
# Then rounds of wrk -t1 -c1 (shared) give the unloaded round trip, whose p50 difference is the
# latency the gateway adds. Answers are checked first (the three paths give the same bytes for
# the body). Prints medians, the ratios and the targets for both placements: gateway >= 0.7x
# direct and >= 1.0x nginx in req/s, added p50 < 100 us. A missed target is reported, not fatal.
# The model is served without train.py's dynamic-batching window (see below);
# BATCH_WINDOW_US=100 puts it back.
# Usage: bench/gateway.sh [ROUNDS] [DURATION]     (defaults: 3 rounds of 10s)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
rounds=${1:-${ROUNDS:-3}}
dur=${2:-${DURATION:-10s}}
fail() { echo "bench/gateway.sh: $*" >&2; exit 1; }
for tool in wrk nginx taskset; do
    command -v $tool >/dev/null || fail "$tool is missing (scripts/deps.sh bench)"
done
$PY -c 'import xgboost, numpy, sklearn' 2>/dev/null || fail "python3-xgboost, -numpy and -sklearn are needed"
[ -x "$LOOM" ] || fail "build loom first (make)"

bench_work

$PY "$here/../tests/models/train.py" "$work/train" 2>/dev/null || fail "tests/models/train.py failed"
mkdir -p "$work/models" "$work/data"
cp -r "$work/train/cancer" "$work/models/"
# train.py's config asks for a 100 us dynamic-batching window. The window is a wait no proxy
# causes, and it makes a closed loop of 50 connections through a proxy latency-bound (the
# proxy idles while a window is open) rather than a measure of what the proxy costs; so the
# model is served without it unless BATCH_WINDOW_US says otherwise.
batch_window=${BATCH_WINDOW_US:-0}
$PY - "$work/models/cancer/config.json" "$batch_window" <<'PY'
import json, sys
path, us = sys.argv[1], int(sys.argv[2])
c = json.load(open(path))
if us:
    c["dynamic_batching"] = {"max_queue_delay_microseconds": us}
else:
    c.pop("dynamic_batching", None)
json.dump(c, open(path, "w"), indent=2)
PY
$PY - "$work" <<'PY'
import json, math, sys
work = sys.argv[1]
d = json.load(open(f"{work}/train/cancer.rows.json"))
x = next(x for x in d["inputs"] if not any(map(math.isnan, x)))
inp = {"name": "input__0", "shape": [1, len(x)], "datatype": "FP32", "data": x}
open(f"{work}/body.json", "w").write(json.dumps({"inputs": [inp]}, separators=(",", ":")))
PY
path=/v2/models/cancer/infer
secret=bench-gateway-admin-secret-0123456789

# Two identical inference processes: one on TCP for the direct path, one on a unix socket for
# the two proxies (as a gateway beside its replicas on one host would reach them). Only one of
# them is under load at any time.
iport=$(free_port)
isock=$work/inference.sock
for listen in 127.0.0.1:$iport unix:$isock; do
    taskset -c $SERVER_CPU "$LOOM" serve inference --inference.model-repository="$work/models" \
        --inference.listen=$listen --inference.threads=1 --data-dir="$work/data" \
        --log-level=warn >/dev/null 2>>"$work/inference.log" &
    pids+=($!)
    inf_pids+=" $!"
    inf_pid=$! # the one behind the proxies
done
idport=$(free_port)
"$LOOM" serve identity --identity.listen=127.0.0.1:$idport --identity.issuer=http://bench.loom \
    --identity.bootstrap-secret=$secret --identity.token-ttl=1h --data-dir="$work/data" \
    --log-level=warn >/dev/null 2>"$work/identity.log" &
pids+=($!)
gport=$(free_port)
taskset -c $SERVER_CPU "$LOOM" serve gateway --gateway.listen=127.0.0.1:$gport --gateway.threads=1 \
    --gateway.inference=unix:$isock --gateway.identity=127.0.0.1:$idport \
    --gateway.issuer=http://bench.loom --gateway.rate-limit=10000000/s:10000000 \
    --data-dir="$work/data" --log-level=warn >/dev/null 2>"$work/gateway.log" &
gw_pid=$!
pids+=("$gw_pid")
nport=$(free_port)
cat >"$work/nginx.conf" <<NGINX
worker_processes 1;
$( [ "$(id -u)" = 0 ] && echo "user root;  # the worker reaches the unix socket, as the gateway does" )
daemon off;
pid $work/nginx.pid;
error_log $work/nginx-error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    keepalive_requests 1000000;
    upstream inference { server unix:$isock; keepalive 64; }
    server {
        listen 127.0.0.1:$nport;
        location = /ready { return 200 "ok\n"; }
        location / {
            proxy_pass http://inference;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
NGINX
taskset -c $SERVER_CPU nginx -c "$work/nginx.conf" -p "$work" >/dev/null 2>&1 &
nginx_pid=$!
pids+=("$nginx_pid")
wait_http "http://127.0.0.1:$iport/v2/models/cancer/ready" 20 || { cat "$work/inference.log" >&2; fail "inference did not start"; }
for _ in $(seq 200); do
    curl -sf -o /dev/null --unix-socket "$isock" http://localhost/v2/models/cancer/ready && break
    sleep 0.1
done
curl -sf -o /dev/null --unix-socket "$isock" http://localhost/v2/models/cancer/ready ||
    { cat "$work/inference.log" >&2; fail "inference on unix:$isock did not start"; }
wait_http "http://127.0.0.1:$gport/readyz" 20 || { cat "$work/gateway.log" >&2; fail "the gateway did not start"; }
wait_http "http://127.0.0.1:$nport/ready" 10 || fail "nginx did not start"

token=$(curl -sf -u "admin:$secret" -d grant_type=client_credentials -d scope=infer \
    "http://127.0.0.1:$gport/oauth/token" | $PY -c 'import json,sys; print(json.load(sys.stdin)["access_token"])') ||
    fail "no token from identity through the gateway"
cat >"$work/post.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $token"
local f = assert(io.open("$work/body.json", "rb"))
wrk.body = f:read("*a")
f:close()
LUA
# The three paths answer the same body; the gateway refuses the request without the token.
$PY - "$work" "$iport" "$gport" "$nport" "$path" "$token" <<'PY' || fail "the answers differ"
import sys, urllib.request, urllib.error
work, iport, gport, nport, path, token = sys.argv[1:7]
body = open(f"{work}/body.json", "rb").read()
def post(port, auth=True):
    h = {"Content-Type": "application/json"}
    if auth:
        h["Authorization"] = "Bearer " + token
    return urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}{path}", body, h),
                                  timeout=10).read()
a, b, c = post(iport), post(gport), post(nport)
try:
    post(gport, auth=False)
    sys.exit("the gateway answered without a token")
except urllib.error.HTTPError as e:
    assert e.code == 401, e.code
print(f"answers: direct, gateway and nginx agree ({len(a)} bytes); no token -> 401")
sys.exit(0 if a == b == c else 1)
PY

wrk_lat_us() {
    awk -v p="$1" '$1 == p { v = $2 + 0
        if ($2 ~ /ms$/) v *= 1000; else if ($2 ~ /[0-9]s$/ && $2 !~ /us$/) v *= 1000000
        print v }' "$2"
}
# place shared|spread: where the servers (every thread of inference, the gateway, nginx's
# master and worker) and wrk may run.
place() {
    local cpus wrk_cpus
    if [ "$1" = shared ]; then cpus=$SERVER_CPU wrk_cpus=$CLIENT_CPU; else cpus=0-$((NCPU - 1)) wrk_cpus=$cpus; fi
    for p in $inf_pids "$gw_pid" "$nginx_pid" $(pgrep -P "$nginx_pid"); do
        taskset -a -pc "$cpus" "$p" >/dev/null
    done
    WRK_CPUS=$wrk_cpus
}
# run NAME PORT CONNS TAG: one wrk run; prints "req/s p50_us p99_us".
run() {
    local log=$work/wrk.$1.$3.$4
    taskset -c "$WRK_CPUS" wrk -t1 -c"$3" -d"$dur" --latency -s "$work/post.lua" \
        "http://127.0.0.1:$2$path" >"$log" 2>&1 || { cat "$log" >&2; fail "wrk failed against $1"; }
    if grep -qE 'Non-2xx|Socket errors' "$log"; then
        cat "$log" >&2
        fail "$1 answered with errors under wrk"
    fi
    echo "$(awk '/Requests\/sec/ {print $2}' "$log") $(wrk_lat_us 50% "$log") $(wrk_lat_us 99% "$log")"
}
median() {
    printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'
}
verdict() {
    awk -v v="$1" -v op="$2" -v t="$3" -v s="${4:-$3}" 'BEGIN {
        ok = (op == ">=" ? v >= t : v < t); printf "target %s %s: %s", op, s, (ok ? "met" : "MISSED") }'
}

echo "bench/gateway.sh: POST $path (1 row, 30 features; dynamic batching window:" \
    "$( [ "$batch_window" = 0 ] && echo none || echo "$batch_window us")); $rounds interleaved rounds" \
    "of $dur; load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "placements: shared = the servers share cpu $SERVER_CPU (a proxy competes with inference for" \
    "one core), wrk on cpu $CLIENT_CPU; spread = nothing pinned, the kernel places wrk and the servers" \
    "on the $NCPU cpus (a proxy is not confined to inference's core)"
names=(direct gateway nginx)
ports=("$iport" "$gport" "$nport")
declare -A rps p50 p99 l50 l99
for topo in shared spread; do
    place "$topo"
    echo "wrk -t1 -c50, $topo:"
    for r in $(seq 1 "$rounds"); do
        for i in 0 1 2; do
            n=${names[$i]}
            read -r a b c <<<"$(run "$n" "${ports[$i]}" 50 "$topo$r")"
            for p in $inf_pids "$gw_pid" "$nginx_pid"; do
                kill -0 "$p" 2>/dev/null || fail "a server exited during the benchmark"
            done
            rps[$topo $n]+=" $a"
            p50[$topo $n]+=" $b"
            p99[$topo $n]+=" $c"
            printf '  round %d  %-8s %8.0f req/s   p50 %6.0f us   p99 %7.0f us\n' "$r" "$n" "$a" "$b" "$c"
        done
    done
done
place shared
echo "wrk -t1 -c1, shared:"
for r in $(seq 1 "$rounds"); do
    for i in 0 1 2; do
        n=${names[$i]}
        read -r a b c <<<"$(run "$n" "${ports[$i]}" 1 "c1$r")"
        l50[$n]+=" $b"
        l99[$n]+=" $c"
        printf '  round %d  %-8s %8.0f req/s   p50 %6.0f us   p99 %7.0f us\n' "$r" "$n" "$a" "$b" "$c"
    done
done
declare -A m mp50 mp99 ml50 ml99
echo "medians:"
for topo in shared spread; do
    for n in "${names[@]}"; do
        # shellcheck disable=SC2086
        { m[$topo $n]=$(median ${rps[$topo $n]}); mp50[$topo $n]=$(median ${p50[$topo $n]})
          mp99[$topo $n]=$(median ${p99[$topo $n]}); }
        printf '  %-6s %-8s -c50: %8.0f req/s   p50 %6.0f us   p99 %7.0f us\n' \
            "$topo" "$n" "${m[$topo $n]}" "${mp50[$topo $n]}" "${mp99[$topo $n]}"
    done
done
for n in "${names[@]}"; do
    # shellcheck disable=SC2086
    { ml50[$n]=$(median ${l50[$n]}); ml99[$n]=$(median ${l99[$n]}); }
    printf '  shared %-8s -c1:  p50 %5.0f us   p99 %6.0f us\n' "$n" "${ml50[$n]}" "${ml99[$n]}"
done
for topo in shared spread; do
    gd=$(ratio "${m[$topo gateway]}" "${m[$topo direct]}")
    gn=$(ratio "${m[$topo gateway]}" "${m[$topo nginx]}")
    nd=$(ratio "${m[$topo nginx]}" "${m[$topo direct]}")
    echo "  $topo: gateway/direct = $gd ($(verdict "$gd" ">=" 0.7)); gateway/nginx = $gn" \
        "($(verdict "$gn" ">=" 1.0)); nginx/direct = $nd"
done
added=$(awk -v a="${ml50[gateway]}" -v b="${ml50[direct]}" 'BEGIN { printf "%.0f", a - b }')
nadded=$(awk -v a="${ml50[nginx]}" -v b="${ml50[direct]}" 'BEGIN { printf "%.0f", a - b }')
echo "  added p50 (unloaded, -c1): gateway $added us ($(verdict "$added" "<" 100 "100 us")), nginx $nadded us"
echo "  RSS after the load: gateway $(rss_kb "$gw_pid") KiB, inference (behind the proxies) $(rss_kb "$inf_pid") KiB"
