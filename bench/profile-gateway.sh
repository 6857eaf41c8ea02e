#!/usr/bin/env bash
# Instructions per proxied request, counted by callgrind: the gateway, and nginx and HAProxy for
# comparison, each proxying the same backend. Unlike wall-clock figures this count repeats
# whatever else the machine is doing, so it measures a change to the hot path on a busy machine.
#
#   bench/profile-gateway.sh                # 13-byte responses, 4000 requests per target
#   REQUESTS=10000 TARGETS="stratus" bench/profile-gateway.sh
#   EVENTS=on TARGETS=stratus bench/profile-gateway.sh   # the gateway reporting every request to a sink
#   TARGETS="stratus stratus-mtls" SIZE=big bench/profile-gateway.sh   # plaintext against mutual TLS upstream
#   BASELINE=/path/to/old/bench_mtls_gateway TARGETS="stratus-mtls stratus-mtls-base" bench/profile-gateway.sh
#
# stratus-mtls is the bench-only `bench_mtls_gateway` example (crates/gateway/examples) with
# workload credentials, in front of the same nginx serving TLS 1.3 with client certificates
# required (the certificates from `stratus identity init` / `issue`); stratus-mtls-base is the
# same with the binary in BASELINE (another build), for a change's before and after.
#
# Counts only user-space instructions of the proxy process (the kernel's share, syscalls and
# wake-ups, is not in it). The gateway's profile is kept in bench/results/callgrind.stratus.out;
# read it with `callgrind_annotate --inclusive=yes`.
set -euo pipefail
# Components started here by hand, without join credentials: plaintext inside, as before
# `stratus serve` defaulted to mutual TLS (benchmarks only; bench/mtls.sh measures its cost).
export STRATUS_MTLS="${STRATUS_MTLS:-off}"
cd "$(dirname "$0")/.."
REQUESTS=${REQUESTS:-4000}
CONNECTIONS=${CONNECTIONS:-8}
TARGETS=${TARGETS:-"stratus haproxy nginx"}
SIZE=${SIZE:-small}
EVENTS=${EVENTS:-off}
[ -x target/release/stratus ] || cargo build --release -j2
STRATUS=$PWD/target/release/stratus
if [[ " $TARGETS " == *" stratus-mtls"* ]]; then
  [ -x target/release/examples/bench_mtls_gateway ] || cargo build --release -j2 -p stratus-gateway --example bench_mtls_gateway
fi
MTLS_GATEWAY=$PWD/target/release/examples/bench_mtls_gateway
BASELINE=${BASELINE:-}
command -v valgrind >/dev/null || { echo "install valgrind" >&2; exit 1; }

work=$(mktemp -d); chmod 755 "$work"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 600); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened" >&2; exit 1; }
head -c 16384 /dev/zero | tr '\0' 'x' > "$work/big"

B1=$(free_port); BT=$(free_port)
# The authority and certificates for the mutual TLS targets (the instance is service `bench`).
STRATUS_DATA_DIR=$work/data STRATUS_LOG=warn "$STRATUS" identity init >/dev/null
for service in bench gateway; do
  STRATUS_DATA_DIR=$work/data STRATUS_LOG=warn "$STRATUS" identity issue --service "$service" --lifetime 2h --out "$work/tls-$service" >/dev/null
done
cat > "$work/backend.conf" <<CONF
worker_processes 1;
daemon off;
pid $work/backend.pid;
error_log $work/backend-error.log warn;
events { worker_connections 1024; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:$B1; location = /small { return 200 "hello, world\n"; } location = /big { alias $work/big; } }
  server { listen 127.0.0.1:$BT ssl; ssl_protocols TLSv1.3; ssl_session_tickets off; ssl_session_cache off;
    ssl_certificate $work/tls-bench/cert.pem; ssl_certificate_key $work/tls-bench/key.pem;
    ssl_client_certificate $work/tls-bench/bundle.pem; ssl_verify_client on;
    location = /small { return 200 "hello, world\n"; } location = /big { alias $work/big; } } }
CONF
nginx -c "$work/backend.conf" -p "$work" & pids+=($!)
wait_port "$B1"; wait_port "$BT"

# Sends REQUESTS requests over CONNECTIONS keep-alive connections (a few warm-up ones first).
drive() { python3 bench/drive.py "$1" "$REQUESTS" "$CONNECTIONS" "$SIZE"; }

count_file() { awk '/^summary:|^totals:/ {print $2; exit}' "$1"; }

