"""Deployments end to end: real gateway processes in front of a fake Jina API (its documented wire
format) and real local checkpoints. Local first; the paid API as the fallback of the same space;
faults that never yield a wrong vector; budgets under concurrency, in one process and across two
sharing Redis; cache hits that cost nothing; an upstream key that never leaks."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from gateway.canary import probe_image
from tests.fake_upstreams import (
    Canned,
    JinaFake,
    drop_last_vector,
    fake_vector,
    nan_as_base64_in_first,
    shorten_vectors,
    zero_first,
)
from tests.images_data import png
from tests.reference import RawSiglip
from tests.servers import RedisServer, gateway_process

pytestmark = pytest.mark.slow
JINA_KEY = "jina_test_secret_7f3a9c1e5b"
TOKEN_USD = 1.0  # usd_per_1m_tokens = 1e6: one USD per token keeps the arithmetic readable


class SiglipAsJina:
    """The fake Jina API's vectors: the local checkpoints' own (raw transformers) for their dimensions,
    so a local deployment and the API are truly one space, as jina-clip-v2 locally and Jina's API are."""

    def __init__(self, references: dict[int, RawSiglip]) -> None:
        self.references = references
        self.images = {hashlib.sha256(data).hexdigest(): data for data in (probe_image().data, png(1), png(2))}

    def __call__(self, key: str, dimension: int) -> np.ndarray:
        reference = self.references.get(dimension)
        *parts, _role = json.loads(key)
        if reference is None or len(parts) != 1:
            return fake_vector(key, dimension)
        kind, value = parts[0]
        vectors = reference.texts([value]) if kind == "text" else reference.images([self.images[value]])
        return np.asarray(vectors[0], dtype=np.float64)


@pytest.fixture(scope="module")
def references(model_dirs: dict[str, Path]) -> dict[int, RawSiglip]:
    return {32: RawSiglip(model_dirs["siglip"]), 384: RawSiglip(model_dirs["siglip-wide"])}


@pytest.fixture(scope="module")
def jina(references: dict[int, RawSiglip]) -> Iterator[JinaFake]:
    with JinaFake(api_key=JINA_KEY, vector_fn=SiglipAsJina(references)) as fake:
        yield fake


def jina_deployment(jina: JinaFake, name: str, dimensions: int, **extra: Any) -> dict[str, Any]:
    return {
        "provider": "jina",
        "name": name,
        "model": "jina-clip-v2",
        "base_url": jina.url,
        "dimensions": dimensions,
        "timeout_s": 1.5,
        "retry_deadline_s": 4,
        "max_attempts": 2,
        "backoff_initial_s": 0.05,
        "price": {"usd_per_1m_tokens": TOKEN_USD * 1e6},
        **extra,
    }


def budget_model(jina: JinaFake, usd_per_day: float) -> dict[str, Any]:
    return {
        "name": "jina-budget",
        "deployments": [jina_deployment(jina, "jina-budget", 32, budget={"usd_per_day": usd_per_day})],
    }


@pytest.fixture(scope="module")
def gateway(
    model_dirs: dict[str, Path], jina: JinaFake, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Path]]:
    wide = str(model_dirs["siglip-wide"])
    local = {"provider": "siglip", "model": wide, "max_queue": 1, "max_batch_size": 1}
    config = {
        "models": [
            {  # local first; Jina when the local queue is full
                "name": "clip",
                "space": "siglip-wide",
                "deployments": [{**local, "name": "local"}, jina_deployment(jina, "jina", 384, priority=1)],
            },
            {  # the API first; the local checkpoint when the API fails
                "name": "api-first",
                "space": "siglip-wide",
                "deployments": [
                    jina_deployment(jina, "jina-first", 384, breaker={"failure_threshold": 100}),
                    {"provider": "siglip", "model": wide, "name": "local-backup", "priority": 1},
                ],
            },
            {"name": "jina-only", "deployments": [jina_deployment(jina, "jina-only", 32)]},
            budget_model(jina, usd_per_day=100.0),
        ],
        "log_level": "info",
    }
    workdir = tmp_path_factory.mktemp("deployments")
    with gateway_process(config, workdir, env={"JINA_API_KEY": JINA_KEY}) as url:
        yield url, workdir


def post(url: str, model: str, inputs: Any, **extra: Any) -> httpx.Response:
    body = {"model": model, "input": inputs, "encoding_format": "float", **extra}
    return httpx.post(f"{url}/v1/embeddings", json=body, timeout=60)


