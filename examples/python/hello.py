#!/usr/bin/env python3
"""hello: a Stratus service in Python, with the standard library only.

It shows what any program needs to be a Stratus component, in whatever language:

- it binds $PORT (0: any free port) and answers GET /healthz (alive) and GET /readyz (ready for
  traffic; fails once it is shutting down);
- it registers itself with the registry (STRATUS_REGISTRY_URL) under a lease (STRATUS_TTL), keeps
  the lease alive with heartbeats three times per TTL, registers again if the registry forgot it,
  and deregisters on SIGTERM before it stops (so gateways stop sending it requests first);
- it checks the caller's bearer token itself (zero trust: the gateway checked it too) through
  auth's introspection endpoint (RFC 7662), found through the registry, with the service-account
  credentials STRATUS_CLIENT_ID / STRATUS_CLIENT_SECRET (auth signs with EdDSA, which Python's
  standard library cannot verify, so the JWKS is no use here). Answers are cached for a few
  seconds (never past the token's expiry), so a burst of requests costs one introspection;
- it takes part in tracing: it continues the caller's W3C `traceparent`, passes its own span on
  to auth, and reports one record per request to the event sink (STRATUS_EVENTS_URL,
  `POST /v1/events`), batched by a background thread so the sink never slows a request.

GET /api/hello answers {"message", "service", "instance", "version", "trace_id"}; errors are
application/problem+json, like every Stratus service.
"""

import base64
import http.server
import json
import os
import queue
import random
import signal
import socketserver
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import datetime, timezone

SERVICE = os.environ.get("STRATUS_SERVICE_NAME", "hello")
INSTANCE = os.environ.get("STRATUS_INSTANCE_ID") or "%s-%d-%x" % (
    SERVICE,
    os.getpid(),
    random.getrandbits(32),
)
VERSION = os.environ.get("STRATUS_VERSION", "0.1.0")
REGISTRY = os.environ.get("STRATUS_REGISTRY_URL", "http://127.0.0.1:8500").rstrip("/")
EVENTS = os.environ.get("STRATUS_EVENTS_URL", "http://127.0.0.1:8090").rstrip("/")
REPORT_EVENTS = os.environ.get("STRATUS_EVENTS", "on").lower() not in ("off", "false", "0")
BIND = os.environ.get("STRATUS_BIND", "127.0.0.1")
ADVERTISE = os.environ.get("STRATUS_ADVERTISE_ADDRESS") or BIND
CLIENT_ID = os.environ.get("STRATUS_CLIENT_ID", "")
CLIENT_SECRET = os.environ.get("STRATUS_CLIENT_SECRET", "")


def seconds(text, default):
    """A Stratus duration (`3s`, `300ms`, `1m`) in seconds."""
    text = (text or default).strip()
    for suffix, scale in (("ms", 0.001), ("s", 1.0), ("m", 60.0), ("h", 3600.0)):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * scale
    return float(text)


TTL = seconds(os.environ.get("STRATUS_TTL"), "3s")
DRAIN = seconds(os.environ.get("STRATUS_DRAIN"), "300ms")
CACHE_FOR = 5.0  # seconds an introspection answer is trusted


def log(level, message, **fields):
    """One JSON line per event on stdout, like the Rust services' logs."""
    record = {
        "timestamp": datetime.now(timezone.utc).isoformat(),
        "level": level,
        "message": message,
        "service": SERVICE,
        "instance": INSTANCE,
    }
    record.update(fields)
    print(json.dumps(record), flush=True)


def call(method, url, body=None, headers=None, timeout=2.0):
    """An HTTP call; returns (status, parsed JSON or None). Network errors raise OSError."""
    data = None
    headers = dict(headers or {})
    if isinstance(body, (dict, list)):
        data = json.dumps(body).encode()
        headers["content-type"] = "application/json"
    elif isinstance(body, str):
        data = body.encode()
        headers["content-type"] = "application/x-www-form-urlencoded"
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, raw = error.code, error.read()
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, None


# --- tracing -------------------------------------------------------------------------------------


def new_id(nbytes):
    while True:
        value = os.urandom(nbytes).hex()
        if value.strip("0"):
            return value


def trace_context(header):
    """(trace id, parent span id or None) from a `traceparent` header, or a new trace."""
    parts = (header or "").strip().split("-")
    if (
        len(parts) == 4
        and len(parts[1]) == 32
        and len(parts[2]) == 16
        and all(c in "0123456789abcdef" for c in parts[1] + parts[2])
        and parts[1].strip("0")
        and parts[2].strip("0")
    ):
        return parts[1], parts[2]
    return new_id(16), None


