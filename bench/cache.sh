#!/usr/bin/env bash
# Catalog product reads through the gateway: cached (in-process moka, and Redis) against
# uncached (CACHE_TTL=0: every read goes to the catalog's database), on SQLite and on PostgreSQL.
#
#   bench/cache.sh                 # 10 s per mode, 32 connections
#   DURATION=20s ROUNDS=3 bench/cache.sh
#   MODES="pg-off pg-redis" bench/cache.sh
#
# Modes: off, memory, redis (SQLite); pg-off, pg-memory, pg-redis (PostgreSQL from the Debian
# package, started here on a free port; skipped with a notice when it is not installed).
#
# Needs: wrk, redis-server (Debian packages; installed when missing and running as root), python3
# and curl, and a release build (built when missing). Everything listens on loopback only.
# Prints requests/s per mode and the ratio of each cached mode to the uncached one.
set -euo pipefail
# Components started here by hand, without join credentials: plaintext inside, as before
# `stratus serve` defaulted to mutual TLS (benchmarks only; bench/mtls.sh measures its cost).
export STRATUS_MTLS="${STRATUS_MTLS:-off}"
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10s}
ROUNDS=${ROUNDS:-1}
CONNECTIONS=${CONNECTIONS:-32}
MODES=${MODES:-"off memory redis pg-off pg-memory pg-redis"}

need() { command -v "$1" >/dev/null 2>&1; }
if ! need wrk || ! need redis-server; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends wrk redis-server >/dev/null
  else
    echo "install wrk and redis-server first" >&2; exit 1
  fi
fi
# STRATUS_BIN=target/debug/stratus measures a debug build instead (ratios only).
STRATUS=${STRATUS_BIN:-$PWD/target/release/stratus}
[ -x "$STRATUS" ] || cargo build --release -j2
STRATUS=$(realpath "$STRATUS")

work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_ok() { for _ in $(seq 1 400); do curl -fs "$1" >/dev/null 2>&1 && return 0; sleep 0.05; done; echo "$1 never answered" >&2; exit 1; }

# PostgreSQL for the pg-* modes, as the postgres user when running as root (it refuses root).
pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
PGURL=
if [ -n "$pg_bin" ] && [[ "$MODES" == *pg-* ]]; then
  PGP=$(free_port)
  mkdir -p "$work/pg"
  as_pg=()
  if [ "$(id -u)" = 0 ]; then chown postgres "$work" "$work/pg"; as_pg=(runuser -u postgres --); fi
  "${as_pg[@]}" "$pg_bin/initdb" --auth=trust --username=stratus --no-sync -D "$work/pg/data" >/dev/null
  "${as_pg[@]}" "$pg_bin/postgres" -D "$work/pg/data" -p "$PGP" -k "$work/pg" \
    -c listen_addresses=127.0.0.1 -c fsync=off >"$work/postgres.log" 2>&1 & pids+=($!)
  for _ in $(seq 1 300); do "$pg_bin/pg_isready" -h 127.0.0.1 -p "$PGP" -U stratus >/dev/null 2>&1 && break; sleep 0.1; done
  "$pg_bin/createdb" -h 127.0.0.1 -p "$PGP" -U stratus catalog
  PGURL="postgres://stratus@127.0.0.1:$PGP/catalog"
elif [[ "$MODES" == *pg-* ]]; then
  echo "notice: PostgreSQL (Debian package postgresql) is not installed; skipping the pg-* modes" >&2
  MODES=$(echo "$MODES" | tr ' ' '\n' | grep -v '^pg-' | tr '\n' ' ')
fi

RP=$(free_port)
redis-server --port "$RP" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" >/dev/null & pids+=($!)

REG=$(free_port); GW=$(free_port); GWA=$(free_port)
export STRATUS_REGISTRY_URL=http://127.0.0.1:$REG STRATUS_DATA_DIR=$work/data STRATUS_EVENTS=off \
  STRATUS_LOG=warn STRATUS_LOG_FORMAT=json STRATUS_ADMIN_PASSWORD=bench-admin-password
