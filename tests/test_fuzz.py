"""Schemathesis against a real gateway: generated requests, valid and not, answered as documented.

Every response must have a documented status, content type, headers and body, and no 5xx;
whatever the document calls invalid must be refused with a 4xx. A valid request may still get
a 4xx (an image to a text-only model, an URL that cannot be fetched offline), which a schema
cannot express, so `positive_data_acceptance` is off.

Schemathesis runs as its CLI: its pytest plugin fails under pytest 9 (it reads `Node._nodeid`),
and the CLI brings the coverage phase (each documented limit, just under and just over). The
run is deterministic, so a failure reproduces, and bounded (about 20 s on 2 cores). The
`/embeddings` and `/models` aliases share their handlers with `/v1/...` and are skipped.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import gateway_config
from tests.servers import gateway_process

FUZZED_MODELS = ("siglip-tiny", "siglip-text", "siglip-mrl")


@pytest.fixture(scope="module")
def fuzz_gateway(model_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A gateway (URL, work dir) with three models whose image URLs fail fast: there is no network."""
    config = gateway_config(model_dirs)
    config["models"] = [m for m in config["models"] if m["name"] in FUZZED_MODELS]
    config["images"] |= {"fetch_timeout_s": 0.5, "request_fetch_timeout_s": 1.0}
    config["log_level"] = "info"  # the access log says which request failed
    workdir = tmp_path_factory.mktemp("fuzz")
    with gateway_process(config, workdir) as url:
        yield url, workdir


def schemathesis_run(url: str, workdir: Path, *options: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "schemathesis.cli", "--no-color", "run", f"{url}/openapi.json", *options]
    return subprocess.run(command, cwd=workdir, capture_output=True, text=True, timeout=240, check=False)


def test_every_answer_is_documented_and_no_request_breaks_the_server(fuzz_gateway: tuple[str, Path]) -> None:
    url, workdir = fuzz_gateway
    result = schemathesis_run(
        url,
        workdir,
        *("--checks", "all", "--exclude-checks", "positive_data_acceptance"),
        *("--phases", "examples,coverage,fuzzing", "--max-examples", "60", "--generation-deterministic"),
        *("--workers", "1", "--request-timeout", "10", "--exclude-path", "/embeddings", "--exclude-path", "/models"),
    )
    log = "\n".join(p.read_text(errors="replace")[-4000:] for p in workdir.glob("gateway-*.log"))
    assert result.returncode == 0, f"{result.stdout[-12000:]}\n{result.stderr[-2000:]}\ngateway log:\n{log}"
    assert "No issues found" in result.stdout
