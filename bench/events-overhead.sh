#!/usr/bin/env bash
# What event reporting costs the gateway: its throughput with reporting on vs off, and the
# instructions per proxied request (callgrind) on vs off.
#
#   bench/events-overhead.sh                       # 5 rounds x 10 s each way, 64 connections
#   ROUNDS=7 DURATION=20s bench/events-overhead.sh
#   CALLGRIND=0 bench/events-overhead.sh           # wall clock only
#   SPLIT=1 bench/events-overhead.sh               # the sink alone on CPU 1; nginx, both gateways
#                                                  # and wrk on CPU 0 (the sink on "another machine")
#   SINK_DOWN=1 bench/events-overhead.sh           # then kill the sink and measure again (paired)
#   PAIRED=1 bench/events-overhead.sh              # both gateways loaded at once in every round, so
#                                                  # whatever else the machine does weighs on both
#   SINK_NICE=19 bench/events-overhead.sh          # the sink only on CPU time nothing else wants,
#                                                  # as if it ran on another machine (what it
#                                                  # cannot store in time is dropped and counted)
#
# Wall clock: one nginx backend answering 13 bytes, a registry, the sink (SQLite, release) and two
# gateways (release, 2 workers each) over the same backend: one reports every proxied request to
# the sink (STRATUS_EVENTS_URL), the other has reporting off (STRATUS_EVENTS=off). wrk (2 threads)
# alternates between them, off then on, ROUNDS times (ABAB), and the medians give the loss. The sink
# runs on the same 2 cores, so the "on" figure also pays for storing every record; a gateway
# reporting to a sink on another machine would lose less.
#
# Instructions: bench/profile-gateway.sh (one worker under callgrind, 4,000 requests) with
# EVENTS=off and EVENTS=on. The count repeats to within a few per cent however busy the machine
# is, which the wall-clock figure does not.
set -euo pipefail
# Components started here by hand, without join credentials: plaintext inside, as before
# `stratus serve` defaulted to mutual TLS (benchmarks only; bench/mtls.sh measures its cost).
export STRATUS_MTLS="${STRATUS_MTLS:-off}"
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-64}
CALLGRIND=${CALLGRIND:-1}
SINK_NICE=${SINK_NICE:-0}
SPLIT=${SPLIT:-0}
PAIRED=${PAIRED:-0}
# SPLIT=1: `on_cpu 1 cmd` runs cmd on CPU 1 only, `on_cpu 0 cmd` on CPU 0 only. It execs, so use it
# only in a subshell (`&` or `$(...)`): the PID saved for clean-up is then the server's own.
on_cpu() { if [ "$SPLIT" = 1 ]; then local cpu=$1; shift; exec taskset -c "$cpu" "$@"; else shift; exec "$@"; fi; }
command -v wrk >/dev/null && command -v nginx >/dev/null || { echo "install wrk and nginx" >&2; exit 1; }
[ -x target/release/stratus ] || cargo build --release -j2
STRATUS=$PWD/target/release/stratus

work=$(mktemp -d)
chmod 755 "$work"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 200); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened" >&2; exit 1; }

B=$(free_port); REG=$(free_port); SINK=$(free_port); ON=$(free_port); OFF=$(free_port)
ON_ADMIN=$(free_port); OFF_ADMIN=$(free_port)
cat > "$work/backend.conf" <<CONF
worker_processes 1;
daemon off;
pid $work/backend.pid;
error_log $work/backend-error.log warn;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:$B; location / { return 200 "hello, world\n"; } } }
CONF
on_cpu 0 nginx -c "$work/backend.conf" -p "$work" & pids+=($!)
printf '[[routes]]\nprefix = "/"\nservice = "bench"\nauth = "none"\n' > "$work/routes.toml"
export STRATUS_DATA_DIR=$work STRATUS_LOG=warn STRATUS_REGISTRY_URL=http://127.0.0.1:$REG
PORT=$REG "$STRATUS" serve registry > "$work/registry.log" 2>&1 & pids+=($!)
wait_port "$REG"; wait_port "$B"
curl -sf -X PUT "http://127.0.0.1:$REG/v1/services/bench/instances/backend" \
  -H 'content-type: application/json' -d "{\"address\":\"127.0.0.1\",\"port\":$B,\"ttl_seconds\":3600}" >/dev/null
