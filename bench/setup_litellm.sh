#!/usr/bin/env bash
# Create a separate virtualenv with the LiteLLM proxy (litellm[proxy] 1.108.4) for bench/bench_upstream.py.
# Usage: bash bench/setup_litellm.sh   (venv path: ${LITELLM_VENV:-.venv-litellm}, relative to repo root)
# It never touches .venv: LiteLLM pins its own httpx, pydantic and uvicorn versions.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

VENV="${LITELLM_VENV:-.venv-litellm}"
PYTHON="${PYTHON:-python3}"
# 1.108.4: its `proxy` extra resolves from PyPI (1.108.8 to 1.108.14 pin litellm-enterprise and
# litellm-proxy-extras post-releases, 1.109 and later a litellm-proxy package, that PyPI does not serve here).
# Never 1.82.7, 1.82.8 or 1.107.0: compromised releases, withdrawn from PyPI.
VERSION="1.108.4"

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"

"$PY" -m pip install --upgrade pip
"$PY" -m pip install "litellm[proxy]==$VERSION"

# The local price map: no fetch from the internet (and no retries waited out) just to print the help.
LITELLM_LOCAL_MODEL_COST_MAP=True "$VENV/bin/litellm" --help > /dev/null
echo "LiteLLM $VERSION installed in $VENV"
