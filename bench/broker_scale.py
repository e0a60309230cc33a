#!/usr/bin/env python3
"""rexec broker mode at scale, on loopback only.

Starts a nats-server (monitoring port on) and the simulator
(bench/broker_sim.rs: many simulated agents in one process, real TLS and
protocol, no shell forked for an exec) in a temporary directory, waits until
every simulated agent is connected and subscribed, then times
`ctl exec --broker URL 'sim[00001-N]' true` for each N, checks that all N
answered exit 0 (`--json`, one record per host), records ctl's peak RSS,
its CPU (perf stat) and nats-server's slow_consumers (/varz); times direct
mode at 200 hosts the way bench/harness.py does; and compares one real
agent through the broker with the same agent direct (`true` latency, 1 GiB
of output, peak RSS). Writes bench/results-broker.md and stops everything it
started.

`--baseline DIR` (a directory holding another build's `ctl` and
`rexec-agent`) adds that build's agent and ctl to the one-host rows, in
alternation with this build's, so a change is measured before and after in
one run; `--one-host` runs only the one-host rows (no simulator).

Run it through bench/broker_scale.sh, which installs the tools and builds.
"""

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.dont_write_bytecode = True
sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402  (its Rexec, timing helpers and process list)
from harness import AGENT, CTL, REPO, alternate, fmt_time, free_port, peak_rss_kib, timed  # noqa: E402

SIM = str(REPO / "target" / "release" / "examples" / "broker-sim")


def varz(http):
    with urllib.request.urlopen(f"http://127.0.0.1:{http}/varz", timeout=5) as r:
        return json.load(r)


def wait_until(what, check, within):
    end = time.monotonic() + within
    while time.monotonic() < end:
        if check():
            return
        time.sleep(0.1)
    sys.exit(f"gave up waiting for {what} after {within:.0f} s")


