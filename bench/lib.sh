#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Shared helpers for the benchmarks: free ports, waiting for a URL, wrk runs parsed to numbers,
# CPU pinning. Sourced, not run.

LOOM=${LOOM:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/build/loom}
PY=/usr/bin/python3
NCPU=$(nproc)
# The server gets the last CPU and the load generator the first, so they never share a core.
SERVER_CPU=$((NCPU - 1))
CLIENT_CPU=0

# bench_work: a temporary directory in $work, and the processes whose pids a script appends to
# the array pids, all stopped and removed when the script exits.
bench_work() {
    work=$(mktemp -d)
    pids=()
    trap bench_cleanup EXIT
}
bench_cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null
    rm -rf "$work"
}

free_port() {
    $PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# wait_http URL [SECONDS]: until URL answers 200.
wait_http() {
    local url=$1 secs=${2:-10}
    $PY - "$url" "$secs" <<'PY'
import sys, time, urllib.request
url, secs = sys.argv[1], float(sys.argv[2])
end = time.time() + secs
while time.time() < end:
    try:
        if urllib.request.urlopen(url, timeout=1).status == 200:
            sys.exit(0)
    except Exception:
        time.sleep(0.01)
sys.exit(f"{url} did not answer 200 within {secs} s")
PY
}

# wrk_rps URL DURATION [SCRIPT]: requests per second (float) from one pinned wrk run.
wrk_rps() {
    local url=$1 dur=$2 script=${3:-}
    local args=(-t1 -c50 -d"$dur" --latency)
    [ -n "$script" ] && args+=(-s "$script")
    taskset -c $CLIENT_CPU wrk "${args[@]}" "$url" | tee -a "${WRK_LOG:-/dev/null}" |
        awk '/Requests\/sec/ {print $2}'
}

rss_kb() {
    awk '/VmRSS/ {print $2}' "/proc/$1/status"
}

ratio() {
    awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }'
}
