#!/usr/bin/env python3
"""Alternates two commands RUNS times each and prints the medians and 10th
percentiles. Arguments are split on "|": ab.py 300 "ctl|--version" "/bin/true"."""
import subprocess, sys, time, statistics, os
runs = int(sys.argv[1]); a = sys.argv[2]; b = sys.argv[3]
ta, tb = [], []
for i in range(runs):
    for cmd, t in ((a, ta), (b, tb)) if i % 2 == 0 else ((b, tb), (a, ta)):
        s = time.perf_counter(); subprocess.run(cmd.split("|"),  check=True, stdout=subprocess.DEVNULL); t.append(time.perf_counter() - s)
def q(x, p): x = sorted(x); return x[int(p * (len(x) - 1))]
for name, t in (("A", ta), ("B", tb)):
    print(f"{name}: median {statistics.median(t)*1000:.2f} ms  p10 {q(t,0.1)*1000:.2f} ms  p90 {q(t,0.9)*1000:.2f} ms  n={len(t)}")
print(f"B/A median {statistics.median(tb)/statistics.median(ta):.3f}  p10 {q(tb,0.1)/q(ta,0.1):.3f}")
