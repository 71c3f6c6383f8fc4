#!/usr/bin/env bash
# Starts a fresh local 3-region cluster (release build, fsync on), runs the post
# benchmarks recorded in docs/benchmarks.md, and stops the cluster.
#
#   scripts/bench.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-15}"
cargo build --release --quiet
bin=target/release/spaceraft
data_dir="$(mktemp -d)"
base_port="${BENCH_BASE_PORT:-7101}"
endpoints="127.0.0.1:${base_port},127.0.0.1:$((base_port + 1)),127.0.0.1:$((base_port + 2))"
"$bin" dev --data-dir "$data_dir" --base-port "$base_port" >"$data_dir/dev.out" 2>&1 &
dev_pid=$!
trap 'kill -TERM "$dev_pid" 2>/dev/null; wait "$dev_pid" 2>/dev/null; rm -rf "$data_dir"' EXIT
# Wait for the cluster to elect a leader (dev prints its summary then).
for _ in $(seq 1 300); do
  grep -q "leader: node" "$data_dir/dev.out" 2>/dev/null && break
  sleep 0.1
done
# The cluster runs secured (TLS, certificates): the bench dials as its operator.
# shellcheck disable=SC1091
. "$data_dir/spacectl.env"
echo "== 64 clients, 256-byte posts, ${secs} s"
"$bin" bench post --endpoints "$endpoints" --clients 64 --size 256 --secs "$secs"
echo "== 1 client, 256-byte posts, ${secs} s"
"$bin" bench post --endpoints "$endpoints" --clients 1 --size 256 --secs "$secs" --baseline-secs 0
