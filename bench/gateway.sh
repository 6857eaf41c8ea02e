#!/usr/bin/env bash
# The gateway against nginx and HAProxy, proxying the same two backends, in one interleaved run.
#
#   bench/gateway.sh                 # 3 rounds x 10 s per target and size
#   ROUNDS=5 DURATION=20s bench/gateway.sh
#
# Needs: wrk, nginx, haproxy (Debian packages; installed when missing and running as root) and a
# release build (built when missing). Every server listens on loopback only; every load is
# bounded in time. Results: a table on stdout and bench/results/gateway-<time>.txt.
#
# Machine caveat: load generator, proxies and backends share this machine's cores, so absolute
# numbers say little; the ratios between targets measured in the same run are the result.
set -euo pipefail
# Components started here by hand, without join credentials: plaintext inside, as before
# `stratus serve` defaulted to mutual TLS (benchmarks only; bench/mtls.sh measures its cost).
export STRATUS_MTLS="${STRATUS_MTLS:-off}"
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-64}
WRK_THREADS_SET=${WRK_THREADS:-}; WRK_THREADS=${WRK_THREADS:-2}
PROXY_THREADS_SET=${PROXY_THREADS:-}; PROXY_THREADS=${PROXY_THREADS:-2}
# full: a second Stratus gateway that verifies a JWT on every request and reports every request
# to the event sink (the sink at nice 19, taking only CPU nothing else wants, as if on a
# machine of its own; what it cannot store in time is dropped and counted).
# l4: HAProxy in `mode tcp` and the gateway's own layer-4 listener, each client connection
# tied to one backend connection and bytes copied both ways: no parsing, no routing, the same
# four socket calls a request as the HTTP proxies. What they reach bounds what any HTTP proxy
# can reach on this machine (VARIANTS="plain full l4").
VARIANTS=${VARIANTS:-"plain full"}
# Where the client runs (bench/README.md, "Whose tail"). On two shared cores a client at normal
# priority is preempted by the proxies it measures, and every response that arrives while it
# waits for a CPU is timed as slow, so at saturation the p99 is mostly wrk's own.
#   CLIENT=shared  (default) everything on both cores, wrk at normal priority, as before
#   CLIENT=fifo    wrk at a real-time priority (SCHED_FIFO 1): it preempts the proxies whenever a
#                  response arrives
#   CLIENT=pinned  a core each, as if on two machines: wrk (one thread), the backends and the
#                  registry, auth and sink on core 0, the proxies on core 1 with one worker each
#                  (PROXY_THREADS=1)
CLIENT=${CLIENT:-shared}
WRK=wrk; ON_PROXY_CORE=; ON_CLIENT_CORE=
case $CLIENT in
  shared) ;;
  fifo) WRK="chrt -f 1 wrk" ;;
  pinned) WRK="taskset -c 0 wrk"; ON_CLIENT_CORE="taskset -c 0"; ON_PROXY_CORE="taskset -c 1"
    PROXY_THREADS=${PROXY_THREADS_SET:-1}; WRK_THREADS=${WRK_THREADS_SET:-1} ;;
  *) echo "CLIENT is shared, fifo or pinned" >&2; exit 1 ;;
esac

need() { command -v "$1" >/dev/null 2>&1; }
if ! need wrk || ! need nginx || ! need haproxy; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends wrk nginx haproxy >/dev/null
  else
    echo "install wrk, nginx and haproxy first" >&2; exit 1
  fi
fi
[ -x target/release/stratus ] || cargo build --release -j2
STRATUS=$PWD/target/release/stratus

work=$(mktemp -d)
chmod 755 "$work"  # nginx workers (not root) read the 16 KiB file from here
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 200); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened" >&2; exit 1; }

B1=$(free_port); B2=$(free_port); NGX=$(free_port); HAP=$(free_port); HAP4=$(free_port); GW4=$(free_port)
REG=$(free_port); GW=$(free_port); GWA=$(free_port)
head -c 16384 /dev/zero | tr '\0' 'x' > "$work/big"

# Two backends: nginx answering a 13-byte body on /small and a 16 KiB file on /big.
cat > "$work/backend.conf" <<CONF
worker_processes 1;
daemon off;
pid $work/backend.pid;
error_log $work/backend-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  server { listen 127.0.0.1:$B1; location = /small { return 200 "hello, world\n"; } location = /big { alias $work/big; } }
  server { listen 127.0.0.1:$B2; location = /small { return 200 "hello, world\n"; } location = /big { alias $work/big; } }
}
CONF
$ON_CLIENT_CORE nginx -c "$work/backend.conf" -p "$work" & pids+=($!)

