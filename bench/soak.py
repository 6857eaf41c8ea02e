#!/usr/bin/env python3
"""A soak run (started by bench/soak.sh): `stratus up` under mixed shop traffic for a long time,
with a fault every few minutes, reporting errors and the memory of every process.

Traffic (a few client threads, standard library only): browse the catalog, read products, sign
up and log in, place orders with an Idempotency-Key (retrying a failed attempt with the same key,
as a careful client does), read them back, write and read a profile, list notifications.

Faults, one every FAULT_MINUTES, in turn: kill -9 of a random service replica (`stratus up`
brings it back), SIGSTOP of one for 3 s, and a rolling restart (`stratus rollout`) of catalog.

Memory: every 30 s the RSS of every process and its anonymous part (heap and stacks, from
/proc/<pid>/status), and from the process's `/metrics` what SQLite holds (page caches,
statements) and what glibc's malloc has handed out and keeps free: that tells a cache filling
toward its bound, or allocator fragmentation, from a leak. A process's growth is measured from
the end of its own warm-up (WARMUP_MINUTES after its first sample: the run's start, or its
restart after a fault) to the end of the run, for processes still alive at the end and measured
for at least MIN_SPAN_MINUTES after their warm-up; a replica restarted by a fault starts a new
line, and one restarted too late to be measured that long is listed but not judged. The run
passes when every judged process grew by less than 10%.
"""

import http.client
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid

BIN = sys.argv[1]
MINUTES = float(os.environ.get("SOAK_MINUTES", "60"))
WARMUP = float(os.environ.get("WARMUP_MINUTES", "5"))
MIN_SPAN = float(os.environ.get("MIN_SPAN_MINUTES", "20"))
FAULT_EVERY = float(os.environ.get("FAULT_MINUTES", "4"))
CLIENTS = int(os.environ.get("CLIENTS", "4"))
BASE = int(os.environ.get("SOAK_PORT_BASE", "18000"))
GATEWAY, ADMIN, REGISTRY, EVENTS, DNS, CONTROL = (BASE + 80, BASE + 81, BASE + 500, BASE + 90, BASE + 600, BASE + 70)
ADMIN_PASSWORD = "soak-admin-password"

errors = {}  # (method, route, status or exception) -> count
requests = [0]
lock = threading.Lock()
stop = threading.Event()


def note(key):
    with lock:
        errors[key] = errors.get(key, 0) + 1


def call(conn, method, path, route, body=None, token=None, headers=None, ok=(200, 201, 204)):
    h = {"content-type": "application/json"}
    if token:
        h["authorization"] = "Bearer " + token
    h.update(headers or {})
    with lock:
        requests[0] += 1
    try:
        conn.request(method, path, json.dumps(body) if body is not None else None, h)
        r = conn.getresponse()
        data = r.read()
    except (OSError, http.client.HTTPException) as e:
        conn.close()
        note((method, route, type(e).__name__))
        return None, None
    if r.status not in ok:
        note((method, route, r.status))
        return r.status, None
    try:
        return r.status, json.loads(data) if data else None
    except ValueError:
        return r.status, None


def connect():
    return http.client.HTTPConnection("127.0.0.1", GATEWAY, timeout=15)


def client(index, admin_token, products):
    conn = connect()
    email = f"soak-{index}-{uuid.uuid4().hex[:8]}@example.com"
    call(conn, "POST", "/auth/signup", "signup", {"email": email, "password": "soak-password-1"})
    token, refreshed = None, 0
    while not stop.is_set():
        if token is None or time.time() - refreshed > 600:
            _, body = call(conn, "POST", "/auth/login", "login", {"email": email, "password": "soak-password-1"})
            if body:
                token, refreshed = body["access_token"], time.time()
            else:
                time.sleep(1)
                continue
        roll = random.random()
        if roll < 0.45:
            call(conn, "GET", "/api/catalog/products", "catalog list")
        elif roll < 0.75:
            call(conn, "GET", f"/api/catalog/products/{random.choice(products)}", "catalog read")
        elif roll < 0.88:
            key = str(uuid.uuid4())
            body = {"items": [{"product_id": random.choice(products), "quantity": random.randint(1, 3)}]}
            for attempt in range(40):
                status, order = call(conn, "POST", "/api/orders", "order", body, token, {"Idempotency-Key": key})
                if order:
                    call(conn, "GET", f"/api/orders/{order['id']}", "order read", token=token)
                    break
                if status is not None and status < 500 and status != 429:
                    break
                time.sleep(0.5)
            else:
                note(("POST", "order", "never acknowledged"))
        elif roll < 0.94:
            call(conn, "PUT", "/api/profile/me", "profile write",
                 {"display_name": f"Soak {index}", "address": "1 Long Road", "phone": "+1000"}, token)
            call(conn, "GET", "/api/profile/me", "profile read", token=token)
        else:
            call(conn, "GET", "/api/notifications?limit=20", "notifications", token=token)
        time.sleep(0.02)


