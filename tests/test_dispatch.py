"""Routing over a model's deployments: priority, fallback, breakers, budgets, one space."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from gateway.auth import ClientKey
from gateway.canary import probe_image
from gateway.config import BudgetSettings, ModelSettings
from gateway.context import RequestContext
from gateway.deployments import Deployment
from gateway.dispatch import Dispatcher, check_vectors
from gateway.errors import BadGateway, InsufficientQuota, RateLimited, ServiceUnavailable
from gateway.ledger import MemoryLedger
from gateway.router import ServedModel, SpaceMismatch
from providers.base import (
    EmbedOptions,
    EmbedResult,
    InputRejected,
    Item,
    Modality,
    Overloaded,
    ProviderError,
    UpstreamRefused,
)
from tests.scripted import ScriptedProvider, content_vector, text_items

OPTIONS = EmbedOptions()
PAID = {"usd_per_1m_tokens": 1_000_000.0}  # 1 USD per token: budgets run out after a few items


def served(*deployments: tuple[dict[str, Any], ScriptedProvider], **model: Any) -> ServedModel:
    settings = ModelSettings.model_validate({"name": "m", "deployments": [d for d, _ in deployments], **model})
    built = ServedModel(
        settings,
        [Deployment.from_settings(s, p) for s, (_, p) in zip(settings.deployments, deployments, strict=True)],
    )
    built.settle_space()
    return built


def deployment(name: str, **settings: Any) -> dict[str, Any]:
    return {"provider": "scripted", "name": name, **settings}


@pytest.fixture
def dispatcher() -> Dispatcher:
    return Dispatcher(MemoryLedger())


@pytest.fixture
def png() -> Item:
    return Item((probe_image(),))


async def test_the_first_priority_serves_and_the_fallback_is_not_called(dispatcher: Dispatcher) -> None:
    local, api = ScriptedProvider(), ScriptedProvider()
    model = served((deployment("local"), local), (deployment("api", priority=1, price=PAID), api))
    items = text_items("a", "b")
    context = RequestContext()
    result = await dispatcher.embed(model, items, OPTIONS, context)
    np.testing.assert_allclose(result.vectors, local.vectors(items))
    assert (len(local.calls), len(api.calls)) == (1, 0)
    assert context.spend.deployments == ["local"]
    assert context.spend.usd == 0


async def test_a_saturated_local_deployment_falls_back_to_the_paid_api_and_charges_it(dispatcher: Dispatcher) -> None:
    local = ScriptedProvider(steps=[Overloaded("queue full", retry_after=2)])
    api = ScriptedProvider(tokens_per_item=5)
    model = served((deployment("local"), local), (deployment("api", priority=1, price={"usd_per_1m_tokens": 2.0}), api))
    items = text_items("a", "b")
    context = RequestContext()
    result = await dispatcher.embed(model, items, OPTIONS, context)
    np.testing.assert_allclose(result.vectors, api.vectors(items))
    assert result.item_tokens == [5, 5]
    assert context.spend.deployments == ["api"]
    assert context.spend.usd == pytest.approx(10 * 2.0 / 1e6)
    assert model.deployments[1].counters.fallbacks == 1
    (spend,) = (await dispatcher.ledger.usage(_today())).values()
    assert spend == {"deployment:api": pytest.approx(10 * 2.0 / 1e6)}


async def test_a_failing_deployment_opens_its_circuit_and_is_then_skipped_without_a_call(
    dispatcher: Dispatcher,
) -> None:
    local = ScriptedProvider(steps=[ProviderError("boom"), ProviderError("boom")])
    api = ScriptedProvider()
    model = served(
        (deployment("local", breaker={"failure_threshold": 2, "cooldown_s": 60}), local),
        (deployment("api", priority=1), api),
    )
    for _ in range(3):
        await dispatcher.embed(model, text_items("x"), OPTIONS, RequestContext())
    assert len(local.calls) == 2  # the third request skipped it: circuit open
    assert len(api.calls) == 3
    assert model.deployments[0].breaker.state.value == "open"
    assert model.deployments[0].counters.skipped == {"failed": 2, "open": 1}


async def test_a_rejected_input_is_raised_at_once_naming_its_position_and_never_retried_elsewhere(
    dispatcher: Dispatcher,
) -> None:
    local = ScriptedProvider(steps=[InputRejected("too long", index=1)])
    api = ScriptedProvider()
    # the local deployment takes texts only, so it gets items 0 and 2 of the batch: index 1 there is item 2
    local.modalities = frozenset({Modality.TEXT})
    model = served((deployment("local"), local), (deployment("api", priority=1), api))
    items = text_items("a", "b", "c")
    with pytest.raises(InputRejected) as caught:
        await dispatcher.embed(model, items, OPTIONS, RequestContext())
    assert caught.value.index == 1
    assert api.calls == []


async def test_every_deployment_saturated_is_a_429_with_the_smallest_retry_after(dispatcher: Dispatcher) -> None:
    model = served(
        (deployment("a"), ScriptedProvider(steps=[Overloaded("full", retry_after=7)])),
        (deployment("b", priority=1), ScriptedProvider(steps=[Overloaded("rate limited", retry_after=3)])),
    )
    with pytest.raises(RateLimited) as caught:
        await dispatcher.embed(model, text_items("a"), OPTIONS, RequestContext())
    assert caught.value.retry_after == 3
    assert "'a' is saturated" in caught.value.message
    assert "'b' is saturated" in caught.value.message


async def test_failures_everywhere_are_a_503_and_refused_credentials_alone_a_502(dispatcher: Dispatcher) -> None:
    model = served((deployment("a"), ScriptedProvider(steps=[ProviderError("500 from upstream")])))
    with pytest.raises(ServiceUnavailable) as unavailable:
        await dispatcher.embed(model, text_items("a"), OPTIONS, RequestContext())
    assert unavailable.value.code == "model_unavailable"
    refused = served((deployment("b"), ScriptedProvider(steps=[UpstreamRefused("deployment 'b': invalid key")])))
    with pytest.raises(BadGateway) as bad_gateway:
        await dispatcher.embed(refused, text_items("a"), OPTIONS, RequestContext())
    assert bad_gateway.value.code == "upstream_refused"
    assert "'b'" in bad_gateway.value.message


@pytest.mark.parametrize(
    "result",
    [
        pytest.param(lambda items: EmbedResult(np.ones((len(items), 5), np.float32) / np.sqrt(5)), id="dimension"),
        pytest.param(lambda items: EmbedResult(np.full((len(items), 8), np.nan, np.float32)), id="nan"),
        pytest.param(lambda items: EmbedResult(np.ones((len(items), 8), np.float32)), id="not-unit"),
        pytest.param(lambda items: EmbedResult(np.ones((1, 8), np.float32) / np.sqrt(8)), id="count"),
    ],
)
async def test_malformed_vectors_are_never_served_and_move_on(dispatcher: Dispatcher, result: Any) -> None:
    bad, good = ScriptedProvider(steps=[result]), ScriptedProvider()
    model = served((deployment("bad"), bad), (deployment("good", priority=1), good))
    items = text_items("a", "b")
    found = await dispatcher.embed(model, items, OPTIONS, RequestContext())
    np.testing.assert_allclose(found.vectors, good.vectors(items))
    assert model.deployments[0].counters.failures == 1


async def test_items_go_to_the_deployments_that_take_their_modality(dispatcher: Dispatcher, png: Item) -> None:
    texts_only = ScriptedProvider(modalities=frozenset({Modality.TEXT}))
    both = ScriptedProvider()
    model = served((deployment("text"), texts_only), (deployment("both", priority=1), both))
    items = [*text_items("a"), png, *text_items("b")]
    result = await dispatcher.embed(model, items, OPTIONS, RequestContext())
    assert [len(c) for c in texts_only.calls] == [2]
    assert [len(c) for c in both.calls] == [1]
    np.testing.assert_allclose(result.vectors[1], content_vector(png, 8))


async def test_equal_priorities_share_load_by_requests_in_flight(dispatcher: Dispatcher) -> None:
    a, b = ScriptedProvider(), ScriptedProvider()
    model = served((deployment("a"), a), (deployment("b"), b))
    model.deployments[0].outstanding = 3  # a is busy
    await dispatcher.embed(model, text_items("x"), OPTIONS, RequestContext())
    assert (len(a.calls), len(b.calls)) == (0, 1)
    model.deployments[0].outstanding = 0
    model.deployments[1].outstanding = 2
    await dispatcher.embed(model, text_items("y"), OPTIONS, RequestContext())
    assert (len(a.calls), len(b.calls)) == (1, 1)


async def test_a_spent_deployment_budget_skips_it_and_the_free_local_deployment_still_serves(
    dispatcher: Dispatcher,
) -> None:
    api = ScriptedProvider(tokens_per_item=1)
    model = served((deployment("api", price=PAID, budget={"usd_per_day": 40.0}), api))
    # each item's reservation is bounded by its UTF-8 bytes + 8 tokens: 9 USD; real cost 1 USD
    for _ in range(4):
        await dispatcher.embed(model, text_items("a"), OPTIONS, RequestContext())
    with pytest.raises(InsufficientQuota) as caught:
        for _ in range(40):
            await dispatcher.embed(model, text_items("a"), OPTIONS, RequestContext())
    error = caught.value
    assert error.status_code == 429
    assert error.code == "insufficient_quota"
    assert "deployment 'api'" in error.message
    assert error.headers()["x-should-retry"] == "false"
    spent = sum(sum(day.values()) for day in (await dispatcher.ledger.usage(_today())).values())
    assert spent <= 40.0 * 2  # deployment and key scopes: only the deployment's here
    assert sum(len(c) for c in api.calls) <= 40


async def test_a_client_key_budget_stops_paid_calls_for_that_key_only(dispatcher: Dispatcher) -> None:
    local = ScriptedProvider(steps=[Overloaded("full")] * 10)
    api = ScriptedProvider(tokens_per_item=1)
    model = served((deployment("local"), local), (deployment("api", priority=1, price=PAID), api))
    poor = ClientKey("poor", None, None, BudgetSettings(usd_per_day=5.0))
    with pytest.raises(RateLimited) as saturated:  # the local deployment may free up: a plain 429
        await dispatcher.embed(model, text_items("a"), OPTIONS, RequestContext(key=poor))
    assert "budget of key 'poor' is spent" in saturated.value.message
    api_only = served((deployment("api-only", price=PAID), ScriptedProvider()))
    with pytest.raises(InsufficientQuota) as caught:  # only money would help
        await dispatcher.embed(api_only, text_items("a"), OPTIONS, RequestContext(key=poor))
    assert "key 'poor'" in caught.value.message
    rich = ClientKey("rich", None, None, BudgetSettings())
    context = RequestContext(key=rich)
    await dispatcher.embed(model, text_items("a"), OPTIONS, context)
    assert context.spend.usd == pytest.approx(1.0)
    assert dispatcher.spend_by_key == {"rich": pytest.approx(1.0)}


async def test_an_unverified_deployment_is_held_out(dispatcher: Dispatcher) -> None:
    api = ScriptedProvider()
    model = served((deployment("api"), api))
    model.deployments[0].verified = False
    with pytest.raises(ServiceUnavailable) as caught:
        await dispatcher.embed(model, text_items("a"), OPTIONS, RequestContext())
    assert "canary" in caught.value.message
    assert api.calls == []


def test_deployments_of_different_dimensions_or_spaces_refuse_to_start() -> None:
    with pytest.raises(SpaceMismatch, match=r"'a' has 8 dimensions and 'b' has 16"):
        served((deployment("a"), ScriptedProvider()), (deployment("b"), ScriptedProvider(dimension=16)))
    with pytest.raises(SpaceMismatch, match=r"declare `space:`"):
        served((deployment("a"), ScriptedProvider(space="x")), (deployment("b"), ScriptedProvider(space="y")))
    declared = served(
        (deployment("a"), ScriptedProvider(space="x")), (deployment("b"), ScriptedProvider(space="y")), space="clip"
    )
    assert declared.space == "declared:clip"


def _today() -> list[Any]:
    from datetime import UTC, datetime

    return [datetime.now(UTC).date()]


@pytest.mark.parametrize("count", [1, 3])
@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (np.nan, "non-finite"),
        (np.inf, "non-finite"),
        (1e30, "not unit length"),  # its float32 sum of squares overflows
        (0.0, "not unit length"),
        (0.5, "not unit length"),
    ],
)
def test_wrong_vectors_are_refused_one_row_or_several(count: int, value: float, problem: str) -> None:
    """One row takes a shorter check than several; both refuse the same vectors and pass good ones."""
    good = np.full((count, 16), 0.25, np.float32)  # unit length: 16 x 0.25^2
    assert check_vectors(EmbedResult(good), count, 16) is None
    bad = good.copy()
    bad[-1, 0] = value
    if value == 0.0:
        bad[-1] = 0.0
    if value == 0.5:
        bad[-1] = 0.5
    reason = check_vectors(EmbedResult(bad), count, 16)
    assert reason is not None and problem in reason
