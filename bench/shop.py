#!/usr/bin/env python3
"""Order -> paid -> notified latency through the gateway (run by bench/shop.sh).

For each broker backend (the embedded SQLite queue; NATS JetStream when nats-server is
installed) it starts registry, auth, catalog, orders x2, payments x2, notifications and a gateway
from the given binary, then places orders one at a time and, for each, measures from sending
`POST /api/orders` to the first `GET /api/orders/{id}` that says `paid` (polled every 2 ms), and
to the first `GET /api/notifications?order_id=` that lists it. Prints nearest-rank percentiles.
"""

import http.client
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

BIN, COUNT = sys.argv[1], int(sys.argv[2])


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(conn, method, path, body=None, token=None, headers=None):
    h = {"content-type": "application/json"}
    if token:
        h["authorization"] = "Bearer " + token
    h.update(headers or {})
    conn.request(method, path, json.dumps(body) if body is not None else None, h)
    r = conn.getresponse()
    data = r.read()
    return r.status, (json.loads(data) if data else None)


def wait(predicate, what, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if predicate():
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise SystemExit(f"timed out waiting for {what}")


def pct(values, p):
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def run(backend, broker_url):
    data = tempfile.mkdtemp(prefix="stratus-shop-bench-")
    registry, gateway, admin = free_port(), free_port(), free_port()
    base = dict(os.environ, STRATUS_DATA_DIR=data, STRATUS_REGISTRY_URL=f"http://127.0.0.1:{registry}",
                STRATUS_LOG="warn", STRATUS_EVENTS="off", STRATUS_ADMIN_PASSWORD="bench-admin-password")
    base.pop("DATABASE_URL", None)
    if broker_url:
        base["BROKER_URL"] = broker_url
    procs = []

    def spawn(component, **env):
        log = open(os.path.join(data, f"{component}-{len(procs)}.log"), "w")
        procs.append(subprocess.Popen([BIN, "serve", component], env=dict(base, **dict({"PORT": "0"}, **env)),
                                      stdout=log, stderr=log))

    try:
        spawn("registry", PORT=str(registry))
        wait(lambda: http.client.HTTPConnection("127.0.0.1", registry).request("GET", "/readyz") or True, "registry")
        for component, n in [("auth", 1), ("catalog", 1), ("orders", 2), ("payments", 2), ("notifications", 1)]:
            for _ in range(n):
                spawn(component)
        spawn("gateway", PORT=str(gateway), STRATUS_ADMIN_PORT=str(admin))

        def registered():
            c = http.client.HTTPConnection("127.0.0.1", registry)
            _, services = request(c, "GET", "/v1/services")
            names = json.dumps(services)
            return all(s in names for s in ["auth", "catalog", "orders", "payments", "notifications"])

        wait(registered, "every service to register")
        conn = http.client.HTTPConnection("127.0.0.1", gateway, timeout=10)

        def gateway_ready():
            status, _ = request(conn, "POST", "/auth/login", {"email": "admin@stratus.local", "password": "bench-admin-password"})
            return status == 200

        wait(gateway_ready, "the gateway")
        _, login = request(conn, "POST", "/auth/login", {"email": "admin@stratus.local", "password": "bench-admin-password"})
        admin_token = login["access_token"]
        request(conn, "POST", "/auth/signup", {"email": "bench@example.com", "password": "bench-password"})
        _, login = request(conn, "POST", "/auth/login", {"email": "bench@example.com", "password": "bench-password"})
        token = login["access_token"]
        _, product = request(conn, "POST", "/api/catalog/products", {"name": "Tea", "price_cents": 250, "stock": 1}, admin_token)
        wait(lambda: request(conn, "GET", "/api/orders", token=token)[0] == 200, "orders through the gateway")

        paid, notified = [], []
        for i in range(COUNT + 10):
            start = time.perf_counter()
            status, order = request(conn, "POST", "/api/orders", {"items": [{"product_id": product["id"], "quantity": 1}]},
                                    token, {"idempotency-key": f"bench-{backend.replace(' ', '-')}-{i}"})
            assert status == 201, (status, order)
            while request(conn, "GET", f"/api/orders/{order['id']}", token=token)[1]["status"] == "pending":
                time.sleep(0.002)
            t_paid = time.perf_counter() - start
            while not request(conn, "GET", f"/api/notifications?order_id={order['id']}", token=token)[1]:
                time.sleep(0.002)
            t_notified = time.perf_counter() - start
            if i >= 10:  # warm-up
                paid.append(t_paid * 1000)
                notified.append(t_notified * 1000)
        row = f"| {backend} | {COUNT} | {pct(paid, 50):.1f} | {pct(paid, 99):.1f} | {pct(notified, 50):.1f} | {pct(notified, 99):.1f} |"
        return row
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(data, ignore_errors=True)


def main():
    rows = [run("SQLite queue", None)]
    nats = shutil.which("nats-server") or ("/usr/sbin/nats-server" if os.path.exists("/usr/sbin/nats-server") else None)
    if nats:
        store = tempfile.mkdtemp(prefix="stratus-shop-nats-")
        port = free_port()
        server = subprocess.Popen([nats, "-js", "-sd", store, "-a", "127.0.0.1", "-p", str(port)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait(lambda: socket.create_connection(("127.0.0.1", port), timeout=1).close() or True, "nats-server")
            rows.append(run("NATS JetStream", f"nats://127.0.0.1:{port}"))
        finally:
            server.terminate()
            server.wait()
            shutil.rmtree(store, ignore_errors=True)
    else:
        print("(nats-server not installed: NATS skipped)", file=sys.stderr)
    load = os.getloadavg()[0]
    print(f"Order saga latency, orders placed one at a time (load average {load:.1f} at the end), ms:\n")
    print("| broker | orders | placed -> paid p50 | p99 | placed -> notified p50 | p99 |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(row)


main()