PORT=$SINK STRATUS_EVENTS_BUDGET=100GiB on_cpu 1 nice -n "$SINK_NICE" "$STRATUS" serve events > "$work/events.log" 2>&1 & pids+=($!)
SINK_PID=$!
declare -A gw_pid
for mode in on off; do
  gw=$([ $mode = on ] && echo "$ON" || echo "$OFF")
  admin=$([ $mode = on ] && echo "$ON_ADMIN" || echo "$OFF_ADMIN")
  STRATUS_EVENTS=$mode STRATUS_EVENTS_URL=http://127.0.0.1:$SINK STRATUS_GATEWAY_WORKERS=2 PORT=$gw \
    STRATUS_ADMIN_PORT=$admin STRATUS_ROUTES=$work/routes.toml \
    on_cpu 0 "$STRATUS" serve gateway > "$work/gateway-$mode.log" 2>&1 & pids+=($!)
  gw_pid[$mode]=$!
done
# CPU time a process has used so far, user and kernel, in nanoseconds: the sum of its threads'
# scheduler run time (/proc/PID/task/*/schedstat, first field), which counts to the nanosecond
# where /proc/PID/stat counts 10 ms ticks.
cpu_ns() { cat /proc/"$1"/task/*/schedstat 2>/dev/null | awk '{s+=$1} END {printf "%.0f", s}'; }
for p in "$SINK" "$ON" "$OFF"; do wait_port "$p"; done
for p in "$ON" "$OFF"; do until curl -sf "http://127.0.0.1:$p/x" >/dev/null; do sleep 0.05; done; done

: > "$work/rps"
# One round of one mode: wrk's output is in $work/wrk-$mode, the gateway's CPU time around it in
# $work/cpu-$mode (before and after).
load() {
  local mode=$1 gw
  gw=$([ "$mode" = on ] && echo "$ON" || echo "$OFF")
  cpu_ns "${gw_pid[$mode]}" > "$work/cpu-$mode"
  (on_cpu 0 wrk -t2 -c"$CONNECTIONS" -d"$DURATION" "http://127.0.0.1:$gw/x") > "$work/wrk-$mode"
  echo " $(cpu_ns "${gw_pid[$mode]}")" >> "$work/cpu-$mode"
}
# Writes the round's line for a mode: mode, rps, requests, the gateway's CPU time per request (us).
tally() {
  local mode=$1 rps requests cpu
  rps=$(awk '/Requests\/sec/ {print $2}' "$work/wrk-$mode")
  requests=$(awk '/requests in/ {print $1}' "$work/wrk-$mode")
  cpu=$(tr -d '\n' < "$work/cpu-$mode" | awk -v n="$requests" '{printf "%.3f", ($2-$1)/n/1000}')
  echo "round $round, reporting $mode: $rps requests/s, gateway CPU $cpu us a request (load average $(cut -d' ' -f1 /proc/loadavg))" >&2
  # Requests that did not get a 2xx: wrk's non-2xx responses and socket errors.
  errors=$(awk '/Non-2xx/ {e+=$NF} /Socket errors/ {gsub(/[^0-9 ]/," "); split($0,a," "); e+=a[1]+a[2]+a[3]+a[4]} END {print e+0}' "$work/wrk-$mode")
  echo "$mode $rps $requests $cpu $errors" >> "$work/rps"
}
for round in $(seq 1 "$ROUNDS"); do
  if [ "$PAIRED" = 1 ]; then
    load off & a=$!
    load on & b=$!
    wait "$a" "$b"
    tally off; tally on
  else
    for mode in off on; do load "$mode"; tally "$mode"; done
  fi
done
med() { awk -v m="$1" -v f="${2:-2}" '$1==m {print $f}' "$work/rps" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
on=$(med on); off=$(med off)
cpu_on=$(med on 4); cpu_off=$(med off 4)
sent=$(awk '$1=="on" {s+=$3} END {print s}' "$work/rps")
# Every record the reporting gateway made is either stored or counted as dropped.
sleep 1
metric() { curl -sf "http://127.0.0.1:$ON_ADMIN/metrics" | awk -v m="$1" 'index($0, m)==1 {s+=$NF} END {print s+0}'; }
dropped=$(metric events_dropped_total)
stored=$(python3 -c 'import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute("SELECT COUNT(*) FROM events").fetchone()[0])' "$work/events.db")
printf 'gateway with event reporting: off %.0f rps, on %.0f rps (medians of %s x %s, %s): %.1f%% loss\n' \
  "$off" "$on" "$ROUNDS" "$DURATION" "$([ "$PAIRED" = 1 ] && echo "both at once" || echo ABAB)" "$(awk -v a="$on" -v b="$off" 'BEGIN{print (1-a/b)*100}')"
# The gateway's own cost: with the gateway on cores of its own, its throughput is the inverse of
# its CPU time per request, so this loss does not depend on what else shares this machine.
printf 'gateway CPU time per request: off %.3f us, on %.3f us (medians): %.1f%% more time, %.1f%% less throughput per core\n' \
  "$cpu_off" "$cpu_on" "$(awk -v a="$cpu_on" -v b="$cpu_off" 'BEGIN{print (a/b-1)*100}')" \
  "$(awk -v a="$cpu_on" -v b="$cpu_off" 'BEGIN{print (1-b/a)*100}')"
# Round by round (each "on" against the "off" of its own round), the median of the CPU ratios.
paired=$(awk '$1=="off" {off=$4} $1=="on" {print ($4/off-1)*100}' "$work/rps" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
printf 'gateway CPU time per request, round by round: median %.1f%% more with reporting on\n' "$paired"
printf 'records: %s requests through the reporting gateway, %s stored by the sink, %s dropped (counted); load average %s\n' \
  "$sent" "$stored" "$dropped" "$(cut -d' ' -f1 /proc/loadavg)"

# SINK_DOWN=1: kill the sink (SIGKILL) and load both gateways again, both at once, for as many
# rounds: the reporting gateway's throughput, CPU time and errors against the other's, with the
# sink gone, and what it dropped (and counted) meanwhile.
if [ "${SINK_DOWN:-0}" = 1 ]; then
  kill -9 "$SINK_PID"
  sleep 1
  dropped_before=$(metric events_dropped_total)
  mv "$work/rps" "$work/rps-up"
  : > "$work/rps"
  for round in $(seq 1 "$ROUNDS"); do
    load off & a=$!
    load on & b=$!
    wait "$a" "$b"
    tally off; tally on
  done
  down_on=$(med on); down_off=$(med off)
  down_cpu_on=$(med on 4); down_cpu_off=$(med off 4)
  errors=$(awk '$1=="on" {e+=$5} END {print e+0}' "$work/rps")
  printf 'sink down: off %.0f rps, on %.0f rps (medians of %s x %s, both at once): %.1f%% loss; CPU per request off %.3f us, on %.3f us (%.1f%% more); %s requests not 2xx through the reporting gateway; %s records dropped (counted)\n' \
    "$down_off" "$down_on" "$ROUNDS" "$DURATION" "$(awk -v a="$down_on" -v b="$down_off" 'BEGIN{print (1-a/b)*100}')" \
    "$down_cpu_off" "$down_cpu_on" "$(awk -v a="$down_cpu_on" -v b="$down_cpu_off" 'BEGIN{print (a/b-1)*100}')" \
    "$errors" "$(( $(metric events_dropped_total) - dropped_before ))"
fi

if [ "$CALLGRIND" = 1 ]; then
  for mode in off on; do
    printf 'callgrind, reporting %-3s: ' "$mode"
    EVENTS=$mode TARGETS=stratus bench/profile-gateway.sh
  done
fi
