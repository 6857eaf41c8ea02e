#!/usr/bin/env bash
# Event sink ingest speed through HTTP: a fresh `stratus serve events` (SQLite in a temp dir, or
# PostgreSQL with DATABASE_URL set), loaded by several client connections each posting batches of
# records to POST /v1/events as fast as the sink takes them. Prints records/s.
#
#   bench/events.sh                              # release build, 4 connections, 500-record batches, 10 s
#   CONNECTIONS=8 BATCH=1000 DURATION=20 bench/events.sh
#   PROFILE=debug bench/events.sh                # the debug binary (no release build needed)
#   bench/events.sh --gateway                    # the gateway's throughput, event reporting on vs off
#
# --gateway: one nginx backend, a registry, the sink and two gateways over the same backend, one
# reporting every request to the sink and one not; wrk alternates between them (ROUNDS x
# DURATION each) and the medians give the cost of reporting. Needs wrk and nginx.
#
# Machine caveat: the load generator (Python, one process per connection) and the sink share
# this machine's cores with whatever else runs; note the load average printed with the result.
set -euo pipefail
cd "$(dirname "$0")/.."
CONNECTIONS=${CONNECTIONS:-4}
BATCH=${BATCH:-500}
DURATION=${DURATION:-10}
PROFILE=${PROFILE:-release}

if [ "$PROFILE" = release ]; then
  [ -x target/release/stratus ] || cargo build --release -j2
else
  [ -x target/debug/stratus ] || cargo build -j2
fi
STRATUS=$PWD/target/$PROFILE/stratus

work=$(mktemp -d)
chmod 755 "$work"
pid=
pids=()
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 200); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened" >&2; exit 1; }
port=$(free_port)

if [ "${1:-}" = --gateway ]; then
  ROUNDS=${ROUNDS:-3}
  WRK_DURATION=${WRK_DURATION:-10s}
  WRK_CONNECTIONS=${WRK_CONNECTIONS:-64}
  command -v wrk >/dev/null && command -v nginx >/dev/null || { echo "install wrk and nginx" >&2; exit 1; }
  B=$(free_port); REG=$(free_port); ON=$(free_port); OFF=$(free_port)
  cat > "$work/backend.conf" <<CONF
worker_processes 1;
daemon off;
pid $work/backend.pid;
error_log $work/backend-error.log warn;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:$B; location / { return 200 "hello, world\n"; } } }
CONF
  nginx -c "$work/backend.conf" -p "$work" & pids+=($!)
  cat > "$work/routes.toml" <<CONF
