"""The OpenAI-compatible provider: exact bodies, query/document as a field or a prefix, images in this
gateway's schema, the dimension probe, vLLM and TEI error bodies, and a second gateway process as
the upstream (its vectors must equal what that gateway answers directly)."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from providers.base import (
    EmbedOptions,
    InputRejected,
    InputType,
    Item,
    Modality,
    ModelLoadError,
    Overloaded,
    ProviderError,
    Text,
)
from providers.http import HttpProvider
from providers.openai_compat import from_options
from providers.registry import create_provider
from tests.fake_upstreams import Canned, OpenAIFake, expected, make_image, running, texts
from tests.images_data import png
from tests.servers import free_port, gateway_process

NAME = "bge/gpu-host"


def provider(fake: OpenAIFake, **options: Any) -> HttpProvider:
    settings = {"base_url": f"{fake.url}/v1", "model": fake.model, "dimensions": fake.dimension}
    fast = {"retry_deadline_s": 2.0, "backoff_initial_s": 0.01, "backoff_max_s": 0.05}
    return from_options({**settings, **fast, **options}, name=NAME)


@pytest.fixture
def vllm() -> Iterator[OpenAIFake]:
    with OpenAIFake("vllm", model="BAAI/bge-m3", dimension=32, flexible=False) as server:
        yield server


async def test_plain_texts_body_and_headers(vllm: OpenAIFake) -> None:
    async with running(provider(vllm)) as p:
        assert p.info.space == "openai-compatible:BAAI/bge-m3"
        assert p.info.modalities == {Modality.TEXT}
        result = await p.embed(texts("first", "second"), EmbedOptions(input_type=InputType.QUERY))
    request = vllm.requests[0]
    assert request.path == "/v1/embeddings"
    assert "authorization" not in request.headers  # no key needed away from api.openai.com
    assert request.headers["content-type"] == "application/json"
    assert request.body == {"model": "BAAI/bge-m3", "input": ["first", "second"], "encoding_format": "base64"}
    np.testing.assert_allclose(result.vectors[1], expected([("text", "second")], None, 32), atol=1e-6)
    assert result.usage is not None
    assert result.usage.billed_tokens == sum(result.item_tokens) == 2 + 2


async def test_float_answers_when_asked_for_and_when_base64_is_ignored(vllm: OpenAIFake) -> None:
    """`encoding_format: float` for an upstream that refuses base64; an upstream that ignores the
    field and answers floats anyway is read the same. Both give the vectors the base64 call gives."""
    async with running(provider(vllm)) as p:
        exact = (await p.embed(texts("first", "second"), EmbedOptions())).vectors
    async with running(provider(vllm, encoding_format="float")) as p:
        asked = (await p.embed(texts("first", "second"), EmbedOptions())).vectors
    assert [body["encoding_format"] for body in vllm.bodies()] == ["base64", "float"]
    with OpenAIFake("tei", model="BAAI/bge-m3", dimension=32, ignores_encoding=True) as tei:
        async with running(provider(tei)) as p:
            ignored = (await p.embed(texts("first", "second"), EmbedOptions())).vectors
        assert tei.bodies()[0]["encoding_format"] == "base64"
    want = np.stack([expected([("text", t)], None, 32) for t in ("first", "second")])
    for got in (exact, asked, ignored):
        np.testing.assert_allclose(got, want, atol=1e-6)
    np.testing.assert_array_equal(exact, want.astype(np.float32))  # base64 is exact


async def test_prefixes_carry_query_and_document() -> None:
    with OpenAIFake("tei", model="intfloat/e5-base-v2", dimension=16) as tei:
        options = {"query_prefix": "query: ", "document_prefix": "passage: "}
        async with running(provider(tei, **options)) as p:
            assert p.info.space.startswith("openai-compatible:intfloat/e5-base-v2|prefixes=")
            query = await p.embed(texts("cats"), EmbedOptions(input_type=InputType.QUERY))
            await p.embed(texts("cats"), EmbedOptions(input_type=InputType.DOCUMENT))
            await p.embed(texts("cats"), EmbedOptions())
    assert [body["input"] for body in tei.bodies()] == [["query: cats"], ["passage: cats"], ["cats"]]
    np.testing.assert_allclose(query.vectors[0], expected([("text", "query: cats")], None, 16), atol=1e-6)


async def test_gateway_kind_sends_images_interleaved_items_input_type_and_dimensions() -> None:
    photo = png(seed=2)
    uri = f"data:image/png;base64,{base64.b64encode(photo).decode()}"
    digest = hashlib.sha256(photo).hexdigest()
    with OpenAIFake(model="jina-clip-v2", dimension=64, images=True, extra_fields=["input_type"]) as gateway:
        options = {
            "modalities": ["text", "image"],
            "fuses_parts": True,
            "input_type_field": "input_type",
            "dimensions": 16,
            "send_dimensions": True,
        }
        items = [Item((Text("a"),)), Item((make_image(photo),)), Item((Text("b"), make_image(photo)))]
        async with running(provider(gateway, **options)) as p:
            assert p.info.space == "openai-compatible:jina-clip-v2|dimensions=16"
            result = await p.embed(items, EmbedOptions(input_type=InputType.DOCUMENT))
    assert gateway.requests[0].body == {
        "model": "jina-clip-v2",
        "input": ["a", {"image": uri}, {"content": [{"text": "b"}, {"image": uri}]}],
        "encoding_format": "base64",
        "dimensions": 16,
        "input_type": "document",
    }
    parts = [[("text", "a")], [("image", digest)], [("text", "b"), ("image", digest)]]
    for row, item_parts in zip(result.vectors, parts, strict=True):
        np.testing.assert_allclose(row, expected(item_parts, "document", 16), atol=1e-6)


async def test_interleaved_items_need_fuses_parts(vllm: OpenAIFake) -> None:
    async with running(provider(vllm, modalities=["text", "image"])) as p:
        with pytest.raises(InputRejected, match="not interleaved parts"):
            await p.embed([Item((Text("a"), make_image(png())))], EmbedOptions())
    assert vllm.requests == []


def test_the_dimension_is_probed_when_not_configured(vllm: OpenAIFake) -> None:
    p = provider(vllm, dimensions=None)
    p.load()
    assert p.info.dimension == 32
    assert vllm.bodies() == [{"model": "BAAI/bge-m3", "input": ["probe"], "encoding_format": "base64"}]
    vllm.script(Canned(500, {"error": {"message": "engine dead"}}))
    with pytest.raises(ModelLoadError, match="engine dead; set `dimensions`"):
        provider(vllm, dimensions=None).load()
    with pytest.raises(ModelLoadError, match=r"cannot reach the upstream.*set `dimensions`"):
        from_options({"base_url": f"http://127.0.0.1:{free_port()}/v1", "model": "m"}, name=NAME).load()


@pytest.mark.parametrize("flavor", ["vllm", "vllm-legacy", "openai"])
async def test_vllm_and_openai_error_bodies_name_the_bad_item(flavor: str) -> None:
    with OpenAIFake(flavor, dimension=8) as fake:
        async with running(provider(fake)) as p:
            with pytest.raises(InputRejected) as raised:
                await p.embed(texts("a", "b", "", "d"), EmbedOptions())
    assert raised.value.index == 2
    assert (
        str(raised.value)
        == f"{NAME}: the upstream rejected this input (400): input[0]: input cannot be an empty string"
    )


async def test_tei_errors() -> None:
    with OpenAIFake("tei", dimension=8, max_batch=4) as tei:
        async with running(provider(tei)) as p:
            strings = [f"s{i}" for i in range(10)]
            result = await p.embed(texts(*strings), EmbedOptions())  # 413 over TEI's batch: halves until they fit
            assert [len(body["input"]) for body in tei.bodies()] == [10, 5, 2, 3, 5, 2, 3]
            np.testing.assert_allclose(result.vectors[9], expected([("text", "s9")], None, 8), atol=1e-6)
            assert result.usage is not None
            assert result.usage.calls == 4

            with pytest.raises(InputRejected, match=r"\(422\): input\[0\]: input cannot be an empty string"):
                await p.embed(texts(""), EmbedOptions())

            overloaded = Canned(429, {"error": "Model is overloaded", "error_type": "Overloaded"})
            tei.script(*[overloaded] * 4)
            with pytest.raises(Overloaded, match="Model is overloaded"):
                await p.embed(texts("x"), EmbedOptions())

            tei.script(Canned(424, {"error": "Embedding error: CUDA out of memory", "error_type": "Backend"}))
            with pytest.raises(ProviderError, match="424: Embedding error") as raised:
                await p.embed(texts("x"), EmbedOptions())
            assert type(raised.value) is ProviderError


def test_registry_kinds_and_option_checks() -> None:
    for kind in ("openai", "openai_compatible"):
        made = create_provider(kind, {"base_url": "http://gpu/v1", "model": "m", "dimensions": 4}, name="x")
        assert isinstance(made, HttpProvider)
    with pytest.raises(ValueError, match="send_dimensions needs `dimensions`"):
        from_options({"model": "m", "send_dimensions": True}, name="x")
    with pytest.raises(ValueError, match="not both"):
        from_options({"model": "m", "input_type_field": "input_type", "query_prefix": "q: "}, name="x")


@pytest.mark.slow
async def test_a_second_gateway_as_the_upstream(model_dirs: dict[str, Path], tmp_path: Path) -> None:
    """Texts, an image and an interleaved item through this provider equal what that gateway answers
    to plain httpx for the same inputs."""
    config = {
        "models": [{"name": "siglip-tiny", "provider": "siglip", "model": str(model_dirs["siglip"])}],
        "log_level": "warning",
    }
    photo = png(seed=7)
    uri = f"data:image/png;base64,{base64.b64encode(photo).decode()}"
    with gateway_process(config, tmp_path) as base:
        options = {
            "base_url": f"{base}/v1",
            "model": "siglip-tiny",
            "modalities": ["text", "image"],
            "fuses_parts": True,
            "input_type_field": "input_type",
        }
        upstream = from_options(options, name="siglip-tiny/gpu-host")
        items = [*texts("a cat", "a dog"), Item((make_image(photo),)), Item((Text("a cat"), make_image(photo)))]
        async with running(upstream) as p:
            assert p.info.dimension == 32  # probed
            result = await p.embed(items, EmbedOptions(input_type=InputType.QUERY))
        async with httpx.AsyncClient(timeout=30) as client:
            direct = await client.post(
                f"{base}/v1/embeddings",
                json={
                    "model": "siglip-tiny",
                    "input": ["a cat", "a dog", {"image": uri}, {"content": [{"text": "a cat"}, {"image": uri}]}],
                    "encoding_format": "float",
                    "input_type": "query",
                },
            )
    assert direct.status_code == 200, direct.text
    rows = np.array([row["embedding"] for row in sorted(direct.json()["data"], key=lambda r: r["index"])])
    np.testing.assert_allclose(result.vectors, rows, atol=1e-6)
    assert result.usage is not None
    assert sum(result.item_tokens) == result.usage.billed_tokens == direct.json()["usage"]["total_tokens"]
