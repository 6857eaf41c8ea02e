"""A shop's catalog traffic for bench/cache-mix.sh: reads of products chosen by a Zipf law, and
a share of price changes, through the gateway from THREADS keep-alive connections for DURATION
seconds. Prints one JSON line: reads, writes, errors, read latency p50/p99 (ms), requests/s.

usage: cache-mix.py GATEWAY_PORT IDS_FILE ADMIN_TOKEN DURATION THREADS WRITE_SHARE ZIPF_S
"""

import bisect
import http.client
import json
import random
import sys
import threading
import time

port, ids_file, token = int(sys.argv[1]), sys.argv[2], sys.argv[3]
duration, threads = float(sys.argv[4]), int(sys.argv[5])
write_share, zipf_s = float(sys.argv[6]), float(sys.argv[7])
ids = [line.strip() for line in open(ids_file) if line.strip()]

# Zipf over the products: the k-th most popular is read with weight 1 / k^s.
weights = [1.0 / (k ** zipf_s) for k in range(1, len(ids) + 1)]
total = sum(weights)
cdf, acc = [], 0.0
for w in weights:
    acc += w / total
    cdf.append(acc)


def pick(rng):
    return ids[min(bisect.bisect_left(cdf, rng.random()), len(ids) - 1)]


lock = threading.Lock()
reads, writes, errors, latencies = 0, 0, 0, []


def run(seed):
    global reads, writes, errors
    rng = random.Random(seed)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    mine_reads, mine_writes, mine_errors, mine_lat = 0, 0, 0, []
    deadline = time.time() + duration
    while time.time() < deadline:
        product = pick(rng)
        path = f"/api/catalog/products/{product}"
        try:
            started = time.perf_counter()
            if rng.random() < write_share:
                body = json.dumps({"name": "Tea", "price_cents": rng.randint(100, 900), "stock": 5})
                conn.request("PUT", path, body=body, headers={
                    "authorization": f"Bearer {token}", "content-type": "application/json"})
                response = conn.getresponse()
                response.read()
                mine_writes += 1
            else:
                conn.request("GET", path)
                response = conn.getresponse()
                response.read()
                mine_reads += 1
                mine_lat.append(time.perf_counter() - started)
            if response.status >= 400:
                mine_errors += 1
        except (OSError, http.client.HTTPException):
            mine_errors += 1
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    with lock:
        reads += mine_reads
        writes += mine_writes
        errors += mine_errors
        latencies.extend(mine_lat)


started = time.time()
workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
for w in workers:
    w.start()
for w in workers:
    w.join()
elapsed = time.time() - started
latencies.sort()


def pct(p):
    if not latencies:
        return 0.0
    return round(latencies[min(len(latencies) - 1, int(len(latencies) * p / 100))] * 1000, 2)


print(json.dumps({"reads": reads, "writes": writes, "errors": errors, "p50_ms": pct(50),
                  "p99_ms": pct(99), "rps": round((reads + writes) / elapsed, 1)}))
