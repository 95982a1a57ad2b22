"""jina-clip locally: vectors equal to the checkpoint's own published path (`encode_text` /
`encode_image` of its remote code, loaded with `trust_remote_code=True` as users load it), in one
space with Jina's API (the start-up canary against a fake API answering those same vectors), and the
whole path through a real gateway process with the openai SDK."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import shutil
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest
from PIL import Image as PILImage

from gateway.canary import CanaryFailed, probe_image, verify_spaces
from gateway.config import ModelSettings
from gateway.deployments import Deployment
from gateway.router import ServedModel
from providers.base import EmbedOptions, InputType, Item, ModelLoadError, Part, Text
from providers.jina_clip import JinaClipProvider
from providers.registry import create_provider
from tests.fake_upstreams import JinaFake, make_image
from tests.images_data import data_uri, encode, gradient, png
from tests.jina_clip_fixture import MATRYOSHKA, QUERY_INSTRUCTION, build_jina_clip, load_reference
from tests.servers import gateway_process

TOLERANCE = 1e-5
TEXTS = ["a photo of a cat", "red sunset over the sea", "hello", "the quick brown fox jumps over the lazy dog"]
JINA_KEY = "jina_test_key_for_jina_clip"
WIDE = encode(gradient(48, 32, seed=5), "PNG")  # not square: shortest-side resize, then centre crop
TALL = encode(gradient(20, 70, seed=6), "PNG")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_jina_clip(tmp_path_factory.mktemp("jina-clip") / "tiny-jina-clip")


@pytest.fixture(scope="module")
def reference(checkpoint: Path) -> Any:
    return load_reference(checkpoint)


def provider(checkpoint: Path, **options: Any) -> JinaClipProvider:
    loaded = JinaClipProvider.from_options(
        {"model": str(checkpoint), "trust_remote_code": True, "max_wait_ms": 1, **options}, name="local"
    )
    loaded.load()
    return loaded


@pytest.fixture(scope="module")
def local(checkpoint: Path) -> JinaClipProvider:
    return provider(checkpoint)


@asynccontextmanager
async def started(p: JinaClipProvider) -> AsyncIterator[JinaClipProvider]:
    await p.start()
    try:
        yield p
    finally:
        await p.close()


def items(*parts: Part) -> list[Item]:
    return [Item((part,)) for part in parts]


def unit(vector: np.ndarray) -> np.ndarray:
    return vector / np.linalg.norm(vector)


def pictures(*data: bytes) -> list[PILImage.Image]:
    return [PILImage.open(io.BytesIO(d)).convert("RGB") for d in data]


# --- the provider against the published path --------------------------------------------------


async def test_texts_equal_encode_text_with_and_without_the_query_task(local: JinaClipProvider, reference: Any) -> None:
    async with started(local) as p:
        plain = await p.embed(items(*map(Text, TEXTS)), EmbedOptions())
        documents = await p.embed(items(*map(Text, TEXTS)), EmbedOptions(input_type=InputType.DOCUMENT))
        queries = await p.embed(items(*map(Text, TEXTS)), EmbedOptions(input_type=InputType.QUERY))
    np.testing.assert_allclose(plain.vectors, reference.encode_text(TEXTS), atol=TOLERANCE)
    np.testing.assert_allclose(documents.vectors, plain.vectors, atol=0)
    np.testing.assert_allclose(queries.vectors, reference.encode_text(TEXTS, task="retrieval.query"), atol=TOLERANCE)
    assert np.abs(queries.vectors - plain.vectors).max() > 1e-2  # the instruction changes the vector
    assert plain.vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(plain.vectors, axis=1), 1.0, atol=1e-6)
    tokenizer = reference.get_tokenizer()
    assert plain.item_tokens == tuple(len(tokenizer(t)["input_ids"]) for t in TEXTS)
    assert queries.item_tokens[0] == len(tokenizer(QUERY_INSTRUCTION + TEXTS[0])["input_ids"])


async def test_images_equal_encode_image(local: JinaClipProvider, reference: Any) -> None:
    data = [WIDE, TALL, png(1)]
    async with started(local) as p:
        result = await p.embed(items(*map(make_image, data)), EmbedOptions(input_type=InputType.QUERY))
    np.testing.assert_allclose(result.vectors, reference.encode_image(pictures(*data)), atol=TOLERANCE)
    assert result.item_tokens == ((32 // 8) ** 2,) * 3  # patches of the tower's 32² input


def test_info_declares_family_dimension_matryoshka_and_fusion(local: JinaClipProvider) -> None:
    info = local.info
    assert info.dimension == 32
    assert info.matryoshka_dimensions == tuple(MATRYOSHKA)
    assert info.fuses_parts is True
    assert info.space.startswith("jina_clip|dir:")
    assert "|torch.float32|text_max_length=8192|instructions=" in info.space


async def test_an_interleaved_item_is_the_normalised_mean_of_its_parts(local: JinaClipProvider, reference: Any) -> None:
    item = Item((Text("a red car"), make_image(WIDE)))
    async with started(local) as p:
        result = await p.embed([item], EmbedOptions(input_type=InputType.QUERY))
    text = reference.encode_text(["a red car"], task="retrieval.query")[0]
    image = reference.encode_image(pictures(WIDE))[0]
    np.testing.assert_allclose(result.vectors[0], unit(text + image), atol=TOLERANCE)
    assert result.item_tokens[0] == len(reference.get_tokenizer()(QUERY_INSTRUCTION + "a red car")["input_ids"]) + 16


async def test_a_vector_does_not_depend_on_its_batch_mates(local: JinaClipProvider) -> None:
    mixed = [*items(*map(Text, TEXTS)), *items(make_image(WIDE), make_image(TALL))]
    async with started(local) as p:
        together = await p.embed(mixed, EmbedOptions())
        alone = [await p.embed([item], EmbedOptions()) for item in mixed]
        concurrent = await asyncio.gather(*(p.embed([item], EmbedOptions()) for item in reversed(mixed)))
        assert p.engine.batches_run < p.engine.parts_run  # the engine did batch (padded) texts together
    np.testing.assert_allclose(together.vectors, np.concatenate([r.vectors for r in alone]), atol=TOLERANCE)
    np.testing.assert_allclose(
        together.vectors, np.concatenate([r.vectors for r in reversed(concurrent)]), atol=TOLERANCE
    )


async def test_text_max_length_truncates_like_the_tokenizer_kwargs(
    checkpoint: Path, reference: Any, local: JinaClipProvider
) -> None:
    long = "the quick brown fox jumps over the lazy dog " * 3
    short = provider(checkpoint, text_max_length=8)
    async with started(short) as p:
        result = await p.embed(items(Text(long), Text("hello")), EmbedOptions())
    np.testing.assert_allclose(result.vectors, reference.encode_text([long, "hello"], max_length=8), atol=TOLERANCE)
    assert result.item_tokens[0] == 8
    assert short.info.space != local.info.space


async def test_a_configured_query_instruction_replaces_the_checkpoints(
    checkpoint: Path, reference: Any, local: JinaClipProvider
) -> None:
    custom = provider(checkpoint, query_instruction="")
    async with started(custom) as p:
        result = await p.embed(items(Text(TEXTS[0])), EmbedOptions(input_type=InputType.QUERY))
    np.testing.assert_allclose(result.vectors, reference.encode_text(TEXTS[:1]), atol=TOLERANCE)
    assert custom.info.space != local.info.space


async def test_the_configs_truncate_dim_is_applied_as_encode_text_applies_it(checkpoint: Path, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(checkpoint, tmp_path / "truncated"))
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, "truncate_dim": 16}))
    truncated = provider(copy)
    assert truncated.info.dimension == 16
    assert truncated.info.matryoshka_dimensions == (8,)
    async with started(truncated) as p:
        result = await p.embed(items(Text(TEXTS[0]), make_image(TALL)), EmbedOptions())
    published = load_reference(copy)
    np.testing.assert_allclose(result.vectors[0], published.encode_text(TEXTS[:1])[0], atol=TOLERANCE)
    np.testing.assert_allclose(result.vectors[1], published.encode_image(pictures(TALL))[0], atol=TOLERANCE)


def test_without_trust_remote_code_the_load_fails_with_one_readable_line(checkpoint: Path) -> None:
    refused = create_provider("jina_clip", {"model": str(checkpoint)}, name="local")
    assert isinstance(refused, JinaClipProvider)
    with pytest.raises(ModelLoadError) as caught:
        refused.load()
    message = str(caught.value)
    assert "trust_remote_code: true" in message
    assert str(checkpoint) in message
    assert "\n" not in message


def test_a_directory_that_is_not_a_checkpoint_fails_with_one_readable_line(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError) as caught:
        provider(tmp_path)
    assert "\n" not in str(caught.value)


# --- one space with Jina's API: the canary --------------------------------------------------------


class PublishedAsJina:
    """The fake Jina API's vectors: the checkpoint's own `encode_text` / `encode_image` (its
    `retrieval.query` task where the request names it), truncated to the requested dimensions."""

    def __init__(self, reference: Any, noise: float = 0.0) -> None:
        self.reference = reference
        self.noise = noise
        self.images = {hashlib.sha256(d).hexdigest(): d for d in (probe_image().data, WIDE, TALL, png(1))}

    def __call__(self, key: str, dimension: int) -> np.ndarray:
        *parts, role = json.loads(key)
        [(kind, value)] = parts
        if kind == "text":
            task = role if role == "retrieval.query" else None
            vector = self.reference.encode_text([value], task=task, truncate_dim=dimension)[0]
        else:
            vector = self.reference.encode_image(pictures(self.images[value]), truncate_dim=dimension)[0]
        if self.noise:
            vector = unit(vector + self.noise * np.random.default_rng(len(key)).standard_normal(dimension))
        return np.asarray(vector, dtype=np.float64)


def jina_deployment(fake: JinaFake, name: str = "jina-api") -> dict[str, Any]:
    return {
        "provider": "jina",
        "name": name,
        "model": "jina-clip-v2",
        "base_url": fake.url,
        "dimensions": 32,
        "priority": 1,
        "timeout_s": 5,
        "max_attempts": 1,
    }


def served(checkpoint: Path, fake: JinaFake) -> ServedModel:
    settings = ModelSettings.model_validate(
        {
            "name": "jina-clip-v2",
            "space": "jina-clip-v2",
            "deployments": [
                {"provider": "jina_clip", "name": "local", "model": str(checkpoint), "trust_remote_code": True},
                jina_deployment(fake),
            ],
        }
    )
    model = ServedModel(
        settings,
        [
            Deployment.from_settings(d, create_provider(d.provider, d.provider_options, name=d.name))
            for d in settings.deployments
        ],
    )
    for deployment in model.deployments:
        deployment.provider.load()
    model.settle_space()
    return model


@pytest.fixture
def jina_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JINA_API_KEY", JINA_KEY)


@pytest.mark.usefixtures("jina_env")
async def test_the_canary_finds_the_local_model_and_the_api_one_space(checkpoint: Path, reference: Any) -> None:
    with JinaFake(api_key=JINA_KEY, vector_fn=PublishedAsJina(reference)) as fake:
        model = served(checkpoint, fake)
        assert await verify_spaces([model]) == []
        probes = [body for body in fake.bodies() if {"text": "a photo of a dog running on a beach"} in body["input"]]
    assert [d.verified for d in model.deployments] == [True, True]
    assert len(probes) == 1 and len(probes[0]["input"]) == 4  # three texts and the generated image


@pytest.mark.usefixtures("jina_env")
async def test_an_api_that_is_close_but_not_the_same_space_is_refused(checkpoint: Path, reference: Any) -> None:
    with JinaFake(api_key=JINA_KEY, vector_fn=PublishedAsJina(reference, noise=0.05)) as fake:
        model = served(checkpoint, fake)
        with pytest.raises(CanaryFailed) as caught:
            await verify_spaces([model])
    message = str(caught.value)
    assert "deployments 'local' and 'jina-api' disagree" in message
    cosine = float(message.split("cosine ")[1].split(" ", maxsplit=1)[0])
    assert 0.9 < cosine < 0.99
    assert "< canary_threshold 0.99" in message


# --- through a real gateway with the openai SDK ------------------------------------------------


@pytest.fixture(scope="module")
def gateway(
    checkpoint: Path, reference: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, JinaFake]]:
    with JinaFake(api_key=JINA_KEY, vector_fn=PublishedAsJina(reference)) as fake:
        config = {
            "models": [
                {
                    "name": "jina-clip-v2",
                    "space": "jina-clip-v2",
                    "deployments": [
                        {"provider": "jina_clip", "name": "local", "model": str(checkpoint), "trust_remote_code": True},
                        jina_deployment(fake),
                    ],
                }
            ]
        }
        workdir = tmp_path_factory.mktemp("jina-clip-gateway")
        with gateway_process(config, workdir, env={"JINA_API_KEY": JINA_KEY}) as url:
            yield url, fake


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)


def floats(response: Any) -> np.ndarray:
    return np.array([row.embedding for row in response.data], dtype=np.float32)


@pytest.mark.slow
def test_server_texts_and_images_are_the_published_vectors(gateway: tuple[str, JinaFake], reference: Any) -> None:
    url, _ = gateway
    response = client(url).embeddings.create(
        model="jina-clip-v2",
        input=[TEXTS[0], {"image": data_uri(WIDE)}],  # type: ignore[list-item]
        encoding_format="float",
    )
    got = floats(response)
    np.testing.assert_allclose(got[0], reference.encode_text(TEXTS[:1])[0], atol=TOLERANCE)
    np.testing.assert_allclose(got[1], reference.encode_image(pictures(WIDE))[0], atol=TOLERANCE)
    assert response.usage.prompt_tokens > 0


@pytest.mark.slow
def test_server_ready_after_the_canary_verified_both_deployments(gateway: tuple[str, JinaFake]) -> None:
    url, fake = gateway
    deployments = httpx.get(f"{url}/ready").json()["deployments"]
    assert deployments["local"]["verified"] is True
    assert deployments["jina-api"]["verified"] is True
    assert any({"text": "a photo of a dog running on a beach"} in body["input"] for body in fake.bodies())


@pytest.mark.slow
def test_server_query_input_type_applies_the_instruction(gateway: tuple[str, JinaFake], reference: Any) -> None:
    url, _ = gateway
    response = client(url).embeddings.create(
        model="jina-clip-v2", input=TEXTS[1:3], encoding_format="float", extra_body={"input_type": "query"}
    )
    np.testing.assert_allclose(
        floats(response), reference.encode_text(TEXTS[1:3], task="retrieval.query"), atol=TOLERANCE
    )


@pytest.mark.slow
def test_server_matryoshka_dimensions_equal_encode_text_truncate_dim(
    gateway: tuple[str, JinaFake], reference: Any
) -> None:
    url, _ = gateway
    sdk = client(url)
    response = sdk.embeddings.create(model="jina-clip-v2", input=TEXTS[3], dimensions=16, encoding_format="float")
    np.testing.assert_allclose(
        floats(response)[0], reference.encode_text(TEXTS[3:], truncate_dim=16)[0], atol=TOLERANCE
    )
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.embeddings.create(model="jina-clip-v2", input="x", dimensions=12)
    assert refused.value.param == "dimensions"
    listed = {m.id: m for m in sdk.models.list().data}
    assert listed["jina-clip-v2"].model_extra is not None
    assert listed["jina-clip-v2"].model_extra["matryoshka_dimensions"] == MATRYOSHKA


@pytest.mark.slow
def test_server_interleaved_item_is_fused_locally(gateway: tuple[str, JinaFake], reference: Any) -> None:
    url, fake = gateway
    before = len(fake.requests)
    response = client(url).embeddings.create(
        model="jina-clip-v2",
        input="placeholder",
        encoding_format="float",
        extra_body={"input": [{"content": ["a red car", {"image": data_uri(TALL)}]}]},
    )
    text = reference.encode_text(["a red car"])[0]
    image = reference.encode_image(pictures(TALL))[0]
    np.testing.assert_allclose(floats(response)[0], unit(text + image), atol=TOLERANCE)
    assert len(fake.requests) == before  # Jina's API embeds one part per input: never asked
