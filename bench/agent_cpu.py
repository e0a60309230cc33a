#!/usr/bin/env python3
"""The CPU one running agent spends per command: runs COMMAND RUNS times
and reads the agent's utime + stime (and its reaped children's) from
/proc/AGENT/stat before and after. Ticks are 10 ms, so give it runs of a
second or more.

    python3 bench/agent_cpu.py AGENT_PID 4 "ctl|exec|127.0.0.1:PORT|head -c 1G /dev/zero"
"""
import os
import subprocess
import sys
import time

agent, runs, command = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3].split("|")
hz = os.sysconf("SC_CLK_TCK")


def ticks():
    fields = open(f"/proc/{agent}/stat").read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12]), int(fields[13]) + int(fields[14])


before = ticks()
start = time.perf_counter()
for _ in range(runs):
    subprocess.run(command, stdout=subprocess.DEVNULL, check=True)
wall = (time.perf_counter() - start) / runs
after = ticks()
own, children = ((a - b) / hz / runs * 1000 for a, b in zip(after, before))
print(f"agent {own:.0f} ms per run, its children {children:.0f} ms, wall {wall * 1000:.0f} ms")
