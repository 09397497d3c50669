#!/usr/bin/env bash
# Time from `edgefn deploy` to the first answer of the new version from each of three real
# runners (goal ≤ 1 s for the hello function), with release builds on 127.0.0.1.
#
# The control plane and three runners (region tokyo, tokyo, osaka; heartbeats every 30 s,
# so only the push stream can be this fast) run as separate `edgefn` processes, security
# on: the CLI with the administrator's token, runners enrolled with bootstrap tokens and
# talking to the node listener over mTLS. Each round
# deploys a new version — hello, echo, hello, … (an echo answer is JSON, hello's is text) —
# and polls every runner until it answers with the new version.
#
# Peer, in the same run: a runner started standalone on a manifest naming the same hello
# .wasm file: process start to its first 200 (what a node needs when the artifact is
# already on its disk, without any control plane).
#
#   bash bench/deploy-latency.sh [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${1:-6}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/edgefn-target}"
cargo build --release --quiet --bin edgefn
cargo build --manifest-path examples/Cargo.toml --release --quiet --target wasm32-wasip2 \
  --target-dir "$CARGO_TARGET_DIR/guests" -p hello -p echo
EDGEFN="$CARGO_TARGET_DIR/release/edgefn"
GUESTS="$CARGO_TARGET_DIR/guests/wasm32-wasip2/release"
WORK="$(mktemp -d)"
PIDS=()
cleanup() { kill "${PIDS[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
export RUST_LOG=warn

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now_ms() { date +%s%3N; }

CP_PORT="$(free_port)"
CP="http://127.0.0.1:$CP_PORT"
"$EDGEFN" control-plane --listen "127.0.0.1:$CP_PORT" --node-listen "127.0.0.1:$(free_port)" \
  --data-dir "$WORK/cp" >"$WORK/cp.log" &
PIDS+=($!)
until curl -fs "$CP/api/v1/openapi.json" >/dev/null && [ -s "$WORK/cp/admin-token" ]; do sleep 0.05; done
# Security on, as in production: the administrator's token, a bootstrap token per runner.
export EDGEFN_TOKEN="$(cat "$WORK/cp/admin-token")"

RUNNERS=()
for spec in tokyo-1:tokyo tokyo-2:tokyo osaka-1:osaka; do
  name="${spec%%:*}"; region="${spec##*:}"; port="$(free_port)"
  bootstrap="$("$EDGEFN" --url "$CP" nodes token create --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')"
  "$EDGEFN" runner --control-plane "$CP" --bootstrap-token "$bootstrap" \
    --listen "127.0.0.1:$port" --admin-listen 127.0.0.1:0 \
    --node-id "$name" --labels "region=$region" --cache-dir "$WORK/$name/cache" \
    --state-dir "$WORK/$name/state" >"$WORK/$name.log" &
  PIDS+=($!)
  RUNNERS+=("http://127.0.0.1:$port/")
done
until [ "$("$EDGEFN" --url "$CP" nodes list --json | grep -c '"online"')" -ge 3 ]; do sleep 0.1; done
"$EDGEFN" --url "$CP" functions create hello >/dev/null
"$EDGEFN" --url "$CP" routes add --path / --function hello >/dev/null

# Milliseconds until $1 answers with a body containing $2.
first_answer() {
  local url="$1" want="$2" start="$3"
  until curl -s "$url" | grep -q "$want"; do :; done
  echo $(( $(now_ms) - start ))
}

echo "round  wasm   deploy call   first answer: tokyo-1 tokyo-2 osaka-1   slowest"
worst_all=0
for round in $(seq 1 "$ROUNDS"); do
  if (( round % 2 == 1 )); then wasm=hello; want="Hello, edgefn"; else wasm=echo; want='"method"'; fi
  start="$(now_ms)"
  "$EDGEFN" --url "$CP" deploy hello --wasm "$GUESTS/$wasm.wasm" >/dev/null
  called=$(( $(now_ms) - start ))
  times=()
  for url in "${RUNNERS[@]}"; do
    first_answer "$url" "$want" "$start" >"$WORK/t.$round.${#times[@]}" &
    times+=($!)
  done
  wait "${times[@]}"
  t=(); slowest=0
  for i in 0 1 2; do v="$(cat "$WORK/t.$round.$i")"; t+=("$v"); (( v > slowest )) && slowest=$v; done
  (( slowest > worst_all )) && worst_all=$slowest
  printf "%5d  %-5s  %8d ms   %24s ms   %5d ms\n" "$round" "$wasm" "$called" "${t[0]} ${t[1]} ${t[2]}" "$slowest"
done
echo "slowest first answer over all rounds: $worst_all ms (goal <= 1000 ms)"

# The peer: a standalone runner with the artifact on disk.
cat >"$WORK/edge.toml" <<EOF
[[functions]]
id = "hello"
version = 1
path = "$GUESTS/hello.wasm"

[[routes]]
path = "/"
function = "hello"
EOF
for i in 1 2 3; do
  port="$(free_port)"
  start="$(now_ms)"
  "$EDGEFN" runner --manifest "$WORK/edge.toml" --listen "127.0.0.1:$port" --admin-listen 127.0.0.1:0 \
    --cache-dir "$WORK/peer-$i" >/dev/null &
  pid=$!
  took="$(first_answer "http://127.0.0.1:$port/" "Hello, edgefn" "$start")"
  kill "$pid"; wait "$pid" 2>/dev/null || true
  echo "peer: standalone runner, process start to first 200: $took ms"
done
