"""Every config in the README that declares models is one the gateway accepts: the model settings
validate and every deployment's provider takes its options (built, not loaded: no weights here)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.config import ModelSettings
from providers.registry import create_provider

README = Path(__file__).resolve().parent.parent / "README.md"


def model_configs() -> list[dict[str, Any]]:
    configs = []
    for block in re.findall(r"```yaml\n(.*?)```", README.read_text(), re.S):
        document = yaml.safe_load(block)
        if isinstance(document, dict) and "models" in document:
            configs.extend(document["models"])
    return configs


def test_the_readme_shows_configs_of_every_local_family() -> None:
    kinds = {deployment.provider for m in model_configs() for deployment in ModelSettings.model_validate(m).deployments}
    assert {"siglip", "text_encoder", "jina_clip", "e5v", "qwen2_vl", "visrag", "jina"} <= kinds


@pytest.mark.parametrize("model", model_configs(), ids=lambda m: str(m.get("name")))
def test_a_readme_model_config_is_accepted(model: dict[str, Any]) -> None:
    settings = ModelSettings.model_validate(model)
    for deployment in settings.deployments:
        provider = create_provider(deployment.provider, dict(deployment.provider_options), name=deployment.name)
        assert provider is not None
