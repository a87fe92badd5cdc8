#!/usr/bin/env bash
# Regenerates src/kernel_params.rs, the Rust mirror of the kernels' launch-parameter structs
# (kernels/*_params.h), with bindgen. Needs libclang (Debian: apt-get install libclang-dev).
#
#   scripts/generate-bindings.sh           write src/kernel_params.rs
#   scripts/generate-bindings.sh --check   fail if the committed file differs from a fresh run
#
# bindgen-cli is pinned; if the one on PATH is another version, the pinned one is installed into
# .tools/ (ignored by git).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
version=0.72.1
out=src/kernel_params.rs

bindgen=bindgen
if ! command -v bindgen >/dev/null 2>&1 || [ "$(bindgen --version 2>/dev/null | awk '{print $2}')" != "$version" ]; then
  bindgen="$repo/.tools/bin/bindgen"
  if [ ! -x "$bindgen" ] || [ "$("$bindgen" --version | awk '{print $2}')" != "$version" ]; then
    echo "generate-bindings: installing bindgen-cli $version into .tools/" >&2
    cargo install --quiet --locked bindgen-cli --version "$version" --root "$repo/.tools" >&2
  fi
fi

tmp=$(mktemp)
trap 'rm -f "$tmp" "$tmp.rs" "$tmp.h"' EXIT
# One header including every kernels/*_params.h (sorted), so adding an op family's header is
# all it takes.
for header in kernels/*_params.h; do
  echo "#include \"$repo/$header\""
done > "$tmp.h"
{
  echo "//! Launch-parameter structs shared with the CUDA kernels, generated from kernels/*_params.h"
  echo "//! by scripts/generate-bindings.sh (bindgen $version). Do not edit: CI regenerates and compares."
  echo
  "$bindgen" "$tmp.h" \
    --allowlist-type 'A3d.*' --allowlist-var 'A3D_.*' \
    --no-prepend-enum-name --use-core \
    --raw-line '#![allow(non_camel_case_types, non_snake_case, dead_code)]' \
    -- -x c -std=c11
} > "$tmp.rs" 2>/dev/null || {
  echo "generate-bindings: bindgen failed (is libclang installed? apt-get install libclang-dev)" >&2
  "$bindgen" "$tmp.h" -- -x c >/dev/null
  exit 1
}
rustfmt --edition 2021 "$tmp.rs"

if [ "${1:-}" = "--check" ]; then
  if ! diff -u "$out" "$tmp.rs"; then
    echo "generate-bindings: $out is stale; run scripts/generate-bindings.sh and commit" >&2
    exit 1
  fi
  echo "generate-bindings: $out is up to date"
else
  cp "$tmp.rs" "$out"
  echo "generate-bindings: wrote $out"
fi
