#!/usr/bin/env bash
# Spaceraft against etcd and NATS JetStream on this machine, one at a time,
# driven by the same generator (`spaceraft bench peers`), in alternating
# rounds; then 100 spaces over 1 space cluster and over 100. Writes the
# table into docs/benchmarks.md (between the "bench-peers" markers) and the
# plots into docs/plots/.
#
#   scripts/bench-peers.sh [SECS_PER_LOAD] [ROUNDS]     # defaults: 10 s, 2 rounds
#
# Environment: CLIENTS ("1 64 256"), SIZES ("256 4096"), SPREAD (100: the
# spaces spread over 1 and over SPREAD clusters), SPACERAFT_BIN (a built
# binary to use instead of building the release one), OUT (target/bench-peers),
# BENCH_DOC (docs/benchmarks.md) and PLOTS (docs/plots): where the table and
# plots go.
#
# Installs Debian's etcd-server, etcd-client and nats-server when missing
# (as root). Each three-member cluster runs on loopback with its data under
# target/bench-peers/ (the same disk for all). Spaceraft runs as
# `spaceraft dev` does (TLS on, fsync on every Raft append and vote); etcd
# with its defaults (fsync on every WAL write); NATS with its defaults
# (JetStream file storage, R3, synced every 2 minutes, not per write).
set -euo pipefail

SECS=${1:-10}
ROUNDS=${2:-2}
CLIENTS=${CLIENTS:-"1 64 256"}
SIZES=${SIZES:-"256 4096"}
SPREAD=${SPREAD:-100}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-$ROOT/target/bench-peers}
DATA=$OUT/data
RESULTS=$OUT/results.jsonl
BIN=${SPACERAFT_BIN:-$ROOT/target/release/spaceraft}
BENCH_DOC=${BENCH_DOC:-$ROOT/docs/benchmarks.md}
PLOTS=${PLOTS:-$ROOT/docs/plots}
PIDS=()

say() { printf '\n== %s\n' "$*" >&2; }

stop_all() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  PIDS=()
}
trap stop_all EXIT

install_peers() {
  local missing=()
  command -v etcd >/dev/null || missing+=(etcd-server)
  command -v etcdctl >/dev/null || missing+=(etcd-client)
  command -v nats-server >/dev/null || missing+=(nats-server)
  if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]}"
    if [ "$(id -u)" != 0 ]; then
      echo "bench-peers: ${missing[*]} missing; run as root or install them" >&2
      exit 1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >&2
  fi
}

wait_until() { # SECS CMD...: runs CMD until it succeeds, for at most SECS
  local deadline=$((SECONDS + $1)); shift
  until "$@" >/dev/null 2>&1; do
    if [ $SECONDS -ge $deadline ]; then echo "bench-peers: timed out waiting for: $*" >&2; return 1; fi
    sleep 0.2
  done
}

ETCD_URLS=http://127.0.0.1:23791,http://127.0.0.1:23792,http://127.0.0.1:23793
start_etcd() {
  local cluster=e1=http://127.0.0.1:23801,e2=http://127.0.0.1:23802,e3=http://127.0.0.1:23803
  for i in 1 2 3; do
    rm -rf "$DATA/etcd$i"
    etcd --name "e$i" --data-dir "$DATA/etcd$i" \
      --listen-client-urls "http://127.0.0.1:2379$i" --advertise-client-urls "http://127.0.0.1:2379$i" \
      --listen-peer-urls "http://127.0.0.1:2380$i" --initial-advertise-peer-urls "http://127.0.0.1:2380$i" \
      --initial-cluster "$cluster" --initial-cluster-state new --initial-cluster-token bench \
      --log-level error >"$OUT/etcd$i.log" 2>&1 &
    PIDS+=($!)
  done
  ETCDCTL_API=3 wait_until 30 etcdctl --endpoints "$ETCD_URLS" endpoint health
}

etcd_leader() { # the client URL of etcd's leader
  ETCDCTL_API=3 etcdctl --endpoints "$ETCD_URLS" endpoint status -w json | python3 -c '
import json, sys
for e in json.load(sys.stdin):
    if e["Status"]["header"]["member_id"] == e["Status"]["leader"]:
        print(e["Endpoint"])'
}

