"""Text encoders on tiny real checkpoints (BERT, XLM-R, a left-padded Qwen2 decoder): the provider's
vectors equal a raw transformers computation written here (AutoModel, pooling by hand, 1e-5),
alone and in mixed batches; pooling, prompts and the length limit come from the checkpoint's
sentence-transformers files or the options; overlong texts are refused; through the gateway with
the openai SDK."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import openai
import pytest
from PIL import Image as PILImageModule
from pydantic import ValidationError

from providers.base import EmbedOptions, Image, InputRejected, InputType, Item, ModelLoadError, Text
from providers.sentence_transformers_files import read_files
from providers.text_encoder import TextEncoderOptions, TextEncoderProvider, TextUnit
from tests.servers import gateway_process
from tests.tiny_models import build_siglip
from tests.tiny_text_models import RawEncoder, build_bert, build_qwen2, build_xlm_roberta, write_st_files

TOLERANCE = 1e-5
TEXTS = [
    "hello world",
    "a photo of a dog sitting on the grass next to the red sunset over the sea",
    "an invoice",
    "the quick brown fox jumps over the lazy dog",
    "Retrieval augmented generation with images and text: embeddings gateway serves vectors",
]
PROMPTS = {"query": "query: ", "passage": "passage: "}


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny checkpoints; the ones with sentence-transformers files share weights with a plain one."""
    root = tmp_path_factory.mktemp("text-encoders")
    dirs = {
        "bert": build_bert(root / "bert"),
        "xlmr": build_xlm_roberta(root / "xlmr"),
        "qwen2": build_qwen2(root / "qwen2"),
    }
    for name, source, st_options in (
        ("bert-cls", "bert", {"pooling": "cls", "prompts": PROMPTS}),
        ("bert-short", "bert", {"pooling": "cls", "prompts": PROMPTS, "max_seq_length": 16}),
        ("bert-no-prompt", "bert", {"pooling": "mean", "prompts": PROMPTS, "include_prompt": False}),
        ("xlmr-cls", "xlmr", {"pooling": "cls"}),
        ("qwen2-last", "qwen2", {"pooling": "last_token", "prompts": {"query": "Instruct: find it\nQuery: "}}),
        ("bert-max", "bert", {"pooling": "max"}),
    ):
        dirs[name] = write_st_files(Path(shutil.copytree(dirs[source], root / name)), **st_options)  # type: ignore[arg-type]
    return dirs


@pytest.fixture(scope="session")
def raw(checkpoints: dict[str, Path]) -> dict[str, RawEncoder]:
    return {name: RawEncoder(checkpoints[name]) for name in ("bert", "xlmr", "qwen2")}


def provider_for(directory: Path, **options: object) -> TextEncoderProvider:
    provider = TextEncoderProvider(TextEncoderOptions(model=str(directory), device="cpu", dtype="float32", **options))  # type: ignore[arg-type]
    provider.load()
    return provider


def embed(
    provider: TextEncoderProvider, texts: list[str], input_type: InputType | None = None, **engine: float
) -> tuple[np.ndarray, tuple[int, ...]]:
    """One `embed` call through the provider's real engine (started and closed here)."""

    async def run() -> tuple[np.ndarray, tuple[int, ...]]:
        await provider.start()
        try:
            result = await provider.embed([Item((Text(t),)) for t in texts], EmbedOptions(input_type))
        finally:
            await provider.close()
        return result.vectors, result.item_tokens

    return asyncio.run(run())


# --- parity with the raw transformers computation ------------------------------------------------

PARITY = [
    ("bert", "bert", "mean"),
    ("xlmr", "xlmr", "mean"),
    ("xlmr-cls", "xlmr", "cls"),
    ("qwen2-last", "qwen2", "last_token"),
]


@pytest.mark.parametrize(("checkpoint", "weights", "pooling"), PARITY, ids=[p[0] for p in PARITY])
def test_vectors_equal_the_raw_computation(
    checkpoints: dict[str, Path], raw: dict[str, RawEncoder], checkpoint: str, weights: str, pooling: str
) -> None:
    provider = provider_for(checkpoints[checkpoint])
    assert provider.encoder.settings.pooling == pooling
    vectors, tokens = embed(provider, TEXTS)
    expected, counts = raw[weights].encode(TEXTS, pooling)
    assert vectors.shape == (len(TEXTS), 32)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(vectors, expected, atol=TOLERANCE, rtol=0)
    assert list(tokens) == counts
    assert len(set(counts)) > 2  # the batch really was padded


