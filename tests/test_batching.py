"""The batching engine: merges concurrent work, bounds its queue, drops cancelled work."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator

import numpy as np
import pytest
import torch
from PIL import Image as PILImage

from providers.base import Image, Modality, Overloaded, Part, ProviderError, Text, Vectors
from providers.batching import BatchingEngine, Features, Prepared

DIMENSION = 13


class RecordingEncoder:
    """A deterministic `LocalEncoder`: a text's vector is a one-hot of its length; batches are recorded."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.fail_next = False
        self.modalities: list[Modality] = []

    def prepare(self, part: Part) -> Prepared:
        if isinstance(part, Image):  # an image counts as a "text" as long as its width
            return Prepared(Modality.IMAGE, {"length": torch.tensor([[part.pixels.width]])}, 1)
        return Prepared(Modality.TEXT, {"length": torch.tensor([[len(part.text)]])}, len(part.text))

    def forward(self, modality: Modality, batch: Features) -> Vectors:
        self.gate.wait(10)
        lengths = [int(v) for v in batch["length"][:, 0]]
        self.batches.append(lengths)
        self.modalities.append(modality)
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("CUDA error: out of memory")
        vectors = np.zeros((len(lengths), DIMENSION), dtype=np.float32)
        vectors[np.arange(len(lengths)), np.array(lengths) % DIMENSION] = 1.0
        return vectors


def expected(text: str) -> np.ndarray:
    row = np.zeros(DIMENSION, dtype=np.float32)
    row[len(text) % DIMENSION] = 1.0
    return row


@pytest.fixture
def encoder() -> RecordingEncoder:
    return RecordingEncoder()


@pytest.fixture
async def engine(encoder: RecordingEncoder) -> AsyncIterator[BatchingEngine]:
    engine = BatchingEngine(encoder, name="test", max_batch_size=8, max_wait_s=0.02, max_queue=20)
    await engine.start()
    yield engine
    await engine.close()


async def test_concurrent_requests_merge_into_micro_batches(engine: BatchingEngine, encoder: RecordingEncoder) -> None:
    texts = ["x" * n for n in range(1, 17)]
    results = await asyncio.gather(*(engine.encode([Text(t)]) for t in texts))
    for text, (vectors, tokens) in zip(texts, results, strict=True):
        np.testing.assert_array_equal(vectors[0], expected(text))
        assert tokens == [len(text)]
    assert sum(len(b) for b in encoder.batches) == 16
    assert len(encoder.batches) <= 4  # 16 single-part requests, batches of at most 8
    assert max(len(b) for b in encoder.batches) == 8


async def test_batch_size_is_bounded_per_modality(encoder: RecordingEncoder) -> None:
    """Images and texts batch separately, each up to its own bound (bigger image batches are slower on CPU)."""
    engine = BatchingEngine(
        encoder, name="split", max_batch_size={Modality.TEXT: 8, Modality.IMAGE: 3}, max_wait_s=0.05
    )
    await engine.start()
    try:
        encoder.gate.clear()  # hold the first forward so everything else queues up behind it
        images = [Image(b"", "image/png", "", PILImage.new("RGB", (w, 1))) for w in range(1, 11)]
        texts = [Text("t" * n) for n in range(1, 11)]
        pending = asyncio.gather(*(engine.encode([p]) for p in [*images, *texts]))
        await asyncio.sleep(0.2)
        encoder.gate.set()
        results = await pending
    finally:
        await engine.close()
    for part, (vectors, _) in zip([*images, *texts], results, strict=True):
        length = part.pixels.width if isinstance(part, Image) else len(part.text)
        assert int(np.argmax(vectors[0])) == length % DIMENSION
    sizes = {
        m: [len(b) for b, bm in zip(encoder.batches, encoder.modalities, strict=True) if bm is m] for m in Modality
    }
    assert sum(sizes[Modality.IMAGE]) == sum(sizes[Modality.TEXT]) == 10
    assert max(sizes[Modality.IMAGE]) == 3
    assert max(sizes[Modality.TEXT]) == 8


async def test_order_is_kept_within_a_request(engine: BatchingEngine) -> None:
    texts = [Text("a" * n) for n in (5, 1, 9, 3)]
    vectors, _ = await engine.encode(texts)
    np.testing.assert_array_equal(vectors, np.stack([expected(t.text) for t in texts]))


async def test_full_queue_refuses_fast(engine: BatchingEngine, encoder: RecordingEncoder) -> None:
    encoder.gate.clear()  # hold the forward pass so work piles up
    first = asyncio.create_task(engine.encode([Text("a")] * 15))
    await asyncio.sleep(0.05)
    with pytest.raises(Overloaded) as refused:
        await engine.encode([Text("b")] * 6)
    assert refused.value.retry_after > 0
    encoder.gate.set()
    vectors, _ = await first
    assert vectors.shape == (15, DIMENSION)
    assert engine.queued == 0
    vectors, _ = await engine.encode([Text("b")] * 6)  # capacity is back
    assert vectors.shape == (6, DIMENSION)


async def test_cancelled_request_leaves_nothing_queued(engine: BatchingEngine, encoder: RecordingEncoder) -> None:
    encoder.gate.clear()
    running = asyncio.create_task(engine.encode([Text("r" * 4)] * 8))  # fills one batch, held in forward
    await asyncio.sleep(0.05)
    abandoned = asyncio.create_task(engine.encode([Text("z" * 7)] * 10))
    await asyncio.sleep(0.05)
    abandoned.cancel()
    await asyncio.gather(abandoned, return_exceptions=True)
    encoder.gate.set()
    await running
    await engine.encode([Text("after")])
    assert all(length != 7 for batch in encoder.batches for length in batch)
    assert engine.queued == 0


async def test_failing_forward_fails_its_batch_only(engine: BatchingEngine, encoder: RecordingEncoder) -> None:
    encoder.fail_next = True
    with pytest.raises(ProviderError, match="out of memory"):
        await engine.encode([Text("boom")])
    vectors, _ = await engine.encode([Text("fine")])
    np.testing.assert_array_equal(vectors[0], expected("fine"))


class SlowPreparer(RecordingEncoder):
    """Preprocessing that takes 20 ms a part, like tokenising long texts."""

    def prepare(self, part: Part) -> Prepared:
        threading.Event().wait(0.02)
        return super().prepare(part)


async def test_a_cancelled_request_stops_preprocessing() -> None:
    engine = BatchingEngine(SlowPreparer(), name="slow-prepare", preprocess_threads=2)
    await engine.start()
    try:
        task = asyncio.create_task(engine.encode([Text(f"text {i}") for i in range(200)]))
        await asyncio.sleep(0.1)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await asyncio.sleep(0.2)  # a part in progress may finish; no new one starts
        settled = engine.parts_prepared
        await asyncio.sleep(0.3)
        assert engine.parts_prepared == settled
        assert settled < 60  # 200 parts would take 2 s on two threads
    finally:
        await engine.close()


async def test_a_request_larger_than_the_queue_is_served_in_chunks(encoder: RecordingEncoder) -> None:
    engine = BatchingEngine(encoder, name="chunks", max_queue=4, max_batch_size=4)
    await engine.start()
    try:
        texts = [f"chunk{'x' * i}" for i in range(10)]
        vectors, tokens = await engine.encode([Text(t) for t in texts])
        np.testing.assert_array_equal(vectors, np.stack([expected(t) for t in texts]))
        assert tokens == [len(t) for t in texts]
        assert max(len(batch) for batch in encoder.batches) <= 4
    finally:
        await engine.close()
