"""The gateway's vectors equal the raw transformers computation, alone and in mixed batches."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.images_data import b64, data_uri, png
from tests.reference import RawSiglip
from tests.servers import ImageHost

TOLERANCE = 1e-5
TEXTS = ["a photo of a cat", "hello world", "the quick brown fox jumps over the lazy dog " * 8, "x"]


def _vectors(response: httpx.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert [row["index"] for row in data] == list(range(len(data)))
    return np.array([row["embedding"] for row in data], dtype=np.float32)


@pytest.fixture(scope="module", params=["siglip", "siglip2"])
def family(request: pytest.FixtureRequest, model_dirs: dict[str, Path]) -> tuple[str, RawSiglip]:
    name = {"siglip": "siglip-tiny", "siglip2": "siglip2-tiny"}[request.param]
    return name, RawSiglip(model_dirs[request.param])


def test_text_image_and_fused_vectors_match_raw_model(
    gateway_url: str, image_host: ImageHost, family: tuple[str, RawSiglip]
) -> None:
    model, raw = family
    images = [png(seed) for seed in range(3)]
    url = image_host.add("/fidelity-0.png", images[0], content_type="image/png")
    body = {
        "model": model,
        "encoding_format": "float",
        "input": [
            *TEXTS,
            {"image": url},
            {"image": data_uri(images[1])},
            {"type": "image_base64", "image_base64": b64(images[2])},
            {"content": [{"type": "text", "text": TEXTS[0]}, {"type": "image_url", "image_url": {"url": url}}]},
        ],
    }
    got = _vectors(httpx.post(f"{gateway_url}/v1/embeddings", json=body, timeout=60))
    expected = np.vstack([raw.texts(TEXTS), raw.images(images), raw.fused(TEXTS[0], images[0])[None]])
    np.testing.assert_allclose(got, expected, atol=TOLERANCE)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_base64_encoding_is_little_endian_float32_of_the_same_vector(gateway_url: str) -> None:
    def embed(fmt: str) -> list[object]:
        response = httpx.post(
            f"{gateway_url}/v1/embeddings",
            json={"model": "siglip-tiny", "input": TEXTS[:2], "encoding_format": fmt},
            timeout=60,
        )
        assert response.status_code == 200
        return [row["embedding"] for row in response.json()["data"]]

    floats, encoded = embed("float"), embed("base64")
    decoded = [np.frombuffer(base64.b64decode(str(s)), dtype="<f4") for s in encoded]
    np.testing.assert_array_equal(np.array(decoded), np.array(floats, dtype=np.float32))


async def test_vectors_do_not_depend_on_batch_mates(
    gateway_url: str, image_host: ImageHost, family: tuple[str, RawSiglip]
) -> None:
    """Many concurrent requests of mixed kinds merge into micro-batches; every vector stays exact."""
    model, raw = family
    images = [png(seed) for seed in range(10, 14)]
    urls = [image_host.add(f"/mixed-{model}-{i}.png", data) for i, data in enumerate(images)]
    texts = [f"sentence number {i} about a dog" for i in range(12)]
    expected_text = raw.texts(texts)
    expected_image = raw.images(images)
    expected_fused = raw.fused(texts[0], images[0])

    async with httpx.AsyncClient(base_url=gateway_url, timeout=60) as client:

        async def one(payload: object) -> np.ndarray:
            body = {"model": model, "input": payload, "encoding_format": "float"}
            return _vectors(await client.post("/v1/embeddings", json=body))

        jobs = [one(text) for text in texts]
        jobs += [one([{"image": url}]) for url in urls]
        jobs += [one([texts[1], {"image": urls[1]}, texts[2]])]
        jobs += [one([{"content": [texts[0], {"image": data_uri(images[0])}]}])] * 3
        results = await asyncio.gather(*jobs)

    np.testing.assert_allclose(np.vstack(results[:12]), expected_text, atol=TOLERANCE)
    np.testing.assert_allclose(np.vstack(results[12:16]), expected_image, atol=TOLERANCE)
    np.testing.assert_allclose(
        results[16], np.vstack([expected_text[1], expected_image[1], expected_text[2]]), atol=TOLERANCE
    )
    for fused in results[17:]:
        np.testing.assert_allclose(fused[0], expected_fused, atol=TOLERANCE)