PORT=$REG "$STRATUS" serve registry >"$work/registry.log" 2>&1 & pids+=($!)
wait_ok "http://127.0.0.1:$REG/readyz"
PORT=0 "$STRATUS" serve auth >"$work/auth.log" 2>&1 & pids+=($!)
PORT=$GW STRATUS_ADMIN_PORT=$GWA STRATUS_GATEWAY_WORKERS=1 "$STRATUS" serve gateway >"$work/gateway.log" 2>&1 & pids+=($!)
wait_ok "http://127.0.0.1:$GWA/readyz"

# The catalog runs once per mode; the product is created by the first one and stays in its database.
start_catalog() {
  local db=()
  [[ "$1" == pg-* ]] && db=(DATABASE_URL="$PGURL")
  case "${1#pg-}" in
    off) env "${db[@]}" CACHE_TTL=0 PORT=0 "$STRATUS" serve catalog >"$work/catalog-$1.log" 2>&1 & ;;
    memory) env "${db[@]}" PORT=0 "$STRATUS" serve catalog >"$work/catalog-$1.log" 2>&1 & ;;
    redis) env "${db[@]}" CACHE_URL="redis://127.0.0.1:$RP" PORT=0 "$STRATUS" serve catalog >"$work/catalog-$1.log" 2>&1 & ;;
  esac
  catalog=$!
  for _ in $(seq 1 400); do
    curl -fs "http://127.0.0.1:$GW/api/catalog/products" >/dev/null 2>&1 && return 0; sleep 0.05
  done
  echo "catalog ($1) never answered through the gateway" >&2; exit 1
}
stop_catalog() { kill "$catalog"; wait "$catalog" 2>/dev/null || true; sleep 0.5; }

# One product per database, created through the gateway by an admin.
create_product() {
  start_catalog "$1"
  for _ in $(seq 1 100); do
    token=$(curl -fs -X POST "http://127.0.0.1:$GW/auth/login" -H 'content-type: application/json' \
      -d '{"email":"admin@stratus.local","password":"bench-admin-password"}' \
      | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])' 2>/dev/null) && break
    sleep 0.1
  done
  curl -fs -X POST "http://127.0.0.1:$GW/api/catalog/products" -H "authorization: Bearer $token" \
    -H 'content-type: application/json' -d '{"name":"Tea","description":"bench","price_cents":450,"stock":5}' \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])'
  stop_catalog
}
sqlite_url="http://127.0.0.1:$GW/api/catalog/products/$(create_product off)"
pg_url=
[ -n "$PGURL" ] && pg_url="http://127.0.0.1:$GW/api/catalog/products/$(create_product pg-off)"

declare -A rps
for round in $(seq 1 "$ROUNDS"); do
  for mode in $MODES; do
    url=$sqlite_url
    [[ "$mode" == pg-* ]] && url=$pg_url
    start_catalog "$mode"
    # Cache-Control: no-store: past the gateway's edge cache, so every read reaches the catalog
    # and its own cache (bench/edge-cache.sh measures the edge's).
    wrk -t2 -c"$CONNECTIONS" -d2s -H "Cache-Control: no-store" "$url" >/dev/null  # warm up (fills the cache)
    cache=$(curl -fsI -H "Cache-Control: no-store" "$url" | tr -d '\r' | awk -F': ' 'tolower($1)=="x-server-cache" {print $2}')
    result=$(wrk -t2 -c"$CONNECTIONS" -d"$DURATION" --latency -H "Cache-Control: no-store" "$url")
    r=$(echo "$result" | awk '/Requests\/sec/ {print $2}')
    p50=$(echo "$result" | awk '$1=="50%" {print $2}')
    p99=$(echo "$result" | awk '$1=="99%" {print $2}')
    printf 'round %s  %-9s x-server-cache=%-5s %10s req/s  p50 %-8s p99 %s\n' "$round" "$mode" "${cache:-none}" "$r" "$p50" "$p99"
    rps[$mode]="${rps[$mode]:-} $r"
    stop_catalog
  done
done

median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo
for mode in $MODES; do
  m=$(echo "${rps[$mode]}" | median)
  base=$(echo "${rps[off]:-}" | median)
  [[ "$mode" == pg-* ]] && base=$(echo "${rps[pg-off]:-}" | median)
  if [ -n "$base" ]; then
    printf '%-9s median %10s req/s   %sx uncached\n' "$mode" "$m" "$(python3 -c "print(round($m/$base, 2))")"
  else
    printf '%-9s median %10s req/s\n' "$mode" "$m"
  fi
done
