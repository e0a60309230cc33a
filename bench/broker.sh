#!/usr/bin/env bash
# The carrier's own figures (bench/broker_stream.rs): open latency and the
# throughput of one stream through one nats-server on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v nats-server >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nats-server
fi
exec cargo run --release --quiet -p rexec-broker --example broker-stream
