"""The HTTP surface around embeddings: models, health, readiness, metrics, options, disconnects."""

from __future__ import annotations

import asyncio
import base64
import time
from typing import Any

import httpx
import numpy as np
import pytest
from litestar import Litestar, Request, post
from litestar.testing import TestClient

from gateway.api import EXCEPTION_HANDLERS, cancel_on_disconnect
from tests.servers import gateway_process


def metric(base: str, name: str, model: str) -> float:
    for line in httpx.get(f"{base}/metrics").text.splitlines():
        if line.startswith(f"{name}{{") and f'model="{model}"' in line:
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} for {model} not in /metrics")


def test_models_list_has_openai_shape_modalities_and_dimension(gateway_url: str) -> None:
    body = httpx.get(f"{gateway_url}/v1/models").json()
    assert body["object"] == "list"
    cards = {card["id"]: card for card in body["data"]}
    assert cards["siglip-tiny"]["object"] == "model"
    assert cards["siglip-tiny"]["modalities"] == ["image", "text"]
    assert cards["siglip-tiny"]["dimensions"] == 32
    assert cards["siglip-text"]["modalities"] == ["text"]
    assert cards["siglip-mrl"]["matryoshka_dimensions"] == [8, 16, 64]
    assert httpx.get(f"{gateway_url}/v1/models/siglip2-tiny").json()["id"] == "siglip2-tiny"
    assert httpx.get(f"{gateway_url}/v1/models/nope").status_code == 404


def test_health_and_ready(gateway_url: str) -> None:
    assert httpx.get(f"{gateway_url}/health").json() == {"status": "ok"}
    ready = httpx.get(f"{gateway_url}/ready")
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready"


def test_embeddings_alias_without_v1(gateway_url: str) -> None:
    response = httpx.post(f"{gateway_url}/embeddings", json={"model": "siglip-tiny", "input": "a"})
    assert response.status_code == 200
    assert response.json()["object"] == "list"


def test_matryoshka_dimensions_truncate_and_renormalise(gateway_url: str) -> None:
    def embed(dimensions: int | None) -> np.ndarray:
        body = {"model": "siglip-mrl", "input": ["a cat", "a dog"], "encoding_format": "float"}
        if dimensions:
            body["dimensions"] = dimensions
        response = httpx.post(f"{gateway_url}/v1/embeddings", json=body)
        assert response.status_code == 200, response.text
        return np.array([row["embedding"] for row in response.json()["data"]])

    full, short = embed(None), embed(16)
    assert full.shape == (2, 32)
    assert short.shape == (2, 16)
    np.testing.assert_allclose(np.linalg.norm(short, axis=1), 1.0, atol=1e-6)
    head = full[:, :16] / np.linalg.norm(full[:, :16], axis=1, keepdims=True)
    np.testing.assert_allclose(short, head, atol=1e-6)
    np.testing.assert_allclose(embed(32), full, atol=1e-7)  # its own dimension is always allowed


def test_float_answers_are_the_float32_vectors_in_their_shortest_form(gateway_url: str) -> None:
    """Each number in a float answer parses back to exactly the float32 the base64 answer carries,
    written as float32's shortest decimal (as OpenAI writes them), not the 17 digits of its float64."""
    texts = ["a cat", "a dog", "a photo of seven bridges"]

    def embed(encoding_format: str) -> list[Any]:
        body = {"model": "siglip-tiny", "input": texts, "encoding_format": encoding_format}
        response = httpx.post(f"{gateway_url}/v1/embeddings", json=body)
        assert response.status_code == 200, response.text
        return [row["embedding"] for row in response.json()["data"]]

    exact = np.stack([np.frombuffer(base64.b64decode(row), "<f4") for row in embed("base64")])
    floats = embed("float")
    np.testing.assert_array_equal(np.array(floats, dtype=np.float32), exact)
    for row, want in zip(floats, exact, strict=True):
        assert [repr(number) for number in row] == [str(value) for value in want]  # numpy's shortest float32


@pytest.mark.parametrize(("field", "value"), [("input_type", "query"), ("task", "retrieval.passage"), ("user", "u1")])
def test_optional_fields_are_accepted(gateway_url: str, field: str, value: str) -> None:
    response = httpx.post(f"{gateway_url}/v1/embeddings", json={"model": "siglip-tiny", "input": "a", field: value})
    assert response.status_code == 200, response.text


def test_metrics_count_requests_and_computed_parts(gateway_url: str) -> None:
    before = metric(gateway_url, "gateway_model_parts_total", "siglip2-tiny")
    busy_before = metric(gateway_url, "gateway_model_forward_seconds_total", "siglip2-tiny")
    httpx.post(f"{gateway_url}/v1/embeddings", json={"model": "siglip2-tiny", "input": ["a", "b", "c"]})
    assert metric(gateway_url, "gateway_model_parts_total", "siglip2-tiny") == before + 3
    assert metric(gateway_url, "gateway_model_forward_seconds_total", "siglip2-tiny") > busy_before
    assert "gateway_requests_total" in httpx.get(f"{gateway_url}/metrics").text


def test_client_disconnect_drops_its_queued_work(gateway_url: str) -> None:
    model = "siglip-wide"  # wide enough that 1000 texts take several seconds
    before = metric(gateway_url, "gateway_model_parts_total", model)
    httpx.post(f"{gateway_url}/v1/embeddings", json={"model": model, "input": ["warm", "up"]})
    assert metric(gateway_url, "gateway_model_parts_total", model) == before + 2
    texts = [f"text number {i}" for i in range(1000)]  # under the default queue bound of 1024
    with pytest.raises(httpx.TimeoutException):
        httpx.post(f"{gateway_url}/v1/embeddings", json={"model": model, "input": texts}, timeout=0.5)
    time.sleep(1.0)
    computed = metric(gateway_url, "gateway_model_parts_total", model) - before - 2
    time.sleep(1.0)
    assert metric(gateway_url, "gateway_model_parts_total", model) - before - 2 == computed  # nothing still running
    assert computed < len(texts)
    assert metric(gateway_url, "gateway_model_queued", model) == 0


def test_gateway_process_stops_cleanly(model_dirs: dict[str, object], tmp_path: object) -> None:
    """Start and stop a second process: the lifespan closes engines without errors in the log."""
    from pathlib import Path

    workdir = Path(str(tmp_path))
    config = {"models": [{"name": "m", "provider": "siglip", "model": str(model_dirs["siglip"])}]}
    with gateway_process(config, workdir) as base:
        assert httpx.post(f"{base}/v1/embeddings", json={"model": "m", "input": "a"}).status_code == 200
    log = next(workdir.glob("gateway-*.log")).read_text()
    assert "Traceback" not in log


def test_work_cancelled_from_within_is_a_retryable_503_not_a_bare_500() -> None:
    """A CancelledError that no client caused (a library bug below) still gets the OpenAI envelope."""

    async def interrupted() -> dict[str, str]:
        raise asyncio.CancelledError

    @post("/work", status_code=200)
    async def work(request: Request[Any, Any, Any]) -> dict[str, str]:
        return await cancel_on_disconnect(request.receive, interrupted())

    app = Litestar([work], exception_handlers=EXCEPTION_HANDLERS)
    with TestClient(app) as client:
        response = client.post("/work")
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "interrupted"
    assert response.json()["error"]["type"] == "server_error"
