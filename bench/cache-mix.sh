#!/usr/bin/env bash
# A shop's catalog traffic with each caching layer on and off: how many reads reach the catalog
# instance and how many its database, and what the reads cost (issue 21).
#
#   bench/cache-mix.sh                            # 20 s per configuration, 16 connections
#   DURATION=60 THREADS=32 bench/cache-mix.sh
#   DB=postgres bench/cache-mix.sh                # the catalog on a throwaway PostgreSQL cluster
#
# 1,000 products; 90% reads of one product chosen by a Zipf law (s = 1: the most popular is read
# twice as often as the second), 10% price changes by an admin (WRITE_SHARE), all through the
# gateway (bench/cache-mix.py). Four configurations, each with a freshly started catalog:
#   edge on/off    the gateway with `cache = { authenticated = true }` on the read route, or not
#   server on/off  the catalog's own cache of products by id (moka), or CACHE_TTL=0
# The database's own layer is on in all four: SQLite's page cache (kit::db::SQLITE_CACHE, 1 MiB a
# connection, and the kernel's cache of the file) or PostgreSQL's shared buffers (128 MB by
# default). With DB=postgres the table also says how many of the blocks PostgreSQL read came from
# its shared buffers (pg_stat_database: blks_hit against blks_read, which go to the kernel's
# cache or the disk); SQLite keeps no such counters.
# The catalog's counters say what reached it: its GET /api/catalog/products/{id} requests, and
# of those the lookups its cache missed (cache_misses_total{cache="products"}: every lookup with
# CACHE_TTL=0), which are the reads that reached the database.
#
# Needs python3, curl and a release build (made when missing). Everything listens on loopback;
# every process started here is stopped on exit, by pid.
set -euo pipefail
# Components started here by hand, without join credentials: plaintext inside (benchmarks only).
export STRATUS_MTLS="${STRATUS_MTLS:-off}"
cd "$(dirname "$0")/.."
DURATION=${DURATION:-20}
THREADS=${THREADS:-16}
WRITE_SHARE=${WRITE_SHARE:-0.1}
ZIPF_S=${ZIPF_S:-1.0}
PRODUCTS=${PRODUCTS:-1000}
DB=${DB:-sqlite}
STRATUS=${STRATUS_BIN:-$PWD/target/release/stratus}
[ -x "$STRATUS" ] || cargo build --release -j2
STRATUS=$(realpath "$STRATUS")