cat > "$work/nginx.conf" <<CONF
worker_processes $PROXY_THREADS;
daemon off;
pid $work/nginx.pid;
error_log $work/nginx-error.log warn;
events { worker_connections 8192; }
http {
  access_log off;
  keepalive_requests 1000000;
  upstream backends { server 127.0.0.1:$B1; server 127.0.0.1:$B2; keepalive 128; }
  server {
    listen 127.0.0.1:$NGX;
    location / { proxy_pass http://backends; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
CONF
$ON_PROXY_CORE nginx -c "$work/nginx.conf" -p "$work" & pids+=($!)

cat > "$work/haproxy.cfg" <<CONF
global
  nbthread $PROXY_THREADS
  maxconn 9000
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  http-reuse always
frontend fe
  bind 127.0.0.1:$HAP
  default_backend be
backend be
  balance roundrobin
  server b1 127.0.0.1:$B1
  server b2 127.0.0.1:$B2
CONF
$ON_PROXY_CORE haproxy -f "$work/haproxy.cfg" -db & pids+=($!)
HAP_PID=$!
if [[ " $VARIANTS " == *" l4 "* ]]; then
  sed -e 's/mode http/mode tcp/' -e '/http-reuse/d' -e "s/:$HAP\$/:$HAP4/" "$work/haproxy.cfg" > "$work/haproxy-l4.cfg"
  $ON_PROXY_CORE haproxy -f "$work/haproxy-l4.cfg" -db & pids+=($!)
  HAP4_PID=$!
fi

# Stratus: a registry with the two backends registered, and a gateway routing / to them.
cat > "$work/routes.toml" <<CONF
[[routes]]
prefix = "/"
service = "bench"
auth = "none"
CONF
[[ " $VARIANTS " == *" l4 "* ]] && printf '\n[[tcp]]\nlisten = "127.0.0.1:%s"\nservice = "bench"\n' "$GW4" >> "$work/routes.toml"
export STRATUS_DATA_DIR=$work/data STRATUS_LOG=warn STRATUS_LOG_FORMAT=json
PORT=$REG $ON_CLIENT_CORE "$STRATUS" serve registry > "$work/registry.log" 2>&1 & pids+=($!)
wait_port "$REG"
for b in "$B1" "$B2"; do
  curl -sf -X PUT "http://127.0.0.1:$REG/v1/services/bench/instances/backend-$b" \
    -H 'content-type: application/json' -d "{\"address\":\"127.0.0.1\",\"port\":$b,\"ttl_seconds\":3600}" >/dev/null
done
STRATUS_EVENTS=${STRATUS_EVENTS:-off} STRATUS_GATEWAY_WORKERS=$PROXY_THREADS PORT=$GW STRATUS_ADMIN_PORT=$GWA STRATUS_REGISTRY_URL=http://127.0.0.1:$REG \
  STRATUS_ROUTES=$work/routes.toml $ON_PROXY_CORE "$STRATUS" serve gateway > "$work/gateway.log" 2>&1 & pids+=($!)
GW_PID=$!
for p in "$B1" "$B2" "$NGX" "$HAP" "$GW"; do wait_port "$p"; done
until curl -sf "http://127.0.0.1:$GW/small" >/dev/null; do sleep 0.05; done

declare -A PORT_OF=([direct]=$B1 [nginx]=$NGX [haproxy]=$HAP [stratus]=$GW)
declare -A HEADER_OF=()
targets=(direct nginx haproxy stratus)
if [[ " $VARIANTS " == *" l4 "* ]]; then
  wait_port "$HAP4"; wait_port "$GW4"
  until curl -sf "http://127.0.0.1:$GW4/small" >/dev/null; do sleep 0.05; done
  PORT_OF[haproxy-l4]=$HAP4; PORT_OF[stratus-l4]=$GW4
  targets+=(haproxy-l4 stratus-l4)
fi
if [[ " $VARIANTS " == *" full "* ]]; then
  # The auth service (its keys, found through the registry), a customer's access token, the
  # sink, and a gateway whose route requires a valid token and that reports every request.
  AUTH=$(free_port); SINK=$(free_port); GWF=$(free_port); GWFA=$(free_port)
  PORT=$AUTH STRATUS_REGISTRY_URL=http://127.0.0.1:$REG $ON_CLIENT_CORE "$STRATUS" serve auth > "$work/auth.log" 2>&1 & pids+=($!)
  PORT=$SINK STRATUS_REGISTRY_URL=http://127.0.0.1:$REG $ON_CLIENT_CORE nice -n 19 "$STRATUS" serve events > "$work/events.log" 2>&1 & pids+=($!)
  wait_port "$AUTH"; wait_port "$SINK"
  until curl -sf "http://127.0.0.1:$AUTH/readyz" >/dev/null; do sleep 0.05; done
  credentials='{"email":"bench@example.com","password":"a long bench password"}'
  curl -sf -X POST "http://127.0.0.1:$AUTH/auth/signup" -H 'content-type: application/json' -d "$credentials" >/dev/null
  TOKEN=$(curl -sf -X POST "http://127.0.0.1:$AUTH/auth/login" -H 'content-type: application/json' -d "$credentials" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
  printf '[[routes]]\nprefix = "/"\nservice = "bench"\nauth = "required"\n' > "$work/routes-full.toml"
  STRATUS_EVENTS=on STRATUS_EVENTS_URL=http://127.0.0.1:$SINK STRATUS_GATEWAY_WORKERS=$PROXY_THREADS PORT=$GWF \
    STRATUS_ADMIN_PORT=$GWFA STRATUS_REGISTRY_URL=http://127.0.0.1:$REG STRATUS_ROUTES=$work/routes-full.toml \
    $ON_PROXY_CORE "$STRATUS" serve gateway > "$work/gateway-full.log" 2>&1 & pids+=($!)
  GWF_PID=$!
  wait_port "$GWF"
  until curl -sf -H "authorization: Bearer $TOKEN" "http://127.0.0.1:$GWF/small" >/dev/null; do sleep 0.05; done
  # Without the token: refused (the route really checks).
  [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$GWF/small")" = 401 ] || { echo "the full gateway let a request without a token through" >&2; exit 1; }
  PORT_OF[stratus-full]=$GWF
  HEADER_OF[stratus-full]="authorization: Bearer $TOKEN"
  targets+=(stratus-full)
fi
# The processes of each proxy (nginx: its workers), for what they cost per request.
NGX_PID=$(cat "$work/nginx.pid" 2>/dev/null || true)
declare -A PIDS_OF=([direct]=$(pgrep -d, -P "$(cat "$work/backend.pid")" || true)
  [nginx]=$(pgrep -d, -P "$NGX_PID" || true) [haproxy]=$HAP_PID [stratus]=$GW_PID [stratus-full]=${GWF_PID:-}
  [haproxy-l4]=${HAP4_PID:-} [stratus-l4]=$GW_PID)
# With perf (linux-perf): each proxy's CPU time, context switches and system calls per request,
# counted by the kernel while wrk runs. CPU time per request is what a proxy costs whatever else
# shares the machine; the ratios of rps are what it achieves on this one.
COUNT=0
if command -v perf >/dev/null && perf stat -e raw_syscalls:sys_enter -p "$GW_PID" -- sleep 0.1 >/dev/null 2>&1; then COUNT=1; fi

# wrk's latency figures to microseconds.
to_us() { awk -v v="$1" 'BEGIN { n=v; sub(/[a-z]+$/,"",n); u=v; sub(/^[0-9.]+/,"",u);
  f = (u=="us") ? 1 : (u=="ms") ? 1000 : (u=="s") ? 1000000 : 1; printf "%.0f", n*f }'; }

results=$work/results.tsv
: > "$results"
for round in $(seq 1 "$ROUNDS"); do
  # Rotate the order each round so no target always runs first (warm) or last (hot machine).
  shift_by=$(( (round - 1) % ${#targets[@]} ))
  order=("${targets[@]:$shift_by}" "${targets[@]:0:$shift_by}")
  for size in small big; do
    for target in "${order[@]}"; do
      if [ "$COUNT" = 1 ]; then
        perf stat -x, -e task-clock,context-switches,raw_syscalls:sys_enter -p "${PIDS_OF[$target]}" \
          -o "$work/perf" -- sleep "${DURATION%s}" & perf_pid=$!
      fi
      header=()
      [ -n "${HEADER_OF[$target]:-}" ] && header=(-H "${HEADER_OF[$target]}")
      out=$($WRK -t"$WRK_THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency -s bench/tail.lua "${header[@]}" "http://127.0.0.1:${PORT_OF[$target]}/$size")
      cost=""
      if [ "$COUNT" = 1 ]; then
        wait "$perf_pid" || true
        requests=$(awk '/requests in/ {print $1}' <<<"$out")
        # us of CPU, context switches and system calls per request
        cost=$(awk -F, -v n="$requests" '$3=="task-clock" {c=$1} $3=="context-switches" {x=$1} $3=="raw_syscalls:sys_enter" {y=$1}
          END {printf "%.2f\t%.2f\t%.2f", c*1000/n, x/n, y/n}' "$work/perf")
      fi
      rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
      p50=$(to_us "$(awk '$1=="50%" {print $2}' <<<"$out")")
      p99=$(to_us "$(awk '$1=="99%" {print $2}' <<<"$out")")
      p999=$(awk '/^tail:/ {print $9}' <<<"$out")
      errors=$(awk '/Non-2xx|Socket errors/ {print}' <<<"$out" | tr '\n' ' ')
      printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$size" "$target" "$rps" "$p50" "$p99" "${cost:-$'0\t0\t0'}" "$p999" >> "$results"
      printf 'round %s %-5s %-12s %10s rps  p50 %6s us  p99 %6s us  p99.9 %6s us  %s %s\n' "$round" "$size" "$target" "$rps" "$p50" "$p99" "$p999" \
        "${cost:+(cpu us, switches, syscalls a request: $(tr '\t' ' ' <<<"$cost"))}" "$errors" >&2
    done
  done
done
GW_RSS=$(awk '/VmRSS/ {print $2}' "/proc/$GW_PID/status")

mkdir -p bench/results
report=bench/results/gateway-$(date -u +%Y%m%dT%H%M%SZ).txt
{
  echo "Gateway benchmark: wrk -t$WRK_THREADS -c$CONNECTIONS -d$DURATION, $ROUNDS rounds, proxies at $PROXY_THREADS threads/workers"
  echo "client: $CLIENT ($WRK)"
  echo "machine: $(nproc) cores, $(uname -r), load average at the end: $(cut -d' ' -f1-3 /proc/loadavg); medians over rounds; ratio = target / stratus"
  echo
  printf '%-6s %-12s %12s %9s %9s %9s %10s %10s %8s %8s %8s\n' size target rps p50_us p99_us p999_us rps_ratio p99_ratio cpu_us switches syscalls
  for size in small big; do
    s_rps=$(awk -F'\t' -v s="$size" '$2==s && $3=="stratus" {print $4}' "$results" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
    s_p99=$(awk -F'\t' -v s="$size" '$2==s && $3=="stratus" {print $6}' "$results" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
    for target in "${targets[@]}"; do
      med() { awk -F'\t' -v s="$size" -v t="$target" -v c="$1" '$2==s && $3==t {print $c}' "$results" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
      rps=$(med 4); p50=$(med 5); p99=$(med 6); cpu=$(med 7); switches=$(med 8); syscalls=$(med 9); p999=$(med 10)
      printf '%-6s %-12s %12.0f %9s %9s %9s %10.2f %10.2f %8s %8s %8s\n' "$size" "$target" "$rps" "$p50" "$p99" "$p999" \
        "$(awk -v a="$rps" -v b="$s_rps" 'BEGIN{print a/b}')" "$(awk -v a="$p99" -v b="$s_p99" 'BEGIN{print a/b}')" \
        "$cpu" "$switches" "$syscalls"
    done
  done
  echo
  echo "stratus gateway RSS after the run: ${GW_RSS} kB"
  if [ -n "${GWF_PID:-}" ]; then
    records=$(curl -sf "http://127.0.0.1:$GWFA/metrics" | awk '/^events_(sent|dropped)_total/ {split($1,n,"{"); s[n[1]]+=$NF} END {printf "%.0f sent to the sink, %.0f dropped (counted)", s["events_sent_total"], s["events_dropped_total"]}')
    echo "stratus-full: every request's token verified; its event records: $records"
  fi
} | tee "$report"
