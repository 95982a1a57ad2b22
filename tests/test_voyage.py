"""The Voyage provider against a fake Voyage API on 127.0.0.1: multimodal and text endpoints, exact
bodies, interleaved items as one input, image types and limits, usage, and splitting."""

from __future__ import annotations

import base64
import hashlib
import io
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from PIL import Image as PILImage

from providers.base import EmbedOptions, Image, InputRejected, InputType, Item, Modality, ModelLoadError, Text
from providers.http import HttpProvider
from providers.voyage import from_options
from tests.fake_upstreams import VoyageFake, expected, fake_tokens, make_image, running, texts
from tests.images_data import encode, gradient, png

KEY = "pa-voyage-DISTINCT-42"
NAME = "voyage-mm/voyage"


@pytest.fixture
def voyage() -> Iterator[VoyageFake]:
    with VoyageFake(api_key=KEY, reverse_data=True) as server:
        yield server


def provider(voyage: VoyageFake, **options: Any) -> HttpProvider:
    settings = {"base_url": voyage.url, "model": "voyage-multimodal-3", "api_key": KEY, "retry_deadline_s": 2.0}
    return from_options({**settings, **options}, name=NAME)


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


async def test_multimodal_bodies_fuse_an_interleaved_item_into_one_input(voyage: VoyageFake) -> None:
    photo = png(seed=1)
    items = [
        Item((Text("a banana"),)),
        Item((make_image(photo),)),
        Item((Text("this is"), make_image(photo), Text("a banana"))),
    ]
    async with running(provider(voyage)) as p:
        assert (p.info.space, p.info.dimension, p.info.fuses_parts) == ("voyage:voyage-multimodal-3", 1024, True)
        result = await p.embed(items, EmbedOptions(input_type=InputType.DOCUMENT))
    request = voyage.requests[0]
    assert request.path == "/v1/multimodalembeddings"
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert request.headers["content-type"] == "application/json"
    image_part = {"type": "image_base64", "image_base64": data_url(photo)}
    assert request.body == {
        "inputs": [
            {"content": [{"type": "text", "text": "a banana"}]},
            {"content": [image_part]},
            {"content": [{"type": "text", "text": "this is"}, image_part, {"type": "text", "text": "a banana"}]},
        ],
        "model": "voyage-multimodal-3",
        "input_type": "document",
        "truncation": False,
    }
    digest = hashlib.sha256(photo).hexdigest()
    fused = [("text", "this is"), ("image", digest), ("text", "a banana")]
    for row, parts in zip(result.vectors, [[("text", "a banana")], [("image", digest)], fused], strict=True):
        np.testing.assert_allclose(row, expected(parts, "document", 1024), atol=1e-6)
    pixels = 2 * 48 * 40
    text_tokens = 2 * fake_tokens("a banana") + fake_tokens("this is")
    assert result.usage is not None
    assert (result.usage.billed_tokens, result.usage.image_pixels) == (text_tokens, pixels)
    total = text_tokens + 2 * math.ceil(48 * 40 / 560)
    assert sum(result.item_tokens) == total
    assert result.item_tokens[2] > result.item_tokens[1] > result.item_tokens[0]


@pytest.mark.parametrize(("input_type", "sent"), [(InputType.QUERY, "query"), (None, None)])
async def test_input_type_is_sent_as_is_or_null(
    voyage: VoyageFake, input_type: InputType | None, sent: str | None
) -> None:
    async with running(provider(voyage, truncation=True)) as p:
        result = await p.embed(texts("q"), EmbedOptions(input_type=input_type))
    body = voyage.requests[0].body
    assert (body["input_type"], body["truncation"]) == (sent, True)
    np.testing.assert_allclose(result.vectors[0], expected([("text", "q")], sent, 1024), atol=1e-6)


async def test_output_dimension_only_where_the_model_takes_one(voyage: VoyageFake) -> None:
    async with running(provider(voyage, model="voyage-multimodal-3.5", dimensions=256)) as p:
        assert p.info.space == "voyage:voyage-multimodal-3.5|dimensions=256"
        result = await p.embed(texts("x"), EmbedOptions())
    assert voyage.requests[0].body["output_dimension"] == 256
    assert result.vectors.shape == (1, 256)
    with pytest.raises(ModelLoadError, match="only gives 1024 dimensions"):
        provider(voyage, dimensions=256).load()


@pytest.mark.parametrize(("fmt", "mime"), [("JPEG", "image/jpeg"), ("WEBP", "image/webp"), ("GIF", "image/gif")])
async def test_accepted_image_types_go_as_their_own_bytes(voyage: VoyageFake, fmt: str, mime: str) -> None:
    data = encode(gradient(), fmt)
    async with running(provider(voyage)) as p:
        await p.embed([Item((make_image(data),))], EmbedOptions())
    assert voyage.requests[0].body["inputs"][0]["content"][0]["image_base64"] == data_url(data, mime)


