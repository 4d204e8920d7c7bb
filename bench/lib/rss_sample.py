#!/usr/bin/env python3
"""Sample the memory of a process tree while a load runs.

usage: rss_sample.py OUT.json DURATION_S PID [PID...]

Every 50 ms, for each given PID and all of its descendants (nginx workers),
reads VmRSS / RssAnon / RssFile from /proc/PID/status and records the peak of
the *sum* over the tree.  At the end it also records each process's VmHWM
(the kernel's own peak-RSS counter).  Bounded: stops after DURATION_S seconds
or when every sampled process has exited.
"""
import json
import sys
import time


def children(pid):
    out = []
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            out = [int(x) for x in f.read().split()]
    except OSError:
        pass
    return out


def tree(pids):
    seen, todo = [], list(pids)
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.append(p)
        todo.extend(children(p))
    return seen


def status(pid):
    d = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem"):
                    d[k] = int(v.split()[0])  # kB
    except OSError:
        return None
    return d


def main():
    out, dur, pids = sys.argv[1], float(sys.argv[2]), [int(p) for p in sys.argv[3:]]
    deadline = time.monotonic() + dur
    peak = {"VmRSS": 0, "RssAnon": 0, "RssFile": 0}
    first = None
    samples = 0
    last_tree = pids
    while time.monotonic() < deadline:
        t = tree(pids)
        sts = [s for s in (status(p) for p in t) if s]
        if not sts:
            break
        last_tree = t
        tot = {k: sum(s.get(k, 0) for s in sts) for k in peak}
        if first is None:
            first = dict(tot, nproc=len(sts))
        if tot["VmRSS"] > peak["VmRSS"]:
            peak = tot
        samples += 1
        time.sleep(0.05)
    hwm = {}
    for p in last_tree:
        s = status(p)
        if s:
            hwm[str(p)] = s.get("VmHWM", 0)
    res = {
        "pids": pids,
        "tree": last_tree,
        "samples": samples,
        "first_kb": first,
        "peak_sum_kb": peak,
        "vmhwm_kb": hwm,
        "vmhwm_sum_kb": sum(hwm.values()),
    }
    with open(out, "w") as f:
        json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
