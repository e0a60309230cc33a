#!/usr/bin/env python3
"""Alternates several commands RUNS times each (the order turned every
round) and prints, per command, wall time and the CPU the process spent
(user + system from wait4's rusage), as medians and 10th percentiles.
Arguments are split on "|":

    bench/ab_cpu.py 500 "ctl-a|--version" "ctl-b|--version" "/bin/true"

CPU time moves less than wall time on a machine others are loading."""
import os
import statistics
import subprocess
import sys
import time


def once(argv):
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.exit(f"{argv} exited with {proc.returncode}")
    return wall, usage.ru_utime + usage.ru_stime


def q(xs, p):
    xs = sorted(xs)
    return xs[int(p * (len(xs) - 1))]


runs = int(sys.argv[1])
cmds = [c.split("|") for c in sys.argv[2:]]
walls = [[] for _ in cmds]
cpus = [[] for _ in cmds]
for i in range(runs):
    order = list(range(len(cmds)))
    if i % 2:
        order.reverse()
    for k in order:
        wall, cpu = once(cmds[k])
        walls[k].append(wall)
        cpus[k].append(cpu)
for k, cmd in enumerate(cmds):
    w, c = walls[k], cpus[k]
    print(f"{' '.join(cmd)}: wall median {statistics.median(w) * 1e3:.2f} ms p10 {q(w, 0.1) * 1e3:.2f}; "
          f"CPU median {statistics.median(c) * 1e3:.3f} ms p10 {q(c, 0.1) * 1e3:.3f}; n={len(w)}")
