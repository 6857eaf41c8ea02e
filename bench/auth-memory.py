#!/usr/bin/env python3
"""Resident memory of one auth process under a stream of logins (argon2id, 19 MiB each).

    bench/auth-memory.sh                         # release build, 2,000 logins, 16 at a time
    STRATUS_BIN=target/debug/stratus LOGINS=800 CONCURRENCY=32 bench/auth-memory.sh

Prints the RSS after start, after the first 100 logins, and at the end: a process whose memory
keeps climbing with the same load is holding freed blocks.
"""
import concurrent.futures
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def post(url, body):
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return response.status


def main():
    binary = sys.argv[1]
    logins = int(os.environ.get("LOGINS", "2000"))
    concurrency = int(os.environ.get("CONCURRENCY", "16"))
    port = free_port()
    data = tempfile.mkdtemp()
    env = dict(os.environ, PORT=str(port), STRATUS_DATA_DIR=data,
               STRATUS_REGISTRY_URL=f"http://127.0.0.1:{free_port()}",
               STRATUS_ADMIN_PASSWORD="admin-password-1", RUST_LOG="error")
    auth = subprocess.Popen([binary, "serve", "auth"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(f"{base}/healthz", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        user = {"email": "soak@example.com", "password": "correct horse battery"}
        post(f"{base}/auth/signup", user)
        started = rss_mib(auth.pid)
        after_100 = None
        failed = 0
        begin = time.time()
        with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
            futures = [pool.submit(post, f"{base}/auth/login", user) for _ in range(logins)]
            for done, future in enumerate(concurrent.futures.as_completed(futures), 1):
                try:
                    future.result()
                except Exception:
                    failed += 1
                if done == 100:
                    after_100 = rss_mib(auth.pid)
        elapsed = time.time() - begin
        end = rss_mib(auth.pid)
        print(f"binary {binary}")
        print(f"logins {logins} at {concurrency} at a time: {logins / elapsed:.1f}/s, {failed} failed")
        print(f"auth RSS: start {started:.1f} MiB, after 100 logins {after_100:.1f} MiB, "
              f"at the end {end:.1f} MiB")
    finally:
        auth.terminate()
        auth.wait()


if __name__ == "__main__":
    main()
