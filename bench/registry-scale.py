#!/usr/bin/env python3
"""The registry under many instances and watchers (run by bench/registry-scale.sh; issue 19).

For each row (watch kind, instances, watchers, changes a second) it starts a fresh registry (the
memory store, mutual TLS off, on loopback), registers the instances over services of 20
instances each (leases of an hour: heartbeats are not part of this measure), opens the watchers
as blocking queries (`GET /v1/services?index=N` for `catalog`, `GET /v1/services/<one>?index=N`
for `service`, watcher i on service i mod services) or as incremental watches
(`GET /v1/watch?deltas=true` for `deltas`, `&services=<one>` for `deltas-service`: a snapshot,
then one event per change, each event counted as an answer), then registers one new instance in a random
service at the asked rate for SECONDS and measures, over that window:

  made        changes registered a second (the registrar waits for each answer)
  CPU         the registry's user+system CPU over the window, in % of one core
  CPU/change  that CPU divided by the changes made
  sent/change bytes of answers the watchers received, per change
  wake-ups    answers the watchers received per change; ideal: every watcher of the whole catalog,
              the watchers of the changed service only when watching one service each
  lag         from sending a registration to a watcher of it receiving an answer that holds it
              (every watcher that should see the change), p50 and p99
  RSS         the registry's resident memory at the end

With STORE=etcd the registry keeps its instances in an etcd of its own (started per row, the
`etcd` program on PATH), and the CPU column adds etcd's.

The watchers are asyncio connections in this one Python process, which shares the machine's cores
with the registry: at the larger rows the client's own reading shows in the lag.
"""

import asyncio
import json
import os
import random
import re
import socket
import subprocess
import sys
import tempfile
import time

STRATUS = sys.argv[1]
SECONDS = float(os.environ.get("SECONDS_PER_ROW", "10"))
PER_SERVICE = 20
# kind:instances:watchers:changes-per-second
ROWS = os.environ.get(
    "ROWS",
    "catalog:100:20:10 catalog:1000:100:10 service:1000:100:10 service:5000:500:20",
).split()
STORE = os.environ.get("STORE", "memory")
CLK_TCK = os.sysconf("SC_CLK_TCK")
INDEX = re.compile(rb'"index":(\d+)')
KINDS = {
    "catalog": "whole catalog",
    "service": "one service each",
    "deltas": "incremental, whole catalog",
    "deltas-service": "incremental, one service each",
}


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


class Http:
    """One keep-alive HTTP/1.1 connection, just enough for the registry's answers."""

    def __init__(self, port):
        self.port = port
        self.reader = self.writer = None

    async def request(self, method, path, body=b""):
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        head = f"{method} {path} HTTP/1.1\r\nHost: registry\r\nContent-Length: {len(body)}\r\n"
        if body:
            head += "Content-Type: application/json\r\n"
        self.writer.write(head.encode() + b"\r\n" + body)
        await self.writer.drain()
        status_line = await self.reader.readline()
        status = int(status_line.split()[1])
        length, chunked = None, False
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b""):
                break
            name, _, value = line.decode().partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "transfer-encoding" and "chunked" in value:
                chunked = True
        if chunked:
            parts = []
            while True:
                size = int((await self.reader.readline()).strip(), 16)
                if size == 0:
                    await self.reader.readline()
                    break
                parts.append(await self.reader.readexactly(size))
                await self.reader.readline()
            data = b"".join(parts)
        else:
            data = await self.reader.readexactly(length or 0)
        return status, data


