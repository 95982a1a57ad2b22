"""Shared fixtures: tiny checkpoints, tiktoken's file, an image host and the gateway process."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# Remote code the jina-clip tests load (and the gateways they start) is copied into transformers'
# modules cache: keep it in the checkout, not in the home directory. Set before transformers loads.
os.environ.setdefault("HF_MODULES_CACHE", str(Path(__file__).resolve().parent.parent / ".cache" / "hf-modules"))

from tests.servers import ROOT, ImageHost, RedisServer, gateway_process
from tests.tiny_models import build_siglip, build_siglip2

TIKTOKEN_DIR = ROOT / ".cache" / "tiktoken"
CL100K_FILE = "9b5ad71b2ce5302211f9c61530b329a4922fc6a4"


def pytest_configure(config: pytest.Config) -> None:
    """Token-id inputs need tiktoken's cl100k_base file; build it from a registry package once."""
    cache = Path(os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(TIKTOKEN_DIR)))
    for source in ("npm", "pypi"):  # js-tiktoken (MIT) first, as scripts/test.sh does
        if (cache / CL100K_FILE).is_file():
            break
        script = ROOT / "scripts" / "tiktoken_offline.py"
        subprocess.run([sys.executable, str(script), str(cache), "--source", source], check=False)


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {
        "siglip": build_siglip(root / "siglip"),
        "siglip2": build_siglip2(root / "siglip2"),
        "siglip-wide": build_siglip(root / "siglip-wide", width=384, layers=6),  # slow enough to queue work
    }


@pytest.fixture(scope="session")
def image_host() -> Iterator[ImageHost]:
    host = ImageHost()
    yield host
    host.close()


def gateway_config(model_dirs: dict[str, Path]) -> dict[str, Any]:
    siglip, siglip2 = str(model_dirs["siglip"]), str(model_dirs["siglip2"])
    return {
        "models": [
            {"name": "siglip-tiny", "provider": "siglip", "model": siglip},
            {"name": "siglip2-tiny", "provider": "siglip", "model": siglip2},
            {"name": "siglip-mrl", "provider": "siglip", "model": siglip, "matryoshka_dimensions": [8, 16, 64]},
            {"name": "siglip-text", "provider": "siglip", "model": siglip, "modalities": ["text"]},
            {"name": "siglip-vision", "provider": "siglip", "model": siglip, "modalities": ["image"]},
            {
                "name": "siglip-small-queue",
                "provider": "siglip",
                "model": str(model_dirs["siglip-wide"]),
                "max_queue": 4,
                "max_batch_size": 1,
            },
            {"name": "siglip-wide", "provider": "siglip", "model": str(model_dirs["siglip-wide"]), "max_batch_size": 4},
        ],
        "images": {"allowed_private_networks": ["127.0.0.1/32"], "max_bytes": 200_000, "fetch_timeout_s": 2},
        "log_level": "warning",
    }


@pytest.fixture(scope="session")
def gateway_url(model_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with gateway_process(gateway_config(model_dirs), tmp_path_factory.mktemp("gateway")) as url:
        yield url


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed: scripts/test.sh installs it with apt-get")
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()
