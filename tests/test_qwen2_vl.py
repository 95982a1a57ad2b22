"""Qwen2-VL-style embedders (GME) against a raw transformers computation written here: the model
card's prompt through transformers' own `Qwen2VLProcessor`, then `gme_inference.py`'s forward (token
embeddings, the vision tower's output scattered at the image tokens, the text decoder without
position ids), last token, L2 norm; one item at a time, to 1e-5. Then batches (left padding),
instructions, refusals, and the gateway through the openai SDK.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import math
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import openai
import pytest
import torch
from PIL import Image as PILImageModule
from PIL.Image import Image as PILImage
from transformers import Qwen2VLForConditionalGeneration, Qwen2VLProcessor

from providers.base import EmbedOptions, Image, InputRejected, InputType, Item, Modality, ModelLoadError, Part, Text
from providers.qwen2_vl import GME, Qwen2VlProvider, collate, unit_of
from tests.servers import gateway_process
from tests.tiny_qwen2_vl import MAX_PIXELS, MIN_PIXELS, build_qwen2_vl, reference_processor

TOLERANCE = 1e-5
SYSTEM = "You are a helpful assistant."
QUERY_INSTRUCTION = "Find an image that matches the given text."


def picture(width: int, height: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    PILImageModule.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def image_part(data: bytes) -> Image:
    return Image(data, "image/png", hashlib.sha256(data).hexdigest(), PILImageModule.open(io.BytesIO(data)))


SMALL, WIDE, TALL = picture(60, 40, 1), picture(150, 70, 2), picture(45, 130, 3)
ITEMS: dict[str, tuple[str | bytes, ...]] = {
    "short": ("a cat",),
    "long": ("the quick brown fox jumps over the lazy dog, " * 6,),
    "image": (SMALL,),
    "wide": (WIDE,),
    "interleaved": (TALL, "an invoice with a table of numbers"),
    "text-then-images": ("red sunset over the sea", SMALL, WIDE),
}


def item_of(parts: Sequence[str | bytes]) -> Item:
    built: list[Part] = [Text(p) if isinstance(p, str) else image_part(p) for p in parts]
    return Item(tuple(built))


# --- the reference: the published recipe, written out on raw transformers ----------------------


def gme_fetch(data: bytes) -> PILImage:
    """gme_inference.py's `_fetch_image`: sides rounded to multiples of 28, PIL's default filter."""
    image = PILImageModule.open(io.BytesIO(data)).convert("RGB")
    width, height = image.size
    new_height, new_width = max(28, round(height / 28) * 28), max(28, round(width / 28) * 28)
    if new_height * new_width < 4 * 28 * 28:
        beta = math.sqrt(4 * 28 * 28 / (height * width))
        new_height, new_width = math.ceil(height * beta / 28) * 28, math.ceil(width * beta / 28) * 28
    return image.resize((new_width, new_height))


def reference_inputs(processor: Qwen2VLProcessor, parts: Sequence[str | bytes], instruction: str) -> Any:
    user = "".join(p if isinstance(p, str) else "<|vision_start|><|image_pad|><|vision_end|>" for p in parts)
    prompt = (
        f"<|im_start|>system\n{instruction}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n"
        "<|im_start|>assistant\n<|endoftext|>"
    )
    images = [gme_fetch(p) for p in parts if isinstance(p, bytes)]
    return processor(text=[prompt], images=images or None, return_tensors="pt")


@torch.inference_mode()
def reference(
    model: Qwen2VLForConditionalGeneration, processor: Qwen2VLProcessor, parts: Sequence[str | bytes], instruction: str
) -> np.ndarray:
    """GME's forward: embed tokens, put the vision tower's merged patches at the image tokens, run
    the text decoder with no position ids, take the last token, normalise."""
    inputs = reference_inputs(processor, parts, instruction)
    embeds = model.model.get_input_embeddings()(inputs["input_ids"])
    if "pixel_values" in inputs:
        vision = model.model.visual(inputs["pixel_values"], grid_thw=inputs["image_grid_thw"]).pooler_output
        embeds[inputs["input_ids"] == model.config.image_token_id] = vision
    hidden = model.model.language_model(inputs_embeds=embeds, attention_mask=inputs["attention_mask"])
    vector = torch.nn.functional.normalize(hidden.last_hidden_state[:, -1], dim=-1)
    return vector[0].numpy()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_qwen2_vl(tmp_path_factory.mktemp("qwen2-vl") / "tiny")


@pytest.fixture(scope="module")
def raw(checkpoint: Path) -> tuple[Qwen2VLForConditionalGeneration, Qwen2VLProcessor]:
    model = Qwen2VLForConditionalGeneration.from_pretrained(checkpoint, dtype=torch.float32).eval()
    return model, reference_processor(checkpoint)


@pytest.fixture(scope="module")
def expected(raw: tuple[Qwen2VLForConditionalGeneration, Qwen2VLProcessor]) -> dict[str, np.ndarray]:
    model, processor = raw
    found = {name: reference(model, processor, parts, SYSTEM) for name, parts in ITEMS.items()}
    found["short-query"] = reference(model, processor, ITEMS["short"], QUERY_INSTRUCTION)
    return found


def options(checkpoint: Path, **extra: Any) -> dict[str, Any]:
    return {
        "model": str(checkpoint),
        "device": "cpu",
        "dtype": "float32",
        "min_pixels": MIN_PIXELS,
        "max_pixels": MAX_PIXELS,
        "max_wait_ms": 1000,
        **extra,
    }


@pytest.fixture
async def provider(checkpoint: Path) -> AsyncIterator[Qwen2VlProvider]:
    served = Qwen2VlProvider.from_options(options(checkpoint, image_max_batch_size=8), name="qwen2-vl-test")
    served.load()
    await served.start()
    yield served
    await served.close()


# --- vectors ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["short", "image", "interleaved", "text-then-images"])
async def test_each_item_alone_is_the_raw_transformers_vector(
    provider: Qwen2VlProvider, expected: dict[str, np.ndarray], name: str
) -> None:
    result = await provider.embed([item_of(ITEMS[name])], EmbedOptions())
    assert result.vectors.shape == (1, 32)
    assert abs(float(np.linalg.norm(result.vectors[0])) - 1) < 1e-6
    np.testing.assert_allclose(result.vectors[0], expected[name], atol=TOLERANCE, rtol=0)


def test_prompt_tokens_are_the_processors(
    provider: Qwen2VlProvider, raw: tuple[Qwen2VLForConditionalGeneration, Qwen2VLProcessor]
) -> None:
    """The provider expands image placeholders itself; the ids equal the real processor's."""
    _, processor = raw
    for name in ("interleaved", "text-then-images", "long"):
        prepared = provider.encoder.prepare(provider.units([item_of(ITEMS[name])], EmbedOptions())[0])
        ids = reference_inputs(processor, ITEMS[name], SYSTEM)["input_ids"]
        assert prepared.features["input_ids"].tolist() == ids.tolist(), name
        assert prepared.tokens == ids.shape[1]
        assert prepared.modality is (Modality.TEXT if name == "long" else Modality.IMAGE)