class Row:
    def __init__(self, spec):
        kind, instances, watchers, rate = spec.split(":")
        self.kind = kind
        self.instances = int(instances)
        self.watchers = int(watchers)
        self.rate = float(rate)
        self.services = max(1, self.instances // PER_SERVICE)
        self.sent = {}  # change id -> (service, time sent)
        self.lags = []
        self.answers = 0
        self.errors = 0  # answers other than 200 (a store that cannot keep up: 503)
        self.bytes = 0
        self.ready = 0  # watchers that have their first answer (and an index to block on)
        # The registry closes connections from one address past 64 handshakes in progress at
        # once (stratus_kit::listener): the watchers connect a few at a time.
        self.connecting = asyncio.Semaphore(16)
        self.measuring = False
        self.stop = False

    def service(self, n):
        return f"svc{n:04d}"

    async def register(self, http, service, instance):
        body = json.dumps({
            "address": "127.0.0.1", "port": 10000 + hash(instance) % 50000,
            "ttl_seconds": 3600, "version": "1", "metadata": {"zone": "a", "team": "bench"},
        }).encode()
        path = f"/v1/services/{service}/instances/{instance}"
        while True:
            status, _ = await http.request("PUT", path, body)
            if status in (200, 201):
                return
            assert status == 503, status
            # The store did not answer in time: counted, and tried again.
            self.errors += 1
            await asyncio.sleep(0.1)

    async def fill(self, port):
        queue = list(range(self.instances))

        async def worker():
            http = Http(port)
            while queue:
                n = queue.pop()
                await self.register(http, self.service(n % self.services), f"i{n}")

        await asyncio.gather(*(worker() for _ in range(8)))

    async def watcher(self, port, n):
        if self.kind.startswith("deltas"):
            return await self.delta_watcher(port, n)
        http = Http(port)
        if self.kind == "catalog":
            path, service = "/v1/services", None
        else:
            service = self.service(n % self.services)
            path = f"/v1/services/{service}"
        while True:
            async with self.connecting:
                status, data = await http.request("GET", path)
            if status == 200:
                break
            self.errors += 1
            await asyncio.sleep(0.1)
        index = int(INDEX.search(data).group(1))
        self.ready += 1
        seen = set()
        while not self.stop:
            status, data = await http.request("GET", f"{path}?index={index}&wait=30s")
            now = time.time()
            if status != 200:
                self.errors += 1
                await asyncio.sleep(0.1)
                continue
            if self.measuring:
                self.answers += 1
                self.bytes += len(data)
            index = int(INDEX.search(data).group(1))
            for change, (changed, at) in list(self.sent.items()):
                if change in seen or (service is not None and changed != service):
                    continue
                if f'"chg{change}"'.encode() in data:
                    seen.add(change)
                    self.lags.append(now - at)

    async def delta_watcher(self, port, n):
        """The incremental watch (`/v1/watch?deltas=true`): a snapshot, then change events. Each
        event read counts as an answer; a change is seen when an event holding it arrives."""
        service = None
        path = "/v1/watch?deltas=true"
        if self.kind == "deltas-service":
            service = self.service(n % self.services)
            path += f"&services={service}"
        async with self.connecting:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(f"GET {path} HTTP/1.1\r\nHost: registry\r\n\r\n".encode())
            await writer.drain()
            status = int((await reader.readline()).split()[1])
            assert status == 200, status
            while (await reader.readline()) not in (b"\r\n", b""):
                pass
        buffer, seen, ready = b"", set(), False
        while not self.stop:
            size = int((await reader.readline()).strip(), 16)
            if size == 0:
                raise SystemExit("the registry ended a watch")
            buffer += await reader.readexactly(size)
            await reader.readline()
            now = time.time()
            while b"\n\n" in buffer:
                event, buffer = buffer.split(b"\n\n", 1)
                if event.startswith(b":"):
                    continue
                if not ready:
                    ready = True
                    self.ready += 1
                    continue
                if self.measuring:
                    self.answers += 1
                    self.bytes += len(event) + 2
                for change, (changed, at) in list(self.sent.items()):
                    if change in seen or (service is not None and changed != service):
                        continue
                    if f'"chg{change}"'.encode() in event:
                        seen.add(change)
                        self.lags.append(now - at)

    async def changes(self, port):
        http = Http(port)
        made = 0
        started = time.time()
        while time.time() - started < SECONDS:
            due = started + made / self.rate
            await asyncio.sleep(max(0.0, due - time.time()))
            service = self.service(random.randrange(self.services))
            self.sent[made] = (service, time.time())
            await self.register(http, service, f"chg{made}")
            made += 1
        # The window is the asked time (the last change is sent before it ends).
        return made, max(time.time() - started, made / self.rate)

    async def run(self, pid, port, etcd_pid=None):
        await self.fill(port)
        tasks = [asyncio.create_task(self.watcher(port, n)) for n in range(self.watchers)]
        while self.ready < self.watchers:
            failed = [t for t in tasks if t.done()]
            if failed:
                raise SystemExit(f"a watcher failed: {failed[0].exception()!r}")
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # every watcher blocked
        cpu = cpu_seconds(pid)
        etcd_cpu = cpu_seconds(etcd_pid) if etcd_pid else 0.0
        self.measuring = True
        made, elapsed = await self.changes(port)
        await asyncio.sleep(0.5)  # the last change's answers
        self.measuring = False
        cpu = cpu_seconds(pid) - cpu
        etcd_cpu = (cpu_seconds(etcd_pid) - etcd_cpu) if etcd_pid else None
        self.stop = True
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        watchers_per_change = (
            self.watchers if self.kind in ("catalog", "deltas") else self.watchers / self.services
        )
        expected = made * watchers_per_change
        lags = sorted(self.lags)

        def percentile(p):
            return lags[min(len(lags) - 1, int(p * len(lags)))] * 1000 if lags else float("nan")

        return {
            "made": made / elapsed,
            "cpu": 100 * cpu / (elapsed + 0.5),
            "etcd_cpu": None if etcd_cpu is None else 100 * etcd_cpu / (elapsed + 0.5),
            "cpu_per_change_ms": 1000 * cpu / made,
            "sent_per_change_mib": self.bytes / made / 2**20,
            "wakeups": self.answers / made,
            "ideal": watchers_per_change,
            "seen": len(lags) / expected if expected else 0,
            "p50": percentile(0.50),
            "p99": percentile(0.99),
            "rss": rss_mib(pid),
            "errors": self.errors,
        }


def wait_port(port, proc, what, work):
    deadline = time.time() + 30
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if time.time() > deadline or proc.poll() is not None:
                raise SystemExit(f"{what} did not start; logs in {work}")
            time.sleep(0.05)


def start_etcd(work):
    port, peer = free_port(), free_port()
    client, peer_url = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{peer}"
    data = tempfile.mkdtemp(prefix="etcd-", dir=work)
    log = open(os.path.join(work, "etcd.log"), "ab")
    proc = subprocess.Popen(
        ["etcd", "--name=bench", f"--data-dir={data}", f"--listen-client-urls={client}",
         f"--advertise-client-urls={client}", f"--listen-peer-urls={peer_url}",
         f"--initial-advertise-peer-urls={peer_url}", f"--initial-cluster=bench={peer_url}"],
        stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    wait_port(port, proc, "etcd", work)
    time.sleep(1.0)  # a leader
    return proc, client


def run_row(spec, work):
    etcd, store = (start_etcd(work) if STORE == "etcd" else (None, "memory"))
    port = free_port()
    env = dict(os.environ)
    env.update({
        "PORT": str(port), "STRATUS_DATA_DIR": work, "STRATUS_LOG": "warn",
        "STRATUS_REGISTRY_WARMUP": "0s", "STRATUS_MTLS": "off",
        "STRATUS_REGISTRY_STORE": store,
    })
    log = open(os.path.join(work, "registry.log"), "ab")
    proc = subprocess.Popen([STRATUS, "serve", "registry"], env=env, stdout=log, stderr=log,
                            stdin=subprocess.DEVNULL)
    try:
        wait_port(port, proc, "the registry", work)
        row = Row(spec)
        result = asyncio.run(row.run(proc.pid, port, etcd.pid if etcd else None))
        return row, result
    finally:
        proc.kill()
        proc.wait()
        if etcd:
            etcd.kill()
            etcd.wait()


def main():
    work = tempfile.mkdtemp(prefix="stratus-registry-scale-")
    print(f"binary: {STRATUS}; store: {STORE}; {SECONDS:.0f} s a row; load average before: "
          f"{os.getloadavg()[0]:.2f}")
    print()
    print("| watch | instances | watchers | changes/s asked (made) | registry CPU | CPU per change "
          "| sent per change | wake-ups per change (ideal) | seen | lag p50 | lag p99 | registry RSS |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    failures = []
    for spec in ROWS:
        row, r = run_row(spec, work)
        kind = KINDS[row.kind]
        etcd = "" if r["etcd_cpu"] is None else f" (+{r['etcd_cpu']:.0f}% etcd)"
        print(f"| {kind} | {row.instances:,} | {row.watchers:,} | {row.rate:g} ({r['made']:.1f}) "
              f"| {r['cpu']:.0f}%{etcd} | {r['cpu_per_change_ms']:.1f} ms "
              f"| {r['sent_per_change_mib']:.2f} MiB | {r['wakeups']:.0f} ({r['ideal']:g}) "
              f"| {100 * r['seen']:.0f}% | {r['p50']:.0f} ms | {r['p99']:.0f} ms "
              f"| {r['rss']:.0f} MiB |", flush=True)
        if r["errors"]:
            failures.append(f"{kind}, {row.instances:,} instances: {r['errors']} answers were "
                            "not 200 (the registry could not read its store in time)")
    print()
    for failure in failures:
        print(f"- {failure}")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
