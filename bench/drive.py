#!/usr/bin/env python3
"""Sends TOTAL requests for /SIZE over CONNECTIONS keep-alive connections and checks each is a 200
(bench/profile-gateway.sh and bench/gateway-scale.sh, under callgrind, where the client's own
speed does not matter and a plain socket client keeps the count exact).

    drive.py PORT TOTAL CONNECTIONS SIZE
"""
import socket
import sys
import threading

port, total, conns, size = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
req = f"GET /{size} HTTP/1.1\r\nHost: bench\r\n\r\n".encode()
bad = []


def worker(n):
    s = socket.create_connection(("127.0.0.1", port))
    f = s.makefile("rb")
    for _ in range(n):
        s.sendall(req)
        length = None
        status = f.readline()
        if b" 200 " not in status:
            bad.append(status)
        while True:
            line = f.readline()
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
            if line in (b"\r\n", b""):
                break
        f.read(length or 0)


threads = [threading.Thread(target=worker, args=(total // conns,)) for _ in range(conns)]
[t.start() for t in threads]
[t.join() for t in threads]
if bad:
    sys.exit(f"{len(bad)} responses were not 200, e.g. {bad[0]!r}")
