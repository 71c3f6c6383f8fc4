#!/usr/bin/env bash
# What security costs on the write path: `spaceraft bench post` against a fresh
# `spaceraft dev` secured (TLS on every port, certificates, the bench dialing
# as the dev operator) and one run with --insecure (plaintext), alternated in
# one sitting, ROUNDS rounds each; prints every run and the secured/plaintext
# ratio of the medians.
#
#   scripts/bench-security.sh [SECONDS] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-8}"
rounds="${2:-2}"
cargo build --release --quiet
bin=target/release/spaceraft
base_port="${BENCH_BASE_PORT:-7301}"
endpoints="127.0.0.1:${base_port},127.0.0.1:$((base_port + 1)),127.0.0.1:$((base_port + 2))"
results="$(mktemp)"

# run MODE CLIENTS: one fresh cluster, one bench; appends "MODE CLIENTS POSTS/S P50_US".
run() {
  local mode="$1" clients="$2" data_dir dev_pid
  data_dir="$(mktemp -d)"
  if [ "$mode" = plaintext ]; then
    "$bin" dev --insecure --data-dir "$data_dir" --base-port "$base_port" >"$data_dir/dev.out" 2>&1 &
  else
    "$bin" dev --data-dir "$data_dir" --base-port "$base_port" >"$data_dir/dev.out" 2>&1 &
  fi
  dev_pid=$!
  for _ in $(seq 1 300); do
    grep -q "leader: node" "$data_dir/dev.out" 2>/dev/null && break
    sleep 0.1
  done
  local report
  report="$(
    # shellcheck disable=SC1091
    [ "$mode" = plaintext ] || . "$data_dir/spacectl.env"
    "$bin" bench post --endpoints "$endpoints" --clients "$clients" --size 256 --secs "$secs" --baseline-secs 0 --json
  )"
  kill -TERM "$dev_pid" 2>/dev/null || true
  wait "$dev_pid" 2>/dev/null || true
  rm -rf "$data_dir"
  local rate p50
  rate="$(echo "$report" | sed -n 's/.*"posts_per_sec":\([0-9.]*\).*/\1/p')"
  p50="$(echo "$report" | sed -n 's/.*"p50_us":\([0-9]*\).*/\1/p')"
  printf '%-9s %3s clients: %9.0f posts/s  p50 %6s us\n' "$mode" "$clients" "$rate" "$p50"
  echo "$mode $clients $rate $p50" >>"$results"
}

for _ in $(seq 1 "$rounds"); do
  for clients in 64 1; do
    run secured "$clients"
    run plaintext "$clients"
  done
done

median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
for clients in 64 1; do
  secured="$(awk -v c="$clients" '$1 == "secured" && $2 == c { print $3 }' "$results" | median)"
  plain="$(awk -v c="$clients" '$1 == "plaintext" && $2 == c { print $3 }' "$results" | median)"
  awk -v c="$clients" -v s="$secured" -v p="$plain" \
    'BEGIN { printf "%3s clients: secured %.0f posts/s, plaintext %.0f posts/s: ratio %.2f\n", c, s, p, s / p }'
done
rm -f "$results"