work=$(mktemp -d)
pids=()
catalog=
cleanup() {
  [ -n "$catalog" ] && kill "$catalog" 2>/dev/null || true
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_ok() { for _ in $(seq 1 400); do curl -fs "$1" >/dev/null 2>&1 && return 0; sleep 0.05; done; echo "$1 never answered" >&2; exit 1; }

# PostgreSQL for DB=postgres, as the postgres user when running as root (it refuses root).
PGURL=
psql_catalog() { :; }
if [ "$DB" = postgres ]; then
  pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
  [ -n "$pg_bin" ] || { echo "DB=postgres needs PostgreSQL (Debian package postgresql)" >&2; exit 1; }
  PGP=$(free_port)
  mkdir -p "$work/pg"
  as_pg=()
  if [ "$(id -u)" = 0 ]; then chmod 755 "$work"; chown postgres "$work/pg"; as_pg=(runuser -u postgres --); fi
  "${as_pg[@]}" "$pg_bin/initdb" --auth=trust --username=stratus --no-sync -D "$work/pg/data" >/dev/null
  "${as_pg[@]}" "$pg_bin/postgres" -D "$work/pg/data" -p "$PGP" -k "$work/pg" \
    -c listen_addresses=127.0.0.1 -c fsync=off >"$work/postgres.log" 2>&1 & pids+=($!)
  for _ in $(seq 1 300); do "$pg_bin/pg_isready" -h 127.0.0.1 -p "$PGP" -U stratus >/dev/null 2>&1 && break; sleep 0.1; done
  "$pg_bin/createdb" -h 127.0.0.1 -p "$PGP" -U stratus catalog
  PGURL="postgres://stratus@127.0.0.1:$PGP/catalog"
  psql_catalog() { "$pg_bin/psql" -h 127.0.0.1 -p "$PGP" -U stratus -d catalog -At -F ' ' -c "$1"; }
fi

REG=$(free_port); CAT=$(free_port)
GWE=$(free_port); GWEA=$(free_port); GWP=$(free_port); GWPA=$(free_port)
. bench/catalog-edge.sh
catalog_routes 'cache = { authenticated = true }' > "$work/edge.toml"
catalog_routes '' > "$work/plain.toml"

export STRATUS_REGISTRY_URL=http://127.0.0.1:$REG STRATUS_DATA_DIR=$work/data STRATUS_EVENTS=off \
  STRATUS_LOG=warn STRATUS_LOG_FORMAT=json STRATUS_ADMIN_PASSWORD=bench-admin-password
PORT=$REG "$STRATUS" serve registry >"$work/registry.log" 2>&1 & pids+=($!)
wait_ok "http://127.0.0.1:$REG/readyz"
PORT=0 "$STRATUS" serve auth >"$work/auth.log" 2>&1 & pids+=($!)
PORT=$GWE STRATUS_ADMIN_PORT=$GWEA STRATUS_ROUTES=$work/edge.toml \
  "$STRATUS" serve gateway >"$work/gateway-edge.log" 2>&1 & pids+=($!)
PORT=$GWP STRATUS_ADMIN_PORT=$GWPA STRATUS_ROUTES=$work/plain.toml \
  "$STRATUS" serve gateway >"$work/gateway-plain.log" 2>&1 & pids+=($!)
wait_ok "http://127.0.0.1:$GWEA/readyz"
wait_ok "http://127.0.0.1:$GWPA/readyz"

start_catalog() {  # $1: on | off (the catalog's own cache)
  [ -n "$catalog" ] && { kill "$catalog"; wait "$catalog" 2>/dev/null || true; }
  local ttl=()
  [ "$1" = off ] && ttl=(CACHE_TTL=0)
  [ -n "$PGURL" ] && ttl+=(DATABASE_URL="$PGURL")
  env "${ttl[@]}" PORT=$CAT "$STRATUS" serve catalog >>"$work/catalog.log" 2>&1 & catalog=$!
  wait_ok "http://127.0.0.1:$CAT/readyz"
  wait_ok "http://127.0.0.1:$GWP/api/catalog/products"
  wait_ok "http://127.0.0.1:$GWE/api/catalog/products"
}
start_catalog on

token=$(admin_token "$GWP")
python3 - "$GWP" "$token" "$PRODUCTS" > "$work/ids" <<'PY'
import http.client, json, sys
port, token, n = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
for i in range(n):
    body = json.dumps({"name": f"Product {i}", "price_cents": 100 + i, "stock": 5})
    conn.request("POST", "/api/catalog/products", body=body,
                 headers={"authorization": f"Bearer {token}", "content-type": "application/json"})
    response = conn.getresponse()
    print(json.loads(response.read())["id"])
PY
echo "$(wc -l < "$work/ids") products created" >&2

# The catalog's counters: GET by id served, and product lookups its cache missed; with
# PostgreSQL, its blocks found in shared buffers and read from outside them.
counters() {
  curl -fs "http://127.0.0.1:$CAT/metrics" | awk '
    /^http_server_request_duration_seconds_count/ && /products\/\{id\}/ && /method="GET"/ {g += $2}
    /^cache_misses_total/ && /cache="products"/ {m += $2}
    END {printf "%d %d", g, m}'
  if [ -n "$PGURL" ]; then
    printf ' %s' "$(psql_catalog "SELECT blks_hit, blks_read FROM pg_stat_database WHERE datname = 'catalog'")"
  else
    printf ' 0 0'
  fi
}

results=$work/results.tsv
: > "$results"
for server in on off; do
  for edge in on off; do
    start_catalog "$server"
    port=$GWP; [ "$edge" = on ] && port=$GWE
    read -r g0 m0 h0 r0 <<<"$(counters)"
    out=$(python3 bench/cache-mix.py "$port" "$work/ids" "$token" "$DURATION" "$THREADS" "$WRITE_SHARE" "$ZIPF_S")
    read -r g1 m1 h1 r1 <<<"$(counters)"
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$edge" "$server" "$out" "$((g1 - g0))" "$((m1 - m0))" "$((h1 - h0))" "$((r1 - r0))" >> "$results"
    echo "edge $edge, server $server: $out; catalog served $((g1 - g0)) reads, its database $((m1 - m0)); blocks $((h1 - h0)) hit, $((r1 - r0)) read" >&2
  done
done

mkdir -p bench/results
report=bench/results/cache-mix-$(date -u +%Y%m%dT%H%M%SZ).txt
{
  echo "Catalog traffic: $PRODUCTS products, Zipf s=$ZIPF_S reads, $WRITE_SHARE price changes, $THREADS connections, ${DURATION}s per configuration, database: $DB"
  echo "machine: $(nproc) cores, $(uname -r), load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo
  printf '%-5s %-7s %9s %8s %8s %8s %8s %14s %15s %12s\n' edge server req/s reads writes p50_ms p99_ms reached_catalog reached_database db_buffer_hit
  python3 - "$results" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    edge, server, out, served, missed, hit, read = line.rstrip("\n").split("\t")
    r = json.loads(out)
    reads = max(r["reads"], 1)
    blocks = int(hit) + int(read)
    buffer_hit = f"{int(hit) / blocks:.4f}" if blocks else "-"
    print(f'{edge:<5} {server:<7} {r["rps"]:>9} {r["reads"]:>8} {r["writes"]:>8} {r["p50_ms"]:>8} {r["p99_ms"]:>8} '
          f'{int(served)/reads:>14.3f} {int(missed)/reads:>15.3f} {buffer_hit:>12}')
PY
  echo
  echo "reached_catalog / reached_database: the catalog's own counters over the reads sent (a share of reads)."
  echo "db_buffer_hit: PostgreSQL's blocks found in its shared buffers over all it read (DB=postgres; - for SQLite)."
} | tee "$report"
