"""The bulk run: entries in, rows out, with bounded concurrency, retries, resume and a summary.

Transport-free: it talks to a `Target` (gateways over HTTP, or the service in this process) and a
`Sink` (JSONL or Parquet). One producer lists entries, skipping the ids the output already holds,
and hands batches to `concurrency` workers through a queue of the same size, so at most
2 x concurrency batches are in memory. Each worker reads its batch's files on a thread, sends it,
and writes the rows. An item the gateway rejects is reported and the rest of its batch sent again;
overload is waited out; nothing about one item stops the run.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.bulk_sinks import Existing, Row, Sink
from gateway.bulk_sources import BadInput, Entry, Prepared
from gateway.bulk_targets import Busy, Fatal, ItemRejected, Target, Transient, Unreachable


@dataclass(frozen=True, slots=True)
class Failure:
    """An item that was skipped, where it came from and why."""

    id: str
    origin: str
    reason: str


@dataclass(frozen=True, slots=True)
class RunOptions:
    """How a run batches, spreads and retries; `extra` goes into every request (input_type, dimensions)."""

    model: str
    batch_size: int = 32
    concurrency: int = 4
    max_retries: int = 8
    backoff_s: float = 0.5
    max_backoff_s: float = 30.0
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Tally:
    """What a run has done so far; complete even when the run is interrupted."""

    done: int = 0
    skipped: int = 0
    failures: list[Failure] = field(default_factory=list)
    cache_hits: int | None = 0
    started: float = field(default_factory=time.monotonic)
    elapsed_s: float = 0.0

    @property
    def items_per_s(self) -> float:
        return self.done / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def hits(self, count: int | None) -> None:
        self.cache_hits = None if count is None or self.cache_hits is None else self.cache_hits + count


class BulkRun:
    """One run; `tally` and the sink hold everything done, whatever way `run` ends."""

    def __init__(
        self,
        sink: Sink,
        target: Target,
        options: RunOptions,
        existing: Existing,
        progress: Callable[[int], None] = lambda _: None,
    ) -> None:
        self.sink = sink
        self.target = target
        self.options = options
        self.existing = existing
        self.progress = progress
        self.tally = Tally()
        self._write_lock = asyncio.Lock()

    async def run(self, entries: Iterable[Entry]) -> Tally:
        """Embed every entry not already in the output. Raises `Fatal` (or `Unreachable` once its
        retries are spent) after flushing what was done; cancellation flushes too."""
        queue: asyncio.Queue[list[Entry] | None] = asyncio.Queue(maxsize=self.options.concurrency)
        try:
            async with asyncio.TaskGroup() as group:
                for _ in range(self.options.concurrency):
                    group.create_task(self._worker(queue))
                await self._produce(entries, queue)
        except BaseExceptionGroup as errors:
            fatal = [e for e in errors.exceptions if isinstance(e, Fatal | Unreachable)]
            raise (fatal[0] if fatal else errors.exceptions[0]) from None
        finally:
            await asyncio.shield(asyncio.to_thread(self.sink.flush))
            self.tally.elapsed_s = time.monotonic() - self.tally.started
        return self.tally

    async def _produce(self, entries: Iterable[Entry], queue: asyncio.Queue[list[Entry] | None]) -> None:
        seen: set[str] = set()
        batch: list[Entry] = []
        for entry in entries:
            if entry.id in self.existing.ids:
                self.tally.skipped += 1
                self.progress(1)
                continue
            if entry.id in seen:
                self._fail(entry, "duplicate id: an earlier item of this run has it")
                continue
            seen.add(entry.id)
            batch.append(entry)
            if len(batch) == self.options.batch_size:
                await queue.put(batch)
                batch = []
        if batch:
            await queue.put(batch)
        for _ in range(self.options.concurrency):
            await queue.put(None)

    async def _worker(self, queue: asyncio.Queue[list[Entry] | None]) -> None:
        while (batch := await queue.get()) is not None:
            loaded = await asyncio.to_thread(self._load, batch)
            await self._send(loaded)

    def _load(self, batch: Sequence[Entry]) -> list[tuple[Entry, Prepared]]:
        """Read and check the batch's content (files, base64) on a worker thread."""
        loaded: list[tuple[Entry, Prepared]] = []
        for entry in batch:
            try:
                loaded.append((entry, entry.load()))
            except BadInput as exc:
                self._fail(entry, exc.reason)
        return loaded

    def _fail(self, entry: Entry, reason: str) -> None:
        self.tally.failures.append(Failure(entry.id, entry.origin, reason))
        self.progress(1)

    async def _send(self, pending: list[tuple[Entry, Prepared]]) -> None:
        """Send until every item is embedded or reported: a rejected item leaves, the rest go again."""
        attempt = 0
        while pending:
            try:
                answer = await self.target.embed([p.element for _, p in pending], self.options.extra)
            except ItemRejected as exc:
                self._fail(pending.pop(exc.index)[0], exc.message)
                continue
            except Busy as exc:
                attempt += 1
                if attempt > self.options.max_retries:
                    self._fail_all(pending, f"gave up after {attempt} tries: {exc.message}")
                    return
                await asyncio.sleep(exc.retry_after if exc.retry_after is not None else self._backoff(attempt))
                continue
            except Transient as exc:
                attempt += 1
                if attempt > self.options.max_retries:
                    if isinstance(exc, Unreachable):
                        raise
                    self._fail_all(pending, f"gave up after {attempt} tries: {exc.message}")
                    return
                await asyncio.sleep(self._backoff(attempt))
                continue
            model, vectors = self.options.model, answer.vectors
            rows = [Row(e.id, p.content_hash, model, vectors[i]) for i, (e, p) in enumerate(pending)]
            async with self._write_lock:
                await asyncio.to_thread(self.sink.write, rows)
            self.tally.done += len(rows)
            self.tally.hits(answer.cache_hits)
            self.progress(len(rows))
            return

    def _fail_all(self, pending: Sequence[tuple[Entry, Prepared]], reason: str) -> None:
        for entry, _ in pending:
            self._fail(entry, reason)

    def _backoff(self, attempt: int) -> float:
        """Exponential with full jitter, so many workers do not retry in step."""
        ceiling = min(self.options.max_backoff_s, self.options.backoff_s * 2 ** (attempt - 1))
        return random.uniform(ceiling / 2, ceiling)