async def test_left_padded_batches_give_each_item_its_own_vector(
    provider: Qwen2VlProvider, expected: dict[str, np.ndarray]
) -> None:
    """Short and long texts, pictures of different sizes and interleaved items in one left-padded
    batch, and sent concurrently so the engine merges them: each vector is still the item's own."""
    names = list(ITEMS)
    units = provider.units([item_of(ITEMS[n]) for n in names], EmbedOptions())
    prepared = [provider.encoder.prepare(unit) for unit in units]
    assert len({p.tokens for p in prepared}) == len(names)  # every row padded differently
    together = provider.encoder.forward(Modality.IMAGE, provider.collate()([p.features for p in prepared]))
    np.testing.assert_allclose(together, np.stack([expected[n] for n in names]), atol=TOLERANCE, rtol=0)

    before = provider.engine.batches_run
    results = await asyncio.gather(*(provider.embed([item_of(ITEMS[n])], EmbedOptions()) for n in names))
    assert provider.engine.batches_run - before < len(names)  # requests shared forward passes
    for name, result in zip(names, results, strict=True):
        np.testing.assert_allclose(result.vectors[0], expected[name], atol=TOLERANCE, rtol=0, err_msg=name)


def test_mean_pooling_averages_the_items_own_tokens(
    checkpoint: Path, raw: tuple[Qwen2VLForConditionalGeneration, Qwen2VLProcessor]
) -> None:
    model, processor = raw
    encoder = Qwen2VlProvider.from_options(options(checkpoint, pooling="mean"), name="mean").build_encoder()
    names = ["short", "interleaved", "long"]
    units = [encoder.prepare(unit_of(item_of(ITEMS[n]), i, SYSTEM)) for i, n in enumerate(names)]
    got = encoder.forward(Modality.IMAGE, collate([u.features for u in units], encoder.pad_id))
    for name, row in zip(names, got, strict=True):
        with torch.inference_mode():
            inputs = reference_inputs(processor, ITEMS[name], SYSTEM)
            embeds = model.model.get_input_embeddings()(inputs["input_ids"])
            if "pixel_values" in inputs:
                grid = inputs["image_grid_thw"]
                embeds[inputs["input_ids"] == model.config.image_token_id] = model.model.visual(
                    inputs["pixel_values"], grid_thw=grid
                ).pooler_output
            hidden = model.model.language_model(inputs_embeds=embeds).last_hidden_state[0]
        want = torch.nn.functional.normalize(hidden.mean(dim=0), dim=-1).numpy()
        np.testing.assert_allclose(row, want, atol=TOLERANCE, rtol=0, err_msg=name)


