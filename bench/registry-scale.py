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
`etcd` program on PATH), and the CPU column adds etcd's. REGISTRIES=3 (etcd only) starts three
registry processes on that one etcd, the etcd store's mode for several registries: watcher i
connects to registry i mod 3, the instances are registered and the changes made through each in
turn, and a change's lag runs from its request to one registry to each watcher's sight of it on
whichever registry that watcher follows. CPU is then all registries' together, RSS each one's.

A row that cannot be measured fails loudly: a registry or etcd that exits (with its status and
the end of its log), a phase that does not finish in time (the instances registered, the
watchers' first answers, the changes), answers other than 200 for longer than 30 s, or a change
no watcher saw. The failure is printed in the table and on stderr with its reason, the other
rows still run, and the script exits non-zero (so does a row printed with `seen` below 100%).

The watchers are asyncio connections in this one Python process, which shares the machine's cores
with the registry: at the larger rows the client's own reading shows in the lag.
"""

import asyncio
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback

STRATUS = sys.argv[1]
SECONDS = float(os.environ.get("SECONDS_PER_ROW", "10"))
PER_SERVICE = 20
# kind:instances:watchers:changes-per-second
ROWS = os.environ.get(
    "ROWS",
    "catalog:100:20:10 catalog:1000:100:10 service:1000:100:10 service:5000:500:20",
).split()
STORE = os.environ.get("STORE", "memory")
REGISTRIES = int(os.environ.get("REGISTRIES", "1"))
# How long answers other than 200 may go on before the row fails rather than waits for ever.
UNAVAILABLE_FOR = 30.0
CLK_TCK = os.sysconf("SC_CLK_TCK")
INDEX = re.compile(rb'"index":(\d+)')
CHANGE_ID = re.compile(rb'"chg(\d+)"')
KINDS = {
    "catalog": "whole catalog",
    "service": "one service each",
    "deltas": "incremental, whole catalog",
    "deltas-service": "incremental, one service each",
}


class Failure(Exception):
    """A row that could not be measured, and why."""


class Process:
    """A process the bench started (a registry or etcd), its log, and how it ended."""

    def __init__(self, what, proc, log):
        self.what, self.proc, self.log = what, proc, log

    @property
    def pid(self):
        return self.proc.pid

    def exited(self):
        """Why the process is gone, or None while it runs."""
        code = self.proc.poll()
        if code is None:
            return None
        how = f"killed by signal {-code}" if code < 0 else f"exited with status {code}"
        if code == -signal.SIGKILL:
            how += " (SIGKILL: the kernel's OOM killer? see dmesg)"
        return f"{self.what} (pid {self.pid}) {how}\n{log_tail(self.log)}"

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def log_tail(path, lines=8):
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 8192))
            tail = f.read().decode(errors="replace").splitlines()[-lines:]
    except OSError as error:
        return f"  (no log: {error})"
    return "\n".join(f"  {path}: {line[:300]}" for line in tail)


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
        self.registered = 0  # instances registered before the watchers open
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
        refused_since = None
        while True:
            status, answer = await http.request("PUT", path, body)
            if status in (200, 201):
                return
            if status != 503:
                raise Failure(f"registering {service}/{instance}: {status} {answer[:300]!r}")
            # The store did not answer in time: counted, and tried again, for a while.
            self.errors += 1
            refused_since = refused_since or time.time()
            if time.time() - refused_since > UNAVAILABLE_FOR:
                raise Failure(f"registering {service}/{instance}: 503 for {UNAVAILABLE_FOR:.0f} s "
                              f"(the registry cannot reach its store): {answer[:300]!r}")
            await asyncio.sleep(0.1)

    async def fill(self, ports):
        queue = list(range(self.instances))

        async def worker(w):
            http = Http(ports[w % len(ports)])
            while queue:
                n = queue.pop()
                await self.register(http, self.service(n % self.services), f"i{n}")
                self.registered += 1

        await asyncio.gather(*(worker(w) for w in range(8)))

    async def watcher(self, port, n):
        if self.kind.startswith("deltas"):
            return await self.delta_watcher(port, n)
        http = Http(port)
        if self.kind == "catalog":
            path, service = "/v1/services", None
        else:
            service = self.service(n % self.services)
            path = f"/v1/services/{service}"
        refused_since = time.time()
        while True:
            async with self.connecting:
                status, data = await http.request("GET", path)
            if status == 200:
                break
            self.errors += 1
            if time.time() - refused_since > UNAVAILABLE_FOR:
                raise Failure(f"watcher {n}: GET {path} answered {status} for "
                              f"{UNAVAILABLE_FOR:.0f} s: {data[:300]!r}")
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
            status_line = await reader.readline()
            if not status_line:
                raise Failure(f"watcher {n}: the registry closed the connection before answering")
            status = int(status_line.split()[1])
            while (await reader.readline()) not in (b"\r\n", b""):
                pass
            if status != 200:
                raise Failure(f"watcher {n}: GET {path} answered {status}")
        buffer, seen, ready = b"", set(), False
        while not self.stop:
            size = int((await reader.readline()).strip(), 16)
            if size == 0:
                raise Failure(f"watcher {n}: the registry ended its watch")
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
                # An event holds only what changed: look up the changes it names (scanning every
                # change sent so far per event would make this client, not the registry, the
                # limit at thousands of events a second).
                for named in CHANGE_ID.findall(event):
                    change = int(named)
                    if change in seen or change not in self.sent:
                        continue
                    changed, at = self.sent[change]
                    if service is None or changed == service:
                        seen.add(change)
                        self.lags.append(now - at)

    async def changes(self, ports):
        https = [Http(port) for port in ports]
        made = 0
        started = time.time()
        while time.time() - started < SECONDS:
            due = started + made / self.rate
            await asyncio.sleep(max(0.0, due - time.time()))
            service = self.service(random.randrange(self.services))
            self.sent[made] = (service, time.time())
            await self.register(https[made % len(https)], service, f"chg{made}")
            made += 1
        # The window is the asked time (the last change is sent before it ends).
        return made, max(time.time() - started, made / self.rate)

    async def run(self, registries, etcd=None):
        """Fills, opens the watchers, makes the changes; every phase in bounded time, and every
        process the row depends on watched: whatever goes wrong ends the row with why."""
        ports = [port for port, _ in registries]
        processes = [process for _, process in registries] + ([etcd] if etcd else [])
        phase = {"now": "registering the instances"}

        async def guard():
            while True:
                for process in processes:
                    gone = process.exited()
                    if gone:
                        raise Failure(f"while {phase['now']}: {gone}")
                await asyncio.sleep(0.2)

        async def bounded(what, work, seconds):
            phase["now"] = what
            try:
                return await asyncio.wait_for(work, seconds)
            except asyncio.TimeoutError:
                raise Failure(f"{what}: not done after {seconds:.0f} s{self.progress()}") from None

        watching = asyncio.create_task(guard())
        tasks = []
        try:
            return await self.measure(ports, processes, bounded, watching, tasks)
        finally:
            watching.cancel()
            self.stop = True
            for task in tasks:
                task.cancel()
            await asyncio.gather(watching, *tasks, return_exceptions=True)

    def progress(self):
        return (f" ({self.registered:,} of {self.instances:,} instances registered, "
                f"{self.ready:,} of {self.watchers:,} watchers had their first answer, "
                f"{self.errors} answers were not 200)")

    async def measure(self, ports, processes, bounded, watching, tasks):
        async def first_of(work):
            """`work`, unless a watched process ends first (then its failure)."""
            work = asyncio.ensure_future(work)
            done, _ = await asyncio.wait({work, watching}, return_when=asyncio.FIRST_COMPLETED)
            if watching in done:
                work.cancel()
                watching.result()
            return work.result()

        # A release registry registers thousands of instances a second; 20 a second is far
        # below anything that works.
        await first_of(bounded("registering the instances", self.fill(ports),
                               60 + self.instances / 20))

        async def all_ready():
            while self.ready < self.watchers:
                failed = [t for t in tasks if t.done()]
                if failed:
                    error = failed[0].exception()
                    raise error if isinstance(error, Failure) else Failure(
                        f"a watcher failed: {error!r}")
                await asyncio.sleep(0.05)

        tasks.extend(asyncio.create_task(self.watcher(ports[n % len(ports)], n))
                     for n in range(self.watchers))
        await first_of(bounded("opening the watchers (each waits for its first answer)",
                               all_ready(), 60 + self.watchers / 10))
        await asyncio.sleep(0.5)  # every watcher blocked
        registry_pids = [process.pid for process in processes[:len(ports)]]
        etcd_pid = processes[len(ports)].pid if len(processes) > len(ports) else None

        def sample(read, pid):
            """`read` of a process's /proc entry, or the row's failure if it has gone."""
            try:
                return read(pid)
            except OSError:
                gone = [p.exited() for p in processes if p.pid == pid]
                raise Failure(f"while measuring: {gone[0] or f'pid {pid} is gone'}") from None

        cpu = sum(sample(cpu_seconds, pid) for pid in registry_pids)
        etcd_cpu = sample(cpu_seconds, etcd_pid) if etcd_pid else 0.0
        self.measuring = True
        made, elapsed = await first_of(bounded("making the changes", self.changes(ports),
                                               SECONDS * 3 + 30))
        await asyncio.sleep(0.5)  # the last change's answers
        self.measuring = False
        failed = [t for t in tasks if t.done() and not t.cancelled() and t.exception()]
        if failed:
            raise Failure(f"a watcher failed while the changes were made: "
                          f"{failed[0].exception()!r}")
        cpu = sum(sample(cpu_seconds, pid) for pid in registry_pids) - cpu
        etcd_cpu = (sample(cpu_seconds, etcd_pid) - etcd_cpu) if etcd_pid else None
        whole = self.kind in ("catalog", "deltas")
        watchers_per_change = self.watchers if whole else self.watchers / self.services
        # The (change, watcher) pairs that should be seen: a change to a service with one
        # watcher more than the average (watchers not a multiple of services) expects one more.
        of_service = {}
        for n in range(self.watchers):
            of_service[self.service(n % self.services)] = (
                of_service.get(self.service(n % self.services), 0) + 1)
        expected = sum(self.watchers if whole else of_service.get(service, 0)
                       for service, _ in self.sent.values())
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
            "rss": [sample(rss_mib, pid) for pid in registry_pids],
            "etcd_rss": sample(rss_mib, etcd_pid) if etcd_pid else None,
            "errors": self.errors,
        }


def wait_port(port, process):
    deadline = time.time() + 30
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            gone = process.exited()
            if gone:
                raise Failure(f"starting: {gone}") from None
            if time.time() > deadline:
                raise Failure(f"{process.what} did not listen on {port} within 30 s\n"
                              f"{log_tail(process.log)}") from None
            time.sleep(0.05)


def start_etcd(work):
    port, peer = free_port(), free_port()
    client, peer_url = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{peer}"
    data = tempfile.mkdtemp(prefix="etcd-", dir=work)
    path = os.path.join(data, "etcd.log")
    log = open(path, "ab")
    proc = subprocess.Popen(
        ["etcd", "--name=bench", f"--data-dir={data}", f"--listen-client-urls={client}",
         f"--advertise-client-urls={client}", f"--listen-peer-urls={peer_url}",
         f"--initial-advertise-peer-urls={peer_url}", f"--initial-cluster=bench={peer_url}"],
        stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    etcd = Process("etcd", proc, path)
    try:
        wait_port(port, etcd)
        time.sleep(1.0)  # a leader
    except BaseException:
        etcd.stop()
        raise
    return etcd, client


def start_registry(work, n, store):
    port = free_port()
    env = dict(os.environ)
    env.update({
        "PORT": str(port), "STRATUS_DATA_DIR": work, "STRATUS_LOG": "warn",
        "STRATUS_REGISTRY_WARMUP": "0s", "STRATUS_MTLS": "off",
        "STRATUS_REGISTRY_STORE": store,
    })
    path = os.path.join(work, f"registry-{n}.log")
    log = open(path, "ab")
    proc = subprocess.Popen([STRATUS, "serve", "registry"], env=env, stdout=log, stderr=log,
                            stdin=subprocess.DEVNULL)
    return port, Process(f"registry {n}", proc, path)


def run_row(spec, work):
    """One row in a directory of its own (its logs stay there); every process it started is
    stopped, by pid, however it ends."""
    work = tempfile.mkdtemp(prefix=spec.replace(":", "-") + "-", dir=work)
    started = []
    try:
        etcd, store = None, "memory"
        if STORE == "etcd":
            etcd, store = start_etcd(work)
            started.append(etcd)
        registries = []
        for n in range(REGISTRIES):
            port, process = start_registry(work, n, store)
            started.append(process)
            registries.append((port, process))
        for port, process in registries:
            wait_port(port, process)
        row = Row(spec)
        result = asyncio.run(row.run(registries, etcd))
        return row, result
    finally:
        for process in reversed(started):
            process.stop()


def main():
    if REGISTRIES < 1 or (REGISTRIES > 1 and STORE != "etcd"):
        raise SystemExit("REGISTRIES above 1 needs STORE=etcd (memory registries share nothing)")
    # A TERM (a timeout, a ^C in a pipeline) still stops every process a row started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    work = tempfile.mkdtemp(prefix="stratus-registry-scale-")
    print(f"binary: {STRATUS}; store: {STORE}; registries: {REGISTRIES}; {SECONDS:.0f} s a row; "
          f"logs in {work}; load average before: {os.getloadavg()[0]:.2f}")
    print()
    print("| watch | instances | watchers | changes/s asked (made) | registry CPU | CPU per change "
          "| sent per change | wake-ups per change (ideal) | seen | lag p50 | lag p99 | registry RSS |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    failures, broken = [], []
    for spec in ROWS:
        try:
            row, r = run_row(spec, work)
        except Exception as error:  # noqa: BLE001 (any failure ends the row, loudly, not the run)
            failure = error if isinstance(error, Failure) else Failure(
                f"the bench itself broke: {error!r}\n{traceback.format_exc()}")
            print(f"| {spec} | FAILED: {str(failure).splitlines()[0]} |", flush=True)
            print(f"registry-scale: row {spec} FAILED: {failure}", file=sys.stderr, flush=True)
            broken.append(spec)
            continue
        kind = KINDS[row.kind]
        etcd = "" if r["etcd_cpu"] is None else f" (+{r['etcd_cpu']:.0f}% etcd)"
        rss = " / ".join(f"{m:.0f}" for m in r["rss"]) + " MiB"
        if r["etcd_rss"] is not None:
            rss += f" (+{r['etcd_rss']:.0f} MiB etcd)"
        print(f"| {kind} | {row.instances:,} | {row.watchers:,} | {row.rate:g} ({r['made']:.1f}) "
              f"| {r['cpu']:.0f}%{etcd} | {r['cpu_per_change_ms']:.1f} ms "
              f"| {r['sent_per_change_mib']:.2f} MiB | {r['wakeups']:.0f} ({r['ideal']:g}) "
              f"| {100 * r['seen']:.0f}% | {r['p50']:.0f} ms | {r['p99']:.0f} ms "
              f"| {rss} |", flush=True)
        if r["errors"]:
            failures.append(f"{kind}, {row.instances:,} instances: {r['errors']} answers were "
                            "not 200 (the registry could not read its store in time)")
        if r["seen"] < 1:
            # Lag percentiles over the pairs seen say nothing about those never seen.
            print(f"registry-scale: row {spec} FAILED: only {100 * r['seen']:.1f}% of the "
                  "(change, watcher) pairs were seen", file=sys.stderr, flush=True)
            broken.append(spec)
    print()
    for failure in failures:
        print(f"- {failure}")
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    if broken:
        print(f"registry-scale: {len(broken)} of {len(ROWS)} rows FAILED: {' '.join(broken)} "
              "(reasons above)", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
