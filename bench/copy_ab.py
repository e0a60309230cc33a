#!/usr/bin/env python3
"""Two ctl binaries pulling the same 1 GiB in alternation, with `scp` then
`sync` after each pair, on the harness's set-up (bench/harness.py: a fresh
agent and sshd on loopback, release binaries):

    python3 bench/copy_ab.py ROUNDS CTL_A CTL_B [--two-dirs]

Every run starts from `sync` (outside the timing). By default all three
write the same file in one directory; `--two-dirs` gives A and B a
directory each (the control that showed a directory's place on the disk
deciding more than the program: run it with CTL_A and CTL_B the same
binary). Prints each one's median and every time."""

import shutil
import sys
import tempfile
from pathlib import Path

sys.dont_write_bytecode = True
sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as h  # noqa: E402


def main():
    rounds, ctl_a, ctl_b = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    two_dirs = "--two-dirs" in sys.argv[4:]
    work = Path(tempfile.mkdtemp(prefix="rexec-copy-ab."))
    try:
        rx, ssh = h.Rexec(work), h.Ssh(work)
        port = h.free_port()
        rx.start([("127.0.0.1", port)])
        target = f"127.0.0.1:{port}"
        data = work / "gib"
        with open(data, "wb") as out, open("/dev/urandom", "rb") as rnd:
            for _ in range(1024):
                out.write(rnd.read(1 << 20))
        dirs = {k: work / (f"from-{k}" if two_dirs else "from") for k in ("a", "b")}
        for d in set(dirs.values()):
            d.mkdir()
        shared = work / "from"
        shared.mkdir(exist_ok=True)

        def pull(ctl, into):
            return h.settled(lambda: h.timed([ctl, "cp", f"{target}:{data}", str(into)], env=rx.env))

        pairs = [
            ("A", pull(ctl_a, dirs["a"])),
            ("B", pull(ctl_b, dirs["b"])),
            ("scp+sync", h.settled(lambda: ssh.scp_then_sync(f"bench:{data}", shared, shared))),
        ]
        h.print_times(h.swap_two(pairs, rounds))
    finally:
        h.stop_all()
        shutil.rmtree(work, True)


if __name__ == "__main__":
    main()