async def test_one_request_keeps_item_order_and_counts_tokens(
    provider: Qwen2VlProvider, expected: dict[str, np.ndarray]
) -> None:
    names = ["wide", "short", "interleaved", "long"]
    result = await provider.embed([item_of(ITEMS[n]) for n in names], EmbedOptions(InputType.DOCUMENT))
    np.testing.assert_allclose(result.vectors, np.stack([expected[n] for n in names]), atol=TOLERANCE, rtol=0)
    assert all(tokens > 20 for tokens in result.item_tokens)
    assert result.item_tokens[0] > result.item_tokens[1]  # a picture is tokens too


async def test_a_query_gets_the_query_instruction(provider: Qwen2VlProvider, expected: dict[str, np.ndarray]) -> None:
    query = await provider.embed([item_of(ITEMS["short"])], EmbedOptions(InputType.QUERY))
    np.testing.assert_allclose(query.vectors[0], expected["short-query"], atol=TOLERANCE, rtol=0)
    assert float(query.vectors[0] @ expected["short"]) < 0.9999


def test_multimodal_positions_are_qwen2_vl_s_own(
    checkpoint: Path, raw: tuple[Qwen2VLForConditionalGeneration, Qwen2VLProcessor]
) -> None:
    """`positions: multimodal` equals transformers' Qwen2VLModel computing its own 3D positions,
    alone and left-padded next to a longer item."""
    model, processor = raw
    encoder = Qwen2VlProvider.from_options(options(checkpoint, positions="multimodal"), name="mrope").build_encoder()
    units = [encoder.prepare(unit_of(item_of(ITEMS[n]), i, SYSTEM)) for i, n in enumerate(["interleaved", "long"])]
    assert units[0].tokens < units[1].tokens  # the pictured item is the left-padded one
    together = encoder.forward(Modality.IMAGE, collate([u.features for u in units], encoder.pad_id))
    with torch.inference_mode():
        inputs = reference_inputs(processor, ITEMS["interleaved"], SYSTEM)
        hidden = model.model(**inputs).last_hidden_state[:, -1]
    want = torch.nn.functional.normalize(hidden, dim=-1)[0].numpy()
    np.testing.assert_allclose(together[0], want, atol=TOLERANCE, rtol=0)
    sequential = reference(model, processor, ITEMS["interleaved"], SYSTEM)
    assert float(np.abs(want - sequential).max()) > 10 * TOLERANCE  # the two schemes differ on pictures
    plain = torch.arange(units[0].tokens).expand(3, -1)
    assert not torch.equal(units[0].features["position_ids"][0], plain)


# --- refusals and configuration ---------------------------------------------------------------


async def test_an_overlong_input_is_refused_by_its_index(checkpoint: Path) -> None:
    served = Qwen2VlProvider.from_options(options(checkpoint, max_length=80), name="short-context")
    served.load()
    await served.start()
    try:
        items = [item_of(ITEMS["short"]), item_of(ITEMS["long"])]
        with pytest.raises(InputRejected, match="over max_length=80") as refused:
            await served.embed(items, EmbedOptions())
        assert refused.value.index == 1
    finally:
        await served.close()
    with pytest.raises(ModelLoadError, match="max_length is too short"):
        Qwen2VlProvider.from_options(options(checkpoint, max_length=16), name="no-context").load()


