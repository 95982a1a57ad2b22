"""E5-V on a tiny random LLaVA-NeXT checkpoint: the provider's vectors against the raw
transformers computation (the model card's prompts in llama3's turn, the processor, the model
with `output_hidden_states`, the last token of the last layer, normalised), alone and in mixed
left-padded batches, and through the gateway with the openai SDK.

The reference is written here with transformers' classes only, never the provider's helpers."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import openai
import pytest
import torch
from PIL import Image as PILImageModule
from PIL.Image import Image as PILImage
from pydantic import ValidationError
from transformers import AutoProcessor, LlavaNextForConditionalGeneration

from providers.base import EmbedOptions, Image, InputRejected, InputType, Item, Modality, ModelLoadError, Part, Text
from providers.e5v import E5vProvider
from tests.servers import gateway_process
from tests.tiny_vlm_models import build_llava_next

TOLERANCE = 1e-5
TURN = "<|start_header_id|>user<|end_header_id|>\n\n{}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n \n"
SENTENCE = "<sent>\nSummary above sentence in one word: "
PICTURE = "<image>\nSummary above image in one word: "
COMPOSED = '<image>Modify this image with "<sent>", desribe modified image in one word:'
SHORT = "a cat"
LONG = "the quick brown fox jumps over the lazy dog, " * 6
TEXTS = [SHORT, LONG, "  Total: $1,200 über 東京 🙂\nnaïve <|eot_id|>", ""]


def png(width: int, height: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    PILImageModule.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


IMAGES = {
    "wide": png(80, 40, 1),  # 28x56 grid: two tiles and the overview
    "tall": png(30, 90, 2),
    "square": png(56, 56, 3),  # 2x2 tiles
    "tiny": png(12, 20, 4),
    "large": png(300, 200, 5),
}


def pixels(data: bytes) -> PILImage:
    return PILImageModule.open(io.BytesIO(data)).convert("RGB")


def image_part(data: bytes) -> Image:
    return Image(data, "image/png", hashlib.sha256(data).hexdigest(), pixels(data))


class RawE5v:
    """The model card's computation, one input at a time."""

    def __init__(self, directory: Path) -> None:
        self.processor: Any = AutoProcessor.from_pretrained(directory)  # type: ignore[no-untyped-call]
        self.model = LlavaNextForConditionalGeneration.from_pretrained(directory, dtype=torch.float32).eval()

    @torch.no_grad()
    def hidden(self, prompt: str, image: bytes | None = None) -> torch.Tensor:
        images = None if image is None else [pixels(image)]
        inputs = self.processor(text=[prompt], images=images, return_tensors="pt")
        output = self.model(**inputs, output_hidden_states=True, return_dict=True)
        return output.hidden_states[-1][0]

    def vector(self, prompt: str, image: bytes | None = None, *, mean: bool = False) -> np.ndarray:
        hidden = self.hidden(prompt, image)
        pooled = hidden.mean(0) if mean else hidden[-1]
        return torch.nn.functional.normalize(pooled, dim=-1).numpy()

    def text(self, text: str, prompt: str = SENTENCE, *, mean: bool = False) -> np.ndarray:
        return self.vector(TURN.format(prompt.replace("<sent>", text)), mean=mean)

    def image(self, image: bytes) -> np.ndarray:
        return self.vector(TURN.format(PICTURE), image)

    def composed(self, text: str, image: bytes) -> np.ndarray:
        return self.vector(TURN.format(COMPOSED.replace("<sent>", text)), image)


@pytest.fixture(scope="module")
def e5v_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_llava_next(tmp_path_factory.mktemp("e5v") / "llava-next")


@pytest.fixture(scope="module")
def raw(e5v_dir: Path) -> RawE5v:
    return RawE5v(e5v_dir)


def options(directory: Path, **extra: Any) -> dict[str, Any]:
    return {"model": str(directory), "device": "cpu", "dtype": "float32", "max_wait_ms": 200, **extra}


@pytest.fixture
async def provider(e5v_dir: Path) -> AsyncIterator[E5vProvider]:
    served = E5vProvider.from_options(options(e5v_dir, image_max_batch_size=8), name="e5v-test")
    served.load()
    await served.start()
    yield served
    await served.close()


def cases(raw: RawE5v) -> list[tuple[str, Item, np.ndarray]]:
    found = [(f"text{i}", Item((Text(text),)), raw.text(text)) for i, text in enumerate(TEXTS)]
    found += [(name, Item((image_part(data),)), raw.image(data)) for name, data in IMAGES.items()]
    found.append(("composed", Item((image_part(IMAGES["wide"]), Text(SHORT))), raw.composed(SHORT, IMAGES["wide"])))
    found.append(
        ("composed-text-first", Item((Text(LONG), image_part(IMAGES["tall"]))), raw.composed(LONG, IMAGES["tall"]))
    )
    return found


