#!/usr/bin/env bash
# Runs schemathesis (from PyPI, pinned) with the arguments given, installing it first into a
# virtual environment of its own. The API conformance test (control-plane tests,
# `conformance.rs`) drives it against the real control-plane binary.
# Usage: bash scripts/schemathesis.sh run URL/api/v1/openapi.json [options…]
set -euo pipefail
VENV="${EDGEFN_SCHEMATHESIS_VENV:-$HOME/.cache/edgefn-schemathesis}"
VERSION=4.32.5
if [ ! -x "$VENV/bin/st" ] || ! "$VENV/bin/pip" show schemathesis 2>/dev/null | grep -qx "Version: $VERSION"; then
  python3 -m venv "$VENV" >&2
  "$VENV/bin/pip" install -q "schemathesis==$VERSION" >&2
fi
exec "$VENV/bin/st" "$@"
