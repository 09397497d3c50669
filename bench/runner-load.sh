#!/usr/bin/env bash
# Load benchmark of the edge runner (issue 3): the hello wasi:http component over loopback
# with wrk at 1, 16 and 64 connections against
#   (a) edgefn-runner, instance_reuse = 1
#   (b) edgefn-runner, instance reuse on (100000)
#   (c) wasmtime serve -S cli (same Wasmtime release, fresh instance per request)
#   (d) wasmtime serve -S cli --max-instance-reuse-count 100000
#   (e) a bare hyper "hello" server
# all in one run so the ratios hold on a noisy machine. Not part of CI.
# Usage: bash bench/runner-load.sh [seconds per run, default 10]
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${1:-10}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/edgefn-target}"
TOOLS="$HOME/.cache/edgefn-bench-tools"
WASMTIME="$TOOLS/bin/wasmtime"

command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
if ! "$WASMTIME" --version 2>/dev/null | grep -q '^wasmtime 48\.'; then
  echo "installing wasmtime-cli 48.0.8 (about 15 minutes on 2 cores)..." >&2
  CARGO_TARGET_DIR="$TOOLS/target" cargo install wasmtime-cli --version 48.0.8 --locked --root "$TOOLS"
fi
cargo build --release -q -p edgefn-runner --bin edgefn-runner --example hyper-hello
(cd examples && cargo build --release -q --target wasm32-wasip2 -p hello --target-dir "$CARGO_TARGET_DIR/guests")
HELLO="$CARGO_TARGET_DIR/guests/wasm32-wasip2/release/hello.wasm"
RUNNER="$CARGO_TARGET_DIR/release/edgefn-runner"
HYPER="$CARGO_TARGET_DIR/release/examples/hyper-hello"

WORK=$(mktemp -d)
PIDS=()
cleanup() { for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT

wait_port() { for _ in $(seq 1 300); do curl -sf -o /dev/null "http://127.0.0.1:$1/" && return 0; sleep 0.1; done; echo "port $1 never answered" >&2; return 1; }

start_runner() { # name port admin_port reuse
  cat > "$WORK/$1.toml" <<TOML
[[functions]]
id = "hello"
version = 1
path = "$HELLO"
instance_reuse = $4
min_hot_instances = 4
max_hot_instances = 128

[[routes]]
path = "/*"
function = "hello"
TOML
  "$RUNNER" --manifest "$WORK/$1.toml" --listen "127.0.0.1:$2" --admin-listen "127.0.0.1:$3" \
    --cache-dir "$WORK/cache-$1" --tenant-max-concurrent 100000 --tenant-invocations-per-minute 4000000000 >/dev/null 2>&1 &
  PIDS+=($!)
  wait_port "$2"
}

start_runner reuse1 18001 19001 1
start_runner reuse 18002 19002 100000
"$WASMTIME" serve -S cli --addr 127.0.0.1:18003 "$HELLO" >/dev/null 2>&1 & PIDS+=($!)
wait_port 18003
"$WASMTIME" serve -S cli --max-instance-reuse-count 100000 --addr 127.0.0.1:18004 "$HELLO" >/dev/null 2>&1 & PIDS+=($!)
wait_port 18004
"$HYPER" 127.0.0.1:18005 >/dev/null 2>&1 & PIDS+=($!)
wait_port 18005

printf '%-44s %6s %12s %10s %10s\n' server conns "req/s" p50 p99
for conns in 1 16 64; do
  threads=$(( conns < 2 ? 1 : 2 ))
  for entry in "18001:(a) edgefn-runner instance_reuse=1" "18002:(b) edgefn-runner instance_reuse=100000" \
               "18003:(c) wasmtime serve -S cli" "18004:(d) wasmtime serve --max-instance-reuse-count 100000" \
               "18005:(e) bare hyper hello"; do
    port=${entry%%:*}; name=${entry#*:}
    out=$(wrk -t"$threads" -c"$conns" -d"${DURATION}s" --latency "http://127.0.0.1:$port/" 2>&1)
    rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
    p50=$(awk '$1=="50%" {print $2}' <<<"$out")
    p99=$(awk '$1=="99%" {print $2}' <<<"$out")
    non2xx=$(awk '/Non-2xx/ {print $4}' <<<"$out")
    printf '%-44s %6s %12s %10s %10s %s\n' "$name" "$conns" "$rps" "$p50" "$p99" "${non2xx:+non-2xx: $non2xx}"
  done
done
