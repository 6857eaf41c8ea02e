#!/usr/bin/env bash
# The event sink under load (issue 23): `stratus up` with RATE requests a second through the
# gateway for DURATION, and what the sink's users see meanwhile, minute by minute.
#
#   bench/sink-load.sh                          # 10 minutes at 10,000 requests a second
#   DURATION=2m bench/sink-load.sh              # a quick run
#   RATE=5000 CONNECTIONS=128 INTERVAL=30 COOLDOWN=60 bench/sink-load.sh
#   BIN=/tmp/stratus-before bench/sink-load.sh  # another build (say, the commit before a change)
#   SINK_DB=postgres bench/sink-load.sh         # the sink's records in PostgreSQL
#
# What runs, all on loopback ports that were free, in a temporary data directory:
#   - `stratus up` (release build, mutual TLS required: its default), as a new user would run it;
#   - wrk (2 threads, CONNECTIONS connections) on `GET /api/catalog/products` through the gateway:
#     each request leaves 3 records (its trace's spans) for the sink. wrk2 is not
#     packaged here, so plain wrk holds the rate with a pacing script (bench/paced.lua: each
#     thread sends at most RATE/2 a second, catching up at most 100 ms behind): wrk's own
#     latencies are then not corrected for coordinated omission, which this bench does not use.
#     When the machine cannot reach RATE, the gateway's rate is what the printout says;
#   - bench/sink-load.py, the prober: as the operator `up` certified (mutual TLS, the mesh's
#     bundle as the only CA), every second it times /v1/stats?window=5m, /v1/topology?window=60s,
#     /v1/instances, /v1/events?service=catalog&limit=50, /v1/traces?limit=20 and
#     /v1/traces/{id} of the newest trace, each on its own keep-alive connection, and holds the
#     dashboard's live stream /v1/stream open (gaps between snapshots). Every INTERVAL seconds
#     (60) it prints the queries' p50 / p99, records ingested a second, rows stored and pruned,
#     records the reporters dropped, database + WAL bytes, the sink's CPU and RSS; COOLDOWN
#     seconds (30) after the load it keeps printing (the sink once the load is over), then a
#     summary table.
#
# SINK_DB=postgres: a throwaway PostgreSQL cluster (Debian's postgresql; initdb as the postgres
# user when run as root, trust on 127.0.0.1 only, fsync off as in the tests) on a free port, and
# the sink's DATABASE_URL pointing at it (in the data directory's stratus.toml, the repository's
# with that one env added). Its size is what /v1/storage reports as the database's file.
#
# Needs: wrk, python3, curl, a release build (made when missing). Every process started here is
# stopped on exit, by pid. Results: stdout and bench/results/sink-load-<time>.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10m}
RATE=${RATE:-10000}
CONNECTIONS=${CONNECTIONS:-64}
INTERVAL=${INTERVAL:-60}
COOLDOWN=${COOLDOWN:-30}
command -v wrk >/dev/null && command -v python3 >/dev/null && command -v curl >/dev/null ||
  { echo "sink-load.sh needs wrk, python3 and curl" >&2; exit 1; }
BIN=${BIN:-target/release/stratus}
[ -x "$BIN" ] || cargo build --release -j2
seconds() { case $1 in *m) echo $(( ${1%m} * 60 ));; *s) echo "${1%s}";; *) echo "$1";; esac; }
LOAD=$(seconds "$DURATION")

