#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# HTTP server benchmark: wrk (-t1 -c50) against `loom serve`'s /livez and against nginx with one
# worker returning the same bytes, in the same run, in interleaved rounds, with wrk and the
# servers pinned to different cores. Prints each round, the medians and the ratio, and loom's
# idle RSS and time from exec to ready.
# Usage: bench/http.sh [ROUNDS] [DURATION]     (defaults: 3 rounds of 10s)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
rounds=${1:-${ROUNDS:-3}}
dur=${2:-${DURATION:-10s}}
for tool in wrk nginx taskset; do
    command -v $tool >/dev/null || { echo "bench/http.sh: $tool is missing (scripts/deps.sh bench)" >&2; exit 1; }
done
[ -x "$LOOM" ] || { echo "bench/http.sh: build loom first (make)" >&2; exit 1; }

bench_work

# loom: time from exec to the first 200 from /readyz, measured from outside.
lport=$(free_port)
read -r ready_ms loom_pid < <($PY - "$LOOM" "$lport" "$SERVER_CPU" "$work" <<'PY'
import os, socket, subprocess, sys, time
loom, port, cpu, work = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
t0 = time.perf_counter()
p = subprocess.Popen(["taskset", "-c", cpu, loom, "serve", "echo", f"--echo.listen=127.0.0.1:{port}",
                      f"--data-dir={work}/data", "--log-level=warn"],
                     stdout=subprocess.DEVNULL, stderr=open(f"{work}/loom.log", "w"),
                     start_new_session=True)
req = b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n"
while True:
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=1)
        s.sendall(req)
        if s.recv(64).startswith(b"HTTP/1.1 200"):
            break
    except OSError:
        time.sleep(0.0005)
print(f"{(time.perf_counter() - t0) * 1000:.1f} {p.pid}")
PY
)
pids+=("$loom_pid")
sleep 0.2
idle_rss=$(rss_kb "$loom_pid")

nport=$(free_port)
cat > "$work/nginx.conf" <<NGINX
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
        location = /livez { default_type "text/plain; charset=utf-8"; return 200 "ok\n"; }
    }
}
NGINX
taskset -c $SERVER_CPU nginx -c "$work/nginx.conf" -p "$work" >/dev/null 2>&1 &
pids+=($!)
wait_http "http://127.0.0.1:$nport/livez"
wait_http "http://127.0.0.1:$lport/livez"

echo "bench/http.sh: wrk -t1 -c50 -d$dur on cpu $CLIENT_CPU, servers on cpu $SERVER_CPU, $rounds interleaved rounds"
loom_runs=() nginx_runs=()
for r in $(seq 1 "$rounds"); do
    l=$(wrk_rps "http://127.0.0.1:$lport/livez" "$dur")
    n=$(wrk_rps "http://127.0.0.1:$nport/livez" "$dur")
    loom_runs+=("$l")
    nginx_runs+=("$n")
    printf '  round %d: loom %10.0f req/s   nginx %10.0f req/s   ratio %s\n' "$r" "$l" "$n" "$(ratio "$l" "$n")"
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
lm=$(median "${loom_runs[@]}")
nm=$(median "${nginx_runs[@]}")
printf 'median: loom %.0f req/s, nginx %.0f req/s, loom/nginx = %s (target >= 0.90)\n' "$lm" "$nm" "$(ratio "$lm" "$nm")"
printf 'loom: ready %s ms after exec (target < 100), idle RSS %s KiB (target < 10240), RSS after load %s KiB\n' \
    "$ready_ms" "$idle_rss" "$(rss_kb "$loom_pid")"
