#!/usr/bin/env bash
# The gateway with mutual TLS to its instances against the same gateway in plaintext.
#
#   bench/mtls.sh                    # 3 rounds x 10 s per case, 64 connections
#   ROUNDS=5 DURATION=20s IDLE=800 bench/mtls.sh
#
# What it measures (issue 18):
#   - keep-alive: throughput and p99 at 13 B and 16 KiB, upstream connections reused
#     (target: mTLS within 10% of plaintext for both);
#   - no reuse: every upstream connection closed by the instance after one answer, so each
#     request is a new upstream connection and, with mTLS, a full handshake (TLS 1.3, no
#     resumption): handshakes per second;
#   - latency at a fixed rate: p50, p99 and p99.9 of every target at RATE_SHARE (0.6) of the
#     plaintext gateway's median throughput at that size, paced by bench/paced.lua (wrk2 is not
#     packaged here). At saturation a closed-loop client's p99 is mostly the queue the slower
#     system builds, so it repeats the throughput ratio; at a fixed rate below both maxima it is
#     the time mutual TLS adds to a request;
#   - memory per idle upstream connection: IDLE client connections make the gateway open about
#     as many upstream connections, which stay pooled after the load stops; the gateway's heap
#     in use (malloc_in_use_bytes) and RSS before and after, per pooled connection.
#
# How it is set up, while instances cannot yet get certificates from the registry by themselves:
#   - `stratus identity init` makes an authority in a temporary data directory, and
#     `stratus identity issue` certificates for the services `bench` and `bench-close` (the
#     instances) and `gateway`;
#   - the instances serve /small (13 B) and /big (16 KiB) on several ports: plaintext ones, and
#     TLS 1.3 ones with the instance's certificate and client certificates required and checked
#     against the authority's bundle; the `-close` ones answer with `Connection: close`. They are
#     Stratus's own service listener (INSTANCE=stratus, the default, below) or one nginx
#     (1 worker; `ssl_verify_client on`, no session tickets or cache);
#   - the gateways are the bench-only example `bench_mtls_gateway` (crates/gateway/examples):
#     `stratus serve gateway`'s code and `Args`, with credentials read from the folder in
#     `BENCH_UPSTREAM_TLS_DIR`. Both gateways run that binary, one with the variable (every
#     upstream connection mTLS, checking that the instance's certificate names the service it
#     was registered as) and one without; 2 workers each, event reporting off, no token on the
#     route, as in gateway.sh;
#   - a registry holds the instances: `plain` and `plain-close` for the plaintext gateway,
#     `bench` and `bench-close` for the mTLS one.
#
# Needs: wrk and nginx (Debian packages; installed when missing and running as root), curl, ss,
# python3, and release builds (made when missing). Everything listens on loopback; every load is
# bounded in time; every process started here is stopped on exit, by pid. Results: a table on
# stdout and bench/results/mtls-<time>.txt.
#
# Machine caveat: wrk, the gateways and nginx share this machine's cores, and TLS costs the
# instance (nginx) CPU as well as the gateway; the ratios in one run are the result.
set -euo pipefail
# Components started here by hand, without join credentials: plaintext inside, as before
# `stratus serve` defaulted to mutual TLS (benchmarks only; bench/mtls.sh measures its cost).
export STRATUS_MTLS="${STRATUS_MTLS:-off}"
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-64}
WRK_THREADS=${WRK_THREADS:-2}
WORKERS=${WORKERS:-2}
IDLE=${IDLE:-500}
PATHS=${PATHS:-"small big close/small"}
RATE_SHARE=${RATE_SHARE:-0.6}  # the paced phase's rate, as a share of plain's throughput (a list: "0.3 0.6")
HOLD=${HOLD:-0}  # seconds to keep everything running after setup, for a look by hand
# Another build of the example (say, from the commit before a change), run as a third gateway
# `mtls-base` with the same credentials and instances, so a change's before and after are
# measured in the same run:  BASELINE=/path/to/bench_mtls_gateway bench/mtls.sh
BASELINE=${BASELINE:-}
# PERF=1: count the gateway's system calls per request with perf (linux-perf), where it can.
PERF=${PERF:-0}
# INSTANCE=stratus (the default): the instances are `bench_instance` (crates/kit/examples), a
# Stratus service's server side (kit's listener: tokio-rustls with client certificates required,
# axum, hyper), one process of 1 worker per port: what every meshed instance is. INSTANCE=nginx:
# one nginx (1 worker) with OpenSSL, as an outside reference. Upstream connections opened per
# request and the no-reuse handshake log are nginx's, so they are shown only then.
INSTANCE=${INSTANCE:-stratus}
# Where the client runs (bench/README.md, "Whose tail"): CLIENT=shared (the default: everything
# on both cores), or CLIENT=pinned: the gateways on core 1 with one worker each, wrk (one
# thread), the instances and the registry on core 0, as if the gateway had a machine of its own;
# its throughput is then its own CPU time a request, plaintext against mTLS.
CLIENT=${CLIENT:-shared}
WRK=wrk; ON_PROXY_CORE=; ON_CLIENT_CORE=
case $CLIENT in
  shared) ;;
  pinned) WRK="taskset -c 0 wrk"; ON_CLIENT_CORE="taskset -c 0"; ON_PROXY_CORE="taskset -c 1"; WORKERS=1; WRK_THREADS=1 ;;
  *) echo "CLIENT is shared or pinned" >&2; exit 1 ;;
