#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Run a libFuzzer target for a few seconds over a scratch copy of its committed seed corpus.
# Usage: run-fuzzer.sh FUZZER CORPUS_DIR SECONDS
set -euo pipefail
fuzzer=$1 corpus=$2 seconds=$3
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp -r "$corpus"/. "$work"/
exec "$fuzzer" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    "$work"