class Reporter:
    """Event records for the sink: a bounded queue, sent in batches every 200 ms by one thread.

    A full queue drops records, and a batch the sink does not take is dropped too: reporting
    never blocks or fails a request."""

    def __init__(self):
        self.queue = queue.Queue(maxsize=10_000)
        threading.Thread(target=self.run, name="events", daemon=True).start()

    def report(self, record):
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            pass

    def run(self):
        while True:
            batch = [self.queue.get()]
            deadline = time.monotonic() + 0.2
            while len(batch) < 1000:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    batch.append(self.queue.get(timeout=remaining))
                except queue.Empty:
                    break
            self.send(batch)

    def send(self, batch):
        try:
            status, _ = call("POST", EVENTS + "/v1/events", batch)
            if status >= 300:
                log("warn", "the event sink refused a batch", status=status)
        except OSError:
            pass

    def flush(self, wait=1.0):
        deadline = time.monotonic() + wait
        while not self.queue.empty() and time.monotonic() < deadline:
            time.sleep(0.05)


REPORTER = Reporter() if REPORT_EVENTS else None


# --- registration --------------------------------------------------------------------------------


class Registration:
    """Register, heartbeat three times per TTL, register again when forgotten, deregister."""

    def __init__(self, port):
        self.port = port
        self.url = "%s/v1/services/%s/instances/%s" % (
            REGISTRY,
            urllib.parse.quote(SERVICE, safe=""),
            urllib.parse.quote(INSTANCE, safe=""),
        )
        self.stopped = threading.Event()
        self.registered = False
        self.thread = threading.Thread(target=self.run, name="registration", daemon=True)
        self.thread.start()

    def register(self):
        body = {
            "address": ADVERTISE,
            "port": self.port,
            "version": VERSION,
            "ttl_seconds": TTL,
            "metadata": {"language": "python"},
            "check": {"http": "/healthz"},
            "interval": "500ms",
            "timeout": "300ms",
        }
        status, answer = call("PUT", self.url, body)
        if status >= 300:
            raise OSError("registering: %s %s" % (status, answer))

    def run(self):
        while not self.stopped.is_set():
            try:
                if not self.registered:
                    self.register()
                    self.registered = True
                    log("info", "registered", registry=REGISTRY, port=self.port, version=VERSION)
                else:
                    status, _ = call("PUT", self.url + "/heartbeat")
                    if status == 404:
                        log("warn", "the registry forgot this instance; registering again")
                        self.registered = False
                        continue
            except OSError as error:
                log("warn", "registry unreachable", error=str(error))
                self.registered = False
            self.stopped.wait(TTL / 3)

    def deregister(self):
        self.stopped.set()
        self.thread.join(timeout=2)
        try:
            call("DELETE", self.url, timeout=1.0)
            log("info", "deregistered")
        except OSError as error:
            log("warn", "could not deregister; the lease will expire", error=str(error))


# --- tokens --------------------------------------------------------------------------------------


class Unavailable(Exception):
    pass


_cache = {}
_cache_lock = threading.Lock()


def auth_url():
    """The base URL of a live auth instance, from the registry."""
    status, answer = call("GET", REGISTRY + "/v1/services/auth", timeout=1.0)
    instances = [
        i for i in (answer or {}).get("instances", []) if i.get("health") != "critical"
    ]
    if status != 200 or not instances:
        raise Unavailable("no instance of auth is available")
    instance = random.choice(instances)
    address = instance["address"]
    if ":" in address and not address.startswith("["):
        address = "[%s]" % address
    return "http://%s:%d" % (address, instance["port"])


def introspect(token, traceparent):
    """The token's claims if auth says it is active, else None (cached for a few seconds)."""
    now = time.time()
    with _cache_lock:
        cached = _cache.get(token)
        if cached and cached[0] > now:
            return cached[1]
    if not CLIENT_ID or not CLIENT_SECRET:
        raise Unavailable(
            "token checks are not configured: set STRATUS_CLIENT_ID and STRATUS_CLIENT_SECRET "
            "to a service account (POST /auth/clients)"
        )
    basic = base64.b64encode(("%s:%s" % (CLIENT_ID, CLIENT_SECRET)).encode()).decode()
    try:
        status, answer = call(
            "POST",
            auth_url() + "/auth/introspect",
            urllib.parse.urlencode({"token": token}),
            {"authorization": "Basic " + basic, "traceparent": traceparent},
        )
    except OSError as error:
        raise Unavailable("auth did not answer: %s" % error)
    if status != 200:
        raise Unavailable(
            "auth refused the introspection (%s); check the client credentials" % status
        )
    claims = answer if answer and answer.get("active") is True else None
    expires = min(now + CACHE_FOR, float((claims or {}).get("exp", now + CACHE_FOR)))
    with _cache_lock:
        if len(_cache) > 10_000:
            _cache.clear()
        _cache[token] = (expires, claims)
    return claims


