#!/usr/bin/env bash
# The soak run: `stratus up` under mixed shop traffic with a fault every few minutes, reporting
# error counts and the memory growth of every process (not in CI: it takes an hour).
#
#   bench/soak.sh                                   # 60 min, release build
#   SOAK_MINUTES=20 WARMUP_MINUTES=3 bench/soak.sh  # shorter
#   STRATUS_BIN=target/debug/stratus bench/soak.sh  # another build (say so in the results)
#
# Uses ports SOAK_PORT_BASE+70..+600 (default 18070-18600) on loopback. The binary is copied
# first, so rebuilding while the soak runs changes nothing under it. Work in bench/soak.py.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v python3 >/dev/null || { echo "python3 is needed" >&2; exit 1; }
BIN=${STRATUS_BIN:-target/release/stratus}
if [ "$BIN" = target/release/stratus ] && [ ! -x "$BIN" ]; then cargo build --release -j2; fi
copy=$(mktemp -d)/stratus
cp "$BIN" "$copy"
exec python3 bench/soak.py "$copy"
