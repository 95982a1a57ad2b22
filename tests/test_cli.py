"""Start-up: config from YAML and the environment, and one clear line when weights can't load."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from gateway.cli import progress_lines
from gateway.config import DEFAULT_MODEL, load_settings
from tests.servers import ROOT, RawHost, Send


def run_cli(
    *args: str, env: dict[str, str] | None = None, offline: bool = True, timeout_s: float = 120
) -> subprocess.CompletedProcess[str]:
    """The CLI as a process; `offline` sets HF_HUB_OFFLINE=1, else the hub is tried (and unreachable here)."""
    environment = {k: v for k, v in os.environ.items() if k not in {"HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"}}
    environment |= {"HF_HUB_OFFLINE": "1"} if offline else {}
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        cwd=ROOT,
        env=environment | (env or {}),
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def error_line(stderr: str) -> str:
    """The one error line, which must be the last line, after any log lines; no traceback anywhere."""
    lines = stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("gateway: error:")]
    assert errors == lines[-1:], stderr
    assert "Traceback" not in stderr
    return errors[0]


def write_config(path: Path, models: list[dict[str, object]], **extra: object) -> Path:
    path.write_text(yaml.safe_dump({"models": models, **extra}))
    return path


def test_bad_model_path_exits_with_one_line(tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "c.yaml", [{"name": "siglip-tiny", "provider": "siglip", "model": str(tmp_path / "missing")}]
    )
    result = run_cli("serve", "--config", str(config), "--port", "1")
    assert result.returncode == 2
    line = error_line(result.stderr)
    assert "siglip-tiny" in line
    assert "local directory" in line


def test_default_model_offline_exits_with_one_line_naming_it() -> None:
    result = run_cli("serve", "--port", "1", env={"GATEWAY_CONFIG": ""})
    assert result.returncode == 2
    assert DEFAULT_MODEL in error_line(result.stderr)


def test_default_model_without_the_hub_says_what_it_loads_and_fails_within_a_minute(tmp_path: Path) -> None:
    # No HF_HUB_OFFLINE and an empty hub cache: what a first start on a host without the hub does.
    started = time.monotonic()
    result = run_cli(
        "serve", "--port", "1", env={"GATEWAY_CONFIG": "", "HF_HOME": str(tmp_path)}, offline=False, timeout_s=60
    )
    took = time.monotonic() - started
    assert result.returncode == 2
    line = error_line(result.stderr)
    assert DEFAULT_MODEL in line
    assert "local directory" in line
    loading = [n for n, text in enumerate(result.stderr.splitlines()) if f"loading model {DEFAULT_MODEL}" in text]
    assert loading, result.stderr
    assert "hub repository" in result.stderr.splitlines()[loading[0]]
    assert took < 60


def test_a_hub_that_never_answers_is_given_up_after_its_timeout(tmp_path: Path) -> None:
    hub = RawHost()

    def never_answer(_send: Send) -> None:
        time.sleep(60)

    hub.missing = never_answer  # type: ignore[method-assign,assignment]
    env = {"GATEWAY_CONFIG": "", "HF_HOME": str(tmp_path), "HF_ENDPOINT": hub.url(""), "HF_HUB_ETAG_TIMEOUT": "2"}
    try:
        started = time.monotonic()
        result = run_cli("serve", "--port", "1", env=env, offline=False, timeout_s=45)
        took = time.monotonic() - started
    finally:
        hub.close()
    assert result.returncode == 2
    line = error_line(result.stderr)
    assert f"the hub at {hub.url('')} is unreachable" in line
    assert took < 30


def test_config_from_environment_variable_and_unknown_provider(tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.yaml", [{"name": "x", "provider": "no-such-provider", "model": "m"}])
    result = run_cli("serve", env={"GATEWAY_CONFIG": str(config)})
    assert result.returncode == 2
    assert "no-such-provider" in error_line(result.stderr)


def test_invalid_config_is_one_line(tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.yaml", [{"name": "x", "provider": "siglip", "model": "m"}], port="not-a-port")
    result = run_cli("serve", "--config", str(config))
    assert result.returncode == 2
    assert "port" in result.stderr


def test_yaml_then_environment_then_arguments(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = write_config(
        tmp_path / "c.yaml",
        [{"name": "a", "provider": "siglip", "model": "/models/a", "device": "cpu"}],
        port=9001,
        host="0.0.0.0",
        images={"max_bytes": 1234},
    )
    settings = load_settings(config)
    assert (settings.port, settings.host, settings.limits.max_image_bytes) == (9001, "0.0.0.0", 1234)
    assert settings.models[0].provider_options == {"model": "/models/a", "device": "cpu"}
    monkeypatch.setenv("GATEWAY_PORT", "9002")
    monkeypatch.setenv("GATEWAY_IMAGES__MAX_BYTES", "99")
    settings = load_settings(config)
    assert (settings.port, settings.limits.max_image_bytes, settings.host) == (9002, 99, "0.0.0.0")
    assert load_settings(config, port=9003).port == 9003


def test_defaults_serve_siglip2_base_without_a_config() -> None:
    settings = load_settings(None)
    assert [(m.name, m.provider, m.provider_options["model"]) for m in settings.models] == [
        (DEFAULT_MODEL, "siglip", DEFAULT_MODEL)
    ]


def test_a_long_load_reports_progress_with_the_bytes_downloaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    blobs = tmp_path / "models--org--model" / "blobs"
    blobs.mkdir(parents=True)
    caplog.set_level(logging.INFO, logger="gateway")
    with progress_lines("served-name", "org/model", every_s=0.05):
        (blobs / "abc.incomplete").write_bytes(b"x" * 2_500_000)  # a download under way
        time.sleep(0.3)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("still loading model served-name")]
    assert lines, caplog.text
    assert lines[-1].endswith(", 2.5 MB in the hub cache"), lines
    count = len(lines)
    time.sleep(0.15)
    assert len([r for r in caplog.records if "still loading" in r.getMessage()]) == count, "reported after the load"


def test_startup_heap_frozen_so_full_collections_stay_short() -> None:
    """A full GC over torch's objects stops the loop for 200+ ms; frozen, it walks only new objects."""
    import gc

    import torch
    import transformers

    from gateway.cli import freeze_startup_heap

    assert torch.__version__ and transformers.__version__  # the heap a served model brings
    try:
        freeze_startup_heap()
        assert gc.get_freeze_count() > 50_000
        started = time.perf_counter()
        gc.collect()
        assert time.perf_counter() - started < 0.05
    finally:
        gc.unfreeze()
