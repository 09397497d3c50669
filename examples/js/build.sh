#!/usr/bin/env bash
# Builds the JavaScript example guest: bash build.sh OUT.wasm
# componentize-js is pinned in package.json/package-lock.json and installed here by npm.
# (package.json also names @bytecodealliance/preview2-shim: componentize-js 0.23 imports it
# but declares it only as a devDependency, so `npm ci` would leave it out.)
set -euo pipefail
out=$(realpath -m "$1")
here=$(cd "$(dirname "$0")" && pwd)
cd "$here"
if [ ! -x node_modules/.bin/componentize-js ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund --loglevel=error >&2
fi
# StarlingMonkey (componentize-js 0.23) is built against WASI 0.2.10: the same interfaces as
# the 0.2.12 files in ../wit, which Wasmtime's host serves to both (semver-compatible).
wit=$(mktemp -d)
trap 'rm -rf "$wit"' EXIT
cp -r ../wit/. "$wit"
sed -i 's/0\.2\.12/0.2.10/g' "$wit"/*.wit "$wit"/deps/*.wit
mkdir -p "$(dirname "$out")"
# componentize-js reads the WIT through a WASI sandbox that needs absolute paths.
node_modules/.bin/componentize-js "$here/app.js" --wit "$wit" --world-name http-guest -o "$out.tmp" >&2
mv "$out.tmp" "$out"
