#!/usr/bin/env bash
# Log ingest into the event sink (issue 22): a fresh `stratus serve events` (SQLite in a temp dir,
# or PostgreSQL with DATABASE_URL set) loaded by CLIENTS concurrent clients, each posting batches
# of BATCH log lines to POST /v1/logs as OTLP/HTTP protobuf, the way Stratus's processes ship
# their lines (kit/src/log_ship/), or as OTLP JSON (FORMAT=json, as an SDK may send them). Each
# client posts one batch at a time, the next as soon as the sink answers; every batch has fresh
# trace ids. The lines are like the gateway's and a service's: a message, six fields (route,
# service, method, status, duration, retries), a target, a trace and a span: about 290 bytes a
# line as OTLP protobuf.
#
# Two figures:
#   - ingest rate: lines durably stored a second over DURATION (the rows counted in the logs
#     table after the phase, over the time from the first POST to the last answer; the sink
#     answers 200 only once a batch is committed, so the two must agree: the script says if not);
#   - storage: the clients go on until the table holds LINES lines (1,000,000), then the database
#     and its WAL on disk (SQLite: events.db and events.db-wal; PostgreSQL: the logs table with
#     its indexes, pg_total_relation_size), in all and per line.
#
#   bench/logs.sh                                   # release build, 8 clients, batches of 1,000, 10 s
#   DURATION=5s LINES=200000 bench/logs.sh          # a quick run
#   CLIENTS=16 BATCH=500 FORMAT=json bench/logs.sh
#   DATABASE_URL=postgres://user@127.0.0.1:5432/events bench/logs.sh
#   BIN=/tmp/stratus-before bench/logs.sh           # another build
#
# The budget is set out of the way (100 GiB) so nothing is pruned while the table fills. The
# clients (Python, one process each, sending prepared bodies) and the sink share this machine's
# cores with whatever else runs: the load average is printed with the result.
#
# Needs: python3, curl (psql with DATABASE_URL), a release build (made when missing). The sink
# and the clients are stopped on exit, by pid.
set -euo pipefail
# The sink started here by hand, without join credentials: plaintext, as bench/events.sh.
export STRATUS_MTLS="${STRATUS_MTLS:-off}"
cd "$(dirname "$0")/.."
CLIENTS=${CLIENTS:-8}
BATCH=${BATCH:-1000}
DURATION=${DURATION:-10s}
LINES=${LINES:-1000000}
FORMAT=${FORMAT:-protobuf}
command -v python3 >/dev/null && command -v curl >/dev/null ||
  { echo "logs.sh needs python3 and curl" >&2; exit 1; }
BIN=${BIN:-target/release/stratus}
[ -x "$BIN" ] || cargo build --release -j2
seconds() { case $1 in *m) echo $(( ${1%m} * 60 ));; *s) echo "${1%s}";; *) echo "$1";; esac; }
LOAD=$(seconds "$DURATION")

work=$(mktemp -d)
chmod 755 "$work"
# The binary is copied so that a rebuild during the run changes nothing under it.
cp "$BIN" "$work/stratus"
pid= clients_pid=
cleanup() {
  for p in $clients_pid $pid; do kill "$p" 2>/dev/null || true; done
  for p in $clients_pid $pid; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port=$(free_port)

count_lines() {
  if [ -n "${DATABASE_URL:-}" ]; then
    psql "$DATABASE_URL" -Atc 'SELECT COUNT(*) FROM logs'
  else
    python3 -c 'import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute("SELECT COUNT(*) FROM logs").fetchone()[0])' "$work/events.db"
  fi
}
size() { stat -c %s "$1" 2>/dev/null || echo 0; }

# The sink alone: no registry needed for ingest (registration failures are only logged).
PORT=$port STRATUS_DATA_DIR=$work STRATUS_REGISTRY_URL=http://127.0.0.1:9 STRATUS_LOG=warn \
  STRATUS_EVENTS_BUDGET=100GiB "$work/stratus" serve events >"$work/events.log" 2>&1 &
pid=$!
for _ in $(seq 1 600); do
  curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break
  kill -0 "$pid" 2>/dev/null || { echo "the sink exited:" >&2; tail -20 "$work/events.log" >&2; exit 1; }
  sleep 0.05
done

# The clients: `post.py PORT CLIENTS BATCH FORMAT SECONDS|until:LINES START_COUNT` prints
# "acknowledged refused elapsed".
cat > "$work/post.py" <<'PY'
import http.client, json, multiprocessing, random, struct, sys, time

port, clients, batch = (int(a) for a in sys.argv[1:4])
FORMAT, UNTIL = sys.argv[4], sys.argv[5]
# Replaced by a per-POST counter, so every batch has fresh trace ids: the first four bytes of
# each id (eight hex digits in JSON).
MARK = b"@@@@" if FORMAT == "protobuf" else b"@@@@@@@@"

def varint(n):
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)

