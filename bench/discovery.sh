#!/usr/bin/env bash
# How fast discovery notices a new, a killed and a frozen instance, seen through the gateway.
#
#   bench/discovery.sh              # 20 trials each of kill -9 and SIGSTOP, 40 of a new instance
#   TRIALS=50 bench/discovery.sh
#   APPEND=0 bench/discovery.sh     # print only; do not append the results to bench/README.md
#   STRATUS_BIN=target/debug/stratus bench/discovery.sh   # another build (say so in the results)
#   EXTRA=10000 bench/discovery.sh  # with 10,000 other instances registered, live and probed
#                                   # (nginx processes on EXTRA_PORT_BASE.., bench/instance-farm.sh)
#
# Needs python3 and a release build (built when missing). Everything listens on loopback only.
# The work is in bench/discovery.py; the results are printed as a Markdown table and appended to
# bench/README.md under "Discovery: detection times".
#
# Machine caveat: the registry, gateway, instances and client share this machine's cores, and
# the numbers are latencies of a few milliseconds to a second: a busy machine (a compile) shows
# in the tails.
set -euo pipefail
# Components started here by hand, without join credentials: plaintext inside (benchmarks only).
export STRATUS_MTLS="${STRATUS_MTLS:-off}"
cd "$(dirname "$0")/.."
command -v python3 >/dev/null || { echo "python3 is needed" >&2; exit 1; }
BIN=${STRATUS_BIN:-target/release/stratus}
if [ "$BIN" = target/release/stratus ] && [ ! -x "$BIN" ]; then cargo build --release -j2; fi
BIN=$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")
EXTRA=${EXTRA:-0}
export EXTRA EXTRA_PORT_BASE=${EXTRA_PORT_BASE:-20000}
work=$(mktemp -d); chmod 755 "$work"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
if [ "$EXTRA" -gt 0 ]; then
  command -v nginx >/dev/null || { echo "EXTRA needs nginx" >&2; exit 1; }
  # The registry keeps a probe connection to each instance.
  ulimit -n "$(ulimit -Hn)"
  wait_port() { for _ in $(seq 1 600); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened" >&2; exit 1; }
  . bench/instance-farm.sh
  check_ports_free "$EXTRA_PORT_BASE" "$EXTRA" || exit 1
  start_instance_farm "$EXTRA_PORT_BASE" "$EXTRA"
fi
results=$(python3 bench/discovery.py "$BIN")
echo "$results"
if [ "${APPEND:-1}" = 1 ]; then
  # At the end of the Discovery section of bench/README.md, before the next section's heading.
  RESULTS="$results" python3 - <<'PY'
import os
path = "bench/README.md"
lines = open(path).read().split("\n")
start = next(i for i, line in enumerate(lines) if line.startswith("## Discovery"))
end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
lines[end:end] = os.environ["RESULTS"].split("\n") + [""]
open(path, "w").write("\n".join(lines))
PY
fi
