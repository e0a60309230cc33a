#!/usr/bin/env python3
"""CPU of ctl (perf stat task-clock) and of an agent's threads (/proc) for
`ctl exec HOST CMD`, two ctl/agent pairs alternating:
cpu_ab.py RUNS CTL_A AGENT_PID_A "HOST CMD" CTL_B AGENT_PID_B "HOST CMD"."""
import subprocess, sys, statistics, os
runs = int(sys.argv[1]); sides = [(sys.argv[2], int(sys.argv[3]), sys.argv[4]), (sys.argv[5], int(sys.argv[6]), sys.argv[7])]
def agent_cpu(pid):
    tot = 0
    for t in os.listdir(f"/proc/{pid}/task"):
        f = open(f"/proc/{pid}/task/{t}/stat").read().rsplit(")",1)[1].split()
        tot += int(f[11]) + int(f[12])
    # children reaped: cutime/cstime of process
    f = open(f"/proc/{pid}/stat").read().rsplit(")",1)[1].split()
    return tot, int(f[13]) + int(f[14])
res = {0: ([], []), 1: ([], [])}
tck = os.sysconf("SC_CLK_TCK")
for i in range(runs):
    order = (0, 1) if i % 2 == 0 else (1, 0)
    for k in order:
        ctl, pid, cmd = sides[k]
        a0, _ = agent_cpu(pid)
        out = subprocess.run(["perf", "stat", "-x,", "-e", "task-clock", ctl, "exec", cmd[0:cmd.index(' ')], cmd[cmd.index(' ')+1:]], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True).stderr
        a1, _ = agent_cpu(pid)
        ms = float([l for l in out.splitlines() if "task-clock" in l][0].split(",")[0])
        res[k][0].append(ms); res[k][1].append((a1 - a0) * 1000 / tck)
for k in (0, 1):
    c, a = res[k]
    print(f"{sides[k][0]}: ctl task-clock median {statistics.median(c):.0f} ms (min {min(c):.0f}); agent threads CPU median {statistics.median(a):.0f} ms (min {min(a):.0f}) n={len(c)}")