@pytest.mark.parametrize("checkpoint", ["bert", "xlmr-cls", "qwen2-last"])
def test_a_text_alone_equals_it_in_a_batch(checkpoints: dict[str, Path], checkpoint: str) -> None:
    provider = provider_for(checkpoints[checkpoint])
    together, _ = embed(provider, TEXTS)
    for index, text in enumerate(TEXTS):
        alone, _ = embed(provider, [text])
        np.testing.assert_allclose(alone[0], together[index], atol=TOLERANCE, rtol=0)
    reordered, _ = embed(provider, TEXTS[::-1])
    np.testing.assert_allclose(reordered[::-1], together, atol=TOLERANCE, rtol=0)


def test_padding_side_follows_the_tokenizer(checkpoints: dict[str, Path]) -> None:
    decoder = provider_for(checkpoints["qwen2-last"]).encoder
    encoder = provider_for(checkpoints["bert"]).encoder
    assert decoder.left_padding
    assert not encoder.left_padding
    short, long = (decoder.prepare(TextUnit(0, text)).features for text in ["hello", "hello world and more"])
    batch = decoder.collate([short, long])
    assert batch["attention_mask"][0].tolist()[-short["input_ids"].shape[1] :] == [1] * short["input_ids"].shape[1]
    assert batch["attention_mask"][0, 0] == 0  # padded on the left
    assert batch["input_ids"][0, 0] == decoder.pad_id


# --- what the sentence-transformers files decide ---------------------------------------------------


