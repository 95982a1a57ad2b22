"""VisRAG-Ret against its published code: the same prompts, slices and vectors (fp32, 1e-4), alone,
in mixed concurrent batches, and through the gateway with the openai SDK.

The reference is the published modeling code run as written in its own venv (transformers 4.57,
timm), on a tiny random checkpoint saved by that code (tests/visrag_fixtures.py)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy as np
import openai
import pytest
from PIL import Image as PILImageModule
from sentencepiece import sentencepiece_model_pb2

from providers.base import EmbedOptions, Image, InputType, Item, Modality, Part, Text
from providers.visrag import VisragEncoder, VisragOptions, VisragProvider, unit_of
from providers.visrag_prompt import collate
from providers.visrag_tokenizer import SentencePieceLlamaTokenizer
from tests.servers import gateway_process
from tests.visrag_fixtures import (
    RefItem,
    ensure_reference_env,
    page_image,
    reference,
    visrag_dir_fixture,  # noqa: F401  (registers the `visrag_dir` fixture)
)
from tests.visrag_reference import environment

TOLERANCE = 1e-4
QUERY = "What was the revenue growth in Q3?"
ITEMS = (
    RefItem("query", text=QUERY, query=True),
    RefItem("document", text=QUERY),
    RefItem("tricky", text="  Total: $1,200 (see p. 4) <s> über 東京 🙂\n<image></image> naïve"),
    RefItem("small", image=page_image(200, 150, seed=1)),
    RefItem("page", image=page_image(1344, 1344, seed=2)),  # 9 areas of 448²: a 3x3 grid
    RefItem("banner", image=page_image(4000, 200, seed=3)),  # 5x1 slices of 896x224: positions shrink
    RefItem("interleaved", text="Quarterly revenue table, page 4", image=page_image(600, 800, seed=4)),
    RefItem("image-query", image=page_image(300, 420, seed=5), query=True),
)


def part_of(data: bytes) -> Image:
    return Image(data, "image/png", hashlib.sha256(data).hexdigest(), PILImageModule.open(io.BytesIO(data)))


def item_of(ref: RefItem) -> Item:
    parts: list[Part] = []
    if isinstance(ref.image, bytes):
        parts.append(part_of(ref.image))
    if ref.text is not None:
        parts.append(Text(ref.text))
    return Item(tuple(parts))


def options_of(ref: RefItem) -> EmbedOptions:
    return EmbedOptions(InputType.QUERY if ref.query else InputType.DOCUMENT)


@pytest.fixture(scope="module")
def published(visrag_dir: Path) -> dict[str, dict[str, np.ndarray]]:
    found = reference(visrag_dir, ITEMS)
    return {"single": found.single, "batch": found.batch, "ids": found.token_ids, "slices": found.slices}


@pytest.fixture(scope="module")
def encoder(visrag_dir: Path) -> VisragEncoder:
    return VisragEncoder(VisragOptions(model=str(visrag_dir), device="cpu", dtype="float32"))


def test_prompt_ids_and_slices_are_the_published_ones(
    encoder: VisragEncoder, published: dict[str, dict[str, np.ndarray]]
) -> None:
    for ref in ITEMS:
        unit = unit_of(item_of(ref), 0, encoder.options.query_instruction if ref.query else None)
        prepared = encoder.prepare(unit)
        np.testing.assert_array_equal(prepared.features["input_ids"][0].numpy(), published["ids"][ref.id], ref.id)
        fed = [
            prepared.features[name][0].reshape(-1, 3, *prepared.features[name].shape[-2:])
            for name in ("pixels.source", "pixels.slices")
            if name in prepared.features
        ]
        sizes = [(picture.shape[-1], picture.shape[-2]) for group in fed for picture in group]  # (width, height)
        np.testing.assert_array_equal(np.array(sizes, dtype=np.int64).reshape(-1, 2), published["slices"][ref.id])
    assert len(published["slices"]["page"]) == 10  # the overview and a 3x3 grid


def test_each_item_alone_is_the_published_vector(
    encoder: VisragEncoder, published: dict[str, dict[str, np.ndarray]]
) -> None:
    for ref in ITEMS:
        unit = unit_of(item_of(ref), 0, encoder.options.query_instruction if ref.query else None)
        prepared = encoder.prepare(unit)
        vector = encoder.forward(prepared.modality, collate([prepared.features]))[0]
        assert np.isfinite(vector).all(), ref.id
        assert abs(float(np.linalg.norm(vector)) - 1) < 1e-5
        np.testing.assert_allclose(vector, published["single"][ref.id], atol=TOLERANCE, rtol=0, err_msg=ref.id)
    assert encoder.dimension == 128


def test_half_precision_stays_on_the_published_vectors(
    visrag_dir: Path, published: dict[str, dict[str, np.ndarray]]
) -> None:
    """bf16 (what `auto` picks on a recent GPU): finite, and within a hair of the fp32 reference."""
    half = VisragEncoder(VisragOptions(model=str(visrag_dir), device="cpu", dtype="bfloat16"))
    refs = [ref for ref in ITEMS if ref.id in {"query", "page", "interleaved"}]
    units = [unit_of(item_of(ref), 0, half.options.query_instruction if ref.query else None) for ref in refs]
    vectors = half.forward(Modality.IMAGE, collate([half.prepare(unit).features for unit in units]))
    assert np.isfinite(vectors).all()
    for ref, vector in zip(refs, vectors, strict=True):
        assert float(vector @ published["single"][ref.id]) > 0.999, ref.id


@pytest.fixture
async def provider(visrag_dir: Path) -> AsyncIterator[VisragProvider]:
    options = {"model": str(visrag_dir), "device": "cpu", "dtype": "float32", "max_wait_ms": 1000}
    served = VisragProvider.from_options({**options, "image_max_batch_size": 8}, name="visrag-test")
    served.load()
    await served.start()
    yield served
    await served.close()


async def test_mixed_concurrent_batches_give_each_item_its_own_vector(
    provider: VisragProvider, published: dict[str, dict[str, np.ndarray]]
) -> None:
    """Queries, texts, pictures of every size and interleaved items from concurrent requests share
    forward passes (right-padded, pictures of several sizes); each vector is the item's alone."""
    results = await asyncio.gather(*(provider.embed([item_of(ref)], options_of(ref)) for ref in ITEMS))
    assert provider.engine.batches_run < len(ITEMS)  # requests shared forward passes
    for ref, result in zip(ITEMS, results, strict=True):
        vector = result.vectors[0]
        assert np.isfinite(vector).all()
        np.testing.assert_allclose(vector, published["single"][ref.id], atol=TOLERANCE, rtol=0, err_msg=ref.id)
        np.testing.assert_allclose(vector, published["batch"][ref.id], atol=TOLERANCE, rtol=0, err_msg=ref.id)
        assert result.item_tokens[0] == len(published["ids"][ref.id])


