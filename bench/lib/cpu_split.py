#!/usr/bin/env python3
"""CPU tick counters to tell the benchmark's own CPU use from everyone else's.

usage: cpu_split.py ROOT_PID
prints: "TOTAL BUSY OWN" in clock ticks since boot —
  TOTAL: all CPU time of the machine (every /proc/stat field but guest),
  BUSY:  user + nice + system + steal (interrupt time left out: the benchmark's own network
         traffic is handled there and would look like someone else's work),
  OWN:   utime + stime + cutime + cstime of ROOT_PID and every live descendant (children that
         ended and were waited for are in their parent's cutime/cstime).
Two samples give the share of the machine other processes used in between:
  (dBUSY - dOWN) / dTOTAL.
"""
import sys


def children(pid):
    out = []
    try:
        import os
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/children") as f:
                    out.extend(int(x) for x in f.read().split())
            except OSError:
                pass
    except OSError:
        pass
    return out


def ticks(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            rest = f.read().rsplit(")", 1)[1].split()
        return sum(int(x) for x in rest[11:15])  # utime stime cutime cstime
    except (OSError, IndexError, ValueError):
        return 0


def main():
    root = int(sys.argv[1])
    seen, todo, own = set(), [root], 0
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        own += ticks(p)
        todo.extend(children(p))
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    total = sum(v)
    busy = v[0] + v[1] + v[2] + v[7]
    print(total, busy, own)


if __name__ == "__main__":
    main()
