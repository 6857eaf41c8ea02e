#!/usr/bin/env bash
# The gateway's edge cache against nginx's proxy_cache and Varnish, each in front of the same
# catalog instance: hit throughput and latency of one product read, and how many reads reach
# the instance.
#
#   bench/edge-cache.sh                          # 3 rounds x 10 s per target, 64 connections
#   ROUNDS=5 DURATION=20s bench/edge-cache.sh
#   TARGETS="stratus-edge nginx" bench/edge-cache.sh
#   RATE=30000 bench/edge-cache.sh               # the fixed-rate phase's rate (default: 0.6 of
#                                                # the slower anchor's median throughput)
#   SCHED=1 bench/edge-cache.sh                  # and what the scheduler did to each target
#                                                # and to wrk in the saturated rounds
#                                                # (bench/threadstat.py)
#
# Targets, all on loopback, each with WORKERS (2) workers or threads where it has a knob:
#   stratus-edge  the gateway with `cache = {}` on the catalog's read route (the edge cache)
#   stratus       the same gateway build without it: every read reaches the catalog
#   nginx         proxy_cache (keys_zone 10m, 64 MB), proxy_cache_lock, stale while updating and
#                 on errors, background updates, keep-alive to the instance
#   varnish       varnishd with its built-in VCL and a 64 MB malloc storage
# The catalog's product answers are `public, max-age=5, stale-while-revalidate=30`, so every
# cache keeps them 5 s and refreshes them behind a stale answer: all three see the same rules.
#
# Needs: wrk, nginx, varnish (Debian packages; installed when missing and running as root),
# python3, curl, and a release build (made when missing). Every process started here is stopped
# on exit, by pid. Results: a table on stdout and bench/results/edge-cache-<time>.txt.
#
# Machine caveat: wrk, the caches and the catalog share this machine's cores; the ratios in one
# run are the result.
set -euo pipefail
# Components started here by hand, without join credentials: plaintext inside (benchmarks only).
export STRATUS_MTLS="${STRATUS_MTLS:-off}"
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10s}
ROUNDS=${ROUNDS:-3}
CONNECTIONS=${CONNECTIONS:-64}
WORKERS_SET=${WORKERS:-}; WORKERS=${WORKERS:-2}
TARGETS=${TARGETS:-"stratus-edge stratus nginx varnish"}
RATE=${RATE:-}
# Where the client runs (bench/README.md, "Whose tail"). On two shared cores a client at normal
# priority is preempted by the caches it measures, and every response that arrives while it
# waits for a CPU is timed as slow, so at saturation the p99 is mostly wrk's own.
#   CLIENT=shared  (default) everything on both cores, wrk at normal priority, as before
#   CLIENT=fifo    wrk at a real-time priority (SCHED_FIFO 1): it preempts the caches whenever
#                  a response arrives
#   CLIENT=pinned  a core each, as if on two machines: wrk (and the catalog, idle once the
#                  caches hold the product) on core 0, the targets on core 1 (WORKERS=1)
CLIENT=${CLIENT:-shared}
WRK=wrk; ON_SERVER_CORE=; WRK_THREADS=2
case $CLIENT in
  shared) ;;
  fifo) WRK="chrt -f 1 wrk" ;;
  pinned) WRK="taskset -c 0 wrk"; ON_SERVER_CORE="taskset -c 1"; WORKERS=${WORKERS_SET:-1}; WRK_THREADS=1 ;;
  *) echo "CLIENT is shared, fifo or pinned" >&2; exit 1 ;;
esac

need() { command -v "$1" >/dev/null 2>&1; }
if ! need wrk || ! need nginx || ! need varnishd; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends wrk nginx varnish >/dev/null
  else
    echo "install wrk, nginx and varnish first" >&2; exit 1
  fi
fi
STRATUS=${STRATUS_BIN:-$PWD/target/release/stratus}
[ -x "$STRATUS" ] || cargo build --release -j2
STRATUS=$(realpath "$STRATUS")

work=$(mktemp -d); chmod 755 "$work"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  local pid
  for pid in "$work/nginx.pid" "$work/varnish.pid"; do
    pid=$(cat "$pid" 2>/dev/null) && kill "$pid" 2>/dev/null || true
  done
  wait 2>/dev/null || true
  sleep 0.3
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_ok() { for _ in $(seq 1 400); do curl -fs "$1" >/dev/null 2>&1 && return 0; sleep 0.05; done; echo "$1 never answered" >&2; exit 1; }

REG=$(free_port); CAT=$(free_port)
GWE=$(free_port); GWEA=$(free_port); GWP=$(free_port); GWPA=$(free_port); NGX=$(free_port); VAR=$(free_port)
. bench/catalog-edge.sh
catalog_routes 'cache = {}' > "$work/edge.toml"
catalog_routes '' > "$work/plain.toml"

export STRATUS_REGISTRY_URL=http://127.0.0.1:$REG STRATUS_DATA_DIR=$work/data STRATUS_EVENTS=off \
  STRATUS_LOG=warn STRATUS_LOG_FORMAT=json STRATUS_ADMIN_PASSWORD=bench-admin-password
