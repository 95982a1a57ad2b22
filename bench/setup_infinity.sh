#!/usr/bin/env bash
# Create a separate virtualenv with Infinity (infinity-emb 0.0.78) for benchmarking.
# Usage: bash bench/setup_infinity.sh   (venv path: ${INFINITY_VENV:-.venv-infinity}, relative to repo root)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

VENV="${INFINITY_VENV:-.venv-infinity}"
PYTHON="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"

"$PY" -m pip install --upgrade pip

# torch FIRST: the local CPU wheel (any other spec pulls the multi-GB CUDA build).
"$PY" -m pip install "torch==2.13.0"

# Pin torch so the resolver cannot replace it; never install torchvision
# (no CPU build available, the CUDA one breaks `import torch`).
# sentencepiece + protobuf: SigLIP's SiglipTokenizer (spiece.model) has no fast variant in transformers 4.x
# and needs both.
CONSTRAINTS="$(mktemp)"
trap 'rm -f "$CONSTRAINTS"' EXIT
echo "torch==2.13.0" > "$CONSTRAINTS"

"$PY" -m pip install -c "$CONSTRAINTS" \
    "infinity-emb[server,torch]==0.0.78" "transformers<5" aiohttp sentencepiece protobuf

if "$PY" -c "import torchvision" 2>/dev/null; then
    echo "torchvision got installed; removing it" >&2
    "$PY" -m pip uninstall -y torchvision
fi

"$VENV/bin/infinity_emb" v2 --help > /dev/null
echo "Infinity installed in $VENV"