[[routes]]
prefix = "/"
service = "bench"
auth = "none"
CONF
  export STRATUS_DATA_DIR=$work STRATUS_LOG=warn STRATUS_LOG_FORMAT=json STRATUS_REGISTRY_URL=http://127.0.0.1:$REG
  PORT=$REG "$STRATUS" serve registry > "$work/registry.log" 2>&1 & pids+=($!)
  wait_port "$REG"; wait_port "$B"
  curl -sf -X PUT "http://127.0.0.1:$REG/v1/services/bench/instances/backend" \
    -H 'content-type: application/json' -d "{\"address\":\"127.0.0.1\",\"port\":$B,\"ttl_seconds\":3600}" >/dev/null
  PORT=$port STRATUS_EVENTS_MAX_ROWS=100000000 "$STRATUS" serve events > "$work/events.log" 2>&1 & pids+=($!)
  for mode in on off; do
    gw=$([ $mode = on ] && echo "$ON" || echo "$OFF")
    STRATUS_EVENTS=$mode STRATUS_EVENTS_URL=http://127.0.0.1:$port TOKIO_WORKER_THREADS=2 PORT=$gw \
      STRATUS_ADMIN_PORT=$(free_port) STRATUS_ROUTES=$work/routes.toml \
      "$STRATUS" serve gateway > "$work/gateway-$mode.log" 2>&1 & pids+=($!)
  done
  for p in "$port" "$ON" "$OFF"; do wait_port "$p"; done
  for p in "$ON" "$OFF"; do until curl -sf "http://127.0.0.1:$p/x" >/dev/null; do sleep 0.05; done; done
  : > "$work/rps"
  for round in $(seq 1 "$ROUNDS"); do
    for mode in off on; do
      gw=$([ $mode = on ] && echo "$ON" || echo "$OFF")
      rps=$(wrk -t2 -c"$WRK_CONNECTIONS" -d"$WRK_DURATION" "http://127.0.0.1:$gw/x" | awk '/Requests\/sec/ {print $2}')
      echo "round $round reporting $mode: $rps requests/s" >&2
      echo "$mode $rps" >> "$work/rps"
    done
  done
  med() { awk -v m="$1" '$1==m {print $2}' "$work/rps" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
  on=$(med on); off=$(med off)
  stored=$(curl -sf "http://127.0.0.1:$port/v1/stats?window=1h" | python3 -c 'import json,sys; print(sum(s["count"] for s in json.load(sys.stdin)["services"]))')
  printf 'gateway with event reporting: off %.0f rps, on %.0f rps (medians of %s x %s): %.1f%% loss; the sink stored %s records; load average %s\n' \
    "$off" "$on" "$ROUNDS" "$WRK_DURATION" "$(awk -v a="$on" -v b="$off" 'BEGIN{print (1-a/b)*100}')" "$stored" "$(cut -d' ' -f1 /proc/loadavg)"
  exit 0
fi

# The sink alone: no registry needed for ingest (registration failures are only logged).
PORT=$port STRATUS_DATA_DIR=$work STRATUS_REGISTRY_URL=http://127.0.0.1:9 STRATUS_LOG=warn \
  STRATUS_EVENTS_MAX_ROWS=100000000 "$STRATUS" serve events >"$work/events.log" 2>&1 &
pid=$!
for _ in $(seq 1 200); do
  python3 - "$port" <<'PY' && break
import sys, urllib.request
try:
    urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/healthz", timeout=0.2)
except Exception:
    sys.exit(1)
PY
  sleep 0.05
done

python3 - "$port" "$CONNECTIONS" "$BATCH" "$DURATION" <<'PY'
import http.client, json, multiprocessing, os, random, sys, time
from datetime import datetime, timezone

port, connections, batch, duration = (int(a) for a in sys.argv[1:])

def body(seed):
    rnd = random.Random(seed)
    now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    records = []
    for i in range(batch):
        trace = "%032x" % rnd.getrandbits(128)
        records.append({
            "trace_id": trace, "span_id": "%016x" % (rnd.getrandbits(63) | 1),
            "parent_span_id": "%016x" % (rnd.getrandbits(63) | 1),
            "service": rnd.choice(["catalog", "auth", "gateway", "orders"]),
            "instance": "i-%d" % rnd.randrange(4), "kind": "server",
            "name": "/api/catalog/products/{id}", "method": "GET",
            "status": 200 if i % 50 else 503, "ok": bool(i % 50), "started_at": now,
            "duration_us": rnd.randrange(100, 20000),
        })
    return json.dumps(records).encode()

def worker(index, result):
    payloads = [body(index * 100 + k) for k in range(8)]
    conn = http.client.HTTPConnection("127.0.0.1", port)
    sent = refused = 0
    deadline = time.monotonic() + duration
    k = 0
    while time.monotonic() < deadline:
        conn.request("POST", "/v1/events", payloads[k % len(payloads)],
                     {"content-type": "application/json"})
        response = conn.getresponse()
        response.read()
        if response.status == 202:
            sent += batch
        else:
            refused += 1
        k += 1
    result.put((sent, refused))

if __name__ == "__main__":
    result = multiprocessing.Queue()
    procs = [multiprocessing.Process(target=worker, args=(i, result)) for i in range(connections)]
    started = time.monotonic()
    for p in procs: p.start()
    totals = [result.get() for _ in procs]
    for p in procs: p.join()
    elapsed = time.monotonic() - started
    stored = sum(t[0] for t in totals)
    refused = sum(t[1] for t in totals)
    load = os.getloadavg()[0]
    print(f"events ingest: {stored} records in {elapsed:.1f} s = {stored / elapsed:,.0f} records/s "
          f"({connections} connections, batches of {batch}, refused batches {refused}, "
          f"load average {load:.1f})")
PY
