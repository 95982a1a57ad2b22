"""The deployments config: the flat form still works, the example loads, secrets stay masked."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from gateway.app import build_models
from gateway.config import ModelSettings, load_settings
from gateway.ledger import Budget, MemoryLedger
from gateway.usage import last_days, usage_report
from tests.servers import ROOT

EXAMPLE = ROOT / "gateway.fallback.example.yaml"


def test_the_flat_form_is_one_deployment_named_after_the_model() -> None:
    model = ModelSettings.model_validate({"name": "m", "provider": "siglip", "model": "/x", "device": "cpu"})
    (deployment,) = model.deployments
    assert (deployment.name, deployment.provider, deployment.priority) == ("m", "siglip", 0)
    assert deployment.provider_options == {"model": "/x", "device": "cpu"}


def test_deployments_get_unique_names_and_duplicates_are_refused() -> None:
    model = ModelSettings.model_validate(
        {"name": "m", "deployments": [{"provider": "jina", "model": "a"}, {"provider": "jina", "model": "b"}]}
    )
    assert [d.name for d in model.deployments] == ["m/jina", "m/jina-2"]
    with pytest.raises(ValidationError, match="deployment names"):
        load_settings(
            None,
            models=[
                {"name": "a", "provider": "jina", "model": "x"},
                {"name": "b", "deployments": [{"provider": "jina", "name": "a", "model": "y"}]},
            ],
        )


def test_an_api_key_in_the_config_is_masked_in_reprs() -> None:
    model = ModelSettings.model_validate({"name": "m", "provider": "jina", "model": "x", "api_key": "jina_SECRET"})
    assert "jina_SECRET" not in repr(model)
    assert "jina_SECRET" not in str(model)
    assert model.deployments[0].provider_options["api_key"] == "jina_SECRET"  # the provider still gets it


def test_the_fallback_example_loads_and_builds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JINA_API_KEY", "jina_x")
    settings = load_settings(EXAMPLE)
    clip, voyage = settings.models
    assert [(d.name, d.provider, d.priority) for d in clip.deployments] == [
        ("local-gpu", "openai_compatible", 0),
        ("jina-api", "jina", 1),
    ]
    assert clip.deployments[1].budget.usd_per_month == 50
    assert (voyage.deployments[0].name, voyage.deployments[0].price.usd_per_1b_pixels) == ("voyage-multimodal-3", 0.6)
    assert [k.name for k in settings.auth.keys] == ["search-backend", "notebook"]
    models = build_models(settings)
    assert [[d.name for d in m.deployments] for m in models] == [["local-gpu", "jina-api"], ["voyage-multimodal-3"]]


def test_hash_key_prints_the_digest_the_config_stores() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "hash-key", "sk-mine"], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == hashlib.sha256(b"sk-mine").hexdigest()


def test_an_open_gateway_bound_beyond_loopback_warns(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(f"host: 0.0.0.0\nmodels: [{{name: m, provider: siglip, model: {tmp_path / 'missing'}}}]\n")
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--config", str(config), "--port", "1"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 2  # the missing checkpoint; the warning came first
    assert "no client keys are configured (auth.keys) and the gateway listens on 0.0.0.0" in result.stderr


async def test_usage_reports_spend_by_key_and_deployment_per_day() -> None:
    ledger = MemoryLedger()
    budgets = [Budget.for_deployment("jina"), Budget.for_key("team-a")]
    reservation = await ledger.reserve(budgets, 0.5)
    await ledger.settle(reservation, 0.25)
    await ledger.settle(await ledger.reserve([Budget.for_deployment("voyage")], 0.1), 0.1)
    report = await usage_report(ledger, 2)
    assert report["deployments"] == {"jina": 0.25, "voyage": 0.1}
    assert report["keys"] == {"team-a": 0.25}
    assert report["total_usd"] == pytest.approx(0.35)
    assert [row["date"] for row in report["data"]] == [day.isoformat() for day in last_days(2)]
    assert report["data"][-1]["deployments"] == {"jina": 0.25, "voyage": 0.1}
    assert report["data"][0]["total_usd"] == 0