start_nats() {
  for i in 1 2 3; do
    rm -rf "$DATA/nats$i"
    local routes=()
    for j in 1 2 3; do [ "$j" != "$i" ] && routes+=("nats://127.0.0.1:4250$j"); done
    cat >"$OUT/nats$i.conf" <<EOF
server_name: n$i
listen: 127.0.0.1:4240$i
jetstream { store_dir: "$DATA/nats$i" }
cluster { name: bench, listen: 127.0.0.1:4250$i, routes: [${routes[0]}, ${routes[1]}] }
EOF
    nats-server -c "$OUT/nats$i.conf" >"$OUT/nats$i.log" 2>&1 &
    PIDS+=($!)
  done
  wait_until 30 bash -c 'exec 3<>/dev/tcp/127.0.0.1/42401'
}

start_spaceraft() {
  rm -rf "$DATA/spaceraft"
  "$BIN" dev --data-dir "$DATA/spaceraft" --base-port 7401 >"$OUT/spaceraft.log" 2>&1 &
  PIDS+=($!)
  wait_until 60 grep -q "Ctrl-C" "$OUT/spaceraft.log"
}

bench() { # SYSTEM ENDPOINTS: every load against one running cluster
  local system=$1 endpoints=$2
  for size in $SIZES; do
    for clients in $CLIENTS; do
      say "$system: $clients clients, $size B"
      SPACERAFT_LOG=warn "$BIN" bench peers --system "$system" --endpoints "$endpoints" --clients "$clients" \
        --size "$size" --secs "$SECS" --json | tee -a "$RESULTS"
    done
  done
}

run_system() {
  case $1 in
    spaceraft)
      start_spaceraft
      # shellcheck disable=SC1091
      (. "$DATA/spaceraft/spacectl.env" && bench spaceraft "$SPACERAFT_ENDPOINTS")
      ;;
    etcd) start_etcd; bench etcd "$(etcd_leader)" ;;
    nats) start_nats; bench nats nats://127.0.0.1:42401 ;;
  esac
  stop_all
}

install_peers
if [ -z "${SPACERAFT_BIN:-}" ]; then
  say "building"
  (cd "$ROOT" && cargo build --release --quiet)
fi
mkdir -p "$DATA"
: >"$RESULTS"
SYSTEMS=(spaceraft etcd nats)
for round in $(seq 1 "$ROUNDS"); do
  # Alternate the order, so no system always runs first or last.
  order=("${SYSTEMS[@]:$(( (round - 1) % 3 ))}" "${SYSTEMS[@]:0:$(( (round - 1) % 3 ))}")
  for system in "${order[@]}"; do
    say "round $round: $system"
    run_system "$system"
  done
done
for round in $(seq 1 "$ROUNDS"); do
  for per_cluster in "$SPREAD" 1; do
    clusters=$((SPREAD / per_cluster))
    label="$clusters clusters, $SPREAD spaces"
    [ "$clusters" = 1 ] && label="1 cluster, $SPREAD spaces"
    say "round $round: spaceraft, $label, 64 clients"
    SPACERAFT_LOG=warn "$BIN" bench peers --system spaceraft --own-cluster --spaces-per-cluster "$per_cluster" --spaces "$SPREAD" \
      --clients 64 --size 256 --secs "$SECS" --label "$label" --json | tee -a "$RESULTS"
  done
done

TABLE=$OUT/table.md
{
  echo "Measured by \`scripts/bench-peers.sh $SECS $ROUNDS\` on $(date -u +%Y-%m-%d)."
  echo "Machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, $(uname -sr); every process on these cores."
  echo "Versions: spaceraft $("$BIN" --version | awk '{print $2}') (release build, \`spaceraft dev\`: TLS, fsync on every Raft append on a quorum),"
  echo "$(etcd --version | head -1) (fsync on every WAL write), nats-server $(nats-server --version | awk '{print $2}')"
  echo "(JetStream file storage, R3; **no fsync per write**: it syncs every 2 minutes)."
  echo
  "$BIN" bench peers-report --results "$RESULTS" --plots "$PLOTS" --plots-link plots
} >"$TABLE"
python3 - "$BENCH_DOC" "$TABLE" <<'EOF'
import sys
doc_path, table_path = sys.argv[1], sys.argv[2]
doc, table = open(doc_path).read(), open(table_path).read()
begin, end = "<!-- bench-peers: begin -->", "<!-- bench-peers: end -->"
if begin in doc and end in doc:
    head, rest = doc.split(begin, 1)
    doc = head + begin + "\n" + table + end + rest.split(end, 1)[1]
else:
    doc += "\n## Against etcd and NATS JetStream\n\n" + begin + "\n" + table + end + "\n"
open(doc_path, "w").write(doc)
EOF
say "table written to $BENCH_DOC (and $TABLE)"
cat "$TABLE"
