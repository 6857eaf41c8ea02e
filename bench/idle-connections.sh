#!/usr/bin/env bash
# The gateway's memory with many idle keep-alive client connections: opens CONNECTIONS
# connections, sends one request on each (so each has been through a full request, as an idle
# keep-alive connection has), leaves them all open and idle, and reads the gateway's RSS.
#
#   bench/idle-connections.sh              # 10,000 connections
#   CONNECTIONS=2000 bench/idle-connections.sh
#
#   SILENT=1 bench/idle-connections.sh      # connections that never send anything
#
# Target (issue: the gateway as a production load balancer): under 30 MB at 10,000.
set -euo pipefail
# Components started here by hand, without join credentials: plaintext inside, as before
# `stratus serve` defaulted to mutual TLS (benchmarks only; bench/mtls.sh measures its cost).
export STRATUS_MTLS="${STRATUS_MTLS:-off}"
cd "$(dirname "$0")/.."
CONNECTIONS=${CONNECTIONS:-10000}
STRATUS=${STRATUS_BIN:-target/release/stratus}
[ -x "$STRATUS" ] || cargo build --release -j2
STRATUS=$(cd "$(dirname "$STRATUS")" && pwd)/$(basename "$STRATUS")
ulimit -n $((CONNECTIONS + 1000))

work=$(mktemp -d); chmod 755 "$work"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 200); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened" >&2; exit 1; }
rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }

B1=$(free_port); REG=$(free_port); GW=$(free_port); ADMIN=$(free_port)
cat > "$work/backend.conf" <<CONF
worker_processes 1;
daemon off;
pid $work/backend.pid;
error_log $work/backend-error.log warn;
events { worker_connections 1024; }
http { access_log off; server { listen 127.0.0.1:$B1; location = /small { return 200 "hello, world\n"; } } }
CONF
nginx -c "$work/backend.conf" -p "$work" & pids+=($!)
printf '[[routes]]\nprefix = "/"\nservice = "bench"\nauth = "none"\n' > "$work/routes.toml"
STRATUS_DATA_DIR=$work/data STRATUS_LOG=warn PORT=$REG "$STRATUS" serve registry > "$work/registry.log" 2>&1 & pids+=($!)
wait_port "$REG"; wait_port "$B1"
curl -sf -X PUT "http://127.0.0.1:$REG/v1/services/bench/instances/b1" -H 'content-type: application/json' \
  -d "{\"address\":\"127.0.0.1\",\"port\":$B1,\"ttl_seconds\":3600}" >/dev/null
STRATUS_EVENTS=${STRATUS_EVENTS:-off} STRATUS_DATA_DIR=$work/data STRATUS_LOG=warn PORT=$GW STRATUS_ADMIN_PORT=$ADMIN \
  STRATUS_REGISTRY_URL=http://127.0.0.1:$REG STRATUS_ROUTES=$work/routes.toml "$STRATUS" serve gateway > "$work/gateway.log" 2>&1 &
GW_PID=$!; pids+=($GW_PID)
wait_port "$GW"
until curl -sf "http://127.0.0.1:$GW/small" >/dev/null; do sleep 0.05; done
before=$(rss_kb "$GW_PID")

python3 - "$GW" "$CONNECTIONS" "$GW_PID" "${SILENT:-0}" "$ADMIN" <<'PY'
import socket, sys, time, urllib.request
port, count, pid, silent, admin = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4] == "1", sys.argv[5]
request = b"GET /small HTTP/1.1\r\nHost: bench\r\n\r\n"
sockets, failed = [], 0
for _ in range(count):
    s = socket.create_connection(("127.0.0.1", port))
    if silent:  # SILENT=1: connections that never send a request
        sockets.append(s)
        continue
    s.sendall(request)
    data = b""
    while b"hello, world" not in data:
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
    if b" 200 " not in data.split(b"\r\n", 1)[0]:
        failed += 1
    sockets.append(s)
time.sleep(float(__import__("os").environ.get("SETTLE", "2")))
rss = [l for l in open(f"/proc/{pid}/status") if l.startswith("VmRSS")][0].split()[1]
for l in open(f"/proc/{pid}/status"):
    if l.startswith(("RssAnon", "RssFile")): print(l.strip())
metrics = urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics").read().decode()
def gauge(name):
    return next((l.split()[1] for l in metrics.splitlines() if l.startswith(name + " ")), "0")
parked = gauge("gateway_connections_parked")
# What the allocator holds: handed out (in use) and kept free inside its arenas (fragmentation).
print(f"malloc: {float(gauge('malloc_in_use_bytes'))/2**20:.1f} MiB in use, {float(gauge('malloc_free_bytes'))/2**20:.1f} MiB free in its arenas")
print(f"open: {len(sockets)} connections, {failed} failed requests, {parked} parked; gateway RSS {int(rss)/1024:.1f} MB")
# A last request on every tenth connection: idle connections still work.
ok = 0
for s in sockets[::10]:
    s.sendall(request)
    if b" 200 " in s.recv(4096).split(b"\r\n", 1)[0]:
        ok += 1
print(f"reused after idling: {ok}/{len(sockets[::10])} answered 200")
PY
echo "gateway RSS before: $((before / 1024)) MB"