async def test_every_item_alone_is_the_raw_transformers_vector(provider: E5vProvider, raw: RawE5v) -> None:
    for name, item, expected in cases(raw):
        result = await provider.embed([item], EmbedOptions())
        assert result.vectors.shape == (1, 32), name
        assert abs(float(np.linalg.norm(result.vectors[0])) - 1) < 1e-5, name
        np.testing.assert_allclose(result.vectors[0], expected, atol=TOLERANCE, rtol=0, err_msg=name)
        assert result.item_tokens[0] > 10, name


async def test_left_padded_mixed_batches_keep_each_vector(provider: E5vProvider, raw: RawE5v) -> None:
    """Texts of very different lengths and pictures of every size and aspect ratio (different tile
    counts and image-token counts) share forward passes; each vector is the item's alone."""
    found = cases(raw)
    results = await asyncio.gather(*(provider.embed([item], EmbedOptions()) for _, item, _ in found))
    assert provider.engine.batches_run == 2  # all texts in one pass, all pictured items in another
    for (name, _, expected), result in zip(found, results, strict=True):
        np.testing.assert_allclose(result.vectors[0], expected, atol=TOLERANCE, rtol=0, err_msg=name)
    in_one_request = await provider.embed([item for _, item, _ in found], EmbedOptions())
    np.testing.assert_allclose(in_one_request.vectors, np.stack([e for _, _, e in found]), atol=TOLERANCE, rtol=0)


def test_a_short_text_beside_a_long_one_matches_the_published_batched_call(e5v_dir: Path, raw: RawE5v) -> None:
    """The model card's own batch (processor padding, left side, no position ids) agrees too."""
    raw.processor.tokenizer.padding_side = "left"
    inputs = raw.processor(
        text=[TURN.format(SENTENCE.replace("<sent>", t)) for t in (SHORT, LONG)], padding=True, return_tensors="pt"
    )
    assert int(inputs["attention_mask"][0].sum()) < inputs["attention_mask"].shape[1]  # the short one is padded
    with torch.no_grad():
        hidden = raw.model(**inputs, output_hidden_states=True, return_dict=True).hidden_states[-1][:, -1, :]
    published = torch.nn.functional.normalize(hidden, dim=-1).numpy()
    np.testing.assert_allclose(published, np.stack([raw.text(SHORT), raw.text(LONG)]), atol=TOLERANCE, rtol=0)


async def test_input_type_changes_nothing(provider: E5vProvider, raw: RawE5v) -> None:
    query = await provider.embed([Item((Text(SHORT),))], EmbedOptions(InputType.QUERY))
    document = await provider.embed([Item((Text(SHORT),))], EmbedOptions(InputType.DOCUMENT))
    np.testing.assert_array_equal(query.vectors, document.vectors)


async def test_prompts_and_pooling_come_from_options(e5v_dir: Path, raw: RawE5v) -> None:
    prompt = "<sent>\nIn one word, this text means: "
    served = E5vProvider.from_options(options(e5v_dir, text_prompt=prompt, pooling="mean"), name="e5v-options")
    served.load()
    await served.start()
    try:
        result = await served.embed([Item((Text(SHORT),))], EmbedOptions())
    finally:
        await served.close()
    expected = raw.text(SHORT, prompt, mean=True)
    np.testing.assert_allclose(result.vectors[0], expected, atol=TOLERANCE, rtol=0)
    assert float(expected @ raw.text(SHORT)) < 0.99  # a different prompt and pooling: a different vector
    default = E5vProvider.from_options(options(e5v_dir), name="e5v-default")
    default.load()
    assert served.info.space != default.info.space
    assert served.info.space.startswith("e5v|dir:") and "|torch.float32|pooling=mean|" in served.info.space
    assert default.info.fuses_parts and default.info.dimension == 32
    assert default.batch_sizes == {Modality.TEXT: 16, Modality.IMAGE: 2}  # images two at a time on a CPU


async def test_refusals_name_the_item(e5v_dir: Path, provider: E5vProvider) -> None:
    with pytest.raises(InputRejected, match="max_length of 64") as too_long:
        small = E5vProvider.from_options(options(e5v_dir, max_length=64), name="e5v-short")
        small.load()
        await small.start()
        try:
            await small.embed([Item((Text(SHORT),)), Item((Text(LONG),))], EmbedOptions())
        finally:
            await small.close()
    assert too_long.value.index == 1
    two_images: tuple[Part, ...] = (Text(SHORT), image_part(IMAGES["wide"]), image_part(IMAGES["tall"]))
    with pytest.raises(InputRejected, match="one image") as doubled:
        await provider.embed([Item((Text(SHORT),)), Item(two_images)], EmbedOptions())
    assert (doubled.value.index, doubled.value.part) == (1, 2)
    with pytest.raises(InputRejected, match="image token") as placeholder:
        await provider.embed([Item((Text("see <image>"), image_part(IMAGES["wide"])))], EmbedOptions())
    assert (placeholder.value.index, placeholder.value.part) == (0, 0)