work=$(mktemp -d)
# The binary is copied so that a rebuild during the run changes nothing under it.
cp "$BIN" "$work/stratus"
STRATUS=$work/stratus
up_pid= wrk_pid= probe_pid= pg_pid=
cleanup() {
  for p in $probe_pid $wrk_pid; do kill "$p" 2>/dev/null || true; done
  # up stops every component it started (SIGTERM, then waits for them).
  if [ -n "$up_pid" ]; then kill -TERM "$up_pid" 2>/dev/null || true; fi
  for p in $probe_pid $wrk_pid $up_pid; do wait "$p" 2>/dev/null || true; done
  # PostgreSQL last, once the sink has let go of it (SIGINT: its fast shutdown).
  if [ -n "$pg_pid" ]; then kill -INT "$pg_pid" 2>/dev/null || true; wait "$pg_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
GATEWAY=$(free_port) ADMIN=$(free_port) EVENTS=$(free_port)
mkdir "$work/data"
SINK_DB=${SINK_DB:-sqlite}
if [ "$SINK_DB" = postgres ]; then
  pg_bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
  as_pg=()
  if [ "$(id -u)" = 0 ]; then
    chown postgres: "$work"; chmod 755 "$work"
    as_pg=(setpriv --reuid=postgres --regid=postgres --init-groups)
  fi
  "${as_pg[@]}" "$pg_bin/initdb" --auth=trust --username=stratus --encoding=UTF8 --no-sync -D "$work/pg" >/dev/null
  PG_PORT=$(free_port)
  "${as_pg[@]}" "$pg_bin/postgres" -D "$work/pg" -p "$PG_PORT" -k "$work" -c listen_addresses=127.0.0.1 \
    -c fsync=off > "$work/pg.log" 2>&1 &
  pg_pid=$!
  for _ in $(seq 1 100); do "$pg_bin/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" -U stratus && break; sleep 0.1; done
  "$pg_bin/createdb" -h 127.0.0.1 -p "$PG_PORT" -U stratus events
  python3 - "$work/data/stratus.toml" "postgres://stratus@127.0.0.1:$PG_PORT/events" <<'PY'
import sys
text = open("stratus.toml").read()
head = '[[components]]\nname = "events"\n'
assert head in text, "stratus.toml has no events component"
open(sys.argv[1], "w").write(text.replace(head, head + 'env = { DATABASE_URL = "%s" }\n' % sys.argv[2], 1))
PY
fi
(cd "$work/data" && exec env STRATUS_GATEWAY_PORT="$GATEWAY" STRATUS_ADMIN_PORT="$ADMIN" \
  STRATUS_REGISTRY_PORT="$(free_port)" STRATUS_DNS_PORT="$(free_port)" STRATUS_EVENTS_PORT="$EVENTS" \
  STRATUS_CONTROL_ADDR=127.0.0.1:0 STRATUS_DASHBOARD_ADDR=127.0.0.1:0 "$STRATUS" up > "$work/up.out" 2> "$work/up.err") &
up_pid=$!
for _ in $(seq 1 600); do
  curl -sf -o /dev/null "http://127.0.0.1:$GATEWAY/api/catalog/products" && break
  kill -0 "$up_pid" 2>/dev/null || { echo "stratus up exited:" >&2; tail -20 "$work/up.out" "$work/up.err" >&2; exit 1; }
  sleep 0.1
done
curl -sf -o /dev/null "http://127.0.0.1:$GATEWAY/api/catalog/products" || { echo "the gateway never answered" >&2; exit 1; }

mkdir -p bench/results
report=bench/results/sink-load-$(date -u +%Y%m%dT%H%M%SZ).txt
{
  echo "bench/sink-load.sh: the event sink under load (issue 23)"
  echo "stratus $("$STRATUS" --version 2>/dev/null | head -1) from $BIN (tree $(git describe --always --dirty 2>/dev/null || echo unknown)), $(date -u +%FT%TZ)"
  echo "the sink's database: $SINK_DB"
  echo "machine: $(nproc) cores, $(uname -r), load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "load: wrk (plain, paced by bench/paced.lua; wrk2 not installed) 2 threads, $CONNECTIONS connections,"
  echo "      at most $RATE req/s on GET /api/catalog/products for $DURATION, then ${COOLDOWN}s without load"
} | tee "$report"

[ "$SINK_DB" = postgres ] && export SINK_PG_URL="postgres://stratus@127.0.0.1:$PG_PORT/events" SINK_PG_DIR="$work/pg"
: > "$work/probe.out"  # there before tail opens it
python3 bench/sink-load.py "$work/data" "$STRATUS" "$EVENTS" "$ADMIN" "$LOAD" "$COOLDOWN" "$INTERVAL" > "$work/probe.out" 2>&1 &
probe_pid=$!
tail -f --pid="$probe_pid" "$work/probe.out" | tee -a "$report" &
# `Cache-Control: no-store`: past the gateway's edge cache, so every request reaches catalog and
# leaves its three records (the load this bench is about).
wrk -t2 -c"$CONNECTIONS" -d"${LOAD}s" --latency -s bench/paced.lua -H "Cache-Control: no-store" \
  "http://127.0.0.1:$GATEWAY/api/catalog/products" -- $((RATE / 2)) > "$work/wrk.out" 2>&1 &
wrk_pid=$!
wait "$wrk_pid" || { echo "wrk failed:" >&2; cat "$work/wrk.out" >&2; }
wrk_pid=
status=0
wait "$probe_pid" || status=$?
probe_pid=
sleep 0.5  # tail prints the prober's last lines
{
  echo
  echo "wrk (the load generator, beside the system on the same cores):"
  sed -n '/Latency Distribution/,$p' "$work/wrk.out" | sed 's/^/  /'
  echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
  # What the sink itself said about the run: its warnings and errors, counted, and the last few.
  log=$work/data/.stratus/logs/events-0.log
  echo "the sink's log: $(grep -c '"level":"ERROR"' "$log" 2>/dev/null || true) errors, $(grep -c '"level":"WARN"' "$log" 2>/dev/null || true) warnings; the last of each:"
  for level in ERROR WARN; do
    { grep "\"level\":\"$level\"" "$log" 2>/dev/null || true; } | tail -1 | cut -c1-300 | sed 's/^/  /'
  done
} | tee -a "$report"
echo "results in $report" >&2
exit "$status"
