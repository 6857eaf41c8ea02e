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

- it joins the mesh (README "Any language joins the mesh") with mutual TLS from the standard
  library's `ssl`: with its join credential (STRATUS_JOIN_TOKEN) it asks the registry's
  authority for its first certificate (`POST /v1/identity/certificates`, body `{}`: the key is
  made there), trusting only the roots in STRATUS_TRUST_BUNDLE; it serves HTTPS with that
  certificate, checks every caller's certificate against the roots and its SPIFFE ID against
  STRATUS_ALLOWED_CALLERS, reaches the registry, the sink and auth over mutual TLS (checking
  each one's SPIFFE ID), renews at half-life with the certificate itself and follows the trust
  bundle. STRATUS_MTLS=off (development only) turns all of it off.

GET /api/hello answers {"message", "service", "instance", "version", "trace_id"}; errors are
application/problem+json, like every Stratus service.
"""

import base64
import http.client
import http.server
import json
import os
import queue
import random
import shutil
import signal
import socketserver
import ssl
import sys
import tempfile
import threading
import time
import urllib.parse
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
# The mesh: `off`, or mutual TLS on every internal hop (`required`; `optional` is served as
# required here: this service speaks TLS only).
MTLS = os.environ.get("STRATUS_MTLS", "required").strip().lower() != "off"
TRUST_DOMAIN = os.environ.get("STRATUS_TRUST_DOMAIN", "stratus.local")
TRUST_BUNDLE = os.environ.get("STRATUS_TRUST_BUNDLE") or os.path.join(
    os.environ.get("STRATUS_DATA_DIR", "./.stratus"), "identity", "bundle.pem"
)
ALLOWED_CALLERS = [
    name.strip()
    for name in os.environ.get("STRATUS_ALLOWED_CALLERS", "gateway").split(",")
    if name.strip()
]


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


def call(method, url, body=None, headers=None, timeout=2.0, service=None):
    """An HTTP call to an internal `service` (`registry`, `events`, `auth`); returns (status,
    parsed JSON or None). In the mesh it goes over mutual TLS with this instance's certificate,
    and only to a server whose certificate names `service`. Network errors raise OSError."""
    data = None
    headers = dict(headers or {})
    if isinstance(body, (dict, list)):
        data = json.dumps(body).encode()
        headers["content-type"] = "application/json"
    elif isinstance(body, str):
        data = body.encode()
        headers["content-type"] = "application/x-www-form-urlencoded"
    parts = urllib.parse.urlsplit(url)
    target = parts.path + ("?" + parts.query if parts.query else "")
    if IDENTITY:
        connection = http.client.HTTPSConnection(
            parts.hostname, parts.port or 443, timeout=timeout, context=IDENTITY.client_context()
        )
    else:
        connection = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout)
    try:
        connection.connect()
        if IDENTITY and service:
            # Before anything is sent: the server must be the service we meant to reach.
            found = spiffe_id(connection.sock.getpeercert())
            if found != service_id(service):
                raise OSError("%s is %s, not %s" % (url, found, service_id(service)))
        connection.request(method, target or "/", body=data, headers=headers)
        response = connection.getresponse()
        status, raw = response.status, response.read()
    except http.client.HTTPException as error:
        raise OSError("%s: %r" % (url, error))
    finally:
        connection.close()
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, None


def internal(url):
    """An internal URL as it is reached: https in the mesh (configuration keeps http://)."""
    if IDENTITY and url.startswith("http://"):
        return "https://" + url[len("http://") :]
    return url


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
            status, _ = call("POST", internal(EVENTS) + "/v1/events", batch, service="events")
            if status >= 300:
                log("warn", "the event sink refused a batch", status=status)
        except OSError:
            pass

    def flush(self, wait=1.0):
        deadline = time.monotonic() + wait
        while not self.queue.empty() and time.monotonic() < deadline:
            time.sleep(0.05)


REPORTER = Reporter() if REPORT_EVENTS else None


# --- the mesh: certificate, renewal, callers ------------------------------------------------------


def service_id(name):
    return "spiffe://%s/service/%s" % (TRUST_DOMAIN, name)


def spiffe_id(certificate):
    """The SPIFFE ID (URI SAN) of a verified peer certificate, or None (no certificate)."""
    for kind, value in (certificate or {}).get("subjectAltName", ()):
        if kind == "URI" and value.startswith("spiffe://"):
            return value
    return None


def may_call(caller):
    """Intentions: the services STRATUS_ALLOWED_CALLERS names (`*`: any), this service's own
    instances, and operators."""
    if caller is None or not caller.startswith("spiffe://%s/" % TRUST_DOMAIN):
        return False
    if caller == service_id(SERVICE) or caller.startswith("spiffe://%s/operator/" % TRUST_DOMAIN):
        return True
    return "*" in ALLOWED_CALLERS or any(caller == service_id(name) for name in ALLOWED_CALLERS)


class Refused(OSError):
    """The registry will not certify this credential (or named someone else)."""


class Identity:
    """This instance's certificate from the registry's authority, and the TLS contexts made with
    it, renewed at half-life.

    `ssl` loads certificates and keys from files only, so they are written to a folder of this
    process's own (0700, the key 0600), removed at exit. Each renewal or new bundle builds fresh
    contexts, swapped in whole: new connections use them; open ones keep what they were made
    with (TLS has no other way). A fresh context, not load_cert_chain on the old one, so that a
    root the authority retired leaves the trusted set too."""

    def __init__(self, join_token):
        self.join_token = join_token
        self.folder = tempfile.mkdtemp(prefix="stratus-%s-" % SERVICE)
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        with open(TRUST_BUNDLE) as f:
            self.bundle = f.read()
        if "BEGIN CERTIFICATE" not in self.bundle:
            raise SystemExit("no trust bundle in %s (STRATUS_TRUST_BUNDLE)" % TRUST_BUNDLE)
        self.server = self.client = None
        self.not_after = 0.0
        # Until the first certificate: a client that trusts the roots and shows nothing.
        self.client = self.make_client(None)

    def server_context(self):
        with self.lock:
            return self.server

    def client_context(self):
        with self.lock:
            return self.client

    def make_client(self, chain):
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.minimum_version = ssl.TLSVersion.TLSv1_3
        # Certificates name SPIFFE IDs, not host names: `call` checks the ID after the handshake.
        context.check_hostname = False
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cadata=self.bundle)
        if chain:
            context.load_cert_chain(*chain)
        return context

    def make_server(self, chain):
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_3
        context.load_cert_chain(*chain)
        context.load_verify_locations(cadata=self.bundle)
        # Asked for, checked against the roots when sent, but not demanded: /healthz and /readyz
        # answer an orchestrator's probe, which has none; every other path refuses such a
        # caller with a 401 that can say why (as every Stratus service does).
        context.verify_mode = ssl.CERT_OPTIONAL
        context.set_alpn_protocols(["http/1.1"])
        return context

    def obtain(self):
        """A certificate: renewed with the current one while it is valid, else (the first time,
        or after an outage longer than its life) with the join credential."""
        renewing = self.not_after - time.time() > 2
        headers = {} if renewing else {"authorization": "Bearer " + self.join_token}
        status, answer = call(
            "POST", internal(REGISTRY) + "/v1/identity/certificates", {}, headers,
            timeout=5.0, service="registry",
        )
        if status in (400, 401, 403, 422):
            detail = (answer or {}).get("detail", "")
            raise Refused("the registry refused a certificate: %s %s" % (status, detail))
        if status != 200 or not answer:
            raise OSError("the registry answered %s" % status)
        if answer.get("spiffe_id") != service_id(SERVICE):
            raise Refused("the certificate names %s" % answer.get("spiffe_id"))
        self.install(answer)
        log("info", "certificate", spiffe_id=answer["spiffe_id"], renewed=renewing,
            not_after=answer["not_after"])

    def install(self, answer):
        # A new file name each time: a context reading the files never sees half of each.
        stamp = "%d-%x" % (time.time(), random.getrandbits(32))
        cert = os.path.join(self.folder, "cert-%s.pem" % stamp)
        key = os.path.join(self.folder, "key-%s.pem" % stamp)
        descriptor = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as f:
            f.write(answer["private_key"])
        with open(cert, "w") as f:
            f.write(answer["certificate"])
        self.bundle = answer.get("trust_bundle") or self.bundle
        try:
            server, client = self.make_server((cert, key)), self.make_client((cert, key))
        finally:
            os.remove(key)  # loaded: the contexts hold it now
            os.remove(cert)
        with self.lock:
            self.server, self.client = server, client
            self.chain_answer = answer
            self.not_after = float(answer["not_after"])

    def refresh_bundle(self):
        status, text = self.get_bundle()
        if status == 200 and text and "BEGIN CERTIFICATE" in text and text != self.bundle:
            self.bundle = text
            self.install(self.chain_answer)  # the same certificate, the new roots
            log("info", "the trust bundle changed")

    def get_bundle(self):
        context = self.client_context()
        parts = urllib.parse.urlsplit(internal(REGISTRY))
        connection = http.client.HTTPSConnection(
            parts.hostname, parts.port or 443, timeout=5.0, context=context
        )
        try:
            connection.connect()
            if spiffe_id(connection.sock.getpeercert()) != service_id("registry"):
                raise OSError("the registry's certificate names someone else")
            connection.request("GET", "/v1/identity/bundle")
            response = connection.getresponse()
            return response.status, response.read().decode()
        except http.client.HTTPException as error:
            raise OSError(repr(error))
        finally:
            connection.close()

    def keep_fresh(self):
        """Renews at half the certificate's remaining life (retrying every few seconds when
        the registry is away) and fetches the bundle every minute."""
        renew_at = time.time() + (self.not_after - time.time()) / 2
        next_bundle = time.time() + 60
        while not self.stopped.wait(1.0):
            now = time.time()
            if now >= renew_at:
                try:
                    self.obtain()
                    renew_at = time.time() + (self.not_after - time.time()) / 2
                except (OSError, ValueError, KeyError) as error:
                    log("warn", "renewing the certificate", error=str(error))
                    renew_at = now + 3
            if now >= next_bundle:
                try:
                    self.refresh_bundle()
                    next_bundle = now + 60
                except (OSError, ValueError, KeyError) as error:
                    log("warn", "fetching the trust bundle", error=str(error))
                    next_bundle = now + 10

    def start(self, wait=60.0):
        """The first certificate, waiting up to `wait` seconds for the registry."""
        if not self.join_token:
            raise SystemExit(
                "STRATUS_JOIN_TOKEN is not set: `stratus identity join-credential %s` prints "
                "this service's (or STRATUS_MTLS=off, for development only)" % SERVICE
            )
        deadline = time.monotonic() + wait
        while True:
            try:
                self.obtain()
                break
            except Refused as error:  # waiting will not change a bad credential
                raise SystemExit("joining the mesh: %s" % error)
            except OSError as error:  # the registry not up yet
                if time.monotonic() > deadline:
                    raise SystemExit("joining the mesh: %s" % error)
                time.sleep(0.5)
        threading.Thread(target=self.keep_fresh, name="identity", daemon=True).start()

    def close(self):
        self.stopped.set()
        shutil.rmtree(self.folder, ignore_errors=True)


IDENTITY = None  # set in main() when the mesh is on


# --- registration --------------------------------------------------------------------------------


class Registration:
    """Register, heartbeat three times per TTL, register again when forgotten, deregister."""

    def __init__(self, port):
        self.port = port
        self.url = "%s/v1/services/%s/instances/%s" % (
            internal(REGISTRY),
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
        status, answer = call("PUT", self.url, body, service="registry")
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
                    status, _ = call("PUT", self.url + "/heartbeat", service="registry")
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
            call("DELETE", self.url, timeout=1.0, service="registry")
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
    status, answer = call(
        "GET", internal(REGISTRY) + "/v1/services/auth", timeout=1.0, service="registry"
    )
    instances = [
        i for i in (answer or {}).get("instances", []) if i.get("health") != "critical"
    ]
    if status != 200 or not instances:
        raise Unavailable("no instance of auth is available")
    instance = random.choice(instances)
    address = instance["address"]
    if ":" in address and not address.startswith("["):
        address = "[%s]" % address
    return internal("http://%s:%d" % (address, instance["port"]))


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
            service="auth",
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

    def caller(self):
        """The caller's SPIFFE ID, from the certificate it showed (checked against the roots
        in the handshake), or None."""
        if not IDENTITY:
            return None
        return spiffe_id(self.connection.getpeercert())

    def traced(self, name, handler):
        """Runs `handler` as a span of the caller's trace and reports it to the sink. In the
        mesh, only a caller whose identity may call this service gets that far."""
        started = datetime.now(timezone.utc)
        clock = time.monotonic()
        trace_id, parent = trace_context(self.headers.get("traceparent"))
        span_id = new_id(8)
        traceparent = "00-%s-%s-01" % (trace_id, span_id)
        peer = self.caller()
        if IDENTITY and peer is None:
            handler = lambda *_: self.problem(  # noqa: E731
                401, "Unauthorized", "a client certificate from this system's authority is required"
            )
        elif IDENTITY and not may_call(peer):
            handler = lambda *_: self.problem(  # noqa: E731
                403, "Forbidden", "no intention lets %s call %s (STRATUS_ALLOWED_CALLERS)"
                % (peer, SERVICE),
            )
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
            if peer:
                record["peer"] = peer  # the caller's identity: the dashboard draws the edge
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

    def process_request_thread(self, request, client_address):
        """In the mesh, the TLS handshake runs here, in the connection's own thread, never in
        the accept loop (a client that stalls it would stall every other). A plaintext
        request, or a certificate the roots do not vouch for, fails it: the connection is
        closed without an answer."""
        if IDENTITY:
            try:
                request.settimeout(10)
                request = IDENTITY.server_context().wrap_socket(request, server_side=True)
                request.settimeout(None)
            except (ssl.SSLError, OSError):
                self.shutdown_request(request)
                return
        super().process_request_thread(request, client_address)


def main():
    global IDENTITY
    if MTLS:
        join_token = os.environ.pop("STRATUS_JOIN_TOKEN", "")  # no child process inherits it
        try:
            IDENTITY = Identity(join_token)
        except OSError as error:
            raise SystemExit("the trust bundle %s: %s (STRATUS_TRUST_BUNDLE)" % (TRUST_BUNDLE, error))
        IDENTITY.start()
    else:
        log("warn", "STRATUS_MTLS=off: plaintext, and nobody's identity is checked "
            "(development only)")
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
    if IDENTITY:
        IDENTITY.close()
    log("info", "stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