PORT=$REG "$STRATUS" serve registry >"$work/registry.log" 2>&1 & pids+=($!)
wait_ok "http://127.0.0.1:$REG/readyz"
PORT=0 "$STRATUS" serve auth >"$work/auth.log" 2>&1 & pids+=($!)
PORT=$CAT ${ON_SERVER_CORE:+taskset -c 0} "$STRATUS" serve catalog >"$work/catalog.log" 2>&1 & pids+=($!); catalog_pid=$!
PORT=$GWE STRATUS_ADMIN_PORT=$GWEA STRATUS_GATEWAY_WORKERS=$WORKERS STRATUS_ROUTES=$work/edge.toml \
  $ON_SERVER_CORE "$STRATUS" serve gateway >"$work/gateway-edge.log" 2>&1 & pids+=($!); edge_pid=$!
PORT=$GWP STRATUS_ADMIN_PORT=$GWPA STRATUS_GATEWAY_WORKERS=$WORKERS STRATUS_ROUTES=$work/plain.toml \
  $ON_SERVER_CORE "$STRATUS" serve gateway >"$work/gateway-plain.log" 2>&1 & pids+=($!); plain_pid=$!
wait_ok "http://127.0.0.1:$CAT/readyz"
wait_ok "http://127.0.0.1:$GWEA/readyz"
wait_ok "http://127.0.0.1:$GWPA/readyz"
wait_ok "http://127.0.0.1:$GWP/api/catalog/products"

# One product, created through the plain gateway by an admin.
token=$(admin_token "$GWP")
product=$(curl -fs -X POST "http://127.0.0.1:$GWP/api/catalog/products" -H "authorization: Bearer $token" \
  -H 'content-type: application/json' -d '{"name":"Tea","description":"bench","price_cents":450,"stock":5}' \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
path=/api/catalog/products/$product

cat > "$work/nginx.conf" <<CONF
worker_processes $WORKERS;
daemon off;
pid $work/nginx.pid;
error_log $work/nginx-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  proxy_cache_path $work/nginx-cache keys_zone=edge:10m max_size=64m;
  upstream catalog { server 127.0.0.1:$CAT; keepalive 64; }
  server {
    listen 127.0.0.1:$NGX;
    location / {
      proxy_pass http://catalog;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_cache edge;
      proxy_cache_lock on;
      proxy_cache_use_stale updating error timeout http_500 http_502 http_503 http_504;
      proxy_cache_background_update on;
      add_header x-cache \$upstream_cache_status;
    }
  }
}
CONF
if [[ " $TARGETS " == *" nginx "* ]]; then
  $ON_SERVER_CORE nginx -c "$work/nginx.conf" -e "$work/nginx-error.log" & pids+=($!)
  wait_ok "http://127.0.0.1:$NGX$path"
fi
if [[ " $TARGETS " == *" varnish "* ]]; then
  $ON_SERVER_CORE varnishd -n "$work/varnish" -P "$work/varnish.pid" -a "127.0.0.1:$VAR" -b "127.0.0.1:$CAT" \
    -s malloc,64m -p thread_pools="$WORKERS" >"$work/varnish.log" 2>&1
  wait_ok "http://127.0.0.1:$VAR$path"
fi

declare -A URL=([stratus-edge]="http://127.0.0.1:$GWE$path" [stratus]="http://127.0.0.1:$GWP$path"
  [nginx]="http://127.0.0.1:$NGX$path" [varnish]="http://127.0.0.1:$VAR$path")

# Reads the catalog served, from its own request counter.
served() {
  curl -fs "http://127.0.0.1:$CAT/metrics" | awk '/^http_server_request_duration_seconds_count/ && /products\/\{id\}/ {n += $2} END {printf "%d", n}'
}
# The processes serving a target, for bench/threadstat.py: one group (comma-joined) each.
target_pids() {
  local main
  case $1 in
    stratus-edge) echo "$edge_pid" ;;
    stratus) echo "$plain_pid $catalog_pid" ;;
    nginx|varnish)
      main=$(cat "$work/$1.pid")
      echo "$(printf '%s\n' "$main" $(pgrep -P "$main") $(pgrep -P "$(pgrep -P "$main" | head -1)" 2>/dev/null) | sort -u | paste -sd,)" ;;
  esac
}
to_us() { awk -v v="$1" 'BEGIN { n=v; sub(/[a-z]+$/,"",n); u=v; sub(/^[0-9.]+/,"",u);
  f = (u=="us") ? 1 : (u=="ms") ? 1000 : (u=="s") ? 1000000 : 1; printf "%.0f", n*f }'; }

for target in $TARGETS; do
  headers=$(curl -fs -D - -o /dev/null "${URL[$target]}" | tr -d '\r' | awk -F': ' 'tolower($1) ~ /^(x-cache|age|x-varnish)$/ {printf "%s: %s  ", $1, $2}')
  echo "warm $target: ${headers:-no cache headers}" >&2
done

