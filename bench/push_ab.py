#!/usr/bin/env python3
"""Two agent binaries receiving the same 1 GiB push from one ctl in
alternation, with `scp` then `sync` after each pair, on the harness's
set-up (bench/harness.py: fresh agents and an sshd on loopback, release
binaries):

    python3 bench/push_ab.py ROUNDS AGENT_A AGENT_B

The push's durability is the agent's (fsync before the rename), so the
agents are what differs; all three write the same file in one directory
(see bench/copy_ab.py for why), each run starting from `sync` outside the
timing. Prints each one's median and every time."""

import shutil
import sys
import tempfile
from pathlib import Path

sys.dont_write_bytecode = True
sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as h  # noqa: E402


def main():
    rounds, agent_a, agent_b = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    work = Path(tempfile.mkdtemp(prefix="rexec-push-ab."))
    try:
        rx, ssh = h.Rexec(work), h.Ssh(work)
        targets = {}
        for name, binary in (("A", agent_a), ("B", agent_b)):
            h.AGENT = binary
            port = h.free_port()
            rx.start([("127.0.0.1", port)])
            targets[name] = f"127.0.0.1:{port}"
        data = work / "gib"
        with open(data, "wb") as out, open("/dev/urandom", "rb") as rnd:
            for _ in range(1024):
                out.write(rnd.read(1 << 20))
        into = work / "to"
        into.mkdir()

        def push(name):
            return h.settled(lambda: h.timed([h.CTL, "cp", str(data), f"{targets[name]}:{into}"], env=rx.env))

        pairs = [
            ("A", push("A")),
            ("B", push("B")),
            ("scp+sync", h.settled(lambda: ssh.scp_then_sync(data, f"bench:{into}", into))),
        ]
        h.print_times(h.swap_two(pairs, rounds))
    finally:
        h.stop_all()
        shutil.rmtree(work, True)


if __name__ == "__main__":
    main()
