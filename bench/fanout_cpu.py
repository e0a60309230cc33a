#!/usr/bin/env python3
"""ctl's CPU per host in a fan-out of `true` to 200 loopback addresses
(the harness's set-up: four agents of 50 addresses each), for one or more
ctl binaries in alternation:

    bench/fanout_cpu.py ROUNDS CTL [CTL ...]

Per run: wall time, and ctl's task-clock from `perf stat` (user + system,
all of ctl's threads). Prints medians and 10th percentiles per binary.
Build first (`cargo build --release --bins`); needs perf."""
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402


def q(xs, p):
    xs = sorted(xs)
    return xs[int(p * (len(xs) - 1))]


def one(ctl, env):
    t0 = time.perf_counter()
    out = subprocess.run(["perf", "stat", "-x,", "-e", "task-clock", ctl, "exec", "--fanout", "64",
                          "@b200", "true"], env=env, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True, check=True)
    wall = time.perf_counter() - t0
    line = next(l for l in out.stderr.splitlines() if "task-clock" in l)
    return wall, float(line.split(",")[0]) / 1000.0  # msec to s


def main():
    rounds = int(sys.argv[1])
    ctls = sys.argv[2:]
    with tempfile.TemporaryDirectory(prefix="rexec-fanout-") as work:
        rx = harness.Rexec(Path(work))
        hosts = [f"127.0.0.{i}" for i in range(2, 202)]
        addrs = [(h, harness.free_port()) for h in hosts]
        agents = [rx.start(addrs[i:i + 50]) for i in range(0, 200, 50)]
        rx.inventory({"b200": addrs})
        for ctl in ctls:  # one untimed run each: page cache, known hosts
            one(ctl, rx.env)
        walls = {c: [] for c in ctls}
        cpus = {c: [] for c in ctls}
        for i in range(rounds):
            for ctl in (ctls if i % 2 == 0 else ctls[::-1]):
                wall, cpu = one(ctl, rx.env)
                walls[ctl].append(wall)
                cpus[ctl].append(cpu)
        for ctl in ctls:
            w, c = walls[ctl], cpus[ctl]
            print(f"{ctl}: wall median {statistics.median(w) * 1e3:.1f} ms (p10 {q(w, 0.1) * 1e3:.1f}); "
                  f"ctl CPU median {statistics.median(c) * 1e3:.1f} ms (p10 {q(c, 0.1) * 1e3:.1f}), "
                  f"{statistics.median(c) / 200 * 1e3:.3f} ms per host; n={len(w)}")
        for proc in agents:
            rx.stop(proc)


if __name__ == "__main__":
    main()