async def test_a_text_spelling_vision_tokens_is_refused(provider: Qwen2VlProvider) -> None:
    items = [item_of(ITEMS["short"]), item_of((SMALL, "look: <|image_pad|>"))]
    with pytest.raises(InputRejected, match="vision tokens") as refused:
        await provider.embed(items, EmbedOptions())
    assert (refused.value.index, refused.value.part) == (1, 1)


async def test_a_banner_is_squeezed_to_one_in_two_hundred_as_published(provider: Qwen2VlProvider) -> None:
    banner = item_of((picture(6000, 20, 4),))
    result = await provider.embed([banner], EmbedOptions())
    assert result.vectors.shape == (1, 32) and np.isfinite(result.vectors).all()


def test_known_model_defaults_and_the_space(provider: Qwen2VlProvider, checkpoint: Path) -> None:
    default = Qwen2VlProvider.from_options({}, name="gme").options.recipe()
    assert default == GME
    assert (GME.pooling, GME.positions, GME.max_length) == ("last_token", "sequential", 1800)
    assert (GME.min_pixels, GME.max_pixels) == (256 * 28 * 28, 1280 * 28 * 28)
    info = provider.info
    assert info.dimension == 32 and info.fuses_parts
    assert info.space.startswith("qwen2_vl|")
    assert provider.batch_sizes == {Modality.TEXT: 16, Modality.IMAGE: 8}
    changed = Qwen2VlProvider.from_options(options(checkpoint, pooling="mean"), name="mean")
    assert changed.space_details() != provider.space_details()
    with pytest.raises(ValueError, match="over max_pixels"):
        Qwen2VlProvider.from_options(options(checkpoint, min_pixels=MAX_PIXELS * 2), name="bad").options.recipe()


# --- through the gateway, with the openai SDK --------------------------------------------------


def data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def gateway(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    model = {"name": "gme-tiny", "provider": "qwen2_vl", **options(checkpoint, max_wait_ms=5)}
    config = {"models": [model], "log_level": "warning"}
    with gateway_process(config, tmp_path_factory.mktemp("qwen2-vl-gateway")) as url:
        yield url


@pytest.mark.slow
def test_text_image_and_interleaved_through_the_sdk(gateway: str, expected: dict[str, np.ndarray]) -> None:
    client = openai.OpenAI(base_url=f"{gateway}/v1", api_key="unused")
    interleaved = [
        {"type": "image_url", "image_url": {"url": data_uri(TALL)}},
        {"type": "text", "text": ITEMS["interleaved"][1]},
    ]
    inputs = [ITEMS["short"][0], {"image": data_uri(SMALL)}, {"content": interleaved}]
    response = client.embeddings.create(model="gme-tiny", input=inputs, encoding_format="float")  # type: ignore[arg-type]
    got = np.array([row.embedding for row in response.data], dtype=np.float32)
    want = np.stack([expected["short"], expected["image"], expected["interleaved"]])
    np.testing.assert_allclose(got, want, atol=TOLERANCE, rtol=0)
    assert response.usage.prompt_tokens > 3 * 20


@pytest.mark.slow
def test_a_query_in_base64_through_the_sdk(gateway: str, expected: dict[str, np.ndarray]) -> None:
    client = openai.OpenAI(base_url=f"{gateway}/v1", api_key="unused")
    raw = client.embeddings.with_raw_response.create(
        model="gme-tiny", input=[ITEMS["short"][0]], encoding_format="base64", extra_body={"input_type": "query"}
    )
    body = raw.http_response.json()
    vector = np.frombuffer(base64.b64decode(body["data"][0]["embedding"]), dtype="<f4")
    np.testing.assert_allclose(vector, expected["short-query"], atol=TOLERANCE, rtol=0)


@pytest.mark.slow
def test_an_overlong_text_is_a_400_naming_its_index(gateway: str) -> None:
    client = openai.OpenAI(base_url=f"{gateway}/v1", api_key="unused")
    with pytest.raises(openai.BadRequestError) as refused:
        client.embeddings.create(model="gme-tiny", input=["a cat", "dog " * 2000], encoding_format="float")
    assert refused.value.status_code == 400
    assert "input[1]" in str(refused.value.body)