def field(number, wire, payload):
    if wire == 2:
        return varint(number << 3 | 2) + varint(len(payload)) + payload
    if wire == 0:
        return varint(number << 3) + varint(payload)
    return varint(number << 3 | 1) + struct.pack("<Q", payload)  # fixed64

def any_value(v):
    if isinstance(v, str):
        return field(1, 2, v.encode())
    return field(3, 0, v)  # intValue

def key_value(k, v):
    return field(1, 2, k.encode()) + field(2, 2, any_value(v))

def lines(seed):
    """A batch's lines: gateway and service lines about requests, as Stratus ships them."""
    rnd = random.Random(seed)
    now = time.time_ns()
    out = []
    for i in range(batch):
        status = 200 if i % 20 else 404
        gateway = i % 2 == 0
        out.append({
            "time": now + i * 1000,
            "severity": 9 if status == 200 else 13,
            "service": "gateway" if gateway else rnd.choice(["catalog", "orders", "auth"]),
            "instance": "i-%d" % rnd.randrange(4),
            "target": "stratus_gateway::report" if gateway else "stratus_kit::server",
            "message": "request served" if status == 200 else "request refused by the service",
            "fields": [("route", "catalog-read"), ("service", "catalog"), ("method", "GET"),
                       ("status", status), ("duration_ms", rnd.randrange(1, 40)), ("retries", 0)],
            "trace": b"@@@@" + rnd.getrandbits(96).to_bytes(12, "big"),
            "span": rnd.getrandbits(64).to_bytes(8, "big"),
        })
    return out

def protobuf(batch_lines):
    by_resource = {}
    for l in batch_lines:
        by_resource.setdefault((l["service"], l["instance"]), []).append(l)
    resources = b""
    for (service, instance), ls in by_resource.items():
        records = b""
        for l in ls:
            record = field(1, 1, l["time"]) + field(2, 0, l["severity"]) + \
                field(5, 2, any_value(l["message"])) + \
                b"".join(field(6, 2, key_value(k, v)) for k, v in l["fields"] + [("target", l["target"])]) + \
                field(9, 2, l["trace"]) + field(10, 2, l["span"])
            records += field(2, 2, record)
        resource = field(1, 2, field(1, 2, key_value("service.name", service)) +
                         field(1, 2, key_value("service.instance.id", instance)))
        scope = field(1, 2, field(1, 2, b"bench"))
        resources += field(1, 2, resource + field(2, 2, scope + records))
    return resources

def json_body(batch_lines):
    def value(v):
        return {"stringValue": v} if isinstance(v, str) else {"intValue": str(v)}
    by_resource = {}
    for l in batch_lines:
        by_resource.setdefault((l["service"], l["instance"]), []).append(l)
    return json.dumps({"resourceLogs": [{
        "resource": {"attributes": [{"key": "service.name", "value": value(s)},
                                    {"key": "service.instance.id", "value": value(i)}]},
        "scopeLogs": [{"scope": {"name": "bench"}, "logRecords": [{
            "timeUnixNano": str(l["time"]), "severityNumber": l["severity"],
            "body": value(l["message"]),
            "attributes": [{"key": k, "value": value(v)} for k, v in l["fields"] + [("target", l["target"])]],
            "traceId": "@@@@@@@@" + l["trace"][4:].hex(), "spanId": l["span"].hex(),
        } for l in ls]}]} for (s, i), ls in by_resource.items()]}, separators=(",", ":")).encode()

def client(index, start, result):
    encode = protobuf if FORMAT == "protobuf" else json_body
    templates = [encode(lines(index * 100 + k)) for k in range(4)]
    content_type = "application/x-protobuf" if FORMAT == "protobuf" else "application/json"
    conn = http.client.HTTPConnection("127.0.0.1", port)
    acked = refused = 0
    start.wait()
    seconds = float(UNTIL) if not UNTIL.startswith("until:") else None
    deadline = time.monotonic() + (seconds if seconds is not None else 3600)
    k = 0
    while time.monotonic() < deadline:
        if seconds is None and k % 8 == 0 and stop_file_says_enough():
            break
        counter = (index << 24) | (k & 0xFFFFFF) | (1 << 31)
        stamp = struct.pack(">I", counter) if FORMAT == "protobuf" else b"%08x" % counter
        body = templates[k % len(templates)].replace(MARK, stamp)
        conn.request("POST", "/v1/logs", body, {"content-type": content_type})
        response = conn.getresponse()
        response.read()
        if response.status == 200:
            acked += batch
        else:
            refused += 1
            if refused == 1:
                print(f"client {index}: a batch refused: {response.status}", file=sys.stderr)
            if seconds is None:
                break  # filling: a refusal would refuse forever
        k += 1
    result.put((acked, refused, time.monotonic()))

