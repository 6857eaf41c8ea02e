#!/usr/bin/env bash
# `stratus up`'s start-up time with mutual TLS required (its default) against mTLS off.
#
#   bench/up-start.sh                 # 5 rounds
#   ROUNDS=9 bench/up-start.sh
#
# Each round starts `stratus up` twice per mode, alternating the modes' order by round:
#   - first start: an empty data directory (up makes the authority, the join credentials, the
#     operator's certificate, the databases and the admin account);
#   - second start: the same directory again (everything already there).
# Measured per start: the time up itself prints ("Ready in"), and the time from launch until the
# gateway answers the catalog's products with 200 (what a user waits for). `up` is stopped with
# SIGTERM by pid after each start and waited for; every port is a free loopback one.
#
# Needs a release build (made when missing), python3, curl. Results: a table on stdout and
# bench/results/up-start-<time>.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-5}
[ -x target/release/stratus ] || cargo build --release -j2
STRATUS=$PWD/target/release/stratus

work=$(mktemp -d)
up_pid=
cleanup() {
  if [ -n "$up_pid" ]; then kill "$up_pid" 2>/dev/null || true; wait "$up_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now_ms() { date +%s%3N; }

# start MODE DIR: one start of up; prints "<printed ready ms> <first 200 ms>".
start() {
  local mode=$1 dir=$2 gateway out t0 ready=- first=-
  gateway=$(free_port)
  out=$dir.out
  t0=$(now_ms)
  (cd "$dir" && exec env STRATUS_MTLS="$mode" STRATUS_GATEWAY_PORT="$gateway" STRATUS_ADMIN_PORT="$(free_port)" \
    STRATUS_REGISTRY_PORT="$(free_port)" STRATUS_DNS_PORT="$(free_port)" STRATUS_EVENTS_PORT="$(free_port)" \
    STRATUS_CONTROL_ADDR=127.0.0.1:0 STRATUS_DASHBOARD_ADDR=127.0.0.1:0 "$STRATUS" up > "$out" 2>"$out.err") &
  up_pid=$!
  for _ in $(seq 1 1200); do
    if curl -sf -o /dev/null "http://127.0.0.1:$gateway/api/catalog/products"; then first=$(( $(now_ms) - t0 )); break; fi
    kill -0 "$up_pid" 2>/dev/null || { echo "up ($mode) exited:" >&2; tail -20 "$out" "$out.err" >&2; exit 1; }
    sleep 0.05
  done
  for _ in $(seq 1 100); do grep -q "Ready in" "$out" && break; sleep 0.05; done
  ready=$(awk '/Ready in/ {printf "%.0f", $3 * 1000}' "$out")
  kill -TERM "$up_pid"; wait "$up_pid" 2>/dev/null || true; up_pid=
  [ "$first" != - ] || { echo "the gateway never answered under up ($mode)" >&2; tail -20 "$out" >&2; exit 1; }
  echo "${ready:--} $first"
}

results=$work/results.tsv
: > "$results"
for round in $(seq 1 "$ROUNDS"); do
  order=(off required); [ $((round % 2)) = 0 ] && order=(required off)
  for mode in "${order[@]}"; do
    dir=$work/$mode-$round; mkdir -p "$dir"
    read -r ready1 first1 < <(start "$mode" "$dir")
    read -r ready2 first2 < <(start "$mode" "$dir")
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$mode" "$ready1" "$first1" "$ready2" "$first2" >> "$results"
    printf 'round %s %-8s first start: ready %5s ms, gateway 200 at %5s ms; again: ready %5s ms, 200 at %5s ms\n' \
      "$round" "$mode" "$ready1" "$first1" "$ready2" "$first2" >&2
  done
done

mkdir -p bench/results
report=bench/results/up-start-$(date -u +%Y%m%dT%H%M%SZ).txt
med() { awk -F'\t' -v m="$1" -v c="$2" '$2==m {print $c}' "$results" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
{
  echo "stratus up start-up, mTLS required against off: $ROUNDS rounds, medians (ms)"
  echo "machine: $(nproc) cores, $(uname -r), load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo
  printf '%-9s %14s %16s %14s %16s\n' mode first_ready first_gateway_200 again_ready again_gateway_200
  for mode in off required; do
    printf '%-9s %14s %16s %14s %16s\n' "$mode" "$(med "$mode" 3)" "$(med "$mode" 4)" "$(med "$mode" 5)" "$(med "$mode" 6)"
  done
  echo
  echo "first: an empty data directory; again: the same directory a second time. ready: what up prints"
  echo "(\"Ready in\"); gateway_200: from launch to the first 200 from /api/catalog/products through the gateway."
} | tee "$report"