async def test_other_image_types_go_as_lossless_png(voyage: VoyageFake) -> None:
    bmp = encode(gradient(seed=5), "BMP")
    async with running(provider(voyage)) as p:
        result = await p.embed([Item((make_image(bmp),))], EmbedOptions())
    sent = voyage.requests[0].body["inputs"][0]["content"][0]["image_base64"]
    assert sent.startswith("data:image/png;base64,")
    png_bytes = base64.b64decode(sent.partition(",")[2])
    with PILImage.open(io.BytesIO(png_bytes)) as decoded:
        assert decoded.format == "PNG"
        assert list(decoded.convert("RGB").getdata()) == list(gradient(seed=5).getdata())
    digest = hashlib.sha256(png_bytes).hexdigest()
    np.testing.assert_allclose(result.vectors[0], expected([("image", digest)], None, 1024), atol=1e-6)


async def test_images_over_voyage_limits_are_refused_before_any_call(voyage: VoyageFake) -> None:
    small = make_image(png())
    huge = Image(small.data, "image/png", small.sha256, PILImage.new("1", (4001, 4000)))
    heavy = Image(b"\0" * (20 * 1024 * 1024 + 1), "image/png", small.sha256, small.pixels)
    async with running(provider(voyage)) as p:
        with pytest.raises(InputRejected, match="4001x4000 image is over Voyage's 16000000 pixels") as raised:
            await p.embed([*texts("fine"), Item((Text("caption"), huge))], EmbedOptions())
        assert (raised.value.index, raised.value.part) == (1, 1)
        with pytest.raises(InputRejected, match="over Voyage's 20 MB") as raised:
            await p.embed([Item((heavy,))], EmbedOptions())
        assert (raised.value.index, raised.value.part) == (0, 0)
    assert voyage.requests == []


async def test_more_than_1000_inputs_and_the_token_cap_split_calls_in_order(voyage: VoyageFake) -> None:
    strings = [f"item {i}" for i in range(1003)]
    async with running(provider(voyage, model="voyage-multimodal-3.5", dimensions=256)) as p:
        result = await p.embed(texts(*strings), EmbedOptions())
    assert sorted(len(body["inputs"]) for body in voyage.bodies()) == [3, 1000]  # the calls run concurrently
    for i in (0, 999, 1000, 1002):
        np.testing.assert_allclose(result.vectors[i], expected([("text", strings[i])], None, 256), atol=1e-6)
    voyage.requests.clear()
    long_texts = ["x" * 40, "y" * 40, "z" * 40, "w" * 10]  # 40 estimated tokens each, 100 per call
    async with running(provider(voyage, max_request_tokens=100)) as p:
        result = await p.embed(texts(*long_texts), EmbedOptions())
        assert result.usage is not None
        assert result.usage.calls == 2
    calls = sorted([c["content"][0]["text"] for c in body["inputs"]] for body in voyage.bodies())
    assert calls == sorted([long_texts[:2], long_texts[2:]])  # concurrent calls: any arrival order
    np.testing.assert_allclose(result.vectors[3], expected([("text", "w" * 10)], None, 1024), atol=1e-6)


async def test_text_models_use_the_embeddings_endpoint(voyage: VoyageFake) -> None:
    async with running(provider(voyage, model="voyage-3.5", dimensions=512)) as p:
        assert p.info.modalities == {Modality.TEXT}
        assert (p.info.fuses_parts, p.options.max_request_tokens) == (False, 320_000)
        result = await p.embed(texts("a", "bb"), EmbedOptions(input_type=InputType.QUERY))
        with pytest.raises(InputRejected, match="does not take image input"):
            await p.embed([Item((make_image(png()),))], EmbedOptions())
    request = voyage.requests[0]
    assert request.path == "/v1/embeddings"
    assert request.body == {
        "input": ["a", "bb"],
        "model": "voyage-3.5",
        "input_type": "query",
        "truncation": False,
        "output_dimension": 512,
    }
    np.testing.assert_allclose(result.vectors[1], expected([("text", "bb")], "query", 512), atol=1e-6)
    assert result.usage is not None
    assert result.usage.billed_tokens == fake_tokens("a") + fake_tokens("bb") == sum(result.item_tokens)


async def test_voyage_error_detail_reaches_the_client(voyage: VoyageFake) -> None:
    async with running(provider(voyage)) as p:
        with pytest.raises(InputRejected) as raised:
            await p.embed([*texts("fine", "also fine"), Item((Text(""),))], EmbedOptions())
    assert raised.value.index == 2
    assert str(raised.value).endswith("(400): inputs[0].content[0]: text must be a non-empty string")