def start_nats(work):
    port, http = free_port(), free_port()
    conf = work / "nats-server.conf"
    conf.write_text(f'host: 127.0.0.1\nport: {port}\nhttp: "127.0.0.1:{http}"\n')
    proc = subprocess.Popen(["nats-server", "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=open(work / "nats-server.log", "w"))
    harness.started.append(proc)

    def up():
        try:
            varz(http)
            return True
        except OSError:
            return False

    wait_until("nats-server", up, 10)
    return proc, f"nats://127.0.0.1:{port}", http


def has_flag(cmd, flag):
    out = subprocess.run(cmd, capture_output=True, text=True)
    return flag in out.stdout + out.stderr


def uptime():
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def time_runs(cmd, env, runs):
    """Median and minimum wall time of `runs` runs: hyperfine when present."""
    if shutil.which("hyperfine"):
        out = Path(tempfile.mktemp(suffix=".json"))
        subprocess.run(["hyperfine", "-N", "-w", "1", "-r", str(runs), "--export-json", str(out),
                        "--output", "null", subprocess.list2cmdline(cmd)],
                       env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        result = json.loads(out.read_text())["results"][0]
        out.unlink()
        return result["median"], result["min"], "hyperfine"
    timed(cmd, env=env)
    times = [timed(cmd, env=env) for _ in range(runs)]
    return statistics.median(times), min(times), "repeated runs"


def peak_rss_of(cmd, env):
    """ctl's peak RSS (KiB) over one run and the run's exit code."""
    out = subprocess.run(["/usr/bin/time", "-f", "%M", *cmd], env=env, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True)
    return int(out.stderr.strip().splitlines()[-1]), out.returncode


def answered(cmd, env, n):
    """How many distinct hosts answered exit 0 in one --json run."""
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    ok = set()
    for line in out.stdout.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("status") == "exited" and record.get("exit_code") == 0:
            ok.add(record.get("host"))
    return len(ok), out.returncode, out.stderr.strip().splitlines()[-1:] if out.returncode else []


def cpu_of(cmd, env):
    """ctl's task-clock (s), user and sys (s) over one run, from perf stat."""
    if not shutil.which("perf"):
        return None
    out = subprocess.run(["perf", "stat", "-x,", "-e", "task-clock", *cmd], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    ms = next((float(l.split(",")[0]) for l in out.stderr.splitlines() if "task-clock" in l), None)
    return ms / 1000 if ms else None


# Where ctl's CPU goes: inclusive shares of a perf profile (--children),
# by the function each kind of work goes through. Overlaps are possible
# (a handshake includes its key exchange), so the rows do not add up.
CATEGORIES = [
    ("TLS handshake in all (rustls client state machine)", r"rustls::client::hs::|rustls::client::tls13::"),
    ("  key exchange: X25519 key generation and agreement", r"ring::ec::curve25519::x25519::|ring::agreement::"),
    ("  signatures: verify the agent's Ed25519 CertificateVerify", r"verify_tls13_signature|ring::ec::curve25519::ed25519::verification"),
    ("  signatures: sign our own CertificateVerify (Ed25519)", r"Ed25519KeyPair::sign"),
    ("record encryption and decryption (AES-GCM)", r"aes_gcm|aes_hw|gcm_|Tls13MessageEncrypter|Tls13MessageDecrypter"),
    ("NATS client (async-nats: protocol, subscriptions, requests)", r"^async_nats::"),
    ("broker stream and carrier (rexec_broker)", r"^rexec_broker::"),
    ("subjects and session ids (format, parse)", r"rexec_broker::subject::|Subjects::"),
    ("JSON (open requests and answers, --json output)", r"serde_json::"),
    ("ctl itself (fan-out, output, known hosts)", r"^rexec_ctl::"),
    ("memory allocation (malloc, free)", r"^(malloc|free|cfree|_int_malloc|_int_free|realloc|calloc)"),
    ("kernel (system calls, network)", r"^\[k\]|entry_SYSCALL|do_syscall_64"),
]


def profile(cmd, env, work):
    """perf record of one ctl run; inclusive shares by kind of work."""
    if not shutil.which("perf"):
        return None
    data = work / "ctl.perf"
    subprocess.run(["perf", "record", "-q", "-F", "1999", "--call-graph", "dwarf,16384", "-o", str(data),
                    *cmd], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    out = subprocess.run(["perf", "report", "-i", str(data), "--children", "--sort", "sym", "-g", "none",
                          "--percent-limit", "0.05", "-q"], capture_output=True, text=True).stdout
    rows = []
    for line in out.splitlines():
        parts = line.split(None, 3)
        if len(parts) == 4 and parts[0].endswith("%"):
            rows.append((float(parts[0][:-1]), parts[3].strip()))
    shares = []
    for name, pattern in CATEGORIES:
        regex = re.compile(pattern)
        # Inclusive: the largest share among the matching symbols (an outer
        # function includes the inner ones).
        matching = [children for children, sym in rows if regex.search(sym.removeprefix("[.] "))
                    or (pattern.startswith("^\\[k\\]") and sym.startswith("[k]"))]
        shares.append((name, max(matching, default=0.0)))
    top = subprocess.run(["perf", "report", "-i", str(data), "--no-children", "--sort", "sym", "-g", "none",
                          "--percent-limit", "1.5", "-q"], capture_output=True, text=True).stdout
    data.unlink()
    return shares, [l.strip() for l in top.splitlines() if l.strip()]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--agents", default="1000,10000", help="fleet sizes to time (comma-separated)")
    parser.add_argument("--runs", type=int, default=5, help="timed runs per fleet size")
    parser.add_argument("--latency-runs", type=int, default=20, help="rounds for one-host `true`")
    parser.add_argument("--bulk-runs", type=int, default=3, help="rounds for one-host 1 GiB")
    parser.add_argument("--wave", type=int, default=250, help="simulated agents connecting at once")
    parser.add_argument("--baseline", help="a directory with another build's ctl and rexec-agent, "
                        "timed beside this build's in the one-host rows")
    parser.add_argument("--one-host", action="store_true", help="only the one-host rows (no fleet)")
    parser.add_argument("--out", default=str(REPO / "bench" / "results-broker.md"))
    args = parser.parse_args()
    if args.one_host:
        args.agents = "0"

    sizes = [int(n) for n in args.agents.split(",")]
    fleet = max(sizes)

    before = uptime()
    work = Path(tempfile.mkdtemp(prefix="rexec-broker-bench."))
    rx = harness.Rexec(work)
    ctl_fp = subprocess.run([CTL, "id"], env=rx.env, capture_output=True, text=True,
                            check=True).stdout.strip()
    ctl_broker = has_flag([CTL, "exec", "--help"], "--broker") or has_flag([CTL, "--help"], "--broker")
    agent_broker = has_flag([AGENT, "run", "--help"], "--broker")
    nats, url, http = start_nats(work)
    lines = []
    notes = []
    results, drives, med200, prof, sim = {}, {}, {}, None, None

    # The fleet: every simulated agent connected and subscribed.
    if not args.one_host:
        t0 = time.perf_counter()
        sim_out = open(work / "sim.out", "w")
        drive_fp = subprocess.run([SIM, "drive", "--broker", url, "--agents", "0", "--identity-dir",
                                   str(work / "drive")], capture_output=True, text=True,
                                  check=True).stdout.split()[1]
        sim = subprocess.Popen([SIM, "serve", "--broker", url, "--agents", str(fleet), "--wave", str(args.wave),
                                "--identity-dir", str(work / "sim"), "--authorize", ctl_fp,
                                "--authorize", drive_fp,
                                "--ready-file", str(work / "ready")],
                               stdout=sim_out, stderr=subprocess.STDOUT)
        harness.started.append(sim)
        wait_until("the simulated agents", lambda: (work / "ready").exists() or sim.poll() is not None, 600)
        if sim.poll() is not None:
            sys.exit("the simulator stopped: " + (work / "sim.out").read_text())
        v = varz(http)
        # Three subscriptions per agent: its open subject, discovery, and the
        # inbox its own check requests are answered on.
        wait_until("every agent's subscriptions", lambda: varz(http)["subscriptions"] >= 3 * fleet, 60)
        up = time.perf_counter() - t0
        v = varz(http)
        sim_rss = peak_rss_kib(sim.pid)
        lines.append(f"Fleet: {fleet} simulated agents in one process, connected in waves of {args.wave} "
                     f"in {up:.1f} s; nats-server {v['connections']} connections, {v['subscriptions']} "
                     f"subscriptions; simulator peak RSS {sim_rss / 1024:.0f} MiB.")

        if not ctl_broker:
            notes.append("ctl in this build has no --broker: the fleet rows were not run.")
        for n in sizes if ctl_broker else []:
            target = f"sim[00001-{n:05d}]"
            base = [CTL, "exec", "--broker", url]
            # First contact: every name is trusted on first use and recorded.
            t = time.perf_counter()
            ok, code, err = answered(base + ["--json", target, "true"], rx.env, n)
            first = time.perf_counter() - t
            if ok != n:
                notes.append(f"{n} agents, first contact: only {ok} answered exit 0 (ctl exit {code}) {err}")
            sc0 = varz(http)["slow_consumers"]
            median, fastest, how = time_runs(base + [target, "true"], rx.env, args.runs)
            rss, code = peak_rss_of(base + [target, "true"], rx.env)
            ok2, code2, err2 = answered(base + ["--json", target, "true"], rx.env, n)
            cpu = cpu_of(base + [target, "true"], rx.env)
            sc = varz(http)["slow_consumers"] - sc0
            results[n] = dict(first=first, median=median, fastest=fastest, how=how, rss=rss, ok=ok2,
                              code=code2, cpu=cpu, slow=sc, err=err2)
            if args.baseline:
                # The other build's ctl, with its own known hosts (the same
                # identity): its first contact and its repeat runs.
                base_env = dict(rx.env, REXEC_CONFIG_DIR=str(work / f"ctl-baseline-{n}"))
                shutil.copytree(rx.ctl_dir, base_env["REXEC_CONFIG_DIR"],
                                ignore=shutil.ignore_patterns("known_hosts*"))
                bbase = [str(Path(args.baseline) / "ctl"), "exec", "--broker", url]
                t = time.perf_counter()
                bok, _, _ = answered(bbase + ["--json", target, "true"], base_env, n)
                bfirst = time.perf_counter() - t
                bmedian, bfastest, _ = time_runs(bbase + [target, "true"], base_env, args.runs)
                brss, _ = peak_rss_of(bbase + [target, "true"], base_env)
                results[n]["baseline"] = dict(first=bfirst, ok=bok, median=bmedian, fastest=bfastest,
                                              rss=brss)

        # The same fleets through the simulator's own minimal client (no ctl):
        # the carrier, TLS and protocol alone.
        for n in sizes:
            cmd = [SIM, "drive", "--broker", url, "--agents", str(n), "--identity-dir", str(work / "drive")]
            if n == sizes[0]:
                subprocess.run([SIM, "drive", "--broker", url, "--agents", "0", "--identity-dir",
                                str(work / "drive")], capture_output=True)
            drives[n] = time_runs(cmd, rx.env, args.runs)

        # Broker at 200 and direct at 200 hosts, the harness's way: four agent
        # processes of 50 loopback addresses each.
        hosts = [f"127.0.0.{i}" for i in range(2, 202)]
        addrs = [(h, free_port()) for h in hosts]
        agents = [rx.start(addrs[i:i + 50]) for i in range(0, 200, 50)]
        rx.inventory({"b200": addrs})
        direct = [CTL, "exec", "--fanout", "64", "@b200", "true"]
        pairs = [("direct", lambda: timed(direct, env=rx.env))]
        if ctl_broker:
            timed([CTL, "exec", "--broker", url, "sim[00001-00200]", "true"], env=rx.env)
            pairs.append(("broker", lambda: timed([CTL, "exec", "--broker", url, "sim[00001-00200]", "true"],
                                                  env=rx.env)))
        timed(direct, env=rx.env)
        med200 = alternate(pairs, args.runs)
        direct_rss, _ = peak_rss_of(direct, rx.env)
        for proc in agents:
            rx.stop(proc)

        # Where ctl's CPU per host goes, at the largest fleet.
        prof = profile([CTL, "exec", "--broker", url, f"sim[00001-{fleet:05d}]", "true"], rx.env, work) \
            if ctl_broker else None

    # One real agent, through the broker and direct, in alternation.
    one = {}
    if agent_broker and ctl_broker:
        port = free_port()
        agent = rx.start([("127.0.0.1", port)], ["--broker", url, "--name", "bench-one"])
        wait_until("the agent on the broker",
                   lambda: subprocess.run([CTL, "exec", "--broker", url, "bench-one", "true"], env=rx.env,
                                          capture_output=True).returncode == 0, 20)
        d = [CTL, "exec", f"127.0.0.1:{port}"]
        b = [CTL, "exec", "--broker", url, "bench-one"]
        gib = "head -c 1G /dev/zero"
        ways = [("direct", d), ("broker", b)]
        if args.baseline:
            # The other build's agent, on the broker only, under a name of
            # its own, driven by the other build's ctl.
            base = Path(args.baseline)
            old = subprocess.Popen([str(base / "rexec-agent"), "run", "--dir", str(rx.agent_dir),
                                    "--broker", url, "--name", "bench-before"],
                                   env=rx.env, stderr=subprocess.DEVNULL)
            harness.started.append(old)
            bb = [str(base / "ctl"), "exec", "--broker", url, "bench-before"]
            wait_until("the baseline agent on the broker",
                       lambda: subprocess.run(bb + ["true"], env=rx.env, capture_output=True).returncode == 0,
                       20)
            ways.append(("baseline", bb))
        pairs = lambda what: [(name, lambda cmd=cmd: timed(cmd + [what], env=rx.env)) for name, cmd in ways]
        one["true"] = alternate(pairs("true"), args.latency_runs)
        sc0 = varz(http)["slow_consumers"]
        one["gib"] = alternate(pairs(gib), args.bulk_runs)
        one["rss"] = {name: peak_rss_of(cmd + [gib], rx.env)[0] for name, cmd in ways}
        one["agent_rss"] = peak_rss_kib(agent.pid)
        one["slow"] = varz(http)["slow_consumers"] - sc0
        rx.stop(agent)
        if args.baseline:
            one["baseline_agent_rss"] = peak_rss_kib(old.pid)
            rx.stop(old)
    else:
        notes.append("the agent or ctl in this build has no broker mode: the one-host rows were not run.")

    sim_summary = None
    if sim:
        sim.send_signal(2)
        sim.wait(timeout=30)
        harness.started.remove(sim)
        sim_out.close()
        sim_summary = (work / "sim.out").read_text().strip().splitlines()[-1]
    after = uptime()

    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    nats_v = subprocess.run(["nats-server", "--version"], capture_output=True, text=True).stdout.strip()
    out = [
        f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {os.cpu_count()} cores ({cpu}); "
        f"{nats_v}; nats-server, the simulator and ctl on the same cores.",
        f"Load before: `{before}`",
        f"Load after: `{after}`",
        "",
        *lines,
        "",
    ]
    if results or drives or med200:
        out += ["| work | wall (median) | fastest | ctl peak RSS | ctl CPU | answered exit 0 | slow consumers |",
                "|---|---|---|---|---|---|---|"]
    for n, r in results.items():
        out.append(f"| `ctl exec --broker … 'sim[00001-{n:05d}]' true` | {fmt_time(r['median'])} | "
                   f"{fmt_time(r['fastest'])} | {r['rss'] / 1024:.1f} MiB | "
                   f"{fmt_time(r['cpu']) if r['cpu'] else '-'} | {r['ok']}/{n} | {r['slow']} |")
    for n, r in results.items():
        out.append(f"| the same, first contact (trust on first use, {n} known hosts written) | "
                   f"{fmt_time(r['first'])} | | | | | |")
    for n, r in results.items():
        if "baseline" in r:
            b = r["baseline"]
            out.append(f"| baseline ctl (`--baseline`): `ctl exec --broker … 'sim[00001-{n:05d}]' true` | "
                       f"{fmt_time(b['median'])} | {fmt_time(b['fastest'])} | {b['rss'] / 1024:.1f} MiB | | | |")
            out.append(f"| baseline ctl, first contact ({n} known hosts written) | {fmt_time(b['first'])} | "
                       f"| | | {b['ok']}/{n} | |")
    for n, (median, fastest, _) in drives.items():
        out.append(f"| no ctl: `broker-sim drive --agents {n}` (carrier, TLS, protocol only) | "
                   f"{fmt_time(median)} | {fmt_time(fastest)} | | | | |")
    if "broker" in med200:
        out.append(f"| `ctl exec --broker … 'sim[00001-00200]' true` | {fmt_time(med200['broker'])} | | | | | |")
    if "direct" in med200:
        out.append(f"| direct: `ctl exec --fanout 64 @b200 true` (4 agents × 50 addresses) | "
                   f"{fmt_time(med200['direct'])} | | {direct_rss / 1024:.1f} MiB | | | |")
    out.append("")
    if results:
        how = next(iter(results.values()))["how"]
        out.append(f"Wall times: {how}, {args.runs} runs each.")
        for n, r in results.items():
            per_host_broker = r["median"] / n
            per_host_direct = med200["direct"] / 200
            out.append(f"- {n} agents: {per_host_broker * 1e3:.3f} ms per host, "
                       f"{per_host_broker / per_host_direct:.2f}× direct mode's per-host time at 200 hosts"
                       f" ({per_host_direct * 1e3:.3f} ms).")
        if "broker" in med200:
            out.append(f"- 200 hosts: broker {fmt_time(med200['broker'])} / direct "
                       f"{fmt_time(med200['direct'])} = {med200['broker'] / med200['direct']:.2f}.")
    if one:
        out += [
            "",
            "One real agent (`rexec-agent run --listen … --broker … --name bench-one`), alternating:",
            "",
            "| work | direct | broker | broker/direct |",
            "|---|---|---|---|",
            f"| `true` ({args.latency_runs} rounds, median) | {fmt_time(one['true']['direct'])} | "
            f"{fmt_time(one['true']['broker'])} | {one['true']['broker'] / one['true']['direct']:.2f} |",
            f"| 1 GiB of output, `head -c 1G /dev/zero` ({args.bulk_runs} rounds) | "
            f"{fmt_time(one['gib']['direct'])} ({1073.741824 / one['gib']['direct']:.0f} MB/s) | "
            f"{fmt_time(one['gib']['broker'])} ({1073.741824 / one['gib']['broker']:.0f} MB/s) | "
            f"{one['gib']['broker'] / one['gib']['direct']:.2f} |",
            f"| ctl peak RSS, one 1 GiB run | {one['rss']['direct'] / 1024:.1f} MiB | "
            f"{one['rss']['broker'] / 1024:.1f} MiB | |",
            "",
            f"Agent peak RSS over all the one-host runs (both modes, one process): "
            f"{one['agent_rss'] / 1024:.1f} MiB; slow consumers during them: {one['slow']}.",
        ]
        if "baseline" in one["gib"]:
            out += [
                "",
                f"The baseline build (`--baseline {args.baseline}`: its agent on the broker only, its ctl), "
                "in the same alternation:",
                "",
                "| work | baseline, broker | this build, broker | this/baseline |",
                "|---|---|---|---|",
                f"| `true` ({args.latency_runs} rounds, median) | {fmt_time(one['true']['baseline'])} | "
                f"{fmt_time(one['true']['broker'])} | {one['true']['broker'] / one['true']['baseline']:.2f} |",
                f"| 1 GiB of output ({args.bulk_runs} rounds) | "
                f"{fmt_time(one['gib']['baseline'])} ({1073.741824 / one['gib']['baseline']:.0f} MB/s) | "
                f"{fmt_time(one['gib']['broker'])} ({1073.741824 / one['gib']['broker']:.0f} MB/s) | "
                f"{one['gib']['broker'] / one['gib']['baseline']:.2f} |",
                f"| ctl peak RSS, one 1 GiB run | {one['rss']['baseline'] / 1024:.1f} MiB | "
                f"{one['rss']['broker'] / 1024:.1f} MiB | |",
                f"| agent peak RSS over the one-host runs | {one['baseline_agent_rss'] / 1024:.1f} MiB | "
                f"{one['agent_rss'] / 1024:.1f} MiB (serving direct too) | |",
            ]
    if prof:
        shares, top = prof
        out += ["", f"Where ctl's CPU goes (`perf record --call-graph dwarf` of one run to {fleet} agents; "
                "inclusive shares of ctl's samples, overlapping):", ""]
        out += [f"- {name.strip()}: {share:.1f} %" for name, share in shares]
        out += ["", "Top symbols (self):", "", "```", *top[:25], "```"]
    if sim_summary:
        out += ["", f"Simulator at the end: {sim_summary}"]
    out += [f"Note: {n}" for n in notes]
    text = "\n".join(out) + "\n"
    print(text)
    Path(args.out).write_text(text)
    shutil.rmtree(work, True)


if __name__ == "__main__":
    main()
