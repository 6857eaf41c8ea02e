#!/usr/bin/env bash
# The gateway holding 10,000 instances against holding 2 (issue 19): its memory, its CPU at rest
# (active health checks of every instance), how long a registry change takes to reach its
# routing, and the instructions of one request (callgrind), which must not grow with the
# instances it holds.
#
#   bench/gateway-scale.sh                    # rows of 0 and 10,000 other instances
#   ROWS="0 1000 10000" UPDATES=50 bench/gateway-scale.sh
#   HEALTH=0 bench/gateway-scale.sh           # active health checks off in the timed part too
#
# Each row: a fresh registry (memory store) with the two `bench` instances the measured route
# sends to, and N more in services of 20 (`s0`, `s1`, ...), every one of them routed (`/s<i>/`)
# and listening: one nginx process holds 10,000 listening ports (PORT_BASE..) answering
# `/healthz`, so the gateway follows, holds and probes every instance (STRATUS_UPSTREAM_HEALTH_
# INTERVAL, 1 s, unless HEALTH says otherwise). Per row:
#   RSS, CPU     the gateway's resident memory and CPU over 10 s at rest, 3 s after it held all
#   update       UPDATES times: a new service `fresh<j>` (already routed, no instance) gets an
#                instance in the registry; the time from the registry's answer to the gateway's
#                first 200 on `/fresh<j>/` (asked every millisecond)
#   instructions the gateway alone under callgrind (health checks off, one worker), 4,000
#                requests of 13 bytes on the `bench` route over 8 connections, per request
#                (profiles kept as bench/results/callgrind.gateway-scale-<N>.out)
#
# Needs nginx, valgrind, python3, curl and a release build (made when missing); raises the
# open-file limit (root). Every process started here is stopped on exit, by pid.
set -euo pipefail
# Components started here by hand, without join credentials: plaintext inside (benchmarks only).
export STRATUS_MTLS="${STRATUS_MTLS:-off}"
cd "$(dirname "$0")/.."
ROWS=${ROWS:-"0 10000"}
UPDATES=${UPDATES:-20}
HEALTH=${HEALTH:-1s}
PER_SERVICE=20
PORT_BASE=${PORT_BASE:-20000}
REQUESTS=${REQUESTS:-4000}
CONNECTIONS=8
[ -x target/release/stratus ] || cargo build --release -j2
STRATUS=$PWD/target/release/stratus
command -v valgrind >/dev/null || { echo "install valgrind" >&2; exit 1; }
command -v nginx >/dev/null || { echo "install nginx" >&2; exit 1; }
# The gateway keeps a pooled probe connection to each instance: raise the open-file limit to
# the hard one, which must leave room for them.
ulimit -n "$(ulimit -Hn)"
most=$(printf '%s\n' $ROWS | sort -n | tail -1)
[ "$(ulimit -n)" -gt $((most + 2000)) ] || { echo "the open-file limit ($(ulimit -n)) is too low for $most instances" >&2; exit 1; }

work=$(mktemp -d); chmod 755 "$work"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 600); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened" >&2; exit 1; }
. bench/instance-farm.sh
# PORT_BASE.. must be free: they become the instances' ports.
check_ports_free "$PORT_BASE" "$most" || { echo "set PORT_BASE to a free range" >&2; exit 1; }

