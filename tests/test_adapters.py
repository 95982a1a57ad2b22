"""The LangChain and llama-index adapters, as the real framework classes, against a gateway process on the
tiny SigLIP: their vectors are the gateway's own (raw HTTP) for texts in both roles and for images in every
accepted form, they batch at the framework's size, their async methods use the async client, and a bad
image surfaces as the openai SDK's error with the gateway's message naming the caller's element."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest
from PIL import Image

from gateway.adapters.langchain import GatewayEmbeddings
from gateway.adapters.llama_index import GatewayMultiModalEmbedding
from tests.images_data import data_uri, png
from tests.servers import ImageHost

pytestmark = pytest.mark.slow

MODEL = "siglip-tiny"
TEXTS = ["a photo of a cat", "red sunset over the sea", "hello world", "a bowl of soup", "two dogs"]
TOLERANCE = 1e-5  # the same pixels in another batch may differ in the last float32 bits


class Recorder:
    """Request hooks for the SDK's HTTP clients: the size and `input_type` of every batch sent."""

    def __init__(self) -> None:
        self.batches: list[tuple[int, str]] = []

    def record(self, request: httpx.Request) -> None:
        body = json.loads(request.content)
        self.batches.append((len(body["input"]), body["input_type"]))

    async def arecord(self, request: httpx.Request) -> None:
        self.record(request)

    def clients(self, url: str) -> dict[str, Any]:
        common = {"base_url": f"{url}/v1", "api_key": "unused", "max_retries": 0}
        sync = openai.OpenAI(**common, http_client=openai.DefaultHttpxClient(event_hooks={"request": [self.record]}))
        http = openai.DefaultAsyncHttpxClient(event_hooks={"request": [self.arecord]})
        return {"client": sync, "async_client": openai.AsyncOpenAI(**common, http_client=http)}


def gateway_vectors(url: str, inputs: list[Any], input_type: str = "document") -> np.ndarray:
    """The gateway's own answer, over raw HTTP with nothing of the adapters."""
    body = {"model": MODEL, "input": inputs, "input_type": input_type, "encoding_format": "float"}
    response = httpx.post(f"{url}/v1/embeddings", json=body, timeout=60)
    assert response.status_code == 200, response.text
    return np.array([row["embedding"] for row in response.json()["data"]], dtype=np.float64)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory, image_host: ImageHost) -> dict[str, Any]:
    """Three PNGs as files, their bytes, a URL for the first, and the gateway's vectors of each."""
    folder = tmp_path_factory.mktemp("adapter-images")
    encoded = [png(seed=seed) for seed in (3, 4, 5)]
    paths = []
    for i, data in enumerate(encoded):
        path = folder / f"image{i}.png"
        path.write_bytes(data)
        paths.append(path)
    return {"bytes": encoded, "paths": paths, "url": image_host.add("/adapter0.png", encoded[0])}


@pytest.fixture(scope="module")
def image_vectors(gateway_url: str, images: dict[str, Any]) -> np.ndarray:
    return gateway_vectors(gateway_url, [{"image": data_uri(data)} for data in images["bytes"]])


def close(got: Any, expected: np.ndarray) -> None:
    np.testing.assert_allclose(np.asarray(got, dtype=np.float64), expected, atol=TOLERANCE, rtol=0)


def test_langchain_texts_are_the_gateways_and_batched_by_chunk_size(gateway_url: str) -> None:
    recorder = Recorder()
    embeddings = GatewayEmbeddings(model=MODEL, chunk_size=2, **recorder.clients(gateway_url))
    close(embeddings.embed_documents(TEXTS), gateway_vectors(gateway_url, TEXTS, "document"))
    close(embeddings.embed_query(TEXTS[0]), gateway_vectors(gateway_url, TEXTS[:1], "query")[0])
    assert recorder.batches == [(2, "document"), (2, "document"), (1, "document"), (1, "query")]


def test_langchain_images_in_every_form(gateway_url: str, images: dict[str, Any], image_vectors: np.ndarray) -> None:
    recorder = Recorder()
    embeddings = GatewayEmbeddings(model=MODEL, image_chunk_size=4, **recorder.clients(gateway_url))
    first_path, data = images["paths"][0], images["bytes"][0]
    forms: list[Any] = [
        str(first_path),
        first_path,
        images["url"],
        data,
        bytearray(data),
        io.BytesIO(data),
        Image.open(first_path),
        data_uri(data),
    ]
    close(embeddings.embed_image(forms), np.repeat(image_vectors[:1], len(forms), axis=0))
    close(embeddings.embed_image([str(path) for path in images["paths"]]), image_vectors)
    assert recorder.batches == [(4, "document"), (4, "document"), (3, "document")]


