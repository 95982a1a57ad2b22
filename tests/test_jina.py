"""The Jina provider against a fake Jina API on 127.0.0.1: exact request bodies and headers, vectors,
usage, splitting over 2048 inputs, bisection of a bad item, and what it refuses before any call."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from providers.base import EmbedOptions, InputRejected, InputType, Item, Modality, ModelLoadError, Text, UpstreamRefused
from providers.http import HttpProvider
from providers.jina import from_options
from providers.registry import create_provider
from tests.fake_upstreams import JinaFake, expected, fake_tokens, make_image, running, texts
from tests.images_data import png

KEY = "jina_0123456789abcdefDISTINCT"
NAME = "jina-clip-v2/jina"


@pytest.fixture
def jina() -> Iterator[JinaFake]:
    with JinaFake(api_key=KEY, reverse_data=True) as server:
        yield server


def provider(jina: JinaFake, **options: Any) -> HttpProvider:
    settings = {"base_url": jina.url, "model": "jina-clip-v2", "api_key": KEY, "retry_deadline_s": 2.0}
    return from_options({**settings, **options}, name=NAME)


async def test_text_and_image_bodies_headers_and_vectors(jina: JinaFake) -> None:
    image_bytes = png(seed=3)
    items = [Item((Text("a red bicycle"),)), Item((make_image(image_bytes),))]
    async with running(provider(jina)) as p:
        assert p.info.space == "jina:jina-clip-v2"
        assert p.info.dimension == 1024
        assert not p.info.fuses_parts
        result = await p.embed(items, EmbedOptions())
    request = jina.requests[0]
    assert request.path == "/v1/embeddings"
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert request.headers["content-type"] == "application/json"
    assert request.body == {
        "model": "jina-clip-v2",
        "input": [{"text": "a red bicycle"}, {"image": base64.b64encode(image_bytes).decode()}],
        "normalized": True,
        "embedding_type": "float",
        "truncate": False,
        "dimensions": 1024,
    }
    digest = hashlib.sha256(image_bytes).hexdigest()
    np.testing.assert_allclose(result.vectors[0], expected([("text", "a red bicycle")], None, 1024), atol=1e-6)
    np.testing.assert_allclose(result.vectors[1], expected([("image", digest)], None, 1024), atol=1e-6)
    assert result.vectors.dtype == np.float32
    assert result.usage is not None
    tokens = fake_tokens("a red bicycle") + 4000
    assert (result.usage.billed_tokens, result.usage.image_pixels, result.usage.calls) == (tokens, 0, 1)
    assert sum(result.item_tokens) == tokens
    assert result.item_tokens[1] > result.item_tokens[0]


@pytest.mark.parametrize(
    ("input_type", "task"),
    [(InputType.QUERY, "retrieval.query"), (InputType.DOCUMENT, "retrieval.passage"), (None, None)],
)
async def test_input_type_becomes_task(jina: JinaFake, input_type: InputType | None, task: str | None) -> None:
    async with running(provider(jina)) as p:
        result = await p.embed(texts("q"), EmbedOptions(input_type=input_type))
    body = jina.requests[0].body
    assert body.get("task") == task
    assert ("task" in body) is (task is not None)
    np.testing.assert_allclose(result.vectors[0], expected([("text", "q")], task, 1024), atol=1e-6)


async def test_default_task_truncate_and_dimensions(jina: JinaFake) -> None:
    async with running(provider(jina, default_task="text-matching", truncate=True, dimensions=256)) as p:
        assert p.info.space == "jina:jina-clip-v2|dimensions=256"
        result = await p.embed(texts("x"), EmbedOptions())
        await p.embed(texts("y"), EmbedOptions(input_type=InputType.QUERY))
    first, second = jina.bodies()
    assert (first["task"], first["truncate"], first["dimensions"]) == ("text-matching", True, 256)
    assert second["task"] == "retrieval.query"
    assert result.vectors.shape == (1, 256)
    np.testing.assert_allclose(result.vectors[0], expected([("text", "x")], "text-matching", 256), atol=1e-6)


async def test_interleaved_items_and_images_to_text_models_are_refused_before_any_call(jina: JinaFake) -> None:
    mixed = Item((Text("a caption"), make_image(png())))
    async with running(provider(jina)) as p:
        with pytest.raises(InputRejected, match="not interleaved parts") as raised:
            await p.embed([*texts("ok"), mixed], EmbedOptions())
    assert raised.value.index == 1
    async with running(provider(jina, model="jina-embeddings-v3")) as p:
        assert p.info.modalities == {Modality.TEXT}
        with pytest.raises(InputRejected, match="does not take image input") as raised:
            await p.embed([Item((make_image(png()),))], EmbedOptions())
    assert (raised.value.index, raised.value.part) == (0, 0)
    assert jina.requests == []


async def test_more_than_2048_inputs_go_as_several_calls_in_order(jina: JinaFake) -> None:
    strings = [f"text {i}" for i in range(2050)]
    async with running(provider(jina, dimensions=8)) as p:
        result = await p.embed(texts(*strings), EmbedOptions())
    assert sorted(len(body["input"]) for body in jina.bodies()) == [2, 2048]  # the calls run concurrently
    assert result.usage is not None
    assert result.usage.calls == 2
    assert result.usage.billed_tokens == sum(fake_tokens(s) for s in strings)
    assert sum(result.item_tokens) == result.usage.billed_tokens
    for i in (0, 2047, 2048, 2049):
        np.testing.assert_allclose(result.vectors[i], expected([("text", strings[i])], None, 8), atol=1e-6)


async def test_a_bad_item_in_a_batch_is_found_by_bisection(jina: JinaFake) -> None:
    broken = make_image(png())
    broken = type(broken)(b"not an image", broken.mime, broken.sha256, broken.pixels)  # bytes the API cannot decode
    items = [*texts("a", "b", "c", "d", "e"), Item((broken,)), *texts("g")]
    async with running(provider(jina)) as p:
        with pytest.raises(InputRejected) as raised:
            await p.embed(items, EmbedOptions())
    assert raised.value.index == 5
    assert (
        str(raised.value) == f"{NAME}: the upstream rejected this input (400): input[0]: the image could not be decoded"
    )
    # halves, left first: [0:3] passes, [3:7] fails, [3:5] passes, [5:7] fails, [5] fails alone
    assert [len(body["input"]) for body in jina.bodies()] == [7, 3, 4, 2, 2, 1]


async def test_missing_or_wrong_key(jina: JinaFake, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JINA_API_KEY", raising=False)
    with pytest.raises(ModelLoadError, match="JINA_API_KEY"):
        provider(jina, api_key=None).load()
    monkeypatch.setenv("JINA_API_KEY", "jina_wrong_key_value")
    async with running(provider(jina, api_key=None)) as p:
        with pytest.raises(UpstreamRefused, match="401") as raised:
            await p.embed(texts("a"), EmbedOptions())
    assert "jina_wrong_key_value" not in str(raised.value)


def test_model_table_and_options() -> None:
    with pytest.raises(ModelLoadError, match="set `dimensions`"):
        from_options({"model": "jina-next", "api_key": "k"}, name="x").load()
    unknown = from_options({"model": "jina-next", "api_key": "k", "dimensions": 512}, name="x")
    unknown.load()
    assert unknown.info.space == "jina:jina-next|dimensions=512"
    v4 = create_provider("jina", {"model": "jina-embeddings-v4", "api_key": "k"}, name="v4")
    v4.load()
    assert (v4.info.dimension, v4.info.max_batch_size) == (2048, 2048)
    assert v4.info.modalities == {Modality.TEXT, Modality.IMAGE}
    with pytest.raises(ValueError, match="less than or equal to 2048"):
        from_options({"model": "jina-clip-v2", "max_batch_size": 4096}, name="x")
    with pytest.raises(ValueError, match="Extra inputs"):
        from_options({"model": "jina-clip-v2", "batch": 4}, name="x")
