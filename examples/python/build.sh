#!/usr/bin/env bash
# Builds the Python example guest: bash build.sh OUT.wasm
# componentize-py is pinned in requirements.txt and installed into a virtualenv under
# ${EDGEFN_TOOLCHAINS:-~/.cache/edgefn-toolchains}.
set -euo pipefail
out=$(realpath -m "$1")
here=$(cd "$(dirname "$0")" && pwd)
cd "$here"
venv="${EDGEFN_TOOLCHAINS:-$HOME/.cache/edgefn-toolchains}/python-$(sha256sum requirements.txt | cut -c1-12)"
if [ ! -x "$venv/bin/componentize-py" ]; then
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r requirements.txt >&2
fi
mkdir -p "$(dirname "$out")"
"$venv/bin/componentize-py" -d ../wit -w http-guest componentize app -o "$out.tmp" >&2
mv "$out.tmp" "$out"