def status():
    out = subprocess.run([BIN, "status", "--json"], capture_output=True, text=True,
                         env={**os.environ, "STRATUS_CONTROL_ADDR": f"127.0.0.1:{CONTROL}"})
    return json.loads(out.stdout) if out.returncode == 0 else None


def processes():
    """(component, ordinal, pid, port) of every running replica."""
    view = status()
    found = []
    for component in (view or {}).get("components", []):
        for replica in component["replicas"]:
            if replica.get("pid"):
                found.append((component["name"], replica["ordinal"], replica["pid"], replica.get("port")))
    return found


def rss_kib(pid):
    """(VmRSS, RssAnon) in KiB. RssAnon is the heap and stacks: what a leak grows. The rest of
    VmRSS is mostly the binary's own pages, which grow as code paths run for the first time
    (a fault's recovery path, a rollout) and which the kernel can drop at any time."""
    found = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "RssAnon"):
                    found[key] = int(value.split()[0])
    except (OSError, ValueError, IndexError):
        return None
    if "VmRSS" not in found:
        return None
    return found["VmRSS"], found.get("RssAnon", found["VmRSS"])


MEMORY_GAUGES = ("sqlite_memory_bytes", "malloc_in_use_bytes", "malloc_free_bytes")


def memory_gauges(port):
    """(SQLite, malloc in use, malloc free) in KiB from the process's /metrics, or Nones."""
    found = {}
    if port:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/metrics")
            for line in conn.getresponse().read().decode().splitlines():
                name, _, value = line.partition(" ")
                if name in MEMORY_GAUGES:
                    found[name] = float(value) / 1024
            conn.close()
        except (OSError, ValueError, http.client.HTTPException):
            pass
    return tuple(found.get(name) for name in MEMORY_GAUGES)


def mib(kib):
    return "-" if kib is None else f"{kib / 1024:.1f}"


def faults(log):
    kinds = ["kill", "stop", "rollout"]
    turn = 0
    next_at = time.time() + FAULT_EVERY * 60
    while not stop.wait(5):
        if time.time() < next_at:
            continue
        next_at = time.time() + FAULT_EVERY * 60
        kind = kinds[turn % len(kinds)]
        turn += 1
        victims = [p for p in processes() if p[0] in ("catalog", "orders", "payments", "notifications", "profile", "auth")]
        if not victims:
            continue
        name, ordinal, pid, _ = random.choice(victims)
        stamp = time.strftime("%H:%M:%S")
        if kind == "kill":
            os.kill(pid, signal.SIGKILL)
            log.append(f"{stamp} kill -9 {name}#{ordinal} (pid {pid})")
        elif kind == "stop":
            os.kill(pid, signal.SIGSTOP)
            time.sleep(3)
            os.kill(pid, signal.SIGCONT)
            log.append(f"{stamp} SIGSTOP 3 s {name}#{ordinal} (pid {pid})")
        else:
            subprocess.run([BIN, "rollout", "catalog"], capture_output=True,
                           env={**os.environ, "STRATUS_CONTROL_ADDR": f"127.0.0.1:{CONTROL}"})
            log.append(f"{stamp} rollout catalog")


