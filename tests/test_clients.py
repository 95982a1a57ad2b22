"""The real client libraries, changed only in their base URL, against the gateway process."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import openai
import pytest

from tests.images_data import b64, data_uri, png
from tests.reference import RawSiglip
from tests.servers import ImageHost

TEXTS = ["a photo of a cat", "red sunset over the sea", "hello world"]
MODEL = "siglip-tiny"
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def raw(model_dirs: dict[str, Path]) -> RawSiglip:
    return RawSiglip(model_dirs["siglip"])


def test_openai_sync_default_settings_base64(gateway_url: str, raw: RawSiglip) -> None:
    client = openai.OpenAI(base_url=f"{gateway_url}/v1", api_key="unused")
    response = client.embeddings.create(model=MODEL, input=TEXTS)
    got = np.array([row.embedding for row in response.data], dtype=np.float32)
    np.testing.assert_allclose(got, raw.texts(TEXTS), atol=TOLERANCE)
    assert response.model == MODEL
    assert response.usage.prompt_tokens > 0
    assert response.usage.total_tokens == response.usage.prompt_tokens


def test_openai_sync_float_and_single_string(gateway_url: str, raw: RawSiglip) -> None:
    client = openai.OpenAI(base_url=f"{gateway_url}/v1", api_key="unused")
    response = client.embeddings.create(model=MODEL, input=TEXTS[0], encoding_format="float")
    assert isinstance(response.data[0].embedding, list)
    np.testing.assert_allclose(response.data[0].embedding, raw.texts(TEXTS[:1])[0], atol=TOLERANCE)


async def test_openai_async_default_and_float(gateway_url: str, raw: RawSiglip) -> None:
    client = openai.AsyncOpenAI(base_url=f"{gateway_url}/v1", api_key="unused")
    default = await client.embeddings.create(model=MODEL, input=TEXTS)
    floats = await client.embeddings.create(model=MODEL, input=TEXTS, encoding_format="float")
    for response in (default, floats):
        got = np.array([row.embedding for row in response.data], dtype=np.float32)
        np.testing.assert_allclose(got, raw.texts(TEXTS), atol=TOLERANCE)
    await client.close()


def test_openai_images_directly_in_input_and_through_extra_body(
    gateway_url: str, image_host: ImageHost, raw: RawSiglip
) -> None:
    image = png(seed=5)
    url = image_host.add("/client.png", image)
    items = [
        {"image": url},
        {"type": "image_url", "image_url": {"url": data_uri(image)}},
        {"type": "image_base64", "image_base64": b64(image)},
        {"content": [{"type": "text", "text": TEXTS[0]}, {"type": "image_url", "image_url": url}]},
    ]
    expected = np.vstack([np.repeat(raw.images([image]), 3, axis=0), raw.fused(TEXTS[0], image)[None]])
    client = openai.OpenAI(base_url=f"{gateway_url}/v1", api_key="unused")
    direct = client.embeddings.create(model=MODEL, input=items)  # type: ignore[arg-type]
    via_extra_body = client.embeddings.create(
        model=MODEL, input="placeholder", extra_body={"input": items, "input_type": "document"}
    )
    for response in (direct, via_extra_body):
        got = np.array([row.embedding for row in response.data], dtype=np.float32)
        np.testing.assert_allclose(got, expected, atol=TOLERANCE)


def test_openai_sdk_sees_typed_errors(gateway_url: str) -> None:
    client = openai.OpenAI(base_url=f"{gateway_url}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.NotFoundError) as not_found:
        client.embeddings.create(model="nope", input="a")
    assert not_found.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as bad:
        client.embeddings.create(model=MODEL, input=["a", {"image": "%%%"}])  # type: ignore[list-item]
    assert bad.value.param == "input[1].image"
    with pytest.raises(openai.RateLimitError), ThreadPoolExecutor(12) as pool:  # 12 x 4 parts, a queue of 4
        list(
            pool.map(
                lambda i: client.embeddings.create(model="siglip-small-queue", input=[f"{i} {j}" for j in range(4)]),
                range(12),
            )
        )


def test_langchain_default_sends_token_ids(gateway_url: str, raw: RawSiglip) -> None:
    from langchain_openai import OpenAIEmbeddings

    embeddings = OpenAIEmbeddings(model=MODEL, base_url=f"{gateway_url}/v1", api_key="unused")  # type: ignore[arg-type]
    documents = embeddings.embed_documents(TEXTS)
    query = embeddings.embed_query(TEXTS[1])
    np.testing.assert_allclose(np.array(documents), raw.texts(TEXTS), atol=TOLERANCE)
    np.testing.assert_allclose(query, raw.texts([TEXTS[1]])[0], atol=TOLERANCE)


async def test_langchain_plain_strings(gateway_url: str, raw: RawSiglip) -> None:
    from langchain_openai import OpenAIEmbeddings

    embeddings = OpenAIEmbeddings(
        model=MODEL,
        base_url=f"{gateway_url}/v1",
        api_key="unused",  # type: ignore[arg-type]
        check_embedding_ctx_length=False,
    )
    np.testing.assert_allclose(np.array(embeddings.embed_documents(TEXTS)), raw.texts(TEXTS), atol=TOLERANCE)
    np.testing.assert_allclose(np.array(await embeddings.aembed_documents(TEXTS)), raw.texts(TEXTS), atol=TOLERANCE)


async def test_llama_index_openai_like(gateway_url: str, raw: RawSiglip) -> None:
    from llama_index.embeddings.openai_like import OpenAILikeEmbedding

    embedding = OpenAILikeEmbedding(model_name=MODEL, api_base=f"{gateway_url}/v1", api_key="unused")
    np.testing.assert_allclose(np.array(embedding.get_text_embedding_batch(TEXTS)), raw.texts(TEXTS), atol=TOLERANCE)
    np.testing.assert_allclose(await embedding.aget_query_embedding(TEXTS[2]), raw.texts([TEXTS[2]])[0], atol=TOLERANCE)
