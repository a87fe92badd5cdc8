#!/usr/bin/env bash
# The project's test command (README): every test of every workspace crate, including the
# CUDA kernels' own source run on the CPU through the host emulation. Installs what that needs
# (CUDA's host headers, from the pinned pip packages, into .cuda-toolchain/) on first use.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/install-cuda-toolchain.sh >/dev/null
cargo test --workspace --features emulation,candle "$@"