def main():
    data = tempfile.mkdtemp(prefix="stratus-soak-")
    env = {**os.environ,
           "STRATUS_DATA_DIR": data,
           "STRATUS_GATEWAY_PORT": str(GATEWAY), "STRATUS_ADMIN_PORT": str(ADMIN),
           "STRATUS_REGISTRY_PORT": str(REGISTRY), "STRATUS_EVENTS_PORT": str(EVENTS),
           "STRATUS_DNS_PORT": str(DNS), "STRATUS_CONTROL_ADDR": f"127.0.0.1:{CONTROL}",
           "STRATUS_ADMIN_PASSWORD": ADMIN_PASSWORD, "STRATUS_LOG": "warn"}
    up = subprocess.Popen([BIN, "up"], env=env, stdout=open(os.path.join(data, "up.log"), "w"),
                          stderr=subprocess.STDOUT, cwd=os.path.dirname(os.path.abspath(__file__)) + "/..")
    try:
        deadline = time.time() + 120
        products = []
        while time.time() < deadline and not products:
            try:
                conn = connect()
                _, body = call(conn, "GET", "/api/catalog/products", "startup", ok=(200,))
                products = [p["id"] for p in body or []]
            except OSError:
                pass
            time.sleep(1)
        if not products:
            raise SystemExit(f"the system never served products; logs in {data}")
        with lock:
            errors.clear()
            requests[0] = 0
        conn = connect()
        _, login = call(conn, "POST", "/auth/login", "login", {"email": "admin@stratus.local", "password": ADMIN_PASSWORD})
        admin = login["access_token"]
        threads = [threading.Thread(target=client, args=(i, admin, products), daemon=True) for i in range(CLIENTS)]
        fault_log = []
        threads.append(threading.Thread(target=faults, args=(fault_log,), daemon=True))
        for t in threads:
            t.start()

        started = time.time()
        samples = {}  # (component, ordinal, pid) -> [(minute, rss)]
        while time.time() - started < MINUTES * 60:
            minute = (time.time() - started) / 60
            for name, ordinal, pid, port in processes():
                rss = rss_kib(pid)
                if rss:
                    sample = rss + memory_gauges(port)
                    samples.setdefault((name, ordinal, pid), []).append((minute, sample))
            with lock:
                sent, failed = requests[0], sum(errors.values())
            print(f"{minute:6.1f} min  {sent} requests, {failed} errors, {len(samples)} processes seen", flush=True)
            time.sleep(30)
        stop.set()

        raw = os.path.join(data, "memory-samples.json")
        with open(raw, "w") as f:
            json.dump([{"process": f"{n}#{o}", "pid": p, "samples": series}
                       for (n, o, p), series in sorted(samples.items())], f)
        print(f"\n## Soak: {MINUTES:.0f} min, {CLIENTS} clients, a fault every {FAULT_EVERY:g} min\n")
        print(f"every memory sample (minute, [RSS, anonymous, SQLite, malloc in use, malloc free] KiB): {raw}\n")
        print(f"requests: {requests[0]}, errors: {sum(errors.values())}\n")
        if errors:
            print("| request | error | count |\n|---|---|---|")
            for (method, route, what), count in sorted(errors.items(), key=lambda kv: -kv[1]):
                print(f"| {method} {route} | {what} | {count} |")
            print()
        print("faults:")
        for line in fault_log:
            print(f"- {line}")
        print("\n| process | pid | RSS after warm-up (MiB) | RSS at end (MiB) | growth "
              "| anonymous after warm-up (MiB) | at end | growth "
              "| SQLite after warm-up / at end (MiB) | malloc in use | malloc free |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        worst = worst_anon = 0.0
        short = []
        for (name, ordinal, pid), series in sorted(samples.items()):
            if series[-1][0] < MINUTES - 1:
                continue  # gone before the end (killed by a fault, or replaced by a rollout)
            born = series[0][0]
            warm = [(minute, sample) for minute, sample in series if minute >= born + WARMUP]
            if len(warm) < 2 or warm[-1][0] - warm[0][0] < MIN_SPAN:
                short.append(f"{name}#{ordinal} (pid {pid}, first seen at minute {born:.0f})")
                continue
            warm = [sample for _, sample in warm]
            (rss0, anon0, *gauges0), (rss1, anon1, *gauges1) = warm[0], warm[-1]
            growth = (rss1 - rss0) / rss0 * 100
            anon_growth = (anon1 - anon0) / anon0 * 100
            worst = max(worst, growth)
            worst_anon = max(worst_anon, anon_growth)
            print(f"| {name}#{ordinal} | {pid} | {rss0 / 1024:.1f} | {rss1 / 1024:.1f} | {growth:+.1f}% "
                  f"| {anon0 / 1024:.1f} | {anon1 / 1024:.1f} | {anon_growth:+.1f}% "
                  + "".join(f"| {mib(a)} / {mib(b)} " for a, b in zip(gauges0, gauges1)) + "|")
        if short:
            print(f"\nrestarted too late to be measured {MIN_SPAN:g} min after warm-up: {', '.join(short)}")
        print(f"\nlargest growth after warm-up: RSS {worst:+.1f}%, anonymous {worst_anon:+.1f}% (limit +10%)")
        sys.exit(0 if worst < 10 else 1)
    finally:
        stop.set()
        up.send_signal(signal.SIGINT)
        try:
            up.wait(timeout=60)
        except subprocess.TimeoutExpired:
            up.kill()


if __name__ == "__main__":
    main()
