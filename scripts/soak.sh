#!/usr/bin/env bash
# A long chaos run: every nemesis, disk faults included (each node's data
# directory on a tmpfs of its own, so run it as root), WAN latency between
# regions, release build. kill-region is listed twice so it takes two turns
# in every round: a 2-hour run kills a region well over 100 times. Prints the
# verdict; the report is in OUT/report.md.
#
#   scripts/soak.sh [SECONDS] [OUT] [SEED]     # defaults: 1800 s, ./soak-out, random
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-1800}"
out="${2:-./soak-out}"
seed_args=()
if [ -n "${3:-}" ]; then seed_args=(--seed "$3"); fi
cargo build --release --quiet
exec target/release/spaceraft chaos --secs "$secs" --out "$out" --base-port "${SOAK_BASE_PORT:-17300}" \
  --disk-mib 1024 \
  --nemesis kill-region,partition-region,kill-leader,pause,kill-all,kill-gateway,kill-region,wipe-disk,disk-full \
  "${seed_args[@]}"
