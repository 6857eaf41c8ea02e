#!/usr/bin/env python3
"""The event sink's side of bench/sink-load.sh (issue 23): what a user of the sink sees while the
gateway carries the load that sink-load.sh drives with wrk.

Every second, one thread per query times it over its own keep-alive connection (mutual TLS, as the
operator `stratus up` certified); another thread holds the dashboard's live stream open and times
the gaps between snapshots. Each thread has its own connection so that one slow query does not
hold back the timing of the others: the sink sees about what a few open dashboards and a user's
queries would send it.

Every INTERVAL seconds it prints a block: per query p50 / p99 / max (ms), answers and errors; the
stream's snapshots and longest gap; records ingested a second (the highest row id grows by one a
record: ids are never reused), rows stored, rows pruned (past the retention, or sampled out to
fit the storage budget: events_pruned_total by reason), the sampling rate (events_sampling_rate),
records the reporters folded into summaries (events_folded_total: counted by the sink, not
stored) and dropped (events_dropped_total of every replica: lost from the counts too), the database and WAL on disk, the sink's CPU (in cores, /proc/PID/stat) and
RSS, the gateway's requests a second, the load average. The load runs LOAD seconds; the prober
keeps going COOLDOWN seconds after it (what a user sees once the load is over), then prints a
summary table.

    sink-load.py DATA_DIR STRATUS_BIN EVENTS_PORT GATEWAY_ADMIN_PORT LOAD COOLDOWN INTERVAL
"""

import http.client
import json
import os
import sqlite3
import ssl
import subprocess
import sys
import threading
import time

DATA, STRATUS, EVENTS_PORT, ADMIN_PORT = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
LOAD, COOLDOWN, INTERVAL = int(sys.argv[5]), int(sys.argv[6]), int(sys.argv[7])
OPERATOR = os.path.join(DATA, ".stratus", "identity", "operator")
DB = os.path.join(DATA, ".stratus", "events.db")
TICK = os.sysconf("SC_CLK_TCK")

QUERIES = [
    ("stats", "/v1/stats?window=5m"),
    ("topology", "/v1/topology?window=60s"),
    ("instances", "/v1/instances"),
    ("events", "/v1/events?service=catalog&limit=50"),
    ("traces", "/v1/traces?limit=20"),
    ("trace", None),  # /v1/traces/{id} of the newest trace the `traces` query saw
]

lock = threading.Lock()
latencies = {name: [] for name, _ in QUERIES}  # this interval's answers, seconds
errors = {name: 0 for name, _ in QUERIES}
last_error = {}
newest_trace = [None]
snapshot_times = []  # this interval's snapshot arrivals (monotonic)
last_snapshot = [None]
stop = threading.Event()


def context():
    # The certificates name services (SPIFFE IDs), not host names: the chain is checked against
    # the mesh's bundle, the host name is not.
    ctx = ssl.create_default_context(cafile=os.path.join(OPERATOR, "bundle.pem"))
    ctx.check_hostname = False
    ctx.load_cert_chain(os.path.join(OPERATOR, "cert.pem"), os.path.join(OPERATOR, "key.pem"))
    return ctx


CTX = context()


def connect(port, timeout=60):
    return http.client.HTTPSConnection("127.0.0.1", port, context=CTX, timeout=timeout)


def get(conn, path):
    conn.request("GET", path)
    response = conn.getresponse()
    body = response.read()
    if response.status != 200:
        raise RuntimeError(f"{path}: {response.status} {body[:200]!r}")
    return body


def query_loop(name, path):
    """Times one query once a second (or back to back when it takes longer than a second)."""
    conn = connect(EVENTS_PORT)
    while not stop.is_set():
        started = time.monotonic()
        target = path
        if name == "trace":
            target = newest_trace[0] and f"/v1/traces/{newest_trace[0]}"
        if target:
            try:
                body = get(conn, target)
                took = time.monotonic() - started
                if name == "traces":
                    traces = json.loads(body).get("traces") or []
                    if traces:
                        newest_trace[0] = traces[0]["trace_id"]
                with lock:
                    latencies[name].append(took)
            except Exception as error:  # counted and shown; the loop goes on with a new connection
                with lock:
                    errors[name] += 1
                    last_error[name] = str(error)[:160]
                conn.close()
                conn = connect(EVENTS_PORT)
        stop.wait(max(0.0, 1.0 - (time.monotonic() - started)))


def stream_loop():
    """Holds /v1/stream open and notes when each snapshot arrives."""
    while not stop.is_set():
        try:
            # A timed-out read leaves the response unusable, so the timeout is long: a stream
            # silent for two minutes is reconnected (the gap still counts from the last snapshot).
            conn = connect(EVENTS_PORT, timeout=120)
            conn.request("GET", "/v1/stream")
            response = conn.getresponse()
            while not stop.is_set():
                line = response.fp.readline()
                if not line:
                    break
                if line.startswith(b"event: snapshot"):
                    now = time.monotonic()
                    with lock:
                        snapshot_times.append(now)
                        last_snapshot[0] = now
            conn.close()
        except Exception as error:
            with lock:
                last_error["stream"] = str(error)[:160]
            stop.wait(0.5)