async def test_a_text_may_mention_the_image_token(provider: E5vProvider, raw: RawE5v) -> None:
    """Alone, `<image>` is an ordinary token (the published code's processor did not check it)."""
    text = "an <image> tag"
    result = await provider.embed([Item((Text(text),))], EmbedOptions())
    ids = raw.processor.tokenizer([TURN.format(SENTENCE.replace("<sent>", text))], return_tensors="pt")
    with torch.no_grad():
        hidden = raw.model(**ids, output_hidden_states=True, return_dict=True).hidden_states[-1][0, -1]
    np.testing.assert_allclose(result.vectors[0], torch.nn.functional.normalize(hidden, dim=-1).numpy(), atol=TOLERANCE)


async def test_processor_files_without_vision_settings_take_them_from_the_model(
    e5v_dir: Path, raw: RawE5v, tmp_path: Path
) -> None:
    """Processors saved by older transformers name no patch size (the model expanded `<image>`)."""
    old = tmp_path / "old-processor"
    shutil.copytree(e5v_dir, old)
    saved = json.loads((old / "processor_config.json").read_text())
    for key in ("patch_size", "vision_feature_select_strategy", "num_additional_image_tokens"):
        del saved[key]
    (old / "processor_config.json").write_text(json.dumps(saved))
    served = E5vProvider.from_options(options(old), name="e5v-old")
    served.load()
    await served.start()
    try:
        result = await served.embed([Item((image_part(IMAGES["tall"]),))], EmbedOptions())
    finally:
        await served.close()
    np.testing.assert_allclose(result.vectors[0], raw.image(IMAGES["tall"]), atol=TOLERANCE, rtol=0)


def test_bad_settings_fail_with_one_line(e5v_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="prompt"):
        E5vProvider.from_options(options(e5v_dir, chat_template="no slot"), name="bad")
    with pytest.raises(ValidationError, match="<sent>"):
        E5vProvider.from_options(options(e5v_dir, text_prompt="no text"), name="bad")
    with pytest.raises(ModelLoadError, match="image token"):
        E5vProvider.from_options(options(e5v_dir, image_prompt="no picture"), name="bad").load()
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ModelLoadError, match="not LLaVA-NeXT") as other:
        E5vProvider.from_options(options(tmp_path), name="bad").load()
    assert "\n" not in str(other.value)


# --- through the gateway, with the openai SDK --------------------------------------------------


@pytest.fixture(scope="module")
def e5v_gateway(e5v_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    config = {
        "models": [{"name": "e5v-tiny", "provider": "e5v", "model": str(e5v_dir), "dtype": "float32"}],
        "log_level": "warning",
    }
    with gateway_process(config, tmp_path_factory.mktemp("e5v-gateway")) as url:
        yield url


def data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


@pytest.mark.slow
def test_gateway_serves_texts_images_and_interleaved_items(e5v_gateway: str, raw: RawE5v) -> None:
    client = openai.OpenAI(base_url=f"{e5v_gateway}/v1", api_key="unused", max_retries=0)
    items: list[Any] = [
        SHORT,
        {"text": LONG},
        {"image": data_uri(IMAGES["large"])},
        {
            "content": [
                {"type": "text", "text": SHORT},
                {"type": "image_url", "image_url": {"url": data_uri(IMAGES["wide"])}},
            ]
        },
    ]
    expected = np.stack(
        [raw.text(SHORT), raw.text(LONG), raw.image(IMAGES["large"]), raw.composed(SHORT, IMAGES["wide"])]
    )
    response = client.embeddings.create(model="e5v-tiny", input=items, encoding_format="float")
    got = np.array([row.embedding for row in response.data], dtype=np.float32)
    np.testing.assert_allclose(got, expected, atol=TOLERANCE, rtol=0)
    assert response.usage.prompt_tokens > 0
    # The SDK's default asks for base64 (little-endian float32) and decodes it; a query is a document.
    encoded = client.embeddings.create(model="e5v-tiny", input=items, extra_body={"input_type": "query"})
    np.testing.assert_allclose(np.array([row.embedding for row in encoded.data]), expected, atol=TOLERANCE, rtol=0)


@pytest.mark.slow
def test_gateway_refuses_an_item_with_two_images_naming_it(e5v_gateway: str) -> None:
    client = openai.OpenAI(base_url=f"{e5v_gateway}/v1", api_key="unused", max_retries=0)
    two: Any = {"content": [SHORT, {"image": data_uri(IMAGES["wide"])}, {"image": data_uri(IMAGES["tall"])}]}
    with pytest.raises(openai.BadRequestError) as bad:
        client.embeddings.create(model="e5v-tiny", input=[SHORT, two], encoding_format="float")
    assert bad.value.param is not None and bad.value.param.startswith("input[1]")
    assert "one image" in str(bad.value.message)
