#!/usr/bin/env bash
# What instances of services a gateway does not route cost it: its CPU and memory with INSTANCES
# (default 1,000) instances of an unrouted service in the registry, each at a closed port.
#
#   bench/gateway-unrouted.sh
#   INSTANCES=5000 bench/gateway-unrouted.sh
#   STRATUS_BIN=/tmp/stratus-before bench/gateway-unrouted.sh   # another build (a before and after)
#
# Needs python3 and a release build (built when missing); loopback only. Prints one table row:
# | instances | gateway CPU | gateway RSS |. Results: bench/README.md, "gateway-unrouted.sh".
set -euo pipefail
cd "$(dirname "$0")/.."
command -v python3 >/dev/null || { echo "python3 is needed" >&2; exit 1; }
BIN=${STRATUS_BIN:-target/release/stratus}
if [ "$BIN" = target/release/stratus ] && [ ! -x "$BIN" ]; then cargo build --release -j2; fi
BIN=$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")
exec python3 bench/gateway-unrouted.py "$BIN"
