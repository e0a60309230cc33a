#!/usr/bin/env bash
# Broker mode at scale in one command: installs what it needs (nats-server,
# hyperfine, GNU time), builds rexec and the simulator (bench/broker_sim.rs)
# in release mode, raises the open-files limit (10,000 simulated agents hold
# 10,000 broker connections, and nats-server as many), and runs
# bench/broker_scale.py, which starts everything on loopback in a temporary
# directory, writes bench/results-broker.md and stops what it started.
# Options pass through, e.g. `bench/broker_scale.sh --agents 1000 --runs 3`;
# --no-build first skips the build (for a machine where cargo runs elsewhere).
set -euo pipefail
cd "$(dirname "$0")/.."
need=
command -v nats-server >/dev/null || need="$need nats-server"
command -v hyperfine >/dev/null || need="$need hyperfine"
[ -x /usr/bin/time ] || need="$need time"
. bench/need.sh
hard=$(ulimit -Hn)
if [ "$hard" != unlimited ] && [ "$hard" -lt 20000 ]; then
    echo "the open-files hard limit is $hard; 10,000 agents need 20,000 (or run with --agents 1000)" >&2
fi
ulimit -n "$hard"
if [ "${1:-}" = --no-build ]; then
    shift
else
    CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-2} cargo build --release --quiet --bins
    CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-2} cargo build --release --quiet -p rexec-broker --example broker-sim
fi
exec python3 bench/broker_scale.py "$@"