esac
files=$((IDLE * 3 + 10000))  # clients, upstream connections, wrk, nginx
[ "$(ulimit -n)" -ge "$files" ] || ulimit -n "$files"

need() { command -v "$1" >/dev/null 2>&1; }
if ! need wrk || ! need nginx; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends wrk nginx >/dev/null
  else
    echo "install wrk and nginx first" >&2; exit 1
  fi
fi
[ -x target/release/stratus ] || cargo build --release -j2
[ -x target/release/examples/bench_mtls_gateway ] || cargo build --release -j2 -p stratus-gateway --example bench_mtls_gateway
if [ "$INSTANCE" = stratus ]; then
  [ -x target/release/examples/bench_instance ] || cargo build --release -j2 -p stratus-kit --example bench_instance
fi
STRATUS=$PWD/target/release/stratus
GATEWAY=$PWD/target/release/examples/bench_mtls_gateway

work=$(mktemp -d)
chmod 755 "$work"  # nginx workers (not root) read the 16 KiB file from here
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 200); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened" >&2; exit 1; }

# The authority and the certificates (2 hours: longer than any run).
export STRATUS_DATA_DIR=$work/data STRATUS_LOG=warn STRATUS_LOG_FORMAT=json
"$STRATUS" identity init >/dev/null
for service in bench bench-close gateway; do
  "$STRATUS" identity issue --service "$service" --lifetime 2h --out "$work/tls-$service" >/dev/null
done

P1=$(free_port); P2=$(free_port); PC=$(free_port)       # plaintext instances
T1=$(free_port); T2=$(free_port); TC=$(free_port)       # mTLS instances
STATUS=$(free_port); REG=$(free_port)
GWP=$(free_port); GWPA=$(free_port); GWT=$(free_port); GWTA=$(free_port); GWB=$(free_port); GWBA=$(free_port)
head -c 16384 /dev/zero | tr '\0' 'x' > "$work/big"