def metric_sum(port, prefix):
    """The sum of every series of one metric on a replica's /metrics (None if unreachable)."""
    try:
        conn = connect(port, timeout=5)
        text = get(conn, "/metrics").decode()
        conn.close()
    except Exception:
        return None
    total = 0.0
    for line in text.splitlines():
        if line.startswith(prefix + "{") or line.startswith(prefix + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


def replicas():
    out = subprocess.run([STRATUS, "status", "--json"], cwd=DATA, capture_output=True, text=True, timeout=10)
    status = json.loads(out.stdout)
    return [r for c in status["components"] for r in c["replicas"]]


def sink_pid():
    return next(r["pid"] for r in replicas() if r["component"] == "events")


def reporters_sum(name):
    """One counter summed over every reporting replica and the gateway."""
    total = 0.0
    for r in replicas():
        if r["component"] in ("events", "dns") or not r.get("port"):
            continue
        value = metric_sum(r["port"], name)
        total += value or 0
    gateway = metric_sum(ADMIN_PORT, name)
    return total + (gateway or 0)


def reporters_dropped():
    return reporters_sum("events_dropped_total")


def reporters_folded():
    return reporters_sum("events_folded_total")


def sink_cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def sink_rss(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


# SINK_DB=postgres (sink-load.sh): the sink's database URL and the cluster's directory; rows and
# bytes are read with psql, and the "WAL" is the cluster's pg_wal.
PG_URL = os.environ.get("SINK_PG_URL")
PG_DIR = os.environ.get("SINK_PG_DIR")


def psql(query):
    out = subprocess.run(["psql", PG_URL, "-Atc", query], capture_output=True, text=True, timeout=60, check=True)
    return [int(v) for v in out.stdout.strip().split("|")]


def rows():
    """(highest id, rows stored): read-only, one short read transaction."""
    if PG_URL:
        highest, stored = psql("SELECT COALESCE(MAX(id), 0), COUNT(*) FROM events")
        return highest, stored
    db = sqlite3.connect(f"file:{DB}?mode=ro", uri=True, timeout=30, isolation_level=None)
    try:
        # Both in one read transaction: the same snapshot of the table.
        db.execute("BEGIN")
        highest = db.execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()[0]
        stored = db.execute("SELECT COUNT(*) FROM events").fetchone()[0]
        db.execute("COMMIT")
    finally:
        db.close()
    return highest, stored


def disk():
    """(database bytes, WAL bytes): SQLite's two files, or PostgreSQL's table with its indexes
    and the cluster's pg_wal."""
    if PG_URL:
        (table,) = psql("SELECT pg_total_relation_size('events')")
        wal_dir = os.path.join(PG_DIR, "pg_wal")
        wal = sum(size(os.path.join(wal_dir, f)) for f in os.listdir(wal_dir) if os.path.isfile(os.path.join(wal_dir, f)))
        return table, wal
    return size(DB), size(DB + "-wal")


def size(path):
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def pct(values, p):
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, max(0, int(round(p / 100 * len(values) + 0.5)) - 1))]


def ms(value):
    return "-" if value is None else f"{value * 1000:.0f}" if value >= 0.1 else f"{value * 1000:.1f}"


def mb(value):
    return f"{value / 1e6:.0f}"