async def test_one_request_of_many_items_keeps_their_order(
    provider: VisragProvider, published: dict[str, dict[str, np.ndarray]]
) -> None:
    documents = [ref for ref in ITEMS if not ref.query]
    result = await provider.embed([item_of(ref) for ref in documents], EmbedOptions())
    assert provider.engine.batches_run == 2  # the texts together, the pictured items together
    expected = np.stack([published["single"][ref.id] for ref in documents])
    np.testing.assert_allclose(result.vectors, expected, atol=TOLERANCE, rtol=0)


def test_space_and_batch_sizes(provider: VisragProvider, visrag_dir: Path) -> None:
    info = provider.info
    assert info.fuses_parts
    assert info.modalities == {Modality.TEXT, Modality.IMAGE}
    assert info.space.startswith("visrag|dir:") and "|torch.float32|" in info.space
    other = VisragProvider.from_options(
        {"model": str(visrag_dir), "device": "cpu", "dtype": "float32", "query_instruction": "Query: "}, name="q"
    )
    other.load()
    assert other.info.space != info.space  # another instruction: another space
    assert other.batch_sizes == {Modality.TEXT: 16, Modality.IMAGE: 2}  # pages on a CPU: two at a time


# --- the tokenizer, against transformers 4.57's slow LlamaTokenizer in both of its modes ---------

TOKENIZER_TEXTS = [
    "",
    " ",
    "hello world",
    "  two  spaces ",
    "\nnewline first",
    "Hello <s>.",
    "<unk>x<unk>",
    "<image><unk><unk></image>\ntext after",
    "<slice>\n</slice> and </s>end",
    "über 東京 🙂 naïve",
    "\u2581literal underline",
    "Q3 42.5% $1,200",
]
REFERENCE_TOKENIZER = """
import json, sys
from transformers import LlamaTokenizer
texts = json.loads(sys.argv[1])
print(json.dumps([[t.encode(s) for s in texts] for t in map(LlamaTokenizer.from_pretrained, sys.argv[2:])]))
"""