def stop_file_says_enough():
    # The fill phase: the parent writes the file once the table holds enough lines.
    try:
        open(sys.argv[6])
        return True
    except OSError:
        return False

if __name__ == "__main__":
    result = multiprocessing.Queue()
    start = multiprocessing.Event()
    procs = [multiprocessing.Process(target=client, args=(i, start, result)) for i in range(clients)]
    for p in procs: p.start()
    time.sleep(1.0)  # every client has built its bodies
    started = time.monotonic()
    start.set()
    totals = [result.get() for _ in procs]
    for p in procs: p.join()
    elapsed = max(t[2] for t in totals) - started
    print(sum(t[0] for t in totals), sum(t[1] for t in totals), f"{elapsed:.3f}")
PY

backend=$([ -n "${DATABASE_URL:-}" ] && echo PostgreSQL || echo SQLite)
echo "bench/logs.sh: log ingest into the event sink ($backend, OTLP $FORMAT, $CLIENTS clients, batches of $BATCH)"
echo "stratus from $BIN (tree $(git describe --always --dirty 2>/dev/null || echo unknown)), $(date -u +%FT%TZ), load average before: $(cut -d' ' -f1-3 /proc/loadavg)"

# 1. The ingest rate.
before=$(count_lines)
python3 "$work/post.py" "$port" "$CLIENTS" "$BATCH" "$FORMAT" "$LOAD" "$work/enough" > "$work/result" &
clients_pid=$!
wait "$clients_pid"
clients_pid=
read -r acked refused elapsed < "$work/result"
stored=$(( $(count_lines) - before ))
printf 'ingest: %d lines stored in %.1f s = %.0f lines/s (%d refused batches, load average %s)\n' \
  "$stored" "$elapsed" "$(awk -v s="$stored" -v e="$elapsed" 'BEGIN{print s/e}')" "$refused" \
  "$(cut -d' ' -f1 /proc/loadavg)"
[ "$stored" -eq "$acked" ] || echo "WARNING: $acked lines acknowledged but $stored stored" >&2

# 2. The storage of LINES lines: the clients go on until the table holds them.
have=$(count_lines)
if [ "$have" -lt "$LINES" ]; then
  python3 "$work/post.py" "$port" "$CLIENTS" "$BATCH" "$FORMAT" "until:$LINES" "$work/enough" > "$work/result" &
  clients_pid=$!
  while kill -0 "$clients_pid" 2>/dev/null; do
    sleep 1
    [ "$(count_lines)" -ge "$LINES" ] && touch "$work/enough"
  done
  wait "$clients_pid" || true
  clients_pid=
fi
sleep 1.5  # one tick of the sink's WAL keeper after the last commit (crate::checkpoint)
have=$(count_lines)
if [ -n "${DATABASE_URL:-}" ]; then
  bytes=$(psql "$DATABASE_URL" -Atc "SELECT pg_total_relation_size('logs')")
  printf 'storage: %d lines take %.1f MiB (the logs table and its indexes) = %.0f bytes a line\n' \
    "$have" "$(awk -v b="$bytes" 'BEGIN{print b/1048576}')" "$(awk -v b="$bytes" -v n="$have" 'BEGIN{print b/n}')"
else
  db=$(size "$work/events.db") wal=$(size "$work/events.db-wal")
  printf 'storage: %d lines take %.1f MiB (database %.1f MiB + WAL %.1f MiB) = %.0f bytes a line\n' \
    "$have" "$(awk -v b=$((db + wal)) 'BEGIN{print b/1048576}')" \
    "$(awk -v b="$db" 'BEGIN{print b/1048576}')" "$(awk -v b="$wal" 'BEGIN{print b/1048576}')" \
    "$(awk -v b=$((db + wal)) -v n="$have" 'BEGIN{print b/n}')"
fi
errors=$(grep -c '"level":"ERROR"' "$work/events.log" || true)
[ "$errors" = 0 ] || { echo "the sink logged $errors errors; the last:" >&2; grep '"level":"ERROR"' "$work/events.log" | tail -1 >&2; }
