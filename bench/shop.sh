#!/usr/bin/env bash
# The order saga's latency: order placed -> paid -> notified, on each broker backend.
#
#   bench/shop.sh                  # 200 orders per backend (the embedded SQLite queue, NATS)
#   ORDERS=500 bench/shop.sh
#   STRATUS_BIN=target/debug/stratus bench/shop.sh   # another build (say so in the results)
#
# Needs python3 and a release build (built when missing); the NATS run needs nats-server (Debian
# package nats-server) and is skipped without it. Everything listens on loopback only. Orders are
# placed one at a time through the gateway, so the figures are the saga's latency on an idle
# system, not its throughput. The work is in bench/shop.py; the results are printed as Markdown.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v python3 >/dev/null || { echo "python3 is needed" >&2; exit 1; }
BIN=${STRATUS_BIN:-target/release/stratus}
if [ "$BIN" = target/release/stratus ] && [ ! -x "$BIN" ]; then cargo build --release -j2; fi
BIN=$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")
exec python3 bench/shop.py "$BIN" "${ORDERS:-200}"