# --- HTTP ----------------------------------------------------------------------------------------

READY = threading.Event()


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "stratus-hello/" + VERSION

    def log_message(self, fmt, *args):  # quiet: one event record per request instead
        pass

    def send_json(self, status, body, content_type="application/json", extra=None):
        raw = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(raw)))
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(raw)
        return status

    def problem(self, status, title, detail, extra=None):
        body = {"type": "about:blank", "title": title, "status": status, "detail": detail}
        return self.send_json(status, body, "application/problem+json", extra)

    def do_HEAD(self):
        self.do_GET()

    def do_GET(self):
        path = self.path.split("?", 1)[0]
        if path == "/healthz":
            self.send_json(200, {"status": "ok"})
        elif path == "/readyz":
            if READY.is_set():
                self.send_json(200, {"status": "ready"})
            else:
                self.problem(503, "Service Unavailable", "shutting down")
        elif path == "/api/hello":
            self.traced("/api/hello", self.hello)
        else:
            self.traced(path, lambda *_: self.problem(404, "Not Found", "no such resource"))

    def do_POST(self):
        self.traced(self.path.split("?", 1)[0], self.not_allowed)

    do_PUT = do_DELETE = do_PATCH = do_POST

    def not_allowed(self, *_):
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(min(length, 1 << 20))
        return self.problem(405, "Method Not Allowed", "only GET", {"allow": "GET, HEAD"})

    def traced(self, name, handler):
        """Runs `handler` as a span of the caller's trace and reports it to the sink."""
        started = datetime.now(timezone.utc)
        clock = time.monotonic()
        trace_id, parent = trace_context(self.headers.get("traceparent"))
        span_id = new_id(8)
        traceparent = "00-%s-%s-01" % (trace_id, span_id)
        try:
            status = handler(trace_id, traceparent)
        except Exception as error:  # a bug must still answer, and be counted
            log("error", "request failed", error=repr(error))
            status = self.problem(500, "Internal Server Error", "the request failed")
        if REPORTER:
            record = {
                "trace_id": trace_id,
                "span_id": span_id,
                "service": SERVICE,
                "instance": INSTANCE,
                "kind": "server",
                "name": name,
                "method": self.command,
                "status": status,
                "ok": status < 500,
                "started_at": started.isoformat().replace("+00:00", "Z"),
                "duration_us": int((time.monotonic() - clock) * 1_000_000),
            }
            if parent:
                record["parent_span_id"] = parent
            REPORTER.report(record)

    def hello(self, trace_id, traceparent):
        header = self.headers.get("authorization") or ""
        scheme, _, token = header.partition(" ")
        unauthorized = {"www-authenticate": "Bearer"}
        if scheme.lower() != "bearer" or not token.strip():
            return self.problem(401, "Unauthorized", "a bearer token is required", unauthorized)
        if token.strip().count(".") != 2:  # not even shaped like a JWT: no need to ask auth
            return self.problem(401, "Unauthorized", "the token is not valid", unauthorized)
        try:
            claims = introspect(token.strip(), traceparent)
        except Unavailable as error:
            return self.problem(503, "Service Unavailable", str(error), {"retry-after": "1"})
        if claims is None:
            return self.problem(401, "Unauthorized", "the token is not valid", unauthorized)
        who = claims.get("email") or claims.get("sub") or "stranger"
        return self.send_json(
            200,
            {
                "message": "hello, %s" % who,
                "service": SERVICE,
                "instance": INSTANCE,
                "version": VERSION,
                "trace_id": trace_id,
            },
        )


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def main():
    server = Server((BIND, int(os.environ.get("PORT", "0"))), Handler)
    port = server.server_address[1]
    log("info", "listening", address="%s:%d" % (BIND, port))
    READY.set()
    registration = Registration(port)
    stopping = threading.Event()

    def stop(signum, _frame):
        if stopping.is_set():
            return
        stopping.set()
        # The shutdown order of every Stratus process: not ready, leave the registry, keep
        # serving while gateways notice, then stop.
        def shut_down():
            log("info", "stopping", signal=signum)
            READY.clear()
            registration.deregister()
            time.sleep(DRAIN)
            server.shutdown()

        threading.Thread(target=shut_down, name="shutdown").start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    server.serve_forever(poll_interval=0.2)
    server.server_close()
    if REPORTER:
        REPORTER.flush()
    log("info", "stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