def test_tokenizer_ids_are_transformers_4_slow_llama_ids_in_every_mode(visrag_dir: Path, tmp_path: Path) -> None:
    """Legacy or not, with or without sentencepiece's dummy prefix: the ids the published code's
    tokenizer class gives (the real checkpoint's settings are not in this test's hands)."""
    python = ensure_reference_env()
    config = json.loads((visrag_dir / "tokenizer_config.json").read_text())
    for drop in ("auto_map", "tokenizer_class"):
        config.pop(drop, None)
    directories = []
    for legacy in (True, False):
        for dummy_prefix in (True, False):
            directory = tmp_path / f"legacy-{legacy}-prefix-{dummy_prefix}"
            directory.mkdir()
            proto = sentencepiece_model_pb2.ModelProto.FromString((visrag_dir / "tokenizer.model").read_bytes())
            proto.normalizer_spec.add_dummy_prefix = dummy_prefix
            (directory / "tokenizer.model").write_bytes(proto.SerializeToString())
            (directory / "tokenizer_config.json").write_text(json.dumps({**config, "legacy": legacy}))
            shutil.copyfile(visrag_dir / "special_tokens_map.json", directory / "special_tokens_map.json")
            directories.append(directory)
    done = subprocess.run(
        [str(python), "-c", REFERENCE_TOKENIZER, json.dumps(TOKENIZER_TEXTS), *map(str, directories)],
        capture_output=True,
        text=True,
        check=True,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}, **environment.script_environment()},
        timeout=300,
    )
    expected = json.loads(done.stdout.strip().splitlines()[-1])
    for directory, ids in zip(directories, expected, strict=True):
        ours = SentencePieceLlamaTokenizer.from_directory(directory)
        assert [ours.encode(text) for text in TOKENIZER_TEXTS] == ids, directory.name
    assert expected[0] != expected[1]  # the dummy prefix matters, so the test can tell


# --- through the gateway, with the openai SDK --------------------------------------------------


@pytest.fixture(scope="module")
def visrag_gateway(visrag_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    config = {
        "models": [{"name": "visrag-tiny", "provider": "visrag", "model": str(visrag_dir), "dtype": "float32"}],
        "cache": {"expose_headers": True},
        "log_level": "warning",
    }
    with gateway_process(config, tmp_path_factory.mktemp("visrag-gateway")) as url:
        yield url


def test_input_type_changes_a_query_and_is_part_of_the_cache_key(
    visrag_gateway: str, published: dict[str, dict[str, np.ndarray]]
) -> None:
    client = openai.OpenAI(base_url=f"{visrag_gateway}/v1", api_key="unused")

    def embed(**extra: str) -> tuple[np.ndarray, dict[str, str]]:
        body = {"input_type": extra["input_type"]} if extra else None
        raw = client.embeddings.with_raw_response.create(model="visrag-tiny", input=[QUERY], extra_body=body)
        vectors = np.array([row.embedding for row in raw.parse().data], dtype=np.float32)
        return vectors[0], {k: raw.headers[k] for k in ("x-cache-hits", "x-cache-misses")}

    as_query, first = embed(input_type="query")
    as_document, second = embed(input_type="document")
    unspecified, third = embed()
    again, fourth = embed(input_type="query")
    np.testing.assert_allclose(as_query, published["single"]["query"], atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(as_document, published["single"]["document"], atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(unspecified, published["single"]["document"], atol=TOLERANCE, rtol=0)
    assert float(as_query @ as_document) < 0.9999  # the instruction moves the vector
    assert first == second == third == {"x-cache-hits": "0", "x-cache-misses": "1"}  # no type served another's
    assert fourth == {"x-cache-hits": "1", "x-cache-misses": "0"}
    np.testing.assert_array_equal(again, as_query)


def test_an_interleaved_item_and_a_page_through_the_sdk(
    visrag_gateway: str, published: dict[str, dict[str, np.ndarray]]
) -> None:
    client = openai.OpenAI(base_url=f"{visrag_gateway}/v1", api_key="unused")
    by_id = {ref.id: ref for ref in ITEMS}

    def uri(ref: RefItem) -> str:
        assert isinstance(ref.image, bytes)
        return "data:image/png;base64," + base64.b64encode(ref.image).decode()

    interleaved = by_id["interleaved"]
    content = [
        {"type": "text", "text": interleaved.text},
        {"type": "image_url", "image_url": {"url": uri(interleaved)}},
    ]
    inputs = [{"content": content}, {"image": uri(by_id["small"])}]
    response = client.embeddings.create(model="visrag-tiny", input=inputs)  # type: ignore[arg-type]
    got = np.array([row.embedding for row in response.data], dtype=np.float32)
    np.testing.assert_allclose(got[0], published["single"]["interleaved"], atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(got[1], published["single"]["small"], atol=TOLERANCE, rtol=0)
    assert response.usage.prompt_tokens == len(published["ids"]["interleaved"]) + len(published["ids"]["small"])
