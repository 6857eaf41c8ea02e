-- wrk's own latency percentiles stop at p99; this adds p99.9 for bench/gateway.sh and the
-- other closed-loop benchmarks, without touching the request (no request() here, so wrk keeps
-- sending its one prepared request).
function done(summary, latency, requests)
  io.write(string.format("tail: requests %d p50_us %d p99_us %d p999_us %d\n",
    summary.requests, latency:percentile(50), latency:percentile(99), latency:percentile(99.9)))
end
