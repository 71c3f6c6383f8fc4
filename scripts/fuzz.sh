#!/usr/bin/env bash
# Runs every fuzz target of fuzz/ (cargo fuzz, libFuzzer) one after the
# other, SECONDS each, and prints each one's final libFuzzer stats line.
# Installs cargo-fuzz when it is missing; works on a stable toolchain
# (RUSTC_BOOTSTRAP=1 lets it use the nightly flags it needs). Crashes land
# in fuzz/artifacts/<target>/; corpora in fuzz/corpus/<target>/ (neither is
# committed: minimized crashers go to fuzz/regressions/<target>/).
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]     # default: 600 s, every target
#
# FUZZ_SANITIZER (default address; `none` is faster), FUZZ_RSS_LIMIT_MB
# (default 2048), FUZZ_JOBS (cargo build jobs, default 1), and
# CARGO_TARGET_DIR are honoured.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-600}"
shift || true
targets=("$@")
if [ "${#targets[@]}" -eq 0 ]; then
  targets=(ws_frame api_request raft_message snapshot_chunk config_file data_dir_record)
fi
sanitizer="${FUZZ_SANITIZER:-address}"
rss_limit_mb="${FUZZ_RSS_LIMIT_MB:-2048}"
export RUSTC_BOOTSTRAP=1
export CARGO_BUILD_JOBS="${FUZZ_JOBS:-1}"
target_dir_args=()
if [ -n "${CARGO_TARGET_DIR:-}" ]; then target_dir_args=(--target-dir "$CARGO_TARGET_DIR"); fi

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "installing cargo-fuzz" >&2
  cargo install cargo-fuzz --locked
fi

logs="$(mktemp -d)"
trap 'rm -rf "$logs"' EXIT
failed=()
for target in "${targets[@]}"; do
  echo "== $target: ${secs} s"
  mkdir -p "fuzz/corpus/$target"
  seeds=()
  if [ -d "fuzz/regressions/$target" ]; then seeds=("fuzz/regressions/$target"); fi
  if cargo fuzz run --sanitizer "$sanitizer" "${target_dir_args[@]}" "$target" "fuzz/corpus/$target" "${seeds[@]}" -- \
    -max_total_time="$secs" -rss_limit_mb="$rss_limit_mb" -timeout=10 -print_final_stats=1 \
    >"$logs/$target.log" 2>&1; then
    grep -E '^#[0-9]+[[:space:]]+DONE' "$logs/$target.log" | tail -n 1 || true
    grep -E '^stat::(number_of_executed_units|peak_rss_mb|new_units_added)' "$logs/$target.log" || true
  else
    failed+=("$target")
    tail -n 40 "$logs/$target.log"
    echo "!! $target found a failure; its input is in fuzz/artifacts/$target/"
  fi
done
if [ "${#failed[@]}" -gt 0 ]; then
  echo "failed: ${failed[*]}"
  exit 1
fi
echo "every target ran ${secs} s without a failure"