# The backends: `bench` (two ports: the measured route) and `fresh<j>` on B1, in one nginx; the
# N instances of the s<i> services on PORT_BASE.. (bench/instance-farm.sh).
B1=$(free_port); B2=$(free_port)
farm_nginx_conf backend "server { listen 127.0.0.1:$B1; listen 127.0.0.1:$B2; location / { return 200 \"hello, world\\n\"; } }" > "$work/backend.conf"
nginx -c "$work/backend.conf" -p "$work" & pids+=($!)
wait_port "$B1"; wait_port "$B2"
start_instance_farm "$PORT_BASE" "$most"

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
results=$work/results.tsv
: > "$results"
for n in $ROWS; do
  services=$((n / PER_SERVICE))
  held=$((2 + services * PER_SERVICE))
  REG=$(free_port); GW=$(free_port); GWA=$(free_port)
  export STRATUS_DATA_DIR=$work/data-$n STRATUS_LOG=warn STRATUS_EVENTS=off
  PORT=$REG "$STRATUS" serve registry > "$work/registry-$n.log" 2>&1 & reg_pid=$!; pids+=($reg_pid)
  wait_port "$REG"
  for port in "$B1" "$B2"; do
    curl -sf -X PUT "http://127.0.0.1:$REG/v1/services/bench/instances/b-$port" -H 'content-type: application/json' \
      -d "{\"address\":\"127.0.0.1\",\"port\":$port,\"ttl_seconds\":3600}" >/dev/null
  done
  python3 bench/gateway-scale.py register "$REG" "$services" "$PER_SERVICE" "$PORT_BASE" >&2
  {
    for j in $(seq 1 "$UPDATES"); do printf '[[routes]]\nprefix = "/fresh%s/"\nservice = "fresh%s"\nauth = "none"\n\n' "$j" "$j"; done
    for i in $(seq 0 $((services - 1))); do printf '[[routes]]\nprefix = "/s%s/"\nservice = "s%s"\nauth = "none"\n\n' "$i" "$i"; done
    printf '[[routes]]\nprefix = "/"\nservice = "bench"\nauth = "none"\n'
  } > "$work/routes-$n.toml"
  gateway_env=(STRATUS_GATEWAY_WORKERS=1 STRATUS_REGISTRY_URL=http://127.0.0.1:$REG STRATUS_ROUTES=$work/routes-$n.toml
    STRATUS_ADMIN_PORT=$GWA PORT=$GW)

  # At rest, then the changes.
  env "${gateway_env[@]}" STRATUS_UPSTREAM_HEALTH_INTERVAL="$HEALTH" "$STRATUS" serve gateway > "$work/gateway-$n.log" 2>&1 & gw_pid=$!; pids+=($gw_pid)
  wait_port "$GWA"
  started=$(date +%s.%N)
  python3 bench/gateway-scale.py wait "$GWA" "$held" 120 >&2
  ready_s=$(awk -v a="$started" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}')
  sleep 3
  before=$(cpu_ticks "$gw_pid"); sleep 10; after=$(cpu_ticks "$gw_pid")
  cpu=$(awk -v a="$before" -v b="$after" -v hz="$(getconf CLK_TCK)" 'BEGIN {printf "%.1f", (b - a) / hz / 10 * 100}')
  rss=$(awk '/VmRSS/ {printf "%.1f", $2 / 1024}' "/proc/$gw_pid/status")
  update=$(python3 bench/gateway-scale.py updates "$GW" "$REG" "$B1" "$UPDATES")
  echo "row $n: held $held instances after ${ready_s} s; at rest CPU ${cpu}% RSS ${rss} MiB; $update" >&2
  kill "$gw_pid"; wait "$gw_pid" 2>/dev/null || true
  # The fresh services' instances stay: the callgrind run holds them too.

  # Instructions a request, the gateway alone under callgrind.
  GW=$(free_port); GWA=$(free_port)
  gateway_env=(STRATUS_GATEWAY_WORKERS=1 STRATUS_REGISTRY_URL=http://127.0.0.1:$REG STRATUS_ROUTES=$work/routes-$n.toml
    STRATUS_ADMIN_PORT=$GWA PORT=$GW)
  env "${gateway_env[@]}" STRATUS_UPSTREAM_HEALTH_INTERVAL=0 \
    valgrind --tool=callgrind --callgrind-out-file="$work/callgrind-$n.out" "$STRATUS" serve gateway > "$work/gateway-callgrind-$n.log" 2>&1 & vg_pid=$!; pids+=($vg_pid)
  wait_port "$GWA"
  python3 bench/gateway-scale.py wait "$GWA" $((held + UPDATES)) 600 >&2
  python3 bench/drive.py "$GW" $((CONNECTIONS * 20)) "$CONNECTIONS" small
  callgrind_control -z "$vg_pid" >/dev/null 2>&1
  python3 bench/drive.py "$GW" "$REQUESTS" "$CONNECTIONS" small
  callgrind_control -d "$vg_pid" >/dev/null 2>&1
  kill -TERM "$vg_pid"; wait "$vg_pid" 2>/dev/null || true
  dump=$(ls "$work"/callgrind-"$n".out.* | head -1)
  ir=$(awk '/^summary:|^totals:/ {print $2; exit}' "$dump")
  per=$(awk -v a="$ir" -v n="$REQUESTS" 'BEGIN {printf "%.0f", a / n}')
  echo "row $n: $per instructions a request" >&2
  mkdir -p bench/results
  cp "$dump" "bench/results/callgrind.gateway-scale-$n.out"
  kill "$reg_pid"; wait "$reg_pid" 2>/dev/null || true
  read -r _ p50 _ p99 _ max _ <<<"${update#update_ms }"
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$n" "$held" "$ready_s" "$rss" "$cpu" "$p50" "$p99" "$max" "$per" >> "$results"
done

mkdir -p bench/results
report=bench/results/gateway-scale-$(date -u +%Y%m%dT%H%M%SZ).txt
{
  echo "The gateway holding many instances: release build, one worker, health checks every $HEALTH at rest; $UPDATES changes a row"
  echo "machine: $(nproc) cores, load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo
  printf '%8s %8s %9s %8s %12s %14s %14s %14s %14s\n' others held ready_s rss_mib rest_cpu_pct update_p50_ms update_p99_ms update_max_ms instr_request
  while IFS=$'\t' read -r n held ready rss cpu p50 p99 max per; do
    printf '%8s %8s %9s %8s %12s %14s %14s %14s %14s\n' "$n" "$held" "$ready" "$rss" "$cpu" "$p50" "$p99" "$max" "$per"
  done < "$results"
} | tee "$report"