async def test_langchain_async_methods_use_the_async_client(
    gateway_url: str, images: dict[str, Any], image_vectors: np.ndarray
) -> None:
    recorder = Recorder()
    clients = recorder.clients(gateway_url)
    sync_calls: list[httpx.Request] = []
    clients["client"] = openai.OpenAI(
        base_url=f"{gateway_url}/v1",
        api_key="unused",
        http_client=openai.DefaultHttpxClient(event_hooks={"request": [sync_calls.append]}),
    )
    embeddings = GatewayEmbeddings(model=MODEL, chunk_size=3, image_chunk_size=2, **clients)
    close(await embeddings.aembed_documents(TEXTS), gateway_vectors(gateway_url, TEXTS, "document"))
    close(await embeddings.aembed_query(TEXTS[1]), gateway_vectors(gateway_url, TEXTS[1:2], "query")[0])
    close(await embeddings.aembed_image(images["paths"]), image_vectors)
    assert recorder.batches == [(3, "document"), (2, "document"), (1, "query"), (2, "document"), (1, "document")]
    assert sync_calls == []
    await embeddings.aclose()


def test_langchain_bad_image_names_the_callers_element(gateway_url: str, images: dict[str, Any]) -> None:
    embeddings = GatewayEmbeddings(model=MODEL, base_url=f"{gateway_url}/v1", api_key="unused", image_chunk_size=2)
    with pytest.raises(openai.BadRequestError) as caught:
        embeddings.embed_image([*images["bytes"], b"this is not an image"])
    assert caught.value.param == "input[3].image"
    assert caught.value.code == "invalid_image"
    assert "input[3].image" in caught.value.message
    assert "input[1]" not in caught.value.message  # the batch's own index is gone
    embeddings.close()


def test_llama_index_texts_and_queries_are_the_gateways(gateway_url: str) -> None:
    recorder = Recorder()
    embed = GatewayMultiModalEmbedding(model_name=MODEL, embed_batch_size=2, **recorder.clients(gateway_url))
    close(embed.get_text_embedding_batch(TEXTS), gateway_vectors(gateway_url, TEXTS, "document"))
    close(embed.get_text_embedding(TEXTS[2]), gateway_vectors(gateway_url, TEXTS[2:3], "document")[0])
    close(embed.get_query_embedding(TEXTS[0]), gateway_vectors(gateway_url, TEXTS[:1], "query")[0])
    assert recorder.batches == [(2, "document"), (2, "document"), (1, "document"), (1, "document"), (1, "query")]


def test_llama_index_images_in_every_form(gateway_url: str, images: dict[str, Any], image_vectors: np.ndarray) -> None:
    recorder = Recorder()
    embed = GatewayMultiModalEmbedding(model_name=MODEL, embed_batch_size=2, **recorder.clients(gateway_url))
    data = images["bytes"][0]
    forms: list[Any] = [str(images["paths"][0]), images["url"], io.BytesIO(data), data, Image.open(io.BytesIO(data))]
    close(embed.get_image_embedding_batch(forms), np.repeat(image_vectors[:1], len(forms), axis=0))
    close(embed.get_image_embedding(str(images["paths"][2])), image_vectors[2])
    assert recorder.batches == [(2, "document"), (2, "document"), (1, "document"), (1, "document")]


async def test_llama_index_async_hooks_use_the_async_client(
    gateway_url: str, images: dict[str, Any], image_vectors: np.ndarray
) -> None:
    recorder = Recorder()
    clients = recorder.clients(gateway_url)
    sync_calls: list[httpx.Request] = []
    clients["client"] = openai.OpenAI(
        base_url=f"{gateway_url}/v1",
        api_key="unused",
        http_client=openai.DefaultHttpxClient(event_hooks={"request": [sync_calls.append]}),
    )
    embed = GatewayMultiModalEmbedding(model_name=MODEL, embed_batch_size=3, **clients)
    close(await embed.aget_text_embedding_batch(TEXTS), gateway_vectors(gateway_url, TEXTS, "document"))
    close(await embed.aget_query_embedding(TEXTS[3]), gateway_vectors(gateway_url, TEXTS[3:4], "query")[0])
    paths = [str(path) for path in images["paths"]]
    close(await embed.aget_image_embedding_batch(paths), image_vectors)
    close(await embed.aget_image_embedding(paths[1]), image_vectors[1])
    assert sorted(recorder.batches) == sorted(
        [(3, "document"), (2, "document"), (1, "query"), (3, "document"), (1, "document")]
    )
    assert sync_calls == []


def test_llama_index_bad_image_is_the_sdks_error_with_the_gateways_message(
    gateway_url: str, images: dict[str, Any]
) -> None:
    embed = GatewayMultiModalEmbedding(model_name=MODEL, api_base=f"{gateway_url}/v1", api_key="unused")
    with pytest.raises(openai.BadRequestError) as caught:
        embed.get_image_embedding_batch([images["bytes"][0], b"this is not an image"])
    assert caught.value.param == "input[1].image"
    assert caught.value.code == "invalid_image"
    assert "input[1].image" in caught.value.message


def test_missing_file_fails_before_any_request(gateway_url: str, tmp_path: Path) -> None:
    recorder = Recorder()
    embeddings = GatewayEmbeddings(model=MODEL, **recorder.clients(gateway_url))
    with pytest.raises(FileNotFoundError):
        embeddings.embed_image([str(tmp_path / "absent.png")])
    assert recorder.batches == []
