#!/usr/bin/env python3
"""What instances of services a gateway does not route cost it (run by bench/gateway-unrouted.sh).

Starts a registry and a gateway (mutual TLS off, the default route table, active health checks
every second), registers INSTANCES instances of a service no route names, each at its own closed
loopback port, waits for the gateway to have had a few rounds of health checks, then measures the
gateway's CPU (user+system) over SECONDS, and its resident memory.
"""

import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

STRATUS = sys.argv[1]
INSTANCES = int(os.environ.get("INSTANCES", "1000"))
SECONDS = float(os.environ.get("SECONDS_MEASURED", "10"))
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def wait_port(port, proc, work):
    deadline = time.time() + 30
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if time.time() > deadline or proc.poll() is not None:
                raise SystemExit(f"a process did not start; logs in {work}")
            time.sleep(0.05)


def main():
    work = tempfile.mkdtemp(prefix="stratus-gateway-unrouted-")
    registry, gateway, admin = free_port(), free_port(), free_port()
    env = dict(os.environ)
    env.update({
        "STRATUS_MTLS": "off", "STRATUS_DATA_DIR": work, "STRATUS_LOG": "warn",
        "STRATUS_REGISTRY_URL": f"http://127.0.0.1:{registry}", "STRATUS_REGISTRY_WARMUP": "0s",
        "STRATUS_EVENTS": "off", "STRATUS_ADMIN_PASSWORD": "bench-admin-password",
    })
    procs = []
    try:
        log = open(os.path.join(work, "registry.log"), "ab")
        procs.append(subprocess.Popen([STRATUS, "serve", "registry"], stdout=log, stderr=log,
                                      env={**env, "PORT": str(registry)},
                                      stdin=subprocess.DEVNULL))
        wait_port(registry, procs[-1], work)
        log = open(os.path.join(work, "gateway.log"), "ab")
        procs.append(subprocess.Popen([STRATUS, "serve", "gateway"], stdout=log, stderr=log,
                                      env={**env, "PORT": str(gateway),
                                           "STRATUS_ADMIN_PORT": str(admin)},
                                      stdin=subprocess.DEVNULL))
        wait_port(admin, procs[-1], work)
        conn = http.client.HTTPConnection("127.0.0.1", registry, timeout=10)
        for n in range(INSTANCES):
            body = json.dumps({"address": "127.0.0.1", "port": 20000 + n, "ttl_seconds": 3600})
            conn.request("PUT", f"/v1/services/elsewhere/instances/e{n}", body,
                         {"content-type": "application/json"})
            response = conn.getresponse()
            response.read()
            assert response.status in (200, 201), response.status
        time.sleep(3.0)
        pid = procs[-1].pid
        cpu = cpu_seconds(pid)
        time.sleep(SECONDS)
        cpu = cpu_seconds(pid) - cpu
        print(f"| {INSTANCES:,} | {100 * cpu / SECONDS:.1f}% | {rss_mib(pid):.0f} MiB |")
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


if __name__ == "__main__":
    main()
