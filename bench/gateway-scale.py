#!/usr/bin/env python3
"""The client side of bench/gateway-scale.sh: registers instances, waits for the gateway to hold
them, and times how long a registry change takes to reach the gateway's routing.

    gateway-scale.py register REGISTRY SERVICES PER_SERVICE PORT_BASE [CHECKED]
    gateway-scale.py wait ADMIN INSTANCES TIMEOUT_S
    gateway-scale.py updates GATEWAY REGISTRY BACKEND_PORT COUNT

Everything is plain HTTP/1.1 on loopback over keep-alive connections (http.client), so 10,000
registrations take seconds, not a process per request.
"""

import http.client
import json
import statistics
import sys
import time


def register(registry, services, per_service, port_base, checked=0):
    """Registers the instances; with `checked`, each declares the check Stratus's own services
    declare (`GET /healthz` every 500 ms), so the registry probes every one of them."""
    conn = http.client.HTTPConnection("127.0.0.1", registry, timeout=10)
    port = port_base
    for s in range(services):
        for i in range(per_service):
            instance = {"address": "127.0.0.1", "port": port, "ttl_seconds": 3600}
            if checked:
                instance.update({"check": {"http": "/healthz"}, "interval": "500ms"})
            body = json.dumps(instance)
            conn.request("PUT", f"/v1/services/s{s}/instances/s{s}-{i}", body,
                         {"content-type": "application/json"})
            answer = conn.getresponse()
            answer.read()
            if answer.status not in (200, 201):
                sys.exit(f"registering s{s}-{i}: {answer.status}")
            port += 1
    print(f"registered {services * per_service} instances in {services} services")


def held(admin):
    conn = http.client.HTTPConnection("127.0.0.1", admin, timeout=10)
    conn.request("GET", "/v1/upstreams")
    answer = conn.getresponse()
    body = answer.read()
    if answer.status != 200:
        sys.exit(f"GET /v1/upstreams: {answer.status} {body[:200]!r}")
    services = json.loads(body)["services"]
    return sum(len(instances) for instances in services.values())


def wait(admin, instances, timeout_s):
    deadline = time.monotonic() + timeout_s
    n = 0
    while time.monotonic() < deadline:
        n = held(admin)
        if n >= instances:
            print(f"the gateway holds {n} instances")
            return
        time.sleep(0.5)
    sys.exit(f"the gateway held {n} of {instances} instances after {timeout_s} s")


def updates(gateway, registry, backend, count):
    """For each of `count` services `fresh<j>` (routed, with no instance yet): registers one
    instance and asks the gateway for `/fresh<j>/` every millisecond until it answers 200. The
    time runs from the registry's answer to the gateway's first 200."""
    reg = http.client.HTTPConnection("127.0.0.1", registry, timeout=10)
    gw = http.client.HTTPConnection("127.0.0.1", gateway, timeout=10)
    times = []
    for j in range(1, count + 1):
        body = json.dumps({"address": "127.0.0.1", "port": backend, "ttl_seconds": 3600})
        reg.request("PUT", f"/v1/services/fresh{j}/instances/fresh{j}-0", body,
                    {"content-type": "application/json"})
        answer = reg.getresponse()
        answer.read()
        if answer.status not in (200, 201):
            sys.exit(f"registering fresh{j}: {answer.status}")
        registered = time.monotonic()
        while True:
            gw.request("GET", f"/fresh{j}/x", headers={"cache-control": "no-store"})
            answer = gw.getresponse()
            answer.read()
            if answer.status == 200:
                times.append((time.monotonic() - registered) * 1000)
                break
            if time.monotonic() - registered > 30:
                sys.exit(f"fresh{j} was not routed 30 s after it registered (last {answer.status})")
            time.sleep(0.001)
    times.sort()
    p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
    print(f"update_ms p50 {statistics.median(times):.1f} p99 {p99:.1f} max {times[-1]:.1f} ({count} changes)")


def main():
    command, args = sys.argv[1], [int(a) for a in sys.argv[2:]]
    {"register": register, "wait": wait, "updates": updates}[command](*args)


if __name__ == "__main__":
    main()
