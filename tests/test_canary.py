"""The start-up canary: deployments of one model must agree on fixed probes before serving."""

from __future__ import annotations

import logging

import pytest

from gateway.canary import CanaryFailed, recheck_forever, run_canaries
from gateway.config import ModelSettings
from gateway.deployments import Deployment
from gateway.router import ServedModel
from providers.base import Modality, ProviderError
from tests.scripted import ScriptedProvider


def served(*providers: tuple[str, ScriptedProvider], **extra: object) -> ServedModel:
    settings = ModelSettings.model_validate(
        {
            "name": "m",
            "space": "shared",
            "deployments": [{"provider": "scripted", "name": name, **extra} for name, _ in providers],
        }
    )
    model = ServedModel(
        settings, [Deployment.from_settings(s, p) for s, (_, p) in zip(settings.deployments, providers, strict=True)]
    )
    model.settle_space()
    return model


async def test_deployments_that_agree_are_verified_and_served() -> None:
    a, b = ScriptedProvider(), ScriptedProvider()
    model = served(("a", a), ("b", b))
    assert await run_canaries([model]) == []
    assert [d.verified for d in model.deployments] == [True, True]
    assert [len(call) for call in a.calls] == [4]  # three texts and the generated image


async def test_a_deployment_in_another_space_stops_the_start_naming_both_and_the_cosine() -> None:
    model = served(("local", ScriptedProvider()), ("api", ScriptedProvider(salt="other weights")))
    with pytest.raises(CanaryFailed) as caught:
        await run_canaries([model])
    message = str(caught.value)
    assert "'local' and 'api' disagree" in message
    assert "cosine" in message
    assert "< canary_threshold 0.99" in message


async def test_an_unreachable_deployment_is_held_out_then_verified_when_it_answers() -> None:
    api = ScriptedProvider(steps=[ProviderError("connection refused")])
    model = served(("local", ScriptedProvider()), ("api", api))
    pending = await run_canaries([model])
    assert [d.verified for d in model.deployments] == [True, False]
    await _recheck_once(pending)
    assert [d.verified for d in model.deployments] == [True, True]


async def test_a_mismatch_found_later_keeps_the_deployment_out(caplog: pytest.LogCaptureFixture) -> None:
    api = ScriptedProvider(salt="other", steps=[ProviderError("down")])
    model = served(("local", ScriptedProvider()), ("api", api))
    pending = await run_canaries([model])
    with caplog.at_level(logging.ERROR):
        await _recheck_once(pending)
    assert model.deployments[1].verified is False
    assert "disagree" in caplog.text


async def test_canary_false_skips_the_comparison_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        model = served(("local", ScriptedProvider()), ("api", ScriptedProvider(salt="x")), canary=False)
        await run_canaries([model])
    assert "skips the canary" in caplog.text
    assert all(d.verified for d in model.deployments)


async def test_a_text_only_deployment_is_compared_on_the_text_probes() -> None:
    texts = ScriptedProvider(modalities=frozenset({Modality.TEXT}))
    both = ScriptedProvider()
    model = served(("both", both), ("texts", texts))
    await run_canaries([model])
    assert [len(call) for call in texts.calls] == [3]
    assert model.deployments[1].verified


async def _recheck_once(pending: list) -> None:  # type: ignore[type-arg]
    import asyncio

    task = asyncio.ensure_future(recheck_forever(pending, every_s=0.01))
    await asyncio.sleep(0.1)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
