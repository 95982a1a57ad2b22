"""Start-up: config from YAML and the environment, and one clear line when weights can't load."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gateway.config import DEFAULT_MODEL, load_settings
from tests.servers import ROOT


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def write_config(path: Path, models: list[dict[str, object]], **extra: object) -> Path:
    path.write_text(yaml.safe_dump({"models": models, **extra}))
    return path


def test_bad_model_path_exits_with_one_line(tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "c.yaml", [{"name": "siglip-tiny", "provider": "siglip", "model": str(tmp_path / "missing")}]
    )
    result = run_cli("serve", "--config", str(config), "--port", "1")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "siglip-tiny" in lines[0]
    assert "local directory" in lines[0]
    assert "Traceback" not in result.stderr


def test_default_model_offline_exits_with_one_line_naming_it() -> None:
    result = run_cli("serve", "--port", "1", env={"GATEWAY_CONFIG": ""})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert DEFAULT_MODEL in lines[0]


def test_config_from_environment_variable_and_unknown_provider(tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.yaml", [{"name": "x", "provider": "no-such-provider", "model": "m"}])
    result = run_cli("serve", env={"GATEWAY_CONFIG": str(config)})
    assert result.returncode == 2
    assert "no-such-provider" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


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
