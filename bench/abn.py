#!/usr/bin/env python3
"""Alternates any number of commands RUNS times each, the order turned
every round, and prints each one's median and 10th percentile. Arguments
are split on "|". Compare binaries through fresh copies, two of each
(BENCHMARKS.md, "How binaries were compared"):

    python3 bench/abn.py 200 "a1|exec|HOST|true" "b1|exec|HOST|true" "a2|exec|HOST|true" "b2|exec|HOST|true"
"""
import statistics
import subprocess
import sys
import time

runs, commands = int(sys.argv[1]), sys.argv[2:]
times = [[] for _ in commands]
for round_ in range(runs):
    order = list(range(len(commands)))
    if round_ % 2:
        order.reverse()
    for i in order:
        start = time.perf_counter()
        subprocess.run(commands[i].split("|"), check=True, stdout=subprocess.DEVNULL)
        times[i].append(time.perf_counter() - start)


def p10(values):
    return sorted(values)[int(0.1 * (len(values) - 1))]


for command, t in zip(commands, times):
    print(f"median {statistics.median(t) * 1000:.2f} ms  p10 {p10(t) * 1000:.2f} ms  {command}")
