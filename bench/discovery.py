#!/usr/bin/env python3
"""How fast discovery notices changes, measured through the gateway (run by bench/discovery.sh).

Starts a registry, auth, two steady catalog instances and a gateway (the release binary), then for
each trial starts one more catalog instance and measures:

  (a) registration -> first request the gateway routes to it (its `registered_at` in the
      registry to the first response carrying its `x-served-by`);
  (b) kill -9 -> removal from the gateway's rotation (even trials);
  (c) SIGSTOP -> removal from the gateway's rotation (odd trials).

"Removal" is read from the gateway's admin API (`/v1/upstreams`, polled every few ms): *out* is
the first moment the instance is marked down or gone, *gone* the moment it left the gateway's
list (the registry's health check failed it and the gateway heard). Two client threads send GETs
through the gateway the whole time and count every answer that is not a 200.
"""

import http.client
import json
import math
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import socket
from datetime import datetime, timezone

STRATUS = sys.argv[1]
TRIALS = int(os.environ.get("TRIALS", "20"))
# Other instances the registry holds and probes during the trials (services of 20, `s0`,
# `s1`, ..., listening on EXTRA_PORT_BASE.. in bench/instance-farm.sh's nginx processes, which
# discovery.sh starts; each declares `GET /healthz` every 500 ms, as Stratus's services do):
# detection times with a large system around the one instance watched.
EXTRA = int(os.environ.get("EXTRA", "0"))
EXTRA_PORT_BASE = int(os.environ.get("EXTRA_PORT_BASE", "20000"))
PATH = "/api/catalog/products"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


WORK = tempfile.mkdtemp(prefix="stratus-discovery-bench-")
REG, GW, GWA = free_port(), free_port(), free_port()
PROCS = []


def spawn(component, name, env=None, instance_id=None):
    full = dict(os.environ)
    full.update({
        "STRATUS_REGISTRY_URL": f"http://127.0.0.1:{REG}",
        "STRATUS_DATA_DIR": WORK,
        "STRATUS_LOG": "warn",
        "STRATUS_LOG_FORMAT": "json",
        "PORT": "0",
        "STRATUS_ADMIN_PASSWORD": "bench-admin-password",
    })
    full.pop("DATABASE_URL", None)
    if instance_id:
        full["STRATUS_INSTANCE_ID"] = instance_id
    full.update(env or {})
    log = open(os.path.join(WORK, f"{name}.log"), "ab")
    proc = subprocess.Popen([STRATUS, "serve", component], env=full, stdout=log, stderr=log,
                            stdin=subprocess.DEVNULL)
    PROCS.append(proc)
    return proc


def get_json(port, path, timeout=2.0):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read()
        return response.status, (json.loads(body) if body else None)
    finally:
        conn.close()


def wait(what, check, within=30.0, every=0.02):
    deadline = time.time() + within
    while time.time() < deadline:
        try:
            if check():
                return
        except (OSError, ValueError, http.client.HTTPException):
            pass
        time.sleep(every)
    raise SystemExit(f"timed out waiting for {what}; logs in {WORK}")


def parse_rfc3339(text):
    # 2026-11-23T19:24:04.123456789Z: datetime takes microseconds at most.
    main, _, rest = text.partition(".")
    fraction = rest.rstrip("Z") if rest else "0"
    base = datetime.strptime(main.rstrip("Z"), "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone.utc)
    return base.timestamp() + float("0." + fraction)


class Load:
    """Client threads sending GETs through the gateway; remembers when each instance first served."""

    def __init__(self, threads=2):
        self.lock = threading.Lock()
        self.first_seen = {}
        self.requests = 0
        self.errors = 0
        self.slowest = 0.0
        self.error_samples = []
        self.stop = False
        self.threads = [threading.Thread(target=self.run, daemon=True) for _ in range(threads)]
        for t in self.threads:
            t.start()

    def run(self):
        conn = None
        while not self.stop:
            started = time.time()
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", GW, timeout=60)
                # no-store: past the edge cache, so each request shows which instance served it.
                conn.request("GET", PATH, headers={"Cache-Control": "no-store"})
                response = conn.getresponse()
                response.read()
                done = time.time()
                served = response.getheader("x-served-by", "")
                with self.lock:
                    self.requests += 1
                    self.slowest = max(self.slowest, done - started)
                    if response.status != 200:
                        self.errors += 1
                        self.error_samples.append(f"{response.status} from {served}")
                    elif served not in self.first_seen:
                        self.first_seen[served] = done
            except (OSError, http.client.HTTPException) as error:
                with self.lock:
                    self.requests += 1
                    self.errors += 1
                    self.error_samples.append(repr(error))
                conn = None

    def counts(self):
        with self.lock:
            return self.requests, self.errors


def upstream_state(instance_id):
    """'up', 'down' or 'gone' for a catalog instance, per the gateway's admin API."""
    status, body = get_json(GWA, "/v1/upstreams")
    for instance in body["services"].get("catalog", []):
        if instance["id"] == instance_id:
            return instance["state"]
    return "gone"


def registered_at(instance_id):
    status, body = get_json(REG, "/v1/services/catalog")
    for instance in body["instances"]:
        if instance["id"] == instance_id:
            return parse_rfc3339(instance["registered_at"])
    return None


def watch_removal(instance_id, within=10.0):
    """Polls the gateway until the instance is gone; returns (out_at, gone_at)."""
    out_at = None
    deadline = time.time() + within
    while time.time() < deadline:
        try:
            state = upstream_state(instance_id)
        except (OSError, ValueError, http.client.HTTPException):
            time.sleep(0.005)
            continue
        now = time.time()
        if state != "up" and out_at is None:
            out_at = now
        if state == "gone":
            return out_at, now
        time.sleep(0.003)
    return out_at, None


def percentile(values, p):
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    # Nearest rank: the smallest value with at least p% of the values at or below it.
    k = min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))
    return ordered[k]


