#!/usr/bin/env python3
"""How busy is the machine, apart from the benchmark's own processes?

usage: busy.py INTERVAL_S PID [PID...]
prints: "FOREIGN_PCT OWN_PCT" — CPU busy % of the whole machine over the interval
(100 = all cores busy), split into processes outside the given PIDs' trees
(e.g. someone else's cargo build) and inside them (our servers still working
after a load ended).
"""
import os
import sys
import time


def tree(pids):
    seen, todo = set(), list(pids)
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        try:
            with open(f"/proc/{p}/task/{p}/children") as f:
                todo.extend(int(x) for x in f.read().split())
        except OSError:
            pass
    return seen


def proc_ticks(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            rest = f.read().rsplit(")", 1)[1].split()
        return int(rest[11]) + int(rest[12])  # utime + stime
    except (OSError, IndexError, ValueError):
        return 0


def cpu():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]
    return sum(v[:8]) - idle, sum(v[:8])


def main():
    interval = float(sys.argv[1])
    pids = tree([int(p) for p in sys.argv[2:]] + [os.getpid()])
    b0, t0 = cpu()
    o0 = {p: proc_ticks(p) for p in pids}
    time.sleep(interval)
    b1, t1 = cpu()
    own = sum(max(0, proc_ticks(p) - o0[p]) for p in pids)
    total = max(1, t1 - t0)
    busy = b1 - b0
    print("%d %d" % (max(0, 100 * (busy - own) // total), 100 * own // total))


if __name__ == "__main__":
    main()
