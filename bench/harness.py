#!/usr/bin/env python3
"""rexec side by side with OpenSSH and pdsh, on loopback only.

Starts what it compares against by hand in a temporary directory (an sshd on
127.0.0.1 with throwaway host and client keys, rexec agents with fresh
identities), runs each pair of commands in alternation (A B A B ...), prints
medians and the rexec/other ratio per row, writes the table to
bench/results.md, and stops everything it started. Nothing outside the
temporary directory is touched: not the system's ssh configuration, not
~/.ssh, not /etc/rexec.

Run it through bench/run.sh, which installs the tools and builds first.
"""

import argparse
import atexit
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BIN = REPO / "target" / "release"
CTL = str(BIN / "ctl")
AGENT = str(BIN / "rexec-agent")

started = []  # processes to stop at exit


def stop_all():
    for proc in started:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
    for proc in started:
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()


atexit.register(stop_all)


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(host, port, within=10.0):
    end = time.monotonic() + within
    while time.monotonic() < end:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    sys.exit(f"nothing listens on {host}:{port}")


def timed(cmd, env=None, stdout=subprocess.DEVNULL, shell=False):
    """Wall time of one run; fails the harness if the command fails."""
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, stdout=stdout, stderr=subprocess.DEVNULL, check=True, shell=shell)
    return time.perf_counter() - t0


def settled(thunk):
    """`thunk` timed from a clean page cache state: what the previous run
    (or the making of the test file) left to write back is written first,
    outside the timing, so that no run pays for another's writes."""
    def run_settled():
        os.sync()
        return thunk()
    return run_settled


def alternate(pairs, runs):
    """Runs each (name, thunk) in turn, `runs` rounds, each round starting
    one pair further on, so that no command always runs after the same
    other (a copy after a copy that left the disk busy); medians by name."""
    times = {name: [] for name, _ in pairs}
    for round_ in range(runs):
        start = round_ % len(pairs)
        for name, thunk in pairs[start:] + pairs[:start]:
            times[name].append(thunk())
    return {name: statistics.median(ts) for name, ts in times.items()}


def swap_two(pairs, rounds):
    """Runs the (name, thunk) pairs `rounds` times, the first two trading
    places every other round and the rest after them (an A/B with its
    references); every time by name."""
    times = {name: [] for name, _ in pairs}
    for round_ in range(rounds):
        order = pairs if round_ % 2 == 0 else [pairs[1], pairs[0], *pairs[2:]]
        for name, thunk in order:
            times[name].append(thunk())
    return times


def print_times(times):
    """Each name's median, then every time, in seconds."""
    for name, ts in times.items():
        print(f"{name}: median {statistics.median(ts):.2f} s  " + " ".join(f"{t:.2f}" for t in ts))


def peak_rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


class Rexec:
    """An agent identity and a ctl identity, agents started on demand."""

    def __init__(self, work):
        self.work = work
        self.agent_dir = work / "agent"
        self.ctl_dir = work / "ctl"
        self.env = dict(os.environ, REXEC_CONFIG_DIR=str(self.ctl_dir), RUST_LOG="warn")
        out = run([AGENT, "init", "--dir", str(self.agent_dir)], capture_output=True, text=True)
        self.agent_fp = out.stdout.strip()
        out = run([CTL, "keygen"], env=self.env, capture_output=True, text=True)
        run([AGENT, "authorize", "--dir", str(self.agent_dir), out.stdout.strip(), "--name", "bench"],
            capture_output=True)
        self.known = self.ctl_dir / "known_hosts"

    def start(self, addrs, extra=()):
        """One agent process listening on each of `addrs` (host, port)."""
        cmd = [AGENT, "run", "--dir", str(self.agent_dir)]
        # One process stands for many machines, each of which would see one
        # handshake from ctl at a time: the pre-TLS budget is sized for that,
        # not for one machine under a flood.
        if len(addrs) > 1:
            cmd += ["--max-startups", "512", "--per-source-max-startups", "512"]
        for host, port in addrs:
            cmd += ["--listen", f"{host}:{port}"]
        proc = subprocess.Popen(cmd + list(extra), env=self.env, stderr=subprocess.DEVNULL)
        started.append(proc)
        for host, port in addrs:
            wait_for_port(host, port)
        with open(self.known, "a") as f:
            for host, port in addrs:
                f.write(f"{host}:{port} {self.agent_fp}\n")
        return proc

    def stop(self, proc):
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=10)
        started.remove(proc)

    def inventory(self, groups):
        """hosts.toml with a group per name (a list of (host, port)) and
        each host's port."""
        lines = ["[groups]"]
        ports = {}
        for name, addrs in groups.items():
            members = ", ".join(f'"{host}"' for host, _ in addrs)
            lines.append(f"{name} = [{members}]")
            ports.update(addrs)
        for host, port in ports.items():
            lines += [f'[hosts."{host}"]', f"port = {port}"]
        (self.ctl_dir / "hosts.toml").write_text("\n".join(lines) + "\n")


