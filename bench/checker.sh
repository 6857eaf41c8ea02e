#!/usr/bin/env bash
# The registry's health checker at scale: what one probe costs the registry, with COUNT live
# instances each declaring `GET /healthz` every 500 ms (as Stratus's own services do), so the
# registry probes 2 x COUNT instances a second and does nothing else.
#
#   bench/checker.sh                         # 10,000 instances, counted over 10 s
#   COUNT=2000 SECONDS_COUNTED=20 bench/checker.sh
#   STRATUS_BIN=/tmp/stratus-before bench/checker.sh   # another build (a before and after)
#
# The instances are nginx processes (bench/instance-farm.sh) on loopback ports from PORT_BASE;
# the probes they answered are read from their stub_status counters before and after the
# counted window, and the registry's CPU time (user and system, /proc/PID/stat) over the same
# window. The memory store, mutual TLS off. (Hardware instruction counters are not available on
# every machine this runs on, so CPU time is what is counted; on a busy machine a probe costs
# more of it, so compare runs made under the same load.)
#
# Prints one Markdown table row:
#   | build | instances (listed) | probes/s | CPU (% of a core) | CPU us/probe (user) | (system) | RSS MiB |
set -euo pipefail
cd "$(dirname "$0")/.."
export STRATUS_MTLS=off
command -v nginx >/dev/null || { echo "nginx is needed" >&2; exit 1; }
BIN=${STRATUS_BIN:-target/release/stratus}
if [ "$BIN" = target/release/stratus ] && [ ! -x "$BIN" ]; then cargo build --release -j2; fi
BIN=$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")
COUNT=${COUNT:-10000}
PORT_BASE=${PORT_BASE:-20000}
SECONDS_COUNTED=${SECONDS_COUNTED:-10}
REG=${REG:-18500}
# The registry keeps a probe connection to each instance.
ulimit -n "$(ulimit -Hn)"

work=$(mktemp -d); chmod 755 "$work"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
wait_port() { for _ in $(seq 1 600); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened" >&2; exit 1; }
. bench/instance-farm.sh
check_ports_free "$PORT_BASE" "$COUNT"
check_ports_free "$REG" 1
start_instance_farm "$PORT_BASE" "$COUNT"

STRATUS_DATA_DIR=$work PORT=$REG STRATUS_LOG=warn STRATUS_ADMIN_PASSWORD=bench-admin-password \
  "$BIN" serve registry > "$work/registry.log" 2>&1 & reg_pid=$!; pids+=($reg_pid)
wait_port "$REG"
python3 bench/gateway-scale.py register "$REG" $((COUNT / 20)) 20 "$PORT_BASE" 1 > /dev/null

# Every farm process's requests so far (stub_status, on any of its ports).
answered() {
  local total=0 first n
  for first in $(seq "$PORT_BASE" "$FARM_PORTS_A_PROCESS" $((PORT_BASE + COUNT - 1))); do
    n=$(python3 -c 'import sys, urllib.request; print(urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/farm-status").read().decode().split("\n")[2].split()[2])' "$first")
    total=$((total + n))
  done
  echo "$total"
}
sleep 3 # every instance probed a few times: connections open, the schedule settled
# utime and stime, in clock ticks (fields 14 and 15; the name in field 2 has no spaces).
cpu_ticks() { awk '{ print $14, $15 }' "/proc/$reg_pid/stat"; }
before=$(answered); cpu_before=$(cpu_ticks)
sleep "$SECONDS_COUNTED"
after=$(answered); cpu_after=$(cpu_ticks)
kill -0 "$reg_pid" || { echo "the registry died: $(tail -5 "$work/registry.log")" >&2; exit 1; }
rss=$(awk '/VmRSS/ { printf "%.0f", $2 / 1024 }' "/proc/$reg_pid/status")
listed=$(python3 -c 'import json, sys, urllib.request
c = json.load(urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/v1/services"))
print(sum(len(v) for v in c["services"].values()))' "$REG")
python3 - "$before" "$after" "$cpu_before" "$cpu_after" "$(getconf CLK_TCK)" "$SECONDS_COUNTED" \
  "$COUNT" "$rss" "$BIN" "$listed" <<'PY'
import sys
before, after, cpu_before, cpu_after, tick, seconds, count, rss, binary, listed = sys.argv[1:]
probes = int(after) - int(before)
seconds, tick = float(seconds), float(tick)
user, system = (
    (int(b) - int(a)) / tick for a, b in zip(cpu_before.split(), cpu_after.split())
)
print(f"| {binary} | {int(count):,} ({int(listed):,} listed) | {probes / seconds:,.0f} "
      f"| {(user + system) / seconds * 100:.0f}% | {user / probes * 1e6:.1f} "
      f"| {system / probes * 1e6:.1f} | {rss} |")
PY
