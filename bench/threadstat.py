#!/usr/bin/env python3
"""What the scheduler did to some processes while a command ran.

    bench/threadstat.py PID[,PID...] [PID...] -- wrk -t2 -c64 -d10s http://...

Runs the command, and prints its output, then one line per process (PIDs joined by commas
are counted as one, as nginx's master and workers are) from the kernel's per-thread
counters (/proc/PID/task/TID/schedstat and status), summed over the process's threads, and
one for the command itself (its CPU time and switches, from getrusage):

  cpu_ms      time on a CPU
  wait_ms     time runnable but waiting for a CPU (the run queue)
  slices      times it was put on a CPU
  wait/slice  mean wait before each of them, in microseconds
  vol         voluntary switches (it blocked: waiting for the network, a lock, a timer)
  invol       involuntary switches (the scheduler took the CPU away while it could still run)

A worker that is preempted often and waits long for its CPU again holds every request on
its connections for that long: at saturation this is a tail no proxy code shows.
"""

import os
import resource
import subprocess
import sys


def threads(pid):
    try:
        return os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return []


def counters(pid, tid):
    try:
        with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
            run_ns, wait_ns, slices = (int(x) for x in f.read().split())
        vol = invol = 0
        with open(f"/proc/{pid}/task/{tid}/status") as f:
            for line in f:
                if line.startswith("voluntary_ctxt_switches"):
                    vol = int(line.split()[1])
                elif line.startswith("nonvoluntary_ctxt_switches"):
                    invol = int(line.split()[1])
        return (run_ns, wait_ns, slices, vol, invol)
    except (FileNotFoundError, ProcessLookupError, ValueError):
        return None


def snapshot(pids):
    snap = {}
    for pid in pids:
        for tid in threads(pid):
            c = counters(pid, tid)
            if c is not None:
                snap[(pid, tid)] = c
    return snap


def main():
    if "--" not in sys.argv:
        sys.exit(__doc__)
    split = sys.argv.index("--")
    groups = [g.split(",") for g in sys.argv[1:split]]
    command = sys.argv[split + 1 :]
    every = [pid for group in groups for pid in group]
    before = snapshot(every)
    child = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(command)
    after = snapshot(every)
    ran = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(f"{'pids':<20} {'cpu_ms':>8} {'wait_ms':>8} {'slices':>8} {'wait/slice':>10} {'vol':>8} {'invol':>8}")
    for group in groups:
        total = [0, 0, 0, 0, 0]
        for key, now in after.items():
            if key[0] not in group:
                continue
            was = before.get(key, (0, 0, 0, 0, 0))
            for i in range(5):
                total[i] += now[i] - was[i]
        run_ns, wait_ns, slices, vol, invol = total
        per = wait_ns / slices / 1000 if slices else 0
        print(f"{','.join(group):<20} {run_ns / 1e6:8.0f} {wait_ns / 1e6:8.0f} {slices:8d} {per:10.1f} {vol:8d} {invol:8d}")
    cpu = (ran.ru_utime + ran.ru_stime - child.ru_utime - child.ru_stime) * 1000
    vol, invol = ran.ru_nvcsw - child.ru_nvcsw, ran.ru_nivcsw - child.ru_nivcsw
    print(f"{'(the command)':<20} {cpu:8.0f} {'-':>8} {'-':>8} {'-':>10} {vol:8d} {invol:8d}")
    sys.exit(done.returncode)


if __name__ == "__main__":
    main()