def test_pooling_comes_from_the_pooling_config_unless_the_options_say(
    checkpoints: dict[str, Path], raw: dict[str, RawEncoder]
) -> None:
    cls, _ = embed(provider_for(checkpoints["bert-cls"]), TEXTS)
    mean, _ = embed(provider_for(checkpoints["bert"]), TEXTS)
    overridden, _ = embed(provider_for(checkpoints["bert-cls"], pooling="mean"), TEXTS)
    np.testing.assert_allclose(cls, raw["bert"].encode(TEXTS, "cls")[0], atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(mean, raw["bert"].encode(TEXTS, "mean")[0], atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(overridden, mean, atol=TOLERANCE, rtol=0)
    assert float(np.abs(cls - mean).max()) > 0.05


def test_st_files_are_read(checkpoints: dict[str, Path]) -> None:
    files = read_files(str(checkpoints["bert-cls"]), None)
    assert files.pooling == ("cls",)
    assert files.normalize
    assert files.max_seq_length is None
    assert read_files(str(checkpoints["bert-short"]), None).max_seq_length == 16
    assert files.prompts == PROMPTS
    assert read_files(str(checkpoints["bert-no-prompt"]), None).include_prompt is False
    assert read_files(str(checkpoints["bert"]), None).present is False


def test_prompts_from_the_files_and_from_the_options(checkpoints: dict[str, Path], raw: dict[str, RawEncoder]) -> None:
    provider = provider_for(checkpoints["bert-cls"])
    texts = TEXTS[:3]
    reference = raw["bert"]
    for input_type, prompt in ((InputType.QUERY, "query: "), (InputType.DOCUMENT, "passage: "), (None, "")):
        vectors, tokens = embed(provider, texts, input_type)
        expected, counts = reference.encode([prompt + t for t in texts], "cls")
        np.testing.assert_allclose(vectors, expected, atol=TOLERANCE, rtol=0)
        assert list(tokens) == counts  # the prompt's tokens are counted
    custom = provider_for(checkpoints["bert-cls"], query_prompt="search: ", document_prompt="")
    query, _ = embed(custom, texts, InputType.QUERY)
    document, _ = embed(custom, texts, InputType.DOCUMENT)
    np.testing.assert_allclose(query, reference.encode(["search: " + t for t in texts], "cls")[0], atol=TOLERANCE)
    np.testing.assert_allclose(document, reference.encode(texts, "cls")[0], atol=TOLERANCE)
    assert provider.info.space != custom.info.space


def test_prompt_tokens_left_out_of_the_mean_when_the_files_say(
    checkpoints: dict[str, Path], raw: dict[str, RawEncoder]
) -> None:
    provider = provider_for(checkpoints["bert-no-prompt"])
    vectors, _ = embed(provider, TEXTS, InputType.QUERY)
    prompt_ids = raw["bert"].tokenizer("query: ")["input_ids"]  # [CLS] query : [SEP]: the [SEP] is the text's
    expected, _ = raw["bert"].encode(["query: " + t for t in TEXTS], "mean", skip_first=len(prompt_ids) - 1)
    np.testing.assert_allclose(vectors, expected, atol=TOLERANCE, rtol=0)
    with_prompt, _ = raw["bert"].encode(["query: " + t for t in TEXTS], "mean")
    assert float(np.abs(with_prompt - vectors).max()) > 1e-3  # leaving the prompt out mattered
    sentence_transformers = pytest.importorskip("sentence_transformers")
    model = sentence_transformers.SentenceTransformer(str(checkpoints["bert-no-prompt"]), device="cpu")
    theirs = model.encode(TEXTS, prompt_name="query", normalize_embeddings=True)
    np.testing.assert_allclose(vectors, theirs, atol=TOLERANCE, rtol=0)


# --- length limit --------------------------------------------------------------------------------


def test_length_limits_default_to_the_files_then_the_model(checkpoints: dict[str, Path]) -> None:
    assert provider_for(checkpoints["bert-short"]).encoder.settings.max_length == 16  # max_seq_length
    assert provider_for(checkpoints["bert-short"], max_length=20).encoder.settings.max_length == 20
    assert provider_for(checkpoints["bert"]).encoder.settings.max_length == 64  # positions < tokenizer's 512
    assert provider_for(checkpoints["xlmr"]).encoder.settings.max_length == 64  # 66 positions less the offset 2
    assert provider_for(checkpoints["xlmr"], max_length=20).encoder.settings.max_length == 20
    with pytest.raises(ModelLoadError, match="over the 64 positions"):
        provider_for(checkpoints["xlmr"], max_length=65)


def test_overlong_text_is_refused_naming_its_item(checkpoints: dict[str, Path]) -> None:
    provider = provider_for(checkpoints["bert-short"])
    long = "the quick brown fox jumps over the lazy dog " * 3
    with pytest.raises(InputRejected) as refused:
        embed(provider, ["hello world", long])
    assert refused.value.index == 1
    message = str(refused.value)
    count = len(RawEncoder(checkpoints["bert"]).tokenizer(long)["input_ids"])
    assert f"{count} tokens" in message
    assert "at most 16" in message
    assert "truncate: true" in message
    # 16 tokens exactly fit; the same text as a query does not: its prompt counts
    exact = "a " * 14
    assert len(RawEncoder(checkpoints["bert"]).tokenizer(exact)["input_ids"]) == 16
    assert embed(provider, [exact])[1] == (16,)
    with pytest.raises(InputRejected, match="at most 16"):
        embed(provider, [exact], InputType.QUERY)


def test_truncation_when_opted_in(checkpoints: dict[str, Path], raw: dict[str, RawEncoder]) -> None:
    provider = provider_for(checkpoints["bert-short"], truncate=True)
    long = "the quick brown fox jumps over the lazy dog " * 3
    vectors, tokens = embed(provider, ["hello world", long])
    expected, counts = raw["bert"].encode(["hello world", long], "cls", max_length=16)
    np.testing.assert_allclose(vectors, expected, atol=TOLERANCE, rtol=0)
    assert list(tokens) == counts
    assert counts[1] == 16
    assert provider.info.space != provider_for(checkpoints["bert-short"]).info.space


# --- refusals and load errors --------------------------------------------------------------------


def _image() -> Image:
    buffer = io.BytesIO()
    PILImageModule.new("RGB", (8, 8), "red").save(buffer, format="PNG")
    data = buffer.getvalue()
    return Image(data, "image/png", hashlib.sha256(data).hexdigest(), PILImageModule.open(io.BytesIO(data)))


def test_units_defend_against_images_and_interleaved_items(checkpoints: dict[str, Path]) -> None:
    provider = provider_for(checkpoints["bert"])
    with pytest.raises(InputRejected) as image:
        provider.units([Item((Text("ok"),)), Item((_image(),))], EmbedOptions())
    assert (image.value.index, image.value.part) == (1, 0)
    with pytest.raises(InputRejected) as interleaved:
        provider.units([Item((Text("a"), Text("b")))], EmbedOptions())
    assert interleaved.value.index == 0
    assert provider.info.modalities == {"text"}
    assert provider.info.fuses_parts is False
    with pytest.raises(ValidationError, match="text only"):
        TextEncoderOptions(model="x", modalities=["text", "image"])  # type: ignore[list-item]


def test_space_names_what_changes_vectors(checkpoints: dict[str, Path]) -> None:
    space = provider_for(checkpoints["bert"]).info.space
    assert space.startswith("text_encoder|dir:")
    for option in ({"pooling": "cls"}, {"max_length": 32}, {"truncate": True}, {"query_prompt": "q: "}):
        assert provider_for(checkpoints["bert"], **option).info.space != space, option
    assert "pooling=mean" in space
    assert "max_length=64" in space


@pytest.mark.parametrize("case", ["missing", "siglip", "dense-module", "max-pooling"])
def test_load_errors_are_one_readable_line(
    checkpoints: dict[str, Path], tmp_path_factory: pytest.TempPathFactory, case: str
) -> None:
    root = tmp_path_factory.mktemp(f"bad-{case}")
    if case == "missing":
        directory, expected = root / "nothing-here", "nothing-here"
    elif case == "siglip":
        directory, expected = build_siglip(root / "siglip"), "not a text encoder"
    elif case == "dense-module":
        directory = Path(shutil.copytree(checkpoints["bert-cls"], root / "dense"))
        modules = (directory / "modules.json").read_text().replace("models.Normalize", "models.Dense")
        (directory / "modules.json").write_text(modules)
        expected = "Dense"
    else:
        directory, expected = checkpoints["bert-max"], "max pooling"
    with pytest.raises(ModelLoadError) as failed:
        provider_for(directory)
    assert expected in str(failed.value)
    assert "\n" not in str(failed.value)


# --- through the gateway, with the openai SDK ------------------------------------------------------


@pytest.fixture(scope="module")
def text_gateway(checkpoints: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    config = {
        "models": [
            {
                "name": "tiny-bert",
                "provider": "text_encoder",
                "model": str(checkpoints["bert-short"]),
                "dtype": "float32",
            }
        ],
        "log_level": "warning",
    }
    with gateway_process(config, tmp_path_factory.mktemp("text-gateway")) as url:
        yield url


@pytest.mark.slow
def test_float_and_base64_vectors_through_the_sdk(text_gateway: str, checkpoints: dict[str, Path]) -> None:
    client = openai.OpenAI(base_url=f"{text_gateway}/v1", api_key="unused")
    texts = ["hello world", "an invoice", "red sunset over the sea"]
    provider = provider_for(checkpoints["bert-short"])
    expected_document, _ = embed(provider, texts)
    expected_query, tokens = embed(provider, texts, InputType.QUERY)
    as_float = client.embeddings.create(model="tiny-bert", input=texts, encoding_format="float")
    got = np.array([row.embedding for row in as_float.data], dtype=np.float32)
    np.testing.assert_allclose(got, expected_document, atol=TOLERANCE, rtol=0)
    raw_response = client.embeddings.with_raw_response.create(
        model="tiny-bert", input=texts, encoding_format="base64", extra_body={"input_type": "query"}
    )
    rows = raw_response.http_response.json()["data"]
    decoded = np.stack([np.frombuffer(base64.b64decode(row["embedding"]), dtype="<f4") for row in rows])
    np.testing.assert_allclose(decoded, expected_query, atol=TOLERANCE, rtol=0)
    assert float(np.abs(decoded - got).max()) > 1e-3  # the query prompt moved the vectors
    assert raw_response.parse().usage.prompt_tokens == sum(tokens)


@pytest.mark.slow
def test_images_interleaved_and_overlong_inputs_are_400(text_gateway: str) -> None:
    client = openai.OpenAI(base_url=f"{text_gateway}/v1", api_key="unused", max_retries=0)
    image = "data:image/png;base64," + base64.b64encode(_image().data).decode()
    cases = [
        (["hello", {"image": image}], "input[1]"),
        (
            [{"content": [{"type": "text", "text": "a"}, {"type": "image_url", "image_url": {"url": image}}]}],
            "input[0]",
        ),
        ([{"content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}], "input[0]"),
        (["hello", "short", "the quick brown fox jumps over the lazy dog " * 3], "input[2]"),
    ]
    for inputs, param in cases:
        with pytest.raises(openai.BadRequestError) as refused:
            client.embeddings.create(model="tiny-bert", input=inputs)  # type: ignore[arg-type]
        assert refused.value.status_code == 400
        body = refused.value.body
        assert isinstance(body, dict)
        assert str(body["param"]).startswith(param), (param, body)
    assert "truncate: true" in str(body["message"])