class Ssh:
    """An sshd run by hand on 127.0.0.1 with throwaway keys."""

    FASTEST = ("-c", "aes128-gcm@openssh.com")  # ssh's fastest cipher here

    def __init__(self, work):
        self.dir = work / "ssh"
        self.dir.mkdir()
        for name in ("host_key", "user_key"):
            run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.dir / name)])
        shutil.copy(self.dir / "user_key.pub", self.dir / "authorized_keys")
        self.port = free_port()
        user = subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip()
        (self.dir / "sshd_config").write_text(
            f"""Port {self.port}
ListenAddress 127.0.0.1
HostKey {self.dir}/host_key
AuthorizedKeysFile {self.dir}/authorized_keys
PidFile {self.dir}/sshd.pid
StrictModes no
UsePAM no
PermitRootLogin yes
PasswordAuthentication no
MaxStartups 1024:30:2048
MaxSessions 1024
Subsystem sftp internal-sftp
LogLevel ERROR
"""
        )
        self.config = self.dir / "ssh_config"
        self.config.write_text(
            f"""Host *
  HostName 127.0.0.1
  Port {self.port}
  User {user}
  IdentityFile {self.dir}/user_key
  IdentitiesOnly yes
  StrictHostKeyChecking no
  UserKnownHostsFile /dev/null
  BatchMode yes
  LogLevel ERROR
"""
        )
        Path("/run/sshd").mkdir(exist_ok=True)
        self.proc = subprocess.Popen([shutil.which("sshd") or "/usr/sbin/sshd", "-D", "-e",
                                      "-f", str(self.dir / "sshd_config")])
        started.append(self.proc)
        wait_for_port("127.0.0.1", self.port)
        self.control = self.dir / "cm-%C"

    def cmd(self, *opts):
        return ["ssh", "-F", str(self.config), *opts, "bench"]

    def scp(self):
        """`scp` to and from host `bench` with ssh's fastest cipher."""
        return ["scp", "-q", "-F", str(self.config), *self.FASTEST]

    def scp_then_sync(self, src, dst, local_dir):
        """Time of `scp SRC DST` then `sync -f LOCAL_DIR`: ctl cp makes each
        file durable before it takes its name and scp does not, so the fair
        comparison adds a sync of what scp wrote (the file system that holds
        it)."""
        return timed(" ".join(self.scp()) + f" {src} {dst} && sync -f {local_dir}", shell=True)


def ratio(a, b):
    return f"{a / b:.2f}" if b else "-"


