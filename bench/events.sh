#!/usr/bin/env bash
# Event sink ingest speed: a fresh `stratus serve events` (SQLite in a temp dir, or PostgreSQL
# with DATABASE_URL set) loaded by REPORTERS concurrent reporters, each posting batches of BATCH
# records to POST /v1/events the way kit's reporter does (one POST at a time per reporter, the
# next one as soon as the sink answers): in the binary batch format Stratus's processes send
# (FORMAT=binary, the default; kit/src/event_wire.rs) or as JSON (FORMAT=json). Every batch has
# fresh trace and span ids.
#
# The figure is records durably stored per second: the rows counted in the sink's database after
# the run (not the requests accepted), over the time from the first POST to the last answer. The
# sink answers 202 only once a batch is committed, so the two must agree; the script says if not.
#
#   bench/events.sh                                  # release build, 8 reporters, 1000-record batches, 10 s
#   REPORTERS=16 BATCH=500 DURATION=20 bench/events.sh
#   FORMAT=json bench/events.sh                      # JSON batches, as other reporters send
#   DATABASE_URL=postgres://user@127.0.0.1:5432/events bench/events.sh
#   PROFILE=debug bench/events.sh                    # the debug binary (no release build needed)
#   CALLGRIND=1 DURATION=5 bench/events.sh           # the sink under callgrind: instructions per record
#
# The gateway's cost of reporting is measured by bench/events-overhead.sh.
#
# Machine caveat: the reporters (Python, one process each, sending prepared bodies) and the sink
# share this machine's cores with whatever else runs; note the load average printed with the result.
set -euo pipefail
# Components started here by hand, without join credentials: plaintext inside, as before
# `stratus serve` defaulted to mutual TLS (benchmarks only; bench/mtls.sh measures its cost).
export STRATUS_MTLS="${STRATUS_MTLS:-off}"
cd "$(dirname "$0")/.."
REPORTERS=${REPORTERS:-8}
BATCH=${BATCH:-1000}
DURATION=${DURATION:-10}
PROFILE=${PROFILE:-release}
FORMAT=${FORMAT:-binary}

if [ "$PROFILE" = release ]; then
  [ -x target/release/stratus ] || cargo build --release -j2
else
  [ -x target/debug/stratus ] || cargo build -j2
fi
STRATUS=$PWD/target/$PROFILE/stratus

work=$(mktemp -d)
chmod 755 "$work"
pid=
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port=$(free_port)

count_rows() {
  if [ -n "${DATABASE_URL:-}" ]; then
    psql "$DATABASE_URL" -Atc 'SELECT COUNT(*) FROM events'
  else
    python3 -c 'import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute("SELECT COUNT(*) FROM events").fetchone()[0])' "$work/events.db"
  fi
}

# The sink alone: no registry needed for ingest (registration failures are only logged).
launch=()
if [ -n "${CALLGRIND:-}" ]; then
  launch=(valgrind --tool=callgrind --callgrind-out-file="$work/callgrind.events.out")
fi
PORT=$port STRATUS_DATA_DIR=$work STRATUS_REGISTRY_URL=http://127.0.0.1:9 STRATUS_LOG=warn \
  STRATUS_EVENTS_BUDGET=100GiB "${launch[@]}" "$STRATUS" serve events >"$work/events.log" 2>&1 &
pid=$!
for _ in $(seq 1 600); do
  curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break
  sleep 0.05
done
before=$(count_rows)
[ -n "${CALLGRIND:-}" ] && callgrind_control -z "$pid" >/dev/null 2>&1

python3 - "$port" "$REPORTERS" "$BATCH" "$DURATION" "$FORMAT" > "$work/result" <<'PY'
import http.client, json, multiprocessing, random, struct, sys, time
from datetime import datetime, timezone

port, reporters, batch, duration = (int(a) for a in sys.argv[1:5])
FORMAT = sys.argv[5]
# Replaced by a per-POST counter, so every batch has fresh ids: eight hex digits in JSON, their
# four bytes in the binary format.
MARK = b"@@@@@@@@" if FORMAT == "json" else b"@@@@"
CONTENT_TYPE = "application/json" if FORMAT == "json" else "application/vnd.stratus.events"

