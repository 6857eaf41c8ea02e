-- wrk pacing for bench/sink-load.sh and bench/mtls.sh (wrk2 is not packaged here): each wrk thread sends at most
-- the rate given after `--` (requests a second), spread evenly. delay() is asked before every
-- request of the thread's connections; it answers how long that connection waits so that the
-- thread's requests follow a fixed schedule. A thread that falls behind catches up at most
-- 100 ms of its schedule, so a stall is not followed by a burst far above the rate.
local ffi = require("ffi")
ffi.cdef [[
  typedef struct { long tv_sec; long tv_nsec; } sink_load_timespec;
  int clock_gettime(int clock, sink_load_timespec *now);
]]
local now_buffer = ffi.new("sink_load_timespec")
local CLOCK_MONOTONIC = 1

local function now_ms()
  ffi.C.clock_gettime(CLOCK_MONOTONIC, now_buffer)
  return tonumber(now_buffer.tv_sec) * 1000 + tonumber(now_buffer.tv_nsec) / 1e6
end

local interval_ms, next_ms

function init(args)
  interval_ms = 1000 / tonumber(args[1] or "5000")
  next_ms = now_ms()
end

function delay()
  local now = now_ms()
  if next_ms < now - 100 then next_ms = now - 100 end
  next_ms = next_ms + interval_ms
  local wait = next_ms - now
  if wait < 1 then return 0 end -- wrk's delays are whole milliseconds
  return math.floor(wait)
end

-- One line for the scripts that read more than wrk's own percentiles: the latency at p50, p99
-- and p99.9 in microseconds, and the requests done.
function done(summary, latency, requests)
  io.write(string.format("paced: requests %d p50_us %d p99_us %d p999_us %d\n",
    summary.requests, latency:percentile(50), latency:percentile(99), latency:percentile(99.9)))
end
