#!/usr/bin/env bash
# Installs the pinned CUDA 13.0 compiler (nvcc, nvvm, crt, runtime headers, cccl) from PyPI into a
# project-local virtual environment, and prints the nvcc path.
#
# Why pinned: unpinned pip pairs nvcc 13.0 with a newer nvvm whose PTX the CUDA 13.0 driver on our
# GPU machines rejects ("Unsupported .version"). The pins live here and in DEVELOPERS.md.
#
# Layout (stable, whatever the Python version):
#   $A3D_CUDA_TOOLCHAIN (default: <repo>/.cuda-toolchain)
#     venv/          the virtual environment
#     cu13 -> venv/lib/pythonX.Y/site-packages/nvidia/cu13   (bin/nvcc, include/)
# Idempotent: a second run with everything present only prints the path.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dest=${A3D_CUDA_TOOLCHAIN:-$repo/.cuda-toolchain}
pins=(
  nvidia-cuda-nvcc==13.0.88
  nvidia-nvvm==13.0.88
  nvidia-cuda-crt==13.0.88
  nvidia-cuda-runtime==13.0.96
  nvidia-cuda-cccl==13.0.85
)
stamp="$dest/.installed-$(printf '%s\n' "${pins[@]}" | sha256sum | cut -c1-16)"

if [ ! -f "$stamp" ] || [ ! -x "$dest/cu13/bin/nvcc" ]; then
  python=${PYTHON:-python3}
  command -v "$python" >/dev/null || { echo "install-cuda-toolchain: python3 not found" >&2; exit 1; }
  mkdir -p "$dest"
  [ -x "$dest/venv/bin/python" ] || "$python" -m venv "$dest/venv"
  "$dest/venv/bin/python" -m pip install --quiet --disable-pip-version-check "${pins[@]}" >&2
  site=$("$dest/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  [ -x "$site/nvidia/cu13/bin/nvcc" ] || { echo "install-cuda-toolchain: nvcc missing after install under $site/nvidia/cu13" >&2; exit 1; }
  ln -sfn "$site/nvidia/cu13" "$dest/cu13"
  rm -f "$dest"/.installed-*
  touch "$stamp"
fi
echo "$dest/cu13/bin/nvcc"
