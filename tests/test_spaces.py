"""One model, one vector space: configs that would mix spaces refuse to start, with one clear line."""

from __future__ import annotations

from pathlib import Path

from tests.test_cli import error_line, run_cli, write_config


def test_deployments_of_different_dimensions_refuse_to_start(tmp_path: Path, model_dirs: dict[str, Path]) -> None:
    deployments = [
        {"provider": "siglip", "name": "small", "model": str(model_dirs["siglip"])},
        {"provider": "siglip", "name": "wide", "model": str(model_dirs["siglip-wide"]), "priority": 1},
    ]
    config = write_config(tmp_path / "c.yaml", [{"name": "m", "deployments": deployments}])
    result = run_cli("serve", "--config", str(config), "--port", "1")
    assert result.returncode == 2
    line = error_line(result.stderr)
    assert "'small' has 32 dimensions and 'wide' has 384" in line


def test_deployments_of_different_weights_refuse_to_start_unless_declared(
    tmp_path: Path, model_dirs: dict[str, Path]
) -> None:
    deployments = [
        {"provider": "siglip", "name": "v1", "model": str(model_dirs["siglip"])},
        {"provider": "siglip", "name": "v2", "model": str(model_dirs["siglip2"])},
    ]
    config = write_config(tmp_path / "c.yaml", [{"name": "m", "deployments": deployments}])
    result = run_cli("serve", "--config", str(config), "--port", "1")
    assert result.returncode == 2
    line = error_line(result.stderr)
    assert "deployments 'v1' (siglip|" in line
    assert "are different vector spaces" in line
    assert "declare `space:`" in line


def test_a_declared_space_that_the_canary_disproves_refuses_to_start(
    tmp_path: Path, model_dirs: dict[str, Path]
) -> None:
    deployments = [
        {"provider": "siglip", "name": "v1", "model": str(model_dirs["siglip"])},
        {"provider": "siglip", "name": "v2", "model": str(model_dirs["siglip2"])},
    ]
    config = write_config(tmp_path / "c.yaml", [{"name": "m", "space": "same-weights", "deployments": deployments}])
    result = run_cli("serve", "--config", str(config), "--port", "1")
    assert result.returncode == 2
    line = error_line(result.stderr)
    assert "deployments 'v1' and 'v2' disagree on the canary probe" in line
    assert "cosine" in line