for target in $TARGETS; do
  port=$(free_port)
  case $target in
    stratus-mtls|stratus-mtls-base)
      binary=$MTLS_GATEWAY
      if [ "$target" = stratus-mtls-base ]; then
        [ -n "$BASELINE" ] || { echo "stratus-mtls-base needs BASELINE=<bench_mtls_gateway binary>" >&2; exit 1; }
        binary=$(realpath "$BASELINE")
      fi
      REG=$(free_port); ADMIN=$(free_port)
      printf '[[routes]]\nprefix = "/"\nservice = "bench"\nauth = "none"\n' > "$work/routes.toml"
      STRATUS_DATA_DIR=$work/data STRATUS_LOG=warn PORT=$REG "$STRATUS" serve registry > "$work/registry-$target.log" 2>&1 & pids+=($!)
      wait_port "$REG"
      curl -sf -X PUT "http://127.0.0.1:$REG/v1/services/bench/instances/t1" -H 'content-type: application/json' \
        -d "{\"address\":\"127.0.0.1\",\"port\":$BT,\"ttl_seconds\":3600,\"metadata\":{\"health_check\":\"tcp\"}}" >/dev/null
      env BENCH_UPSTREAM_TLS_DIR=$work/tls-gateway STRATUS_EVENTS=off STRATUS_DATA_DIR=$work/data STRATUS_LOG=warn STRATUS_GATEWAY_WORKERS=1 PORT=$port \
        STRATUS_ADMIN_PORT=$ADMIN STRATUS_REGISTRY_URL=http://127.0.0.1:$REG STRATUS_ROUTES=$work/routes.toml ${EXTRA_ENV:-} \
        valgrind --tool=callgrind --callgrind-out-file="$work/callgrind.$target.out" "$binary" > "$work/gateway-$target.log" 2>&1 &
      ;;
    stratus)
      REG=$(free_port); ADMIN=$(free_port)
      printf '[[routes]]\nprefix = "/"\nservice = "bench"\nauth = "none"\n' > "$work/routes.toml"
      STRATUS_DATA_DIR=$work/data STRATUS_LOG=warn PORT=$REG "$STRATUS" serve registry > "$work/registry.log" 2>&1 & pids+=($!)
      wait_port "$REG"
      curl -sf -X PUT "http://127.0.0.1:$REG/v1/services/bench/instances/b1" -H 'content-type: application/json' \
        -d "{\"address\":\"127.0.0.1\",\"port\":$B1,\"ttl_seconds\":3600}" >/dev/null
      # EVENTS=on: a real sink (not under callgrind) stores the gateway's records.
      SINK=$(free_port)
      if [ "$EVENTS" = on ]; then
        STRATUS_DATA_DIR=$work/data STRATUS_LOG=warn STRATUS_REGISTRY_URL=http://127.0.0.1:$REG PORT=$SINK \
          "$STRATUS" serve events > "$work/events.log" 2>&1 & pids+=($!)
        wait_port "$SINK"
      fi
      env STRATUS_EVENTS=$EVENTS STRATUS_EVENTS_URL=http://127.0.0.1:$SINK STRATUS_DATA_DIR=$work/data STRATUS_LOG=warn STRATUS_GATEWAY_WORKERS=1 PORT=$port \
        STRATUS_ADMIN_PORT=$ADMIN STRATUS_REGISTRY_URL=http://127.0.0.1:$REG STRATUS_ROUTES=$work/routes.toml ${EXTRA_ENV:-} \
        valgrind --tool=callgrind --callgrind-out-file="$work/callgrind.$target.out" "$STRATUS" serve gateway > "$work/gateway.log" 2>&1 &
      ;;
    haproxy)
      printf 'global\n  nbthread 1\ndefaults\n  mode http\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n  http-reuse always\nfrontend fe\n  bind 127.0.0.1:%s\n  default_backend be\nbackend be\n  server b1 127.0.0.1:%s\n' "$port" "$B1" > "$work/haproxy.cfg"
      valgrind --tool=callgrind --callgrind-out-file="$work/callgrind.$target.out" haproxy -f "$work/haproxy.cfg" -db > "$work/haproxy.log" 2>&1 &
      ;;
    nginx)
      cat > "$work/nginx.conf" <<CONF
worker_processes 1;
master_process off;
daemon off;
pid $work/nginx.pid;
error_log $work/nginx-error.log warn;
events { worker_connections 1024; }
http { access_log off; keepalive_requests 1000000;
  upstream b { server 127.0.0.1:$B1; keepalive 32; }
  server { listen 127.0.0.1:$port; location / { proxy_pass http://b; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
CONF
      valgrind --tool=callgrind --callgrind-out-file="$work/callgrind.$target.out" nginx -c "$work/nginx.conf" -p "$work" > "$work/nginx.log" 2>&1 &
      ;;
  esac
  pid=$!; pids+=("$pid")  # stopped on any exit, a failed run's included
  wait_port "$port"
  # A gateway answers 503 until it has the instance from the registry (slower under callgrind).
  if [[ "$target" == stratus* ]]; then
    for _ in $(seq 1 600); do curl -sf "http://127.0.0.1:$port/$SIZE" >/dev/null && break; sleep 0.1; done
  fi
  # Warm up (connections, pools, lazy start-up work), then count only the measured requests:
  # callgrind_control zeroes the counters before and dumps them after.
  REQUESTS=$((CONNECTIONS * 20)) drive "$port"
  callgrind_control -z "$pid" >/dev/null 2>&1
  drive "$port"
  callgrind_control -d "$pid" >/dev/null 2>&1
  kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
  dump=$(ls "$work"/callgrind."$target".out.* | head -1)
  ir=$(count_file "$dump")
  printf '%-8s %8.0f instructions per request (%s requests)\n' "$target" "$(awk -v a="$ir" -v n="$REQUESTS" 'BEGIN{print a/n}')" "$REQUESTS"
  if [[ "$target" == stratus* ]]; then
    mkdir -p bench/results
    cp "$dump" "bench/results/callgrind.$target$([ "$EVENTS" = on ] && echo -events).out"
  fi
done
