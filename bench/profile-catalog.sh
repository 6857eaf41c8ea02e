#!/usr/bin/env bash
# Instructions per catalog read (`GET /api/catalog/products/{id}`, cache off, so every read is
# one SQLite query), counted by callgrind in the catalog process, with the event sink on: the
# request's `server` record, and (since the database tally) its `client` record for catalog-db.
# Compare two binaries to see what a change to the service's request path costs:
#
#   STRATUS_BIN=/tmp/stratus-before bench/profile-catalog.sh
#   STRATUS_BIN=target/debug/stratus REQUESTS=2000 bench/profile-catalog.sh
#   EVENTS=off bench/profile-catalog.sh
#
# Counts user-space instructions of the catalog process only (the sink runs beside it, not under
# callgrind). The count repeats to within about a per cent on a busy machine; debug and release
# builds give different absolute figures, so compare like with like.
set -euo pipefail
# Components started here by hand, without join credentials: plaintext inside, as before
# `stratus serve` defaulted to mutual TLS (benchmarks only; bench/mtls.sh measures its cost).
export STRATUS_MTLS="${STRATUS_MTLS:-off}"
cd "$(dirname "$0")/.."
REQUESTS=${REQUESTS:-2000}
CONNECTIONS=${CONNECTIONS:-4}
EVENTS=${EVENTS:-on}
STRATUS=${STRATUS_BIN:-$PWD/target/release/stratus}
[ -x "$STRATUS" ] || { echo "no binary at $STRATUS (cargo build --release -j2, or set STRATUS_BIN)" >&2; exit 1; }
command -v valgrind >/dev/null || { echo "install valgrind" >&2; exit 1; }

work=$(mktemp -d); chmod 755 "$work"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 1200); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened" >&2; exit 1; }

REG=$(free_port); SINK=$(free_port); CAT=$(free_port)
export STRATUS_DATA_DIR=$work/data STRATUS_LOG=warn STRATUS_REGISTRY_URL=http://127.0.0.1:$REG
PORT=$REG "$STRATUS" serve registry > "$work/registry.log" 2>&1 & pids+=($!)
wait_port "$REG"
PORT=$SINK "$STRATUS" serve events > "$work/events.log" 2>&1 & pids+=($!)
wait_port "$SINK"
env PORT=$CAT CACHE_TTL=0 CATALOG_DEMO_DATA=true STRATUS_EVENTS=$EVENTS STRATUS_EVENTS_URL=http://127.0.0.1:$SINK \
  valgrind --tool=callgrind --callgrind-out-file="$work/callgrind.catalog.out" "$STRATUS" serve catalog \
  > "$work/catalog.log" 2>&1 &
pid=$!; pids+=($pid)
wait_port "$CAT"
id=$(curl -sf "http://127.0.0.1:$CAT/api/catalog/products?limit=1" | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["id"])')

# Sends N reads of one product over CONNECTIONS keep-alive connections.
drive() {
  python3 - "$CAT" "$1" "$CONNECTIONS" "$id" <<'PY'
import socket, sys, threading
port, total, conns, pid = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
req = f"GET /api/catalog/products/{pid} HTTP/1.1\r\nHost: bench\r\n\r\n".encode()
bad = []
def worker(n):
    s = socket.create_connection(("127.0.0.1", port)); f = s.makefile("rb")
    for _ in range(n):
        s.sendall(req)
        length = None
        status = f.readline()
        if b" 200 " not in status: bad.append(status)
        while True:
            line = f.readline()
            if line.lower().startswith(b"content-length:"): length = int(line.split(b":")[1])
            if line in (b"\r\n", b""): break
        f.read(length or 0)
threads = [threading.Thread(target=worker, args=(total // conns,)) for _ in range(conns)]
[t.start() for t in threads]; [t.join() for t in threads]
if bad: sys.exit(f"{len(bad)} responses were not 200, e.g. {bad[0]!r}")
PY
}

# Warm up, then count only the measured reads (callgrind_control zeroes, then dumps). The pause
# lets the reporter's batches of the warm-up go out before counting starts; the measured reads'
# batches are sent (and counted) within the measurement, as they are in service.
drive $((CONNECTIONS * 50))
sleep 1
callgrind_control -z "$pid" >/dev/null 2>&1
drive "$REQUESTS"
sleep 0.5
callgrind_control -d "$pid" >/dev/null 2>&1
dump=$(ls "$work"/callgrind.catalog.out.* | head -1)
ir=$(awk '/^summary:|^totals:/ {print $2; exit}' "$dump")
stored=$(python3 -c 'import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute("SELECT kind, COUNT(*) FROM events WHERE service = ? GROUP BY kind ORDER BY kind", ("catalog",)).fetchall())' "$work/data/events.db" 2>/dev/null || echo "?")
printf 'catalog read, events %s: %.0f instructions per request (%s requests; %s); sink rows by kind: %s\n' \
  "$EVENTS" "$(awk -v a="$ir" -v n="$REQUESTS" 'BEGIN{print a/n}')" "$REQUESTS" "$(basename "$STRATUS")" "$stored"