def vectors(response: httpx.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    return np.array([row["embedding"] for row in response.json()["data"]], dtype=np.float32)


def data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def test_the_canary_checked_the_api_against_the_local_checkpoint_before_serving(
    gateway: tuple[str, Path], jina: JinaFake
) -> None:
    url, workdir = gateway
    ready = httpx.get(f"{url}/ready").json()
    assert ready["deployments"]["jina"] == {"model": "clip", "circuit": "closed", "verified": True}
    assert ready["deployments"]["local"]["verified"] is True
    probes = [body for body in jina.bodies() if {"text": "a photo of a dog running on a beach"} in body["input"]]
    assert len(probes) >= 2  # one per model whose deployments it compared ("clip" and "api-first")
    assert "agrees with" in "".join(path.read_text() for path in workdir.glob("*.log"))


async def test_a_saturated_local_deployment_falls_back_to_the_api_with_the_same_vectors(
    gateway: tuple[str, Path], jina: JinaFake, references: dict[int, RawSiglip]
) -> None:
    url, _ = gateway
    texts = [f"saturation probe number {i}" for i in range(12)]
    before = len(jina.requests)
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        responses = await asyncio.gather(
            *(
                client.post("/v1/embeddings", json={"model": "clip", "input": text, "encoding_format": "float"})
                for text in texts
            )
        )
    served_by = [r.headers.get("x-gateway-deployments") for r in responses]
    assert "local" in served_by
    assert "jina" in served_by  # a one-part queue cannot hold twelve concurrent requests
    reference = references[384].texts(texts)
    for response, expected in zip(responses, reference, strict=True):
        np.testing.assert_allclose(vectors(response)[0], expected, atol=1e-4)  # one space: either is right
    paid = [r for r in responses if r.headers["x-gateway-deployments"] == "jina"]
    for response in paid:
        assert float(response.headers["x-gateway-cost-usd"]) == response.json()["usage"]["total_tokens"] * TOKEN_USD
    assert len(jina.requests) - before == len(paid)
    for response in responses:
        if response.headers["x-gateway-deployments"] == "local":
            assert response.headers["x-gateway-cost-usd"] == "0.000000000"


def test_the_api_gets_exactly_the_bytes_that_were_hashed_and_a_cache_hit_never_reaches_it(
    gateway: tuple[str, Path], jina: JinaFake, references: dict[int, RawSiglip]
) -> None:
    url, _ = gateway
    image = png(1)
    first = post(url, "api-first", [{"image": data_uri(image)}, "a caption"])
    assert first.headers["x-gateway-deployments"] == "jina-first"
    assert jina.bodies()[-1]["input"] == [{"image": base64.b64encode(image).decode()}, {"text": "a caption"}]
    found = vectors(first)
    np.testing.assert_allclose(found[0], references[384].images([image])[0], atol=1e-4)
    calls = len(jina.requests)
    again = post(url, "api-first", [{"image": data_uri(image)}, "a caption"])
    np.testing.assert_array_equal(vectors(again), found)
    assert again.headers["x-gateway-cost-usd"] == "0.000000000"
    assert "x-gateway-deployments" not in again.headers
    assert len(jina.requests) == calls


FAULTS = {
    "500s": [Canned(500, {"detail": "internal error"}), Canned(503, {"detail": "overloaded"})],
    "garbage": [Canned(200, b"<html>not json</html>")] * 2,
    "missing-vector": [Canned(mutate=drop_last_vector)] * 2,
    "wrong-dimension": [Canned(mutate=shorten_vectors)] * 2,
    "nan": [Canned(mutate=nan_as_base64_in_first)] * 2,
    "zero-vector": [Canned(mutate=zero_first)] * 2,
    "hang": [Canned(delay_s=2.5)] * 2,
}


@pytest.mark.parametrize("fault", FAULTS)
def test_upstream_faults_fall_back_and_never_serve_a_wrong_vector(
    gateway: tuple[str, Path], jina: JinaFake, references: dict[int, RawSiglip], fault: str
) -> None:
    url, _ = gateway
    text = f"fault {fault}"
    jina.script(*FAULTS[fault])
    response = post(url, "api-first", [text])
    jina.unscript()  # a retry the deadline left out must not answer the next test
    np.testing.assert_allclose(vectors(response)[0], references[384].texts([text])[0], atol=1e-4)
    assert response.headers["x-gateway-deployments"] == "local-backup"
    assert response.headers["x-gateway-cost-usd"] == "0.000000000"


def test_a_refused_key_is_a_502_naming_the_deployment_and_the_key_never_leaks(
    gateway: tuple[str, Path], jina: JinaFake
) -> None:
    url, workdir = gateway
    jina.unscript()
    jina.script(Canned(401, {"detail": f"Incorrect API key provided: {JINA_KEY}"}))
    response = post(url, "jina-only", ["refused"])
    assert response.status_code == 502
    error = response.json()["error"]
    assert (error["code"], error["type"]) == ("upstream_refused", "server_error")
    assert "'jina-only'" in error["message"]
    assert JINA_KEY not in response.text
    assert JINA_KEY not in httpx.get(f"{url}/metrics").text
    assert JINA_KEY not in httpx.get(f"{url}/v1/models").text
    assert JINA_KEY not in httpx.get(f"{url}/ready").text
    assert JINA_KEY not in "".join(path.read_text() for path in workdir.glob("*.log"))
    assert all(r.headers["authorization"] == f"Bearer {JINA_KEY}" for r in jina.requests)


async def concurrent_spend(urls: list[str], texts: list[str]) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=60) as client:
        return await asyncio.gather(
            *(
                client.post(
                    f"{urls[i % len(urls)]}/v1/embeddings",
                    json={"model": "jina-budget", "input": text, "encoding_format": "float"},
                )
                for i, text in enumerate(texts)
            )
        )


