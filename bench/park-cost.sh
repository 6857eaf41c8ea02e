#!/usr/bin/env bash
# What parking costs a client that pauses between requests: the gateway's CPU time per request
# when 500 keep-alive connections each send a request, then pause, in rounds; once with pauses
# shorter than the park delay (the session stays), once longer (every request wakes a parked
# connection and starts a new session).
#
#   bench/park-cost.sh                              # park delay 1 s: pauses of 0.8 s and 1.2 s
#   PARK_AFTER=250ms SHORT=0.2 LONG=0.3 bench/park-cost.sh
#
# The CPU time is the sum of the gateway's threads' run time (/proc/PID/task/*/schedstat) over
# the rounds, divided by the requests; it includes the timer and wake-up work of the pauses.
set -euo pipefail
# Components started here by hand, without join credentials: plaintext inside, as before
# `stratus serve` defaulted to mutual TLS (benchmarks only; bench/mtls.sh measures its cost).
export STRATUS_MTLS="${STRATUS_MTLS:-off}"
cd "$(dirname "$0")/.."
PARK_AFTER=${PARK_AFTER:-1s}
SHORT=${SHORT:-0.8}
LONG=${LONG:-1.2}
CONNECTIONS=${CONNECTIONS:-500}
ROUNDS=${ROUNDS:-10}
command -v nginx >/dev/null || { echo "install nginx" >&2; exit 1; }
STRATUS=${STRATUS_BIN:-target/release/stratus}
[ -x "$STRATUS" ] || cargo build --release -j2
STRATUS=$(cd "$(dirname "$STRATUS")" && pwd)/$(basename "$STRATUS")

work=$(mktemp -d); chmod 755 "$work"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 200); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened" >&2; exit 1; }

B=$(free_port); REG=$(free_port); GW=$(free_port); ADMIN=$(free_port)
cat > "$work/backend.conf" <<CONF
worker_processes 1;
daemon off;
pid $work/backend.pid;
error_log $work/backend-error.log warn;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:$B; location = /small { return 200 "hello, world\n"; } } }
CONF
nginx -c "$work/backend.conf" -p "$work" & pids+=($!)
printf '[[routes]]\nprefix = "/"\nservice = "bench"\nauth = "none"\n' > "$work/routes.toml"
export STRATUS_DATA_DIR=$work/data STRATUS_LOG=warn
PORT=$REG "$STRATUS" serve registry > "$work/registry.log" 2>&1 & pids+=($!)
wait_port "$REG"; wait_port "$B"
curl -sf -X PUT "http://127.0.0.1:$REG/v1/services/bench/instances/b1" -H 'content-type: application/json' \
  -d "{\"address\":\"127.0.0.1\",\"port\":$B,\"ttl_seconds\":3600}" >/dev/null
STRATUS_EVENTS=off STRATUS_PARK_AFTER=$PARK_AFTER STRATUS_GATEWAY_WORKERS=2 PORT=$GW STRATUS_ADMIN_PORT=$ADMIN \
  STRATUS_REGISTRY_URL=http://127.0.0.1:$REG STRATUS_ROUTES=$work/routes.toml "$STRATUS" serve gateway > "$work/gateway.log" 2>&1 &
GW_PID=$!; pids+=($GW_PID)
wait_port "$GW"
until curl -sf "http://127.0.0.1:$GW/small" >/dev/null; do sleep 0.05; done

for pause in "$SHORT" "$LONG"; do
python3 - "$GW" "$GW_PID" "$CONNECTIONS" "$pause" "$ROUNDS" "$PARK_AFTER" <<'PY'
import glob, socket, sys, time
port, pid, count, pause, rounds, park_after = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
def cpu_ns():
    total = 0
    for name in glob.glob(f"/proc/{pid}/task/*/schedstat"):
        try:
            total += int(open(name).read().split()[0])
        except OSError:
            pass
    return total
sockets = [socket.create_connection(("127.0.0.1", port)) for _ in range(count)]
request = b"GET /small HTTP/1.1\r\nHost: bench\r\n\r\n"
def one_round():
    for s in sockets:
        s.sendall(request)
    for s in sockets:
        data = b""
        while b"hello, world" not in data:
            chunk = s.recv(4096)
            if not chunk:
                sys.exit("the gateway closed a connection")
            data += chunk
one_round()
time.sleep(pause)
before, requests = cpu_ns(), 0
for _ in range(rounds):
    one_round()
    requests += count
    time.sleep(pause)
used = cpu_ns() - before
print(f"park delay {park_after}, pauses of {pause * 1000:.0f} ms: gateway CPU {used / requests / 1000:.1f} us a request ({requests} requests on {count} connections)")
PY
done