def main():
    try:
        load_avg = os.getloadavg()[0]
        spawn("registry", "registry", {"PORT": str(REG)})
        wait("the registry", lambda: get_json(REG, "/readyz")[0] == 200)
        if EXTRA:
            subprocess.run([sys.executable, os.path.join(os.path.dirname(__file__), "gateway-scale.py"),
                            "register", str(REG), str(EXTRA // 20), "20", str(EXTRA_PORT_BASE), "1"],
                           check=True, stdout=subprocess.DEVNULL)
        spawn("auth", "auth")
        for i in range(2):
            spawn("catalog", f"catalog-steady-{i}")
        spawn("gateway", "gateway", {"PORT": str(GW), "STRATUS_ADMIN_PORT": str(GWA)})
        wait("the gateway", lambda: get_json(GWA, "/readyz")[0] == 200)
        wait("two catalogs in the gateway",
             lambda: len(get_json(GWA, "/v1/upstreams")[1]["services"].get("catalog", [])) == 2)
        load = Load()
        time.sleep(1.0)

        a, b_out, b_gone, c_out, c_gone = [], [], [], [], []
        errors = {"a": 0, "b": 0, "c": 0}
        for trial in range(2 * TRIALS):
            instance_id = f"bench-{trial}-{random.randrange(1 << 30):x}"
            before = load.counts()[1]
            proc = spawn("catalog", f"catalog-trial-{trial}", instance_id=instance_id)
            wait("the trial instance registering", lambda: registered_at(instance_id) is not None)
            wait("the trial instance being served",
                 lambda: f"catalog/{instance_id}" in load.first_seen, within=10.0, every=0.005)
            a.append(load.first_seen[f"catalog/{instance_id}"] - registered_at(instance_id))
            errors["a"] += load.counts()[1] - before

            # Let it serve a while, and hit the check interval at a random phase.
            time.sleep(0.3 + random.random() * 0.5)
            before = load.counts()[1]
            kind = "b" if trial % 2 == 0 else "c"
            started = time.time()
            if kind == "b":
                proc.send_signal(signal.SIGKILL)
            else:
                proc.send_signal(signal.SIGSTOP)
            out_at, gone_at = watch_removal(instance_id)
            if gone_at is None:
                print(f"trial {trial}: {instance_id} never left the gateway", file=sys.stderr)
            else:
                (b_out if kind == "b" else c_out).append(out_at - started)
                (b_gone if kind == "b" else c_gone).append(gone_at - started)
            if kind == "c":
                # Wake it so requests it holds finish, then stop it the clean way.
                proc.send_signal(signal.SIGCONT)
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            time.sleep(0.3)
            errors[kind] += load.counts()[1] - before
            print(f"trial {trial + 1}/{2 * TRIALS} done", file=sys.stderr)

        load.stop = True
        requests, total_errors = load.counts()
        rows = [
            ("(a) registration -> first routed request", a, 0.100),
            ("(b) kill -9 -> out of rotation (down or gone)", b_out, 1.0),
            ("(b) kill -9 -> gone from the gateway's list", b_gone, 1.0),
            ("(c) SIGSTOP -> out of rotation (down or gone)", c_out, 2.0),
            ("(c) SIGSTOP -> gone from the gateway's list", c_gone, 2.0),
        ]
        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        lines = [
            f"#### Run of {stamp}",
            "",
            f"{TRIALS} trials each of (b) and (c), {2 * TRIALS} of (a); binary "
            f"`{os.path.relpath(STRATUS)}`; load average {load_avg:.1f} at the start"
            + (f"; {EXTRA} other instances registered, live and probed." if EXTRA else "."),
            "",
            "| metric | n | p50 | p95 | max | target | met |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, values, target in rows:
            p50, p95, worst = percentile(values, 50), percentile(values, 95), max(values or [float("nan")])
            met = "yes" if values and p95 < target else "no"
            lines.append(f"| {name} | {len(values)} | {p50 * 1000:.0f} ms | {p95 * 1000:.0f} ms | "
                         f"{worst * 1000:.0f} ms | < {target * 1000:.0f} ms | {met} |")
        lines += [
            "",
            f"Client GETs through the gateway during the run: {requests}, of which not 200: "
            f"{total_errors} (during (a): {errors['a']}, (b): {errors['b']}, (c): {errors['c']}); "
            f"slowest answer {load.slowest * 1000:.0f} ms.",
        ]
        if load.error_samples:
            lines.append(f"First errors: {', '.join(load.error_samples[:5])}.")
        print("\n".join(lines))
    finally:
        for proc in PROCS:
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.kill()
                proc.wait()


if __name__ == "__main__":
    main()