def check_budget(responses: list[httpx.Response], spent: float, budget: float) -> None:
    """Never over the budget by more than one request's worth; the refused got 429 insufficient_quota."""
    ok = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code != 200]
    assert ok
    assert refused
    assert {r.status_code for r in refused} == {429}
    assert {r.json()["error"]["code"] for r in refused} == {"insufficient_quota"}
    assert all("deployment 'jina-budget'" in r.json()["error"]["message"] for r in refused)
    costs = [float(r.headers["x-gateway-cost-usd"]) for r in ok]
    assert spent == pytest.approx(sum(costs))
    assert spent <= budget + max(costs)


def budget_texts(tag: str) -> list[str]:
    return [f"{tag} request {i:02d} with a forty-byte text" for i in range(20)]  # ~11 tokens, ~50 reserved


def usage_total(url: str) -> float:
    return float(httpx.get(f"{url}/v1/usage?days=1").json()["deployments"].get("jina-budget", 0.0))


async def test_a_budget_spent_by_twenty_concurrent_requests_is_never_overrun(gateway: tuple[str, Path]) -> None:
    url, _ = gateway
    responses = await concurrent_spend([url], budget_texts("one process"))
    check_budget(responses, usage_total(url), budget=100.0)


@pytest.fixture
def shared_budget_gateways(
    model_dirs: dict[str, Path], jina: JinaFake, redis_server: RedisServer, tmp_path: Path
) -> Iterator[list[str]]:
    config = {"models": [budget_model(jina, usd_per_day=100.0)], "log_level": "warning"}
    env = {"JINA_API_KEY": JINA_KEY, "GATEWAY_REDIS_URL": redis_server.url}
    with gateway_process(config, tmp_path, env=env) as first, gateway_process(config, tmp_path, env=env) as second:
        yield [first, second]


async def test_two_gateways_sharing_redis_share_the_budget(shared_budget_gateways: list[str]) -> None:
    first, second = shared_budget_gateways
    warm = [
        *await concurrent_spend([first], ["first process alone"]),
        *await concurrent_spend([second], ["second alone"]),
    ]
    assert [r.status_code for r in warm] == [200, 200]  # both processes spend from the one budget
    responses = [*warm, *await concurrent_spend(shared_budget_gateways, budget_texts("two processes"))]
    assert usage_total(first) == usage_total(second)  # one ledger, read from either
    check_budget(responses, usage_total(first), budget=100.0)


def test_when_the_first_host_dies_the_api_takes_over_and_its_circuit_opens(
    model_dirs: dict[str, Path], jina: JinaFake, references: dict[int, RawSiglip], tmp_path: Path
) -> None:
    """Two hosts of one space: another gateway process serving the checkpoint (as a GPU host would), then
    the API. Killing the host moves its traffic to the API; its breaker opens and /ready says so."""
    host_config = {"models": [{"name": "tiny", "provider": "siglip", "model": str(model_dirs["siglip"])}]}
    with contextlib.ExitStack() as host_stack:
        host = host_stack.enter_context(gateway_process(host_config, tmp_path))
        host_deployment = {
            "provider": "openai_compatible",
            "name": "gpu-host",
            "base_url": f"{host}/v1",
            "model": "tiny",
            "dimensions": 32,
            "modalities": ["text", "image"],
            "timeout_s": 2,
            "retry_deadline_s": 1,
            "max_attempts": 1,
            "breaker": {"failure_threshold": 2, "cooldown_s": 60},
        }
        config = {
            "models": [
                {
                    "name": "tiny",
                    "space": "siglip-tiny",
                    "deployments": [host_deployment, jina_deployment(jina, "jina-tiny", 32, priority=1)],
                }
            ]
        }
        with gateway_process(config, tmp_path, env={"JINA_API_KEY": JINA_KEY}) as front:
            texts = [f"host text {i}" for i in range(4)]
            reference = references[32].texts(texts)
            served = post(front, "tiny", texts[0])
            assert served.headers["x-gateway-deployments"] == "gpu-host"
            np.testing.assert_allclose(vectors(served)[0], reference[0], atol=1e-5)
            host_stack.close()  # the host dies
            for text, expected in zip(texts[1:], reference[1:], strict=True):
                response = post(front, "tiny", text)
                assert response.headers["x-gateway-deployments"] == "jina-tiny"
                np.testing.assert_allclose(vectors(response)[0], expected, atol=1e-5)
            deployments = httpx.get(f"{front}/ready").json()["deployments"]
            assert deployments["gpu-host"]["circuit"] == "open"
            metrics = httpx.get(f"{front}/metrics").text
            assert 'gateway_deployment_skips_total{deployment="gpu-host",model="tiny",reason="open"} 1.0' in metrics
            assert 'gateway_deployment_circuit{deployment="gpu-host",model="tiny",state="open"} 1.0' in metrics
