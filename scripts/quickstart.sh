#!/usr/bin/env bash
# Quick start: build rexec, create fresh identities in a temporary directory,
# start an agent on loopback, run ctl exec against it, show what happens,
# and stop the agent. Touches nothing outside the temporary directory.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== building (release)"
cargo build --release --quiet --bins
bin=$PWD/target/release
work=$(mktemp -d "${TMPDIR:-/tmp}/rexec-quickstart.XXXXXX")
export REXEC_CONFIG_DIR=$work/ctl   # ctl's identity and known hosts live here
agent_pid=
cleanup() {
    [ -n "$agent_pid" ] && kill "$agent_pid" 2>/dev/null && wait "$agent_pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

# Shows a command the way one would type it (words quoted where needed,
# the binaries by their names), then runs it.
quote() {
    if [[ $1 =~ ^[A-Za-z0-9_./:@=-]+$ ]]; then printf ' %s' "$1"
    else printf " '%s'" "${1//\'/\'\\\'\'}"; fi
}
run() {
    printf '\n$'
    for word in "$@"; do quote "${word#"$bin"/}"; done
    printf '\n'
    "$@"
}

echo "== identities"
run "$bin/rexec-agent" init --dir "$work/agent"
client=$("$bin/ctl" keygen)
echo "client fingerprint: $client"
run "$bin/rexec-agent" authorize --dir "$work/agent" "$client" --name quickstart

echo "== agent on 127.0.0.1 (free port)"
"$bin/rexec-agent" run --dir "$work/agent" --listen 127.0.0.1:0 2>"$work/agent.log" &
agent_pid=$!
for _ in $(seq 100); do
    grep -q 'listening on' "$work/agent.log" && break
    sleep 0.05
done
addr=$(sed -n 's/.*listening on \([^ ]*\).*/\1/p' "$work/agent.log" | head -1)
[ -n "$addr" ] || { cat "$work/agent.log"; echo "agent did not start" >&2; exit 1; }
echo "agent listening on $addr"

echo "== ctl exec"
run "$bin/ctl" exec "$addr" 'echo "hello from $(hostname) as $USER"; ls /'
set +e
run "$bin/ctl" exec "$addr" 'echo out; echo err >&2; exit 3'
echo "exit status: $?"
set -e
printf '\n$ printf abc | ctl exec -i %s "wc -c"\n' "$addr"
printf abc | "$bin/ctl" exec -i "$addr" 'wc -c'
run "$bin/ctl" exec "$addr" -- printf '%s\n' 'a b' c
printf '\n$ time ctl exec %s "head -c 1G /dev/urandom" | sha256sum\n' "$addr"
time ("$bin/ctl" exec "$addr" 'head -c 1G /dev/urandom' | sha256sum)

echo
echo "== agent log (one audit line per exec)"
cat "$work/agent.log"
