#!/usr/bin/env bash
# Failed requests during rolling restarts and a scale down, under constant load through the
# gateway (issue 8, acceptance 1).
#
#   bench/rollout.sh                          # 60 s of load; 4 wrk connections per target
#   DURATION=120 CONNECTIONS=8 bench/rollout.sh
#   STRATUS_BIN=target/debug/stratus bench/rollout.sh   # another build (say so in the results)
#
# Starts `stratus up` in a temp dir (registry, auth, catalog x3, orders x2, gateway) on free
# loopback ports, then two wrk runs for DURATION seconds: GET /api/catalog/products and GET
# /api/orders (as admin). While they run, round after round: `stratus rollout catalog`, `stratus
# rollout orders`, `stratus scale catalog=1`, `stratus scale catalog=3`. wrk's non-2xx responses
# and socket errors are the failed requests.
# Needs wrk and curl, and a release build (built when missing). Stops everything it started.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v wrk >/dev/null || { echo "wrk is needed (apt-get install wrk)" >&2; exit 1; }
BIN=${STRATUS_BIN:-target/release/stratus}
if [ "$BIN" = target/release/stratus ] && [ ! -x "$BIN" ]; then cargo build --release -j2; fi
BIN=$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")
DURATION=${DURATION:-60}
CONNECTIONS=${CONNECTIONS:-4}

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
WORK=$(mktemp -d)
UP_PID=
cleanup() {
  [ -n "$UP_PID" ] && kill -TERM "$UP_PID" 2>/dev/null && wait "$UP_PID" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

cat > "$WORK/stratus.toml" <<'EOF'
[[components]]
name = "registry"
[[components]]
name = "auth"
[[components]]
name = "catalog"
replicas = 3
env = { CATALOG_DEMO_DATA = "true" }
[[components]]
name = "orders"
replicas = 2
[[components]]
name = "gateway"

[[routes]]
name = "auth"
prefix = "/auth"
service = "auth"
auth = "none"
[[routes]]
name = "catalog-read"
prefix = "/api/catalog"
methods = ["GET", "HEAD"]
service = "catalog"
[[routes]]
name = "orders"
prefix = "/api/orders"
service = "orders"
auth = "required"
EOF

GATEWAY=$(port)
PASSWORD=bench-admin-password
(
  cd "$WORK"
  STRATUS_GATEWAY_PORT=$GATEWAY STRATUS_ADMIN_PORT=$(port) STRATUS_REGISTRY_PORT=$(port) \
  STRATUS_DNS_PORT=$(port) STRATUS_EVENTS_PORT=$(port) STRATUS_CONTROL_ADDR=127.0.0.1:0 \
  STRATUS_ADMIN_PASSWORD=$PASSWORD STRATUS_DATA_DIR="$WORK/.stratus" \
  exec "$BIN" up > "$WORK/up.log" 2>&1
) &
UP_PID=$!
for _ in $(seq 1 600); do grep -q 'Press Ctrl-C' "$WORK/up.log" && break; sleep 0.1; done
grep -q 'Press Ctrl-C' "$WORK/up.log" || { cat "$WORK/up.log"; exit 1; }
ctl() { STRATUS_DATA_DIR="$WORK/.stratus" "$BIN" "$@"; }

TOKEN=$(curl -s "http://127.0.0.1:$GATEWAY/auth/login" -H 'content-type: application/json' \
  -d "{\"email\":\"admin@stratus.local\",\"password\":\"$PASSWORD\"}" |
  sed 's/.*"access_token":"\([^"]*\)".*/\1/')

wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency \
  "http://127.0.0.1:$GATEWAY/api/catalog/products" > "$WORK/catalog.txt" &
W1=$!
wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency -H "Authorization: Bearer $TOKEN" \
  "http://127.0.0.1:$GATEWAY/api/orders" > "$WORK/orders.txt" &
W2=$!

START=$(date +%s)
catalogs() {
  ctl status --json | python3 -c 'import json,sys; s=json.load(sys.stdin); print(sum(1 for c in s["components"] if c["name"]=="catalog" for r in c["replicas"] if r["health"]=="ready"))'
}
wait_catalogs() { for _ in $(seq 1 300); do [ "$(catalogs)" = "$1" ] && return; sleep 0.1; done; echo "catalog never reached $1" >&2; exit 1; }
sleep 3
ROUNDS=0
# Round after round until the load ends: two rollouts, a scale down 3 -> 1, and back up.
while [ $(( $(date +%s) - START )) -lt $(( DURATION - 15 )) ]; do
  ROUNDS=$((ROUNDS + 1))
  echo "== round $ROUNDS: stratus rollout catalog"; ctl rollout catalog
  echo "== round $ROUNDS: stratus rollout orders"; ctl rollout orders
  echo "== round $ROUNDS: stratus scale catalog=1"; ctl scale catalog=1; wait_catalogs 1
  echo "== round $ROUNDS: stratus scale catalog=3"; ctl scale catalog=3; wait_catalogs 3
done
ctl status
wait $W1 $W2

echo
echo "| target | requests | rps | p50 | p99 | non-2xx | socket errors |"
echo "|---|---|---|---|---|---|---|"
FAILED=0
for target in catalog orders; do
  f="$WORK/$target.txt"
  requests=$(awk '/requests in/ {print $1}' "$f")
  rps=$(awk '/Requests\/sec/ {print $2}' "$f")
  p50=$(awk '$1=="50%" {print $2}' "$f")
  p99=$(awk '$1=="99%" {print $2}' "$f")
  non2xx=$(awk '/Non-2xx/ {print $NF}' "$f"); non2xx=${non2xx:-0}
  errors=$(awk '/Socket errors/ {gsub(",",""); print $4+$6+$8+$10}' "$f"); errors=${errors:-0}
  FAILED=$((FAILED + non2xx + errors))
  echo "| GET /api/$target | $requests | $rps | $p50 | $p99 | $non2xx | $errors |"
done
echo
echo "rounds (rollout catalog, rollout orders, catalog 3 -> 1 -> 3): $ROUNDS"
echo "failed requests: $FAILED (load average $(cut -d' ' -f1 /proc/loadavg))"
[ "$FAILED" = 0 ]
