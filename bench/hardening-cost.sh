#!/usr/bin/env bash
# What the tenant-isolation hardening (issue 11: connection gate and idle timeouts, the body
# read before the tenant slot, owner-first routing, framing checks) costs on the request
# path: the hello component over loopback with wrk, through the runner built from this tree
# and through the runner built from a base commit (the peer, default: the commit before the
# hardening), alternating in one run so the ratios hold on a noisy machine. Not part of CI.
# Usage: bash bench/hardening-cost.sh [seconds per run, default 10] [base commit]
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${1:-10}"
BASE="${2:-46aa518}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/edgefn-target}"

command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }

WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  git worktree remove --force "$WORK/base" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

# This tree's runner, then the base commit's in a target directory of its own: two
# checkouts of one workspace must not share one (cargo would take the other checkout's
# crates for fresh). The base directory starts as a copy, so dependencies build once.
cargo build --release -q -p edgefn-runner --bin edgefn-runner
cp "$CARGO_TARGET_DIR/release/edgefn-runner" "$WORK/runner-now"
BASE_TARGET="$CARGO_TARGET_DIR-base"
if [ ! -d "$BASE_TARGET/release" ]; then
  mkdir -p "$BASE_TARGET" && cp -a "$CARGO_TARGET_DIR/release" "$BASE_TARGET/"
fi
git worktree add -q --detach "$WORK/base" "$BASE"
(cd "$WORK/base" && CARGO_TARGET_DIR="$BASE_TARGET" cargo build --release -q -p edgefn-runner --bin edgefn-runner)
cp "$BASE_TARGET/release/edgefn-runner" "$WORK/runner-base"
(cd examples && cargo build --release -q --target wasm32-wasip2 -p hello --target-dir "$CARGO_TARGET_DIR/guests")
HELLO="$CARGO_TARGET_DIR/guests/wasm32-wasip2/release/hello.wasm"

wait_port() { for _ in $(seq 1 300); do curl -sf -o /dev/null "http://127.0.0.1:$1/" && return 0; sleep 0.1; done; echo "port $1 never answered" >&2; return 1; }

start_runner() { # binary name port admin_port reuse
  cat > "$WORK/$2.toml" <<TOML
[[functions]]
id = "hello"
version = 1
path = "$HELLO"
instance_reuse = $5
min_hot_instances = 4
max_hot_instances = 128

[[routes]]
path = "/*"
function = "hello"
TOML
  "$WORK/$1" --manifest "$WORK/$2.toml" --listen "127.0.0.1:$3" --admin-listen "127.0.0.1:$4" \
    --cache-dir "$WORK/cache-$2" --tenant-max-concurrent 100000 --tenant-invocations-per-minute 4000000000 >/dev/null 2>&1 &
  PIDS+=($!)
  wait_port "$3"
}

start_runner runner-base base-reuse 18101 19101 100000
start_runner runner-now now-reuse 18102 19102 100000
start_runner runner-base base-fresh 18103 19103 1
start_runner runner-now now-fresh 18104 19104 1

printf '%-5s %-36s %6s %12s %10s %10s\n' round server conns "req/s" p50 p99
for round in ${ROUNDS:-1 2 3}; do
  for conns in 16 64; do
    for entry in "18101:base ($BASE) instance_reuse=100000" "18102:now instance_reuse=100000" \
                 "18103:base ($BASE) instance_reuse=1" "18104:now instance_reuse=1"; do
      port=${entry%%:*}; name=${entry#*:}
      out=$(wrk -t2 -c"$conns" -d"${DURATION}s" --latency "http://127.0.0.1:$port/" 2>&1)
      rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
      p50=$(awk '$1=="50%" {print $2}' <<<"$out")
      p99=$(awk '$1=="99%" {print $2}' <<<"$out")
      non2xx=$(awk '/Non-2xx/ {print $4}' <<<"$out")
      printf '%-5s %-36s %6s %12s %10s %10s %s\n' "$round" "$name" "$conns" "$rps" "$p50" "$p99" "${non2xx:+non-2xx: $non2xx}"
    done
  done
done