def main():
    threads = [threading.Thread(target=query_loop, args=q, daemon=True) for q in QUERIES]
    threads.append(threading.Thread(target=stream_loop, daemon=True))
    for t in threads:
        t.start()
    pid = sink_pid()
    t0 = time.monotonic()
    cpu0 = sink_cpu_seconds(pid)
    highest0, _ = rows()
    requests0 = metric_sum(ADMIN_PORT, "gateway_requests_total") or 0
    dropped0 = reporters_dropped()
    folded0 = reporters_folded()
    summary = []
    previous = None  # the last snapshot before this interval
    end = LOAD + COOLDOWN
    mark = 0
    while mark < end:
        mark = min(mark + INTERVAL, end)
        time.sleep(max(0.0, t0 + mark - time.monotonic()))
        now = time.monotonic()
        span = INTERVAL if mark % INTERVAL == 0 else mark % INTERVAL
        try:
            cpu1 = sink_cpu_seconds(pid)
            rss = sink_rss(pid)
        except OSError:  # the sink restarted (up's supervisor): follow the new one
            pid, cpu0 = sink_pid(), 0.0
            cpu1, rss = sink_cpu_seconds(pid), sink_rss(pid)
            print(f"note: the sink restarted (now pid {pid})", flush=True)
        highest1, stored = rows()
        rate = metric_sum(EVENTS_PORT, "events_sampling_rate")
        pruned_by = {
            reason: metric_sum(EVENTS_PORT, f'events_pruned_total{{reason="{reason}"}}') or 0
            for reason in ("expired", "sampled", "budget")
        }
        requests1 = metric_sum(ADMIN_PORT, "gateway_requests_total") or requests0
        dropped1 = reporters_dropped()
        folded1 = reporters_folded()
        db_bytes, wal_bytes = disk()
        with lock:
            taken = {k: v[:] for k, v in latencies.items()}
            failed = dict(errors)
            for v in latencies.values():
                v.clear()
            for k in errors:
                errors[k] = 0
            snaps = snapshot_times[:]
            snapshot_times.clear()
            last = last_snapshot[0]
            problems = dict(last_error)
            last_error.clear()
        # The longest wait for a snapshot in this interval: from the one before it (or the
        # interval's start) through each arrival to now, counting a wait still going on.
        marks = [previous if previous is not None else now - span] + snaps + [now]
        gap = max(b - a for a, b in zip(marks, marks[1:]))
        previous = last
        phase = "load" if mark <= LOAD else "after"
        row = {
            "t": mark,
            "phase": phase,
            "rps": (requests1 - requests0) / span,
            "ingest": (highest1 - highest0) / span,
            "stored": stored,
            # Pruned so far: every record ever stored (the highest id) less those still there.
            "pruned": highest1 - stored,
            "sampled": pruned_by["sampled"],
            "expired": pruned_by["expired"],
            "overflow": pruned_by["budget"],
            "rate": rate if rate is not None else float("nan"),
            "dropped": dropped1 - dropped0,
            "folded": folded1 - folded0,
            "db": db_bytes,
            "wal": wal_bytes,
            "cpu": (cpu1 - cpu0) / span,
            "rss": rss,
            "snaps": len(snaps),
            "gap": gap,
            "load": os.getloadavg()[0],
            "q": {name: (pct(v, 50), pct(v, 99), max(v) if v else None, len(v), failed[name]) for name, v in taken.items()},
        }
        summary.append(row)
        print(
            f"\n[{mark // 60:02d}:{mark % 60:02d}] {phase}: gateway {row['rps']:,.0f} req/s; ingest {row['ingest']:,.0f} records/s; "
            f"stored {stored:,} rows (pruned so far {row['pruned']:,}: {row['sampled']:,.0f} sampled out, "
            f"{row['expired']:,.0f} past the retention, {row['overflow']:,.0f} kept ones over the budget; "
            f"sampling rate {row['rate']:.3f}); reporters folded {row['folded']:,.0f}, dropped {row['dropped']:,.0f}\n"
            f"  disk {mb(db_bytes)} MB database + {mb(wal_bytes)} MB WAL = {mb(db_bytes + wal_bytes)} MB; "
            f"sink CPU {row['cpu']:.2f} cores, RSS {mb(rss)} MB; stream: {len(snaps)} snapshots in {span} s, "
            f"longest gap {gap:.1f} s; load average {row['load']:.2f}",
            flush=True,
        )
        print(f"  {'query':<38} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'answers':>8} {'errors':>7}")
        for name, path in QUERIES:
            p50, p99, top, n, bad = row["q"][name]
            label = path or "/v1/traces/{id} (newest)"
            print(f"  {label:<38} {ms(p50):>8} {ms(p99):>8} {ms(top):>8} {n:>8} {bad:>7}")
        for name, text in problems.items():
            print(f"  last error ({name}): {text}")
        sys.stdout.flush()
        cpu0, highest0, requests0, dropped0, folded0 = cpu1, highest1, requests1, dropped1, folded1
    stop.set()

    print("\nsummary, one line per interval (query columns: p99 ms)")
    head = f"{'time':>5} {'phase':<5} {'req/s':>7} {'rec/s':>7} {'stored':>9} {'pruned':>9} {'rate':>6} {'folded':>8} {'dropped':>8} {'db MB':>6} {'wal MB':>6} {'cpu':>5} {'rss MB':>6} {'gap s':>5}"
    print(head + "".join(f" {name:>9}" for name, _ in QUERIES))
    for r in summary:
        line = (
            f"{r['t'] // 60:02d}:{r['t'] % 60:02d} {r['phase']:<5} {r['rps']:>7,.0f} {r['ingest']:>7,.0f} {r['stored']:>9,} "
            f"{r['pruned']:>9,} {r['rate']:>6.3f} {r['folded']:>8,.0f} {r['dropped']:>8,.0f} {mb(r['db']):>6} {mb(r['wal']):>6} {r['cpu']:>5.2f} {mb(r['rss']):>6} {r['gap']:>5.1f}"
        )
        print(line + "".join(f" {ms(r['q'][name][1]):>9}" for name, _ in QUERIES))


if __name__ == "__main__":
    main()