results=$work/results.tsv
: > "$results"
for round in $(seq 1 "$ROUNDS"); do
  order=($TARGETS); [ $((round % 2)) = 0 ] && order=($(printf '%s\n' $TARGETS | tac))
  for target in "${order[@]}"; do
    before=$(served)
    out=$(${SCHED:+bench/threadstat.py $(target_pids "$target") --} $WRK -t$WRK_THREADS -c"$CONNECTIONS" -d"$DURATION" --latency "${URL[$target]}")
    after=$(served)
    requests=$(awk '/requests in/ {print $1}' <<<"$out")
    rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
    p50=$(to_us "$(awk '$1=="50%" {print $2}' <<<"$out")")
    p99=$(to_us "$(awk '$1=="99%" {print $2}' <<<"$out")")
    errors=$(awk '/Non-2xx|Socket errors/ {print}' <<<"$out" | tr '\n' ' ')
    [ -n "${SCHED:-}" ] && awk '/^pids/,0' <<<"$out" | sed "s/^/  $target: /" >&2
    share=$(awk -v a="$before" -v b="$after" -v n="$requests" 'BEGIN {printf "%.5f", (b-a)/n}')
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$target" "$rps" "$p50" "$p99" "$share" >> "$results"
    printf 'round %s %-13s %10s rps  p50 %6s us  p99 %6s us  reached the instance: %s of reads %s\n' \
      "$round" "$target" "$rps" "$p50" "$p99" "$share" "$errors" >&2
  done
done

mkdir -p bench/results
report=bench/results/edge-cache-$(date -u +%Y%m%dT%H%M%SZ).txt
med() { awk -F'\t' -v t="$1" -v c="$2" '$2==t {print $c}' "$results" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

# Latency at a fixed rate every cache can carry (paced by bench/paced.lua, wrk2 not being
# packaged here): at saturation a closed-loop client's p99 is mostly the queue of the busiest
# system, so the caches are also compared at the same offered load.
if [ -z "$RATE" ]; then
  slowest=
  for anchor in nginx varnish; do
    [[ " $TARGETS " == *" $anchor "* ]] || continue
    r=$(med "$anchor" 3); slowest=$(awk -v a="${slowest:-$r}" -v b="$r" 'BEGIN {print (b < a) ? b : a}')
  done
  RATE=$(awk -v r="${slowest:-10000}" 'BEGIN {printf "%d", r * 0.6}')
fi
paced=$work/paced.tsv
: > "$paced"
for round in $(seq 1 "$ROUNDS"); do
  order=($TARGETS); [ $((round % 2)) = 0 ] && order=($(printf '%s\n' $TARGETS | tac))
  for target in "${order[@]}"; do
    out=$($WRK -t$WRK_THREADS -c"$CONNECTIONS" -d"$DURATION" -s bench/paced.lua "${URL[$target]}" -- $((RATE / WRK_THREADS)))
    rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
    read -r p50 p99 p999 < <(awk '/^paced:/ {print $5, $7, $9}' <<<"$out")
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$target" "$rps" "$p50" "$p99" "$p999" >> "$paced"
    printf 'paced round %s %-13s at %s rps: did %10s rps  p50 %6s us  p99 %6s us  p99.9 %6s us\n' \
      "$round" "$target" "$RATE" "$rps" "$p50" "$p99" "$p999" >&2
  done
done
pmed() { awk -F'\t' -v t="$1" -v c="$2" '$2==t {print $c}' "$paced" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
best=0
for anchor in nginx varnish; do
  [[ " $TARGETS " == *" $anchor "* ]] || continue
  r=$(med "$anchor" 3); best=$(awk -v a="$best" -v b="$r" 'BEGIN {print (b > a) ? b : a}')
done
{
  echo "Edge caches in front of one catalog instance: GET $path, wrk -t$WRK_THREADS -c$CONNECTIONS -d$DURATION, $ROUNDS rounds, $WORKERS workers"
  echo "client: $CLIENT ($WRK)"
  echo "machine: $(nproc) cores, $(uname -r), load average at the end: $(cut -d' ' -f1-3 /proc/loadavg); medians over rounds"
  echo
  printf '%-13s %10s %8s %8s %14s %16s\n' target rps p50_us p99_us vs_best_anchor reached_instance
  for target in $TARGETS; do
    rps=$(med "$target" 3)
    printf '%-13s %10.0f %8s %8s %14s %16s\n' "$target" "$rps" "$(med "$target" 4)" "$(med "$target" 5)" \
      "$(awk -v a="$rps" -v b="$best" 'BEGIN { if (b > 0) printf "%.2f", a/b; else print "-" }')" "$(med "$target" 6)"
  done
  echo
  echo "At a fixed rate of $RATE requests a second (paced; medians over rounds):"
  printf '%-13s %10s %8s %8s %9s\n' target did_rps p50_us p99_us p999_us
  for target in $TARGETS; do
    printf '%-13s %10.0f %8s %8s %9s\n' "$target" "$(pmed "$target" 3)" "$(pmed "$target" 4)" "$(pmed "$target" 5)" "$(pmed "$target" 6)"
  done
  echo
  echo "vs_best_anchor: throughput over the better of nginx and Varnish in this run."
  echo "reached_instance: the share of the target's reads the catalog itself served (its own counter)."
} | tee "$report"
