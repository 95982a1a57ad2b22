#!/usr/bin/env bash
# Create .venv and install the gateway into it. torch is pinned first: any looser torch
# requirement resolved first can pull several GB of CUDA wheels on a CPU-only machine.
#   EXTRAS=test bash scripts/setup.sh     # also the test tools and client libraries
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==${TORCH_VERSION:-2.13.0}"
spec="."
[ -n "${EXTRAS:-}" ] && spec=".[${EXTRAS}]"
.venv/bin/python -m pip install -q -c <(echo "torch==${TORCH_VERSION:-2.13.0}") -e "$spec"
echo "installed into .venv ($(.venv/bin/python -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'))"