def fmt_time(t):
    return f"{t * 1000:.1f} ms" if t < 1 else f"{t:.2f} s"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=20, help="rounds for latency rows")
    parser.add_argument("--bulk-runs", type=int, default=5, help="rounds for 1 GiB rows")
    parser.add_argument("--fanout-runs", type=int, default=3, help="rounds for fan-out rows")
    parser.add_argument("--skip-pdsh-200", action="store_true", help="pdsh to 200 hosts takes minutes")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="rexec-bench."))
    atexit.register(shutil.rmtree, work, True)
    rx = Rexec(work)
    ssh = Ssh(work)
    rows = []

    # Latency of `true`.
    port = free_port()
    agent = rx.start([("127.0.0.1", port)])
    target = f"127.0.0.1:{port}"
    ctl_true = lambda: timed([CTL, "exec", target, "true"], env=rx.env)
    cm = ("-o", "ControlMaster=auto", "-o", f"ControlPath={ssh.control}", "-o", "ControlPersist=300")
    timed(ssh.cmd(*cm) + ["true"])  # opens the master
    med = alternate([
        ("rexec", ctl_true),
        ("ssh", lambda: timed(ssh.cmd() + ["true"])),
        ("ssh-curve", lambda: timed(ssh.cmd("-o", "KexAlgorithms=curve25519-sha256") + ["true"])),
        ("ssh-cm", lambda: timed(ssh.cmd(*cm) + ["true"])),
        ("local", lambda: timed(["sh", "-c", "true"])),
    ], args.runs)
    rows.append(("`true`, new connection: rexec vs ssh (default kex)", med["rexec"], med["ssh"]))
    rows.append(("`true`: rexec vs ssh with curve25519-sha256", med["rexec"], med["ssh-curve"]))
    rows.append(("`true`: rexec vs ssh over an open ControlMaster", med["rexec"], med["ssh-cm"]))
    rows.append(("`true`: rexec vs `sh -c true` locally", med["rexec"], med["local"]))

    # 1 GiB to /dev/null.
    gib = "head -c 1G /dev/zero"
    fastest = Ssh.FASTEST
    med = alternate([
        ("rexec", lambda: timed([CTL, "exec", target, gib], env=rx.env)),
        ("ssh", lambda: timed(ssh.cmd(*fastest) + [gib])),
        ("local", lambda: timed(f"sh -c '{gib}' | cat > /dev/null", shell=True)),
    ], args.bulk_runs)
    rows.append(("1 GiB to /dev/null: rexec vs ssh (aes128-gcm)", med["rexec"], med["ssh"]))
    rows.append(("1 GiB to /dev/null: rexec vs one local pipe hop", med["rexec"], med["local"]))

    # Copying 1 GiB of random bytes each way: ctl cp vs scp (fastest cipher).
    data = work / "gib"
    with open(data, "wb") as out, open("/dev/urandom", "rb") as rnd:
        for _ in range(1024):
            out.write(rnd.read(1 << 20))
    # Both tools write the same file in the same directory, each run
    # replacing the last: on this VM's disk a directory's place alone made
    # one destination 0.6 s slower than another for the same program
    # (BENCHMARKS.md, "Copies: what the disk does").
    for d in ("to", "from"):
        (work / d).mkdir()
    scp = ssh.scp()
    scp_sync = ssh.scp_then_sync
    med = alternate([
        ("rexec", settled(lambda: timed([CTL, "cp", str(data), f"{target}:{work / 'to'}"], env=rx.env))),
        ("scp", settled(lambda: timed(scp + [str(data), f"bench:{work / 'to'}"]))),
        ("scp-sync", settled(lambda: scp_sync(data, f"bench:{work / 'to'}", work / "to"))),
    ], args.bulk_runs)
    rows.append(("push 1 GiB: `ctl cp` vs `scp` (aes128-gcm)", med["rexec"], med["scp"]))
    rows.append(("push 1 GiB: `ctl cp` vs `scp` then `sync` (both durable)", med["rexec"], med["scp-sync"]))
    med = alternate([
        ("rexec", settled(lambda: timed([CTL, "cp", f"{target}:{data}", str(work / "from")], env=rx.env))),
        ("scp", settled(lambda: timed(scp + [f"bench:{data}", str(work / "from")]))),
        ("scp-sync", settled(lambda: scp_sync(f"bench:{data}", work / "from", work / "from"))),
    ], args.bulk_runs)
    rows.append(("pull 1 GiB: `ctl cp` vs `scp` (aes128-gcm)", med["rexec"], med["scp"]))
    rows.append(("pull 1 GiB: `ctl cp` vs `scp` then `sync` (both durable)", med["rexec"], med["scp-sync"]))
    for d in ("to", "from"):
        shutil.rmtree(work / d)
    # The same copies into memory (tmpfs: fsync and sync cost nothing), for
    # the transfer alone without this machine's disk.
    shm = Path("/dev/shm")
    if shm.is_dir() and shutil.disk_usage(shm).free > 3 << 30:
        mem = Path(tempfile.mkdtemp(prefix="rexec-bench.", dir=shm))
        atexit.register(shutil.rmtree, mem, True)
        for d in ("rexec", "scp"):
            (mem / d).mkdir()
        for way in ("push", "pull"):
            src = (lambda _: str(data)) if way == "push" else (lambda remote: f"{remote}:{data}")
            dst = (lambda remote, d: f"{remote}:{mem / d}") if way == "push" else (lambda _, d: str(mem / d))
            med = alternate([
                ("rexec", lambda: timed([CTL, "cp", src(target), dst(target, "rexec")], env=rx.env)),
                ("scp", lambda: timed(scp + [src("bench"), dst("bench", "scp")])),
            ], args.bulk_runs)
            rows.append((f"{way} 1 GiB into tmpfs (no disk): `ctl cp` vs `scp`", med["rexec"], med["scp"]))
        shutil.rmtree(mem)
    rx.stop(agent)

    # Peak RSS of agent and ctl over one 1 GiB push and one 1 GiB pull, each
    # on a fresh agent: memory stays bounded however large the file.
    copy_rss = {}
    for way in ("push", "pull"):
        port = free_port()
        agent = rx.start([("127.0.0.1", port)])
        dest = work / f"rss-{way}"
        dest.mkdir()
        operands = ([str(data), f"127.0.0.1:{port}:{dest}"] if way == "push"
                    else [f"127.0.0.1:{port}:{data}", str(dest)])
        out = subprocess.run(["/usr/bin/time", "-f", "%M", CTL, "cp", *operands], env=rx.env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=True)
        copy_rss[way] = (peak_rss_kib(agent.pid), int(out.stderr.strip().splitlines()[-1]))
        rx.stop(agent)
        shutil.rmtree(dest)
    data.unlink()

    # Peak RSS of agent and ctl over one 1 GiB run, on a fresh agent.
    port = free_port()
    agent = rx.start([("127.0.0.1", port)])
    out = subprocess.run(["/usr/bin/time", "-f", "%M", CTL, "exec", f"127.0.0.1:{port}", gib],
                         env=rx.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                         check=True)
    ctl_rss = int(out.stderr.strip().splitlines()[-1])
    agent_rss = peak_rss_kib(agent.pid)
    rx.stop(agent)
    memory = f"agent {agent_rss / 1024:.1f} MiB, ctl {ctl_rss / 1024:.1f} MiB"

    # Fan-out of `true` to 50 and 200 loopback addresses: four agent
    # processes of 50 addresses each; pdsh over ssh to the same count.
    hosts = [f"127.0.0.{i}" for i in range(2, 202)]
    addrs = [(h, free_port()) for h in hosts]
    agents = [rx.start(addrs[i:i + 50]) for i in range(0, 200, 50)]
    rx.inventory({"b50": addrs[:50], "b200": addrs})
    pdsh_env = dict(os.environ, PDSH_SSH_ARGS=f"-F {ssh.config} -2 -a -x %h")
    for n in (50, 200):
        pairs = [("rexec", lambda n=n: timed([CTL, "exec", "--fanout", "64", f"@b{n}", "true"], env=rx.env))]
        if not (n == 200 and args.skip_pdsh_200):
            pairs.append(("pdsh", lambda n=n: timed(["pdsh", "-R", "ssh", "-f", "64", "-w", f"h[1-{n}]", "true"],
                                                     env=pdsh_env)))
        med = alternate(pairs, args.fanout_runs)
        rows.append((f"fan-out of `true` to {n} hosts: rexec vs `pdsh -R ssh -f 64`",
                     med["rexec"], med.get("pdsh", 0)))
    # Peak RSS of ctl over one fan-out to the 200 addresses.
    out = subprocess.run(["/usr/bin/time", "-f", "%M", CTL, "exec", "--fanout", "64", "@b200", "true"],
                         env=rx.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                         check=True)
    fanout_rss = int(out.stderr.strip().splitlines()[-1])
    for proc in agents:
        rx.stop(proc)

    # A burst of 200 concurrent single-host calls on one agent.
    port = free_port()
    agent = rx.start([("127.0.0.1", port)], ["--max-execs", "256", "--max-execs-per-client", "256"])
    t0 = time.perf_counter()
    procs = [subprocess.Popen([CTL, "exec", f"127.0.0.1:{port}", "true"], env=rx.env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(200)]
    codes = [p.wait() for p in procs]
    burst = time.perf_counter() - t0
    burst_rss = peak_rss_kib(agent.pid)
    rx.stop(agent)
    ok = sum(1 for c in codes if c == 0)

    versions = {
        "rustc": subprocess.run(["rustc", "--version"], capture_output=True, text=True).stdout.strip(),
        "ssh": subprocess.run(["ssh", "-V"], capture_output=True, text=True).stderr.strip(),
        "pdsh": subprocess.run(["pdsh", "-V"], capture_output=True, text=True).stdout.splitlines()[0]
        if shutil.which("pdsh") else "absent",
    }
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    lines = [
        f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {os.cpu_count()} cores ({cpu}); "
        f"{versions['rustc']}; {versions['ssh']}; {versions['pdsh']}",
        "",
        "| work | rexec | other | rexec/other |",
        "|---|---|---|---|",
    ]
    for name, a, b in rows:
        lines.append(f"| {name} | {fmt_time(a)} | {fmt_time(b) if b else 'not run'} | {ratio(a, b)} |")
    lines += [
        "",
        f"Peak RSS during one 1 GiB run: {memory}.",
        "Peak RSS during one 1 GiB copy: push: agent {:.1f} MiB, ctl {:.1f} MiB; "
        "pull: agent {:.1f} MiB, ctl {:.1f} MiB.".format(*(kib / 1024 for way in ("push", "pull")
                                                          for kib in copy_rss[way])),
        f"Peak RSS of ctl during one fan-out of `true` to 200 hosts: {fanout_rss / 1024:.1f} MiB.",
        f"Burst of 200 concurrent `ctl exec 127.0.0.1 true` on one agent: {ok}/200 succeeded "
        f"in {fmt_time(burst)}; agent peak RSS {burst_rss / 1024:.1f} MiB.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    (REPO / "bench" / "results.md").write_text(text)


if __name__ == "__main__":
    main()
