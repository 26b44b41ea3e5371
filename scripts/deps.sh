#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Install the Debian 12 packages that loom's build, tests and benchmarks need, only those that
# are missing (so a second run is instant and offline). Usage: scripts/deps.sh [build|test|bench|all]
set -euo pipefail

build=(cmake make gcc clang libclang-rt-14-dev pkg-config libhttp-parser-dev libssl-dev libsqlite3-dev libpq-dev libargon2-dev libxgboost-dev libyaml-dev libnats-dev zlib1g-dev libhiredis-dev)
test=(python3 python3-pytest python3-requests prometheus libxgboost-dev python3-xgboost python3-sklearn python3-numpy postgresql python3-jsonschema python3-yaml nats-server python3-jwt python3-cryptography redis-server)
bench=(wrk nginx-light util-linux procps python3 python3-numpy python3-xgboost python3-sklearn python3-fastapi python3-uvicorn python3-uvloop python3-httptools)

case "${1:-all}" in
build) want=("${build[@]}") ;;
test) want=("${build[@]}" "${test[@]}") ;;
bench) want=("${build[@]}" "${bench[@]}") ;;
all) want=("${build[@]}" "${test[@]}" "${bench[@]}") ;;
*) echo "usage: $0 [build|test|bench|all]" >&2; exit 2 ;;
esac

missing=()
for p in "${want[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$' || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

sudo=
[ "$(id -u)" -eq 0 ] || sudo=sudo
echo "deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
# Update the package lists once per machine boot rather than on every call.
stamp=/tmp/.loom-apt-updated
[ -f "$stamp" ] || { $sudo apt-get update -qq && touch "$stamp"; }
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# Debian starts nginx, PostgreSQL, nats-server and Redis after installing them where an init system runs;
# the tests and benchmarks start their own, on free ports, so stop the system ones.
for svc in nginx postgresql nats-server redis-server; do
    if command -v service >/dev/null && [ -x /etc/init.d/$svc ]; then
        $sudo service $svc stop >/dev/null 2>&1 || true
    fi
done
