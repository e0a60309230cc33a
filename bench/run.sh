#!/usr/bin/env bash
# The benchmark harness in one command: installs what it compares against
# (OpenSSH client and server, pdsh), builds rexec in release mode, and runs
# bench/harness.py, which starts everything on loopback in a temporary
# directory, prints the table, writes bench/results.md and stops what it
# started. Pass harness options through, e.g. `bench/run.sh --runs 50`.
set -euo pipefail
cd "$(dirname "$0")/.."
need=
command -v sshd >/dev/null || [ -x /usr/sbin/sshd ] || need="$need openssh-server"
command -v ssh >/dev/null || need="$need openssh-client"
command -v pdsh >/dev/null || need="$need pdsh"
[ -x /usr/bin/time ] || need="$need time"
. bench/need.sh
CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-2} cargo build --release --quiet --bins
exec python3 bench/harness.py "$@"
