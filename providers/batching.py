"""One dynamic-batching engine for every local encoder.

Requests from many clients are split into single-modality parts, preprocessed on a thread
pool, queued, and merged into micro-batches (at most `max_batch_size` parts, which may differ
per modality, waiting at most `max_wait_s` for the oldest one). Forward passes run one at a
time on a dedicated worker thread, so the event loop never blocks on torch and CPU
preprocessing overlaps the forward.
The queue is bounded: a request that would overflow it fails fast with `Overloaded`. A
request that is cancelled (its client went away) drops its parts from the queue.

A unit of work is a `Part` by default. An encoder that reads a whole interleaved item as one
sequence (VisRAG-Ret) makes its own unit type the engine's, and brings its own `collate` when
its units do not stack (sequences of different lengths, pictures of different sizes).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, Protocol

import numpy as np
import torch
from typing_extensions import TypeVar

from providers.base import Modality, Overloaded, Part, ProviderError, Vectors

Features = dict[str, torch.Tensor]
UnitT = TypeVar("UnitT", default=Part)
UnitT_contra = TypeVar("UnitT_contra", contravariant=True, default=Part)
logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Prepared:
    """One preprocessed part: model inputs with a leading batch dimension of 1."""

    modality: Modality
    features: Features
    tokens: int


class LocalEncoder(Protocol[UnitT_contra]):
    """The two halves of a local model the engine drives."""

    def prepare(self, part: UnitT_contra) -> Prepared:
        """CPU preprocessing of one unit (tokenise, resize); thread-safe."""
        ...

    def forward(self, modality: Modality, batch: Features) -> Vectors:
        """Run the model on a collated batch; return L2-normalised float32 rows."""
        ...


@dataclass(slots=True)
class _Job:
    prepared: Prepared
    future: asyncio.Future[np.ndarray]
    enqueued_at: float = field(default_factory=time.monotonic)


def collate(features: Sequence[Features]) -> Features:
    """Concatenate per-part tensors along the batch dimension."""
    return {key: torch.cat([f[key] for f in features], dim=0) for key in features[0]}


Collate = Callable[[Sequence[Features]], Features]


class BatchingEngine(Generic[UnitT]):
    """Merges concurrent parts into micro-batches for one `LocalEncoder`."""

    def __init__(
        self,
        encoder: LocalEncoder[UnitT],
        *,
        name: str,
        max_batch_size: int | Mapping[Modality, int] = 32,
        max_wait_s: float = 0.005,
        max_queue: int = 1024,
        preprocess_threads: int = 2,
        collate: Collate = collate,
    ) -> None:
        self._encoder = encoder
        self._collate = collate
        self._name = name
        self._max_batch_sizes = {
            m: max_batch_size if isinstance(max_batch_size, int) else max_batch_size[m] for m in Modality
        }
        self._max_wait_s = max_wait_s
        self._max_queue = max_queue
        self._preprocess_threads = preprocess_threads
        self._queues: dict[Modality, deque[_Job]] = {m: deque() for m in Modality}
        self._admitted = 0
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._forward_pool: ThreadPoolExecutor | None = None
        self._prepare_pool: ThreadPoolExecutor | None = None
        self.batches_run = 0
        self.parts_run = 0
        self.parts_prepared = 0
        self.forward_seconds = 0.0  # busy time of the forward thread: its rate is the model's utilisation

    @property
    def queued(self) -> int:
        """Parts admitted and not yet answered."""
        return self._admitted

    async def start(self) -> None:
        self._wakeup = asyncio.Event()
        self._forward_pool = ThreadPoolExecutor(1, thread_name_prefix=f"forward-{self._name}")
        self._prepare_pool = ThreadPoolExecutor(self._preprocess_threads, thread_name_prefix=f"prepare-{self._name}")
        self._task = asyncio.create_task(self._run(), name=f"batcher-{self._name}")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        for queue in self._queues.values():
            while queue:
                job = queue.popleft()
                if not job.future.done():
                    job.future.set_exception(Overloaded("the model is shutting down"))
        for pool in (self._forward_pool, self._prepare_pool):
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)

    async def encode(self, parts: Sequence[UnitT]) -> tuple[Vectors, list[int]]:
        """Vectors for `parts` (in order) and the tokens each cost.

        A request with more parts than the queue holds is admitted a queue's worth at a time, so
        it can succeed on a server with room instead of being refused forever.
        """
        if len(parts) <= self._max_queue:
            return await self._encode(parts)
        vectors: list[Vectors] = []
        tokens: list[int] = []
        for start in range(0, len(parts), self._max_queue):
            chunk_vectors, chunk_tokens = await self._encode(parts[start : start + self._max_queue])
            vectors.append(chunk_vectors)
            tokens.extend(chunk_tokens)
        return np.concatenate(vectors), tokens

    async def _encode(self, parts: Sequence[UnitT]) -> tuple[Vectors, list[int]]:
        if self._task is None or self._wakeup is None or self._prepare_pool is None:
            raise RuntimeError("engine not started")
        if self._admitted + len(parts) > self._max_queue:
            raise Overloaded(f"model {self._name!r} is at capacity ({self._max_queue} queued inputs)")
        self._admitted += len(parts)
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[np.ndarray]] = []
        try:
            prepared = await self._prepare(loop, parts)
            for item in prepared:
                future: asyncio.Future[np.ndarray] = loop.create_future()
                futures.append(future)
                self._queues[item.modality].append(_Job(item, future))
            self._wakeup.set()
            rows = await asyncio.gather(*futures)
            return np.stack(rows).astype(np.float32, copy=False), [p.tokens for p in prepared]
        finally:
            for future in futures:
                future.cancel()  # no-op when done; drops queued work of a cancelled request
            self._admitted -= len(parts)

    async def _prepare(self, loop: asyncio.AbstractEventLoop, parts: Sequence[UnitT]) -> list[Prepared]:
        """Preprocess on the pool in a few contiguous chunks: parallel, without a hop per part.
        If the request is cancelled (its client left), the chunks stop at their next part."""
        size = -(-len(parts) // self._preprocess_threads)
        chunks = [parts[i : i + size] for i in range(0, len(parts), size)]
        stop = threading.Event()
        try:
            done = await asyncio.gather(
                *(loop.run_in_executor(self._prepare_pool, self._prepare_all, c, stop) for c in chunks)
            )
        finally:
            stop.set()
        return [item for chunk in done for item in chunk]

    def _prepare_all(self, parts: Sequence[UnitT], stop: threading.Event) -> list[Prepared]:
        prepared = []
        for part in parts:
            if stop.is_set():
                raise asyncio.CancelledError
            prepared.append(self._encoder.prepare(part))
            self.parts_prepared += 1
        return prepared

    def _next_modality(self) -> Modality | None:
        heads = [(q[0].enqueued_at, m) for m, q in self._queues.items() if q]
        return min(heads)[1] if heads else None

    def _drop_cancelled(self) -> None:
        for queue in self._queues.values():
            while queue and queue[0].future.done():
                queue.popleft()

    async def _run(self) -> None:
        assert self._wakeup is not None
        loop = asyncio.get_running_loop()
        while True:
            self._drop_cancelled()
            modality = self._next_modality()
            if modality is None:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            queue = self._queues[modality]
            limit = self._max_batch_sizes[modality]
            wait = queue[0].enqueued_at + self._max_wait_s - time.monotonic()
            if len(queue) < limit and wait > 0:
                self._wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), wait)
                if len(queue) < limit and queue[0].enqueued_at + self._max_wait_s > time.monotonic():
                    continue
            jobs: list[_Job] = []
            while queue and len(jobs) < limit:
                job = queue.popleft()
                if not job.future.done():
                    jobs.append(job)
            if jobs:
                await self._run_batch(loop, modality, jobs)

    def _forward(self, modality: Modality, features: list[Features]) -> Vectors:
        """Collate and run on the forward thread: copying a batch of pixels is CPU work too."""
        started = time.perf_counter()
        try:
            return self._encoder.forward(modality, self._collate(features))
        finally:
            self.forward_seconds += time.perf_counter() - started

    async def _run_batch(self, loop: asyncio.AbstractEventLoop, modality: Modality, jobs: list[_Job]) -> None:
        features = [job.prepared.features for job in jobs]
        try:
            vectors = await loop.run_in_executor(self._forward_pool, self._forward, modality, features)
        except Exception as exc:  # a failing forward fails its batch, never the engine
            logger.exception("forward pass failed on model %s", self._name)
            error = ProviderError(f"forward pass failed ({type(exc).__name__}: {exc})")
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(error)
            return
        self.batches_run += 1
        self.parts_run += len(jobs)
        for job, row in zip(jobs, vectors, strict=True):
            if not job.future.done():
                job.future.set_result(row)