def binary(records):
    """The records in the binary batch format (kit/src/event_wire.rs)."""
    def text(value):
        data = (value or "").encode()
        return struct.pack("<H", len(data)) + data
    out = [b"SEV1"]
    for r in records:
        flags = (1 if "parent_span_id" in r else 0) | (2 if r["ok"] else 0)
        ids = bytes.fromhex(r["trace_id"].replace("@@@@@@@@", "40404040")) + \
            bytes.fromhex(r["span_id"].replace("@@@@@@@@", "40404040")) + \
            bytes.fromhex(r.get("parent_span_id", "0" * 16))
        started = int(datetime.strptime(r["started_at"], "%Y-%m-%dT%H:%M:%S.%fZ")
                      .replace(tzinfo=timezone.utc).timestamp() * 1_000_000)
        out.append(bytes([flags]) + ids + struct.pack("<qQHI", started, r["duration_us"], r["status"], 0))
        for field in ("service", "instance", "kind", "name", "method", "cache", "topic", "breaker", "peer"):
            out.append(text(r.get(field)))
    return b"".join(out)

def template(seed):
    """A batch as kit's reporter serialises it: gateway hops and the service hops under them."""
    rnd = random.Random(seed)
    now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    records = []
    for i in range(batch):
        trace = "@@@@@@@@%024x" % rnd.getrandbits(96)
        span = "@@@@@@@@%08x" % rnd.getrandbits(32)
        status = 200 if i % 50 else 503
        record = {"trace_id": trace, "span_id": span}
        if i % 2:
            record["parent_span_id"] = "%016x" % (rnd.getrandbits(63) | 1)
            record["service"] = rnd.choice(["catalog", "auth", "orders"])
            record["kind"] = "server"
            record["name"] = "/api/catalog/products/{id}"
        else:
            record["service"] = "gateway"
            record["kind"] = "gateway"
            record["name"] = "catalog"
        record["instance"] = "i-%d" % rnd.randrange(4)
        record.update({"method": "GET", "status": status, "ok": status < 500,
                       "started_at": now, "duration_us": rnd.randrange(100, 20000)})
        if i % 7 == 0:
            record["cache"] = "hit"
        records.append(record)
    if FORMAT == "json":
        return json.dumps(records, separators=(",", ":")).encode()
    return binary(records)

def reporter(index, start, result):
    templates = [template(index * 100 + k) for k in range(4)]
    conn = http.client.HTTPConnection("127.0.0.1", port)
    acked = refused = 0
    start.wait()
    deadline = time.monotonic() + duration
    k = 0
    while time.monotonic() < deadline:
        counter = (index << 24) | k
        stamp = b"%08x" % counter if FORMAT == "json" else struct.pack(">I", counter)
        body = templates[k % len(templates)].replace(MARK, stamp)
        conn.request("POST", "/v1/events", body, {"content-type": CONTENT_TYPE})
        response = conn.getresponse()
        response.read()
        if response.status == 202:
            acked += batch
        else:
            refused += 1
        k += 1
    result.put((acked, refused, time.monotonic()))

if __name__ == "__main__":
    result = multiprocessing.Queue()
    start = multiprocessing.Event()
    procs = [multiprocessing.Process(target=reporter, args=(i, start, result)) for i in range(reporters)]
    for p in procs: p.start()
    time.sleep(1.0)  # every reporter has built its bodies
    started = time.monotonic()
    start.set()
    totals = [result.get() for _ in procs]
    for p in procs: p.join()
    elapsed = max(t[2] for t in totals) - started
    print(sum(t[0] for t in totals), sum(t[1] for t in totals), f"{elapsed:.3f}")
PY
[ -n "${CALLGRIND:-}" ] && callgrind_control -d "$pid" >/dev/null 2>&1
read -r acked refused elapsed < "$work/result"
after=$(count_rows)
stored=$((after - before))
backend=$([ -n "${DATABASE_URL:-}" ] && echo PostgreSQL || echo SQLite)
printf 'events ingest (%s, %s): %d records stored in %.1f s = %.0f records/s (%d reporters, batches of %d, %d refused batches, load average %s)\n' \
  "$backend" "$FORMAT" "$stored" "$elapsed" "$(awk -v s="$stored" -v e="$elapsed" 'BEGIN{print s/e}')" \
  "$REPORTERS" "$BATCH" "$refused" "$(cut -d' ' -f1 /proc/loadavg)"
[ "$stored" -eq "$acked" ] || echo "WARNING: $acked records acknowledged but $stored stored" >&2
if [ -n "${CALLGRIND:-}" ]; then
  dump=$(ls "$work"/callgrind.events.out.* | head -1)
  ir=$(awk '/^summary:|^totals:/ {print $2; exit}' "$dump")
  printf 'sink: %.0f instructions per record stored\n' "$(awk -v a="$ir" -v n="$stored" 'BEGIN{print a/n}')"
  mkdir -p bench/results; cp "$dump" bench/results/callgrind.events.out
fi
