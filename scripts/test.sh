#!/usr/bin/env bash
# The project's test command (README): every test of every workspace crate.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cargo test --workspace "$@"