locations="location = /small { return 200 \"hello, world\\n\"; } location = /big { alias $work/big; }
    location = /close/small { return 200 \"hello, world\\n\"; } location = /close/big { alias $work/big; }"
tls() {  # the TLS settings of an instance of service $1
  printf 'ssl_certificate %s/tls-%s/cert.pem; ssl_certificate_key %s/tls-%s/key.pem;
    ssl_client_certificate %s/tls-%s/bundle.pem; ssl_verify_client on;
    ssl_protocols TLSv1.3; ssl_session_tickets off; ssl_session_cache off;' "$work" "$1" "$work" "$1" "$work" "$1"
}
# The instances, unless they are Stratus's own (INSTANCE=stratus, below); nginx serves the status.
instance_servers=
if [ "$INSTANCE" = nginx ]; then
  instance_servers="server { listen 127.0.0.1:$P1; $locations }
  server { listen 127.0.0.1:$P2; $locations }
  server { listen 127.0.0.1:$PC; keepalive_timeout 0; $locations }
  server { listen 127.0.0.1:$T1 ssl; $(tls bench) $locations }
  server { listen 127.0.0.1:$T2 ssl; $(tls bench) $locations }
  server { listen 127.0.0.1:$TC ssl; $(tls bench-close) keepalive_timeout 0;
    access_log $work/handshakes.log handshakes; $locations }"
fi
cat > "$work/backend.conf" <<CONF
worker_processes 1;
daemon off;
pid $work/backend.pid;
error_log $work/backend-error.log warn;
events { worker_connections 8192; }
http {
  access_log off;
  keepalive_requests 1000000;
  log_format handshakes '\$connection \$ssl_protocol \$ssl_client_verify \$ssl_session_reused \$ssl_cipher';
  $instance_servers
  server { listen 127.0.0.1:$STATUS; location = /status { stub_status; } }
}
CONF
INSTANCE_PIDS=()
if [ "$INSTANCE" = stratus ]; then
  instance() {  # port tls-folder-or-empty close
    if [ -n "$2" ]; then
      BENCH_INSTANCE_TLS_DIR=$2 BENCH_INSTANCE_CLOSE=$3 PORT=$1 exec $ON_CLIENT_CORE target/release/examples/bench_instance
    else
      BENCH_INSTANCE_CLOSE=$3 PORT=$1 exec $ON_CLIENT_CORE target/release/examples/bench_instance
    fi
  }
  instance "$P1" "" 0 & pids+=($!); INSTANCE_PIDS+=($!)
  instance "$P2" "" 0 & pids+=($!); INSTANCE_PIDS+=($!)
  instance "$PC" "" 1 & pids+=($!); INSTANCE_PIDS+=($!)
  instance "$T1" "$work/tls-bench" 0 & pids+=($!); INSTANCE_PIDS+=($!)
  instance "$T2" "$work/tls-bench" 0 & pids+=($!); INSTANCE_PIDS+=($!)
  instance "$TC" "$work/tls-bench-close" 1 & pids+=($!); INSTANCE_PIDS+=($!)
fi
$ON_CLIENT_CORE nginx -c "$work/backend.conf" -p "$work" & pids+=($!)

PORT=$REG $ON_CLIENT_CORE "$STRATUS" serve registry > "$work/registry.log" 2>&1 & pids+=($!)
wait_port "$REG"
register() {  # service port
  curl -sf -X PUT "http://127.0.0.1:$REG/v1/services/$1/instances/$1-$2" -H 'content-type: application/json' \
    -d "{\"address\":\"127.0.0.1\",\"port\":$2,\"ttl_seconds\":3600,\"metadata\":{\"health_check\":\"tcp\"}}" >/dev/null
}
register plain "$P1"; register plain "$P2"; register plain-close "$PC"
register bench "$T1"; register bench "$T2"; register bench-close "$TC"

routes() {  # file service close-service
  printf '[[routes]]\nprefix = "/close/"\nservice = "%s"\nauth = "none"\n\n[[routes]]\nprefix = "/"\nservice = "%s"\nauth = "none"\n' "$3" "$2" > "$1"
}
routes "$work/routes-plain.toml" plain plain-close
routes "$work/routes-mtls.toml" bench bench-close
# The allocator as `stratus` tunes it for itself (src/memory.rs): the example has no such main.
gateway() {  # port admin-port routes log [binary] (exec: the pid started is the gateway's own)
  MALLOC_MMAP_THRESHOLD_=1048576 MALLOC_ARENA_MAX=$((2 * $(nproc))) STRATUS_EVENTS=off STRATUS_GATEWAY_WORKERS=$WORKERS \
    PORT=$1 STRATUS_ADMIN_PORT=$2 STRATUS_REGISTRY_URL=http://127.0.0.1:$REG STRATUS_ROUTES=$3 exec $ON_PROXY_CORE "${5:-$GATEWAY}" > "$4" 2>&1
}
gateway "$GWP" "$GWPA" "$work/routes-plain.toml" "$work/gateway-plain.log" & pids+=($!)
GWP_PID=$!
BENCH_UPSTREAM_TLS_DIR=$work/tls-gateway gateway "$GWT" "$GWTA" "$work/routes-mtls.toml" "$work/gateway-mtls.log" & pids+=($!)
GWT_PID=$!
TARGETS=(plain mtls)
declare -A PORT_OF=([plain]=$GWP [mtls]=$GWT) PID_OF=([plain]=$GWP_PID [mtls]=$GWT_PID)
declare -A ADMIN_OF=([plain]=$GWPA [mtls]=$GWTA) UP_OF=([plain]="$P1 $P2" [mtls]="$T1 $T2")
if [ -n "$BASELINE" ]; then
  BASELINE=$(realpath "$BASELINE")
  BENCH_UPSTREAM_TLS_DIR=$work/tls-gateway gateway "$GWB" "$GWBA" "$work/routes-mtls.toml" "$work/gateway-base.log" "$BASELINE" & pids+=($!)
  TARGETS+=(mtls-base); PORT_OF[mtls-base]=$GWB; PID_OF[mtls-base]=$!; ADMIN_OF[mtls-base]=$GWBA; UP_OF[mtls-base]="$T1 $T2"
fi
for p in "$P1" "$P2" "$PC" "$T1" "$T2" "$TC" "$STATUS" "${PORT_OF[@]}"; do wait_port "$p"; done
for gw in "${PORT_OF[@]}"; do
  for path in small close/small; do
    for _ in $(seq 1 200); do curl -sf "http://127.0.0.1:$gw/$path" >/dev/null && break; sleep 0.05; done
    curl -sf "http://127.0.0.1:$gw/$path" >/dev/null || { echo "gateway on $gw does not answer /$path" >&2; tail -n 5 "$work"/gateway-*.log >&2; exit 1; }
  done
done
# The mTLS instances refuse a client without a certificate (they really check).
if curl -skf "https://127.0.0.1:$T1/small" >/dev/null 2>&1; then echo "the TLS instance took a client without a certificate" >&2; exit 1; fi

if [ "$HOLD" != 0 ]; then
  echo "plain gateway :$GWP (pid $GWP_PID), mtls gateway :$GWT (pid $GWT_PID), nginx $(cat "$work/backend.pid"); holding ${HOLD}s" >&2
  sleep "$HOLD"
fi


# Memory per idle upstream connection, first, while each gateway holds only what its start and
# the warm-up requests left: IDLE clients for 3 s make it open about as many upstream
# connections, which stay pooled (30 s) once wrk has gone.
metric() { curl -sf "http://127.0.0.1:$1/metrics" | awk -v m="$2" '$1==m {printf "%.0f", $2}'; }
upstream_conns() { ss -Htn state established "( dport = :$1 or dport = :$2 )" | wc -l; }
memory=$work/memory.tsv
: > "$memory"
for target in "${TARGETS[@]}"; do
  c0=$(upstream_conns ${UP_OF[$target]}); h0=$(metric "${ADMIN_OF[$target]}" malloc_in_use_bytes)
  r0=$(metric "${ADMIN_OF[$target]}" process_resident_memory_bytes)
  for path in small big; do
    $WRK -t"$WRK_THREADS" -c"$IDLE" -d3s "http://127.0.0.1:${PORT_OF[$target]}/$path" >/dev/null
    sleep 2  # the clients' own connections closed and freed
    c1=$(upstream_conns ${UP_OF[$target]}); h1=$(metric "${ADMIN_OF[$target]}" malloc_in_use_bytes)
    r1=$(metric "${ADMIN_OF[$target]}" process_resident_memory_bytes)
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$target" "$path" "$c0" "$c1" "$h0" "$h1" "$r0" "$r1" >> "$memory"
    printf 'idle %-6s after %-5s upstream connections %s -> %s, heap in use %s -> %s, RSS %s -> %s\n' \
      "$target" "$path" "$c0" "$c1" "$h0" "$h1" "$r0" "$r1" >&2
  done
done

# wrk's latency figures to microseconds.
to_us() { awk -v v="$1" 'BEGIN { n=v; sub(/[a-z]+$/,"",n); u=v; sub(/^[0-9.]+/,"",u);
  f = (u=="us") ? 1 : (u=="ms") ? 1000 : (u=="s") ? 1000000 : 1; printf "%.0f", n*f }'; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
accepted() { curl -sf "http://127.0.0.1:$STATUS/status" | awk 'NR==3 {print $1}'; }
TICK=$(getconf CLK_TCK)
if [ "$INSTANCE" = stratus ]; then
  instance_ticks() { local t=0 p; for p in "${INSTANCE_PIDS[@]}"; do t=$((t + $(cpu_ticks "$p"))); done; echo "$t"; }
  accepted() { echo 0; }  # nginx counts connections; the Stratus instances do not
else
  INSTANCE_PID=$(pgrep -P "$(cat "$work/backend.pid")" | head -1)  # nginx's one worker
  instance_ticks() { cpu_ticks "$INSTANCE_PID"; }
fi

results=$work/results.tsv
: > "$results"
for round in $(seq 1 "$ROUNDS"); do
  # Alternate which gateway goes first, so neither always runs on a warmer machine.
  order=("${TARGETS[@]}"); [ $((round % 2)) = 0 ] && order=($(printf '%s\n' "${TARGETS[@]}" | tac))
  for path in $PATHS; do
    for target in "${order[@]}"; do
      before_cpu=$(cpu_ticks "${PID_OF[$target]}"); before_conns=$(accepted); before_instance=$(instance_ticks)
      # The gateway's system calls over the load (perf's tracepoint count, when perf can).
      perf_pid=
      if [ "$PERF" = 1 ]; then
        perf stat -x, -e raw_syscalls:sys_enter -p "${PID_OF[$target]}" -o "$work/perf.txt" -- sleep "${DURATION%s}" 2>/dev/null & perf_pid=$!
      fi
      out=$($WRK -t"$WRK_THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency "http://127.0.0.1:${PORT_OF[$target]}/$path")
      after_cpu=$(cpu_ticks "${PID_OF[$target]}"); after_conns=$(accepted); after_instance=$(instance_ticks)
      requests=$(awk '/requests in/ {print $1}' <<<"$out")
      rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
      p50=$(to_us "$(awk '$1=="50%" {print $2}' <<<"$out")")
      p99=$(to_us "$(awk '$1=="99%" {print $2}' <<<"$out")")
      errors=$(awk '/Non-2xx|Socket errors/ {print}' <<<"$out" | tr '\n' ' ')
      # The gateway's and the instances' CPU per request (us), and the upstream connections
      # opened per request (nginx's accepts, less the status request itself).
      cpu=$(awk -v a="$before_cpu" -v b="$after_cpu" -v n="$requests" -v t="$TICK" 'BEGIN {printf "%.1f", (b-a)/t*1e6/n}')
      icpu=$(awk -v a="$before_instance" -v b="$after_instance" -v n="$requests" -v t="$TICK" 'BEGIN {printf "%.1f", (b-a)/t*1e6/n}')
      fresh=$(awk -v a="$before_conns" -v b="$after_conns" -v n="$requests" 'BEGIN {printf "%.3f", (b-a-1)/n}')
      [ "$INSTANCE" = stratus ] && fresh=-
      calls=-
      if [ -n "$perf_pid" ]; then
        wait "$perf_pid" || true
        calls=$(awk -F, -v n="$requests" '/sys_enter/ && $1+0 > 0 {printf "%.2f", $1/n}' "$work/perf.txt")
        calls=${calls:--}
      fi
      printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$path" "$target" "$rps" "$p50" "$p99" "$cpu" "$fresh" "$icpu" "$calls" >> "$results"
      printf 'round %s %-12s %-9s %10s rps  p50 %6s us  p99 %6s us  cpu us/req: gateway %6s instances %6s  syscalls/req %s  new upstream connections %s/req %s\n' \
        "$round" "$path" "$target" "$rps" "$p50" "$p99" "$cpu" "$icpu" "$calls" "$fresh" "$errors" >&2
    done
  done
done

# Latency at a fixed rate: each keep-alive size at RATE_SHARE of plain's median throughput.
med_rps() { awk -F'\t' -v p="$1" -v t="$2" '$2==p && $3==t {print $4}' "$results" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
paced_results=$work/paced.tsv
: > "$paced_results"
PACED_PATHS=$(printf '%s\n' $PATHS | grep -v '^close/' | tr '\n' ' ')
for round in $(seq 1 "$ROUNDS"); do
  order=("${TARGETS[@]}"); [ $((round % 2)) = 0 ] && order=($(printf '%s\n' "${TARGETS[@]}" | tac))
  for share in $RATE_SHARE; do
    for path in $PACED_PATHS; do
      rate=$(awk -v r="$(med_rps "$path" plain)" -v s="$share" 'BEGIN {printf "%d", r*s}')
      per_thread=$(awk -v r="$rate" -v t="$WRK_THREADS" 'BEGIN {printf "%d", r/t}')
      for target in "${order[@]}"; do
        out=$($WRK -t"$WRK_THREADS" -c"$CONNECTIONS" -d"$DURATION" -s bench/paced.lua "http://127.0.0.1:${PORT_OF[$target]}/$path" -- "$per_thread")
        rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
        read -r p50 p99 p999 < <(awk '/^paced:/ {print $5, $7, $9}' <<<"$out")
        errors=$(awk '/Non-2xx|Socket errors/ {print}' <<<"$out" | tr '\n' ' ')
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$path" "$target" "$rate" "$rps" "$p50" "$p99" "$p999" "$share" >> "$paced_results"
        printf 'paced round %s %-6s %-9s at %6s rps (%s): did %10s rps  p50 %6s us  p99 %6s us  p99.9 %6s us %s\n' \
          "$round" "$path" "$target" "$rate" "$share" "$rps" "$p50" "$p99" "$p999" "$errors" >&2
      done
    done
  done
done

# The handshakes nginx saw on the no-reuse mTLS instance: one connection per request, each
# with a verified client certificate, none resumed.
handshakes="not logged (INSTANCE=$INSTANCE)"
[ "$INSTANCE" = nginx ] && handshakes=$(awk '{n++; c[$1]=1; if ($2=="TLSv1.3") t++; if ($3=="SUCCESS") v++; if ($4=="r") r++; cipher[$5]++}
  END {printf "%d requests on %d connections; TLS 1.3: %d, client certificate verified: %d, resumed: %d; ciphers:", n, length(c), t, v, r;
       for (k in cipher) printf " %s %d", k, cipher[k]}' "$work/handshakes.log")

mkdir -p bench/results
report=bench/results/mtls-$(date -u +%Y%m%dT%H%M%SZ).txt
med() { awk -F'\t' -v p="$1" -v t="$2" -v c="$3" '$2==p && $3==t {print $c}' "$results" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
{
  echo "client: $CLIENT ($WRK)"
  echo "Gateway upstream mTLS against plaintext: wrk -t$WRK_THREADS -c$CONNECTIONS -d$DURATION, $ROUNDS rounds, $WORKERS gateway workers, instances: $INSTANCE (1 worker)"
  echo "machine: $(nproc) cores, $(uname -r), load average at the end: $(cut -d' ' -f1-3 /proc/loadavg); medians over rounds; ratio = mtls / plain"
  echo
  printf '%-12s %-9s %10s %8s %8s %10s %10s %8s %9s %8s %10s %8s\n' path target rps p50_us p99_us rps_ratio p99_ratio gw_cpu_us gw_bound inst_cpu new_conns gw_sys
  for path in $PATHS; do
    for target in "${TARGETS[@]}"; do
      rps=$(med "$path" "$target" 4); p50=$(med "$path" "$target" 5); p99=$(med "$path" "$target" 6)
      cpu=$(med "$path" "$target" 7); fresh=$(med "$path" "$target" 8); icpu=$(med "$path" "$target" 9); calls=$(med "$path" "$target" 10)
      prps=$(med "$path" plain 4); pp99=$(med "$path" plain 6); pcpu=$(med "$path" plain 7)
      printf '%-12s %-9s %10.0f %8s %8s %10.2f %10.2f %8s %9.2f %8s %10s %8s\n' "$path" "$target" "$rps" "$p50" "$p99" \
        "$(awk -v a="$rps" -v b="$prps" 'BEGIN{print a/b}')" "$(awk -v a="$p99" -v b="$pp99" 'BEGIN{print a/b}')" "$cpu" \
        "$(awk -v a="$pcpu" -v b="$cpu" 'BEGIN{print a/b}')" "$icpu" "$fresh" "$calls"
    done
  done
  echo
  echo
  pmed() { awk -F'\t' -v p="$1" -v t="$2" -v c="$3" -v s="$4" '$2==p && $3==t && $9==s {print $c}' "$paced_results" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
  for share in $RATE_SHARE; do
      echo "At a fixed rate ($share of plain's median rps at that size, paced by bench/paced.lua; medians over rounds):"
      printf '%-12s %-9s %8s %10s %8s %8s %9s %10s %11s\n' path target rate did_rps p50_us p99_us p999_us p99_ratio p999_ratio
      for path in $PACED_PATHS; do
        for target in "${TARGETS[@]}"; do
          printf '%-12s %-9s %8s %10.0f %8s %8s %9s %10.2f %11.2f\n' "$path" "$target" "$(pmed "$path" "$target" 4 "$share")" "$(pmed "$path" "$target" 5 "$share")" \
            "$(pmed "$path" "$target" 6 "$share")" "$(pmed "$path" "$target" 7 "$share")" "$(pmed "$path" "$target" 8 "$share")" \
            "$(awk -v a="$(pmed "$path" "$target" 7 "$share")" -v b="$(pmed "$path" plain 7 "$share")" 'BEGIN{print a/b}')" \
            "$(awk -v a="$(pmed "$path" "$target" 8 "$share")" -v b="$(pmed "$path" plain 8 "$share")" 'BEGIN{print a/b}')"
        done
      done
      echo
    done
    echo "gw_cpu_us / inst_cpu: CPU time per request of the gateway / of the instances ($INSTANCE), from /proc;"
    echo "gw_bound: plain's gateway CPU per request over this one's: the throughput ratio where the gateway is the"
    echo "bottleneck (its own cores, the instances elsewhere), which one machine's shared cores cannot show directly."
    echo "gw_sys: the gateway's system calls per request (perf, PERF=1; - without)."
    echo "close/small is every request on a new upstream connection: its mtls rps is full mTLS handshakes per second"
    echo "(with both the gateway's and the instance's side on this machine's cores); the gateway's own handshakes per"
    echo "second per core are 1e6 / its gw_cpu_us there."
    echo "the no-reuse mTLS instance saw: $handshakes"
    echo
    echo "memory per idle pooled upstream connection (IDLE=$IDLE clients for 3 s, then idle):"
    awk -F'\t' '{ n=$4-$3; if (n<1) n=1; printf "  %-9s after %-5s %4d connections: heap in use %6.0f B each, RSS %6.0f B each\n", $1, $2, $4-$3, ($6-$5)/n, ($8-$7)/n }' "$memory"
  } | tee "$report"
