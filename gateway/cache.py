"""Per-item vector cache: content-addressed keys, compact values, single flight.

A key is sha256 over (the model's vector space, the options that change a vector, the
item's content: text bytes or image sha256, parts in order). `encoding_format`, `user`,
and whether an image came by URL or inline do not enter it. Values are raw little-endian
float32; a value of the wrong length is treated as a miss, never returned.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from gateway.images import EncodedImage
from gateway.inputs import ResolvedItem
from gateway.stores import VectorStore
from providers.base import EmbedOptions, Text, Vectors

KEY_VERSION = "v1"
logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class CachePolicy:
    """Per-request control, from `Cache-Control`: `no-cache` skips lookups, `no-store` skips stores."""

    lookup: bool = True
    store: bool = True

    @classmethod
    def from_header(cls, value: str | None) -> CachePolicy:
        directives = {d.strip().split("=")[0].lower() for d in (value or "").split(",")}
        return cls(lookup="no-cache" not in directives, store="no-store" not in directives)


def item_key(prefix: str, space: str, options: EmbedOptions, dimensions: int | None, item: ResolvedItem) -> str:
    digest = hashlib.sha256()
    for field in (KEY_VERSION, space, options.input_type.value if options.input_type else "", str(dimensions or "")):
        digest.update(field.encode())
        digest.update(b"\x00")
    for part in item.parts:
        if isinstance(part, Text):
            digest.update(b"t")
            digest.update(hashlib.sha256(part.text.encode()).digest())
        else:
            assert isinstance(part, EncodedImage)
            digest.update(b"i")
            digest.update(bytes.fromhex(part.sha256))
    return prefix + digest.hexdigest()


def encode_vector(vector: np.ndarray) -> bytes:
    return np.ascontiguousarray(vector, dtype="<f4").tobytes()


def decode_vector(value: bytes | None, dimension: int) -> np.ndarray | None:
    if value is None or len(value) != 4 * dimension:
        return None
    vector = np.frombuffer(value, dtype="<f4").astype(np.float32)
    return vector if np.isfinite(vector).all() else None


@contextlib.contextmanager
def _survive_store(operation: str, outcome: str) -> Iterator[None]:
    """Log and swallow a store's failure, even a CancelledError a client library leaked,
    but let a real cancellation of this task (its client went away) through."""
    try:
        yield
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling() > 0:
            raise
        logger.exception("cache %s leaked a cancellation; %s", operation, outcome)
    except Exception:
        logger.exception("cache %s failed; %s", operation, outcome)


@dataclass(frozen=True, slots=True)
class Lookup:
    """What the cache answered for one request."""

    vectors: Vectors
    hits: int
    misses: int
    tokens: int


Compute = Callable[[list[int]], Awaitable[tuple[Vectors, int]]]


class _Flight:
    """One in-progress computation that several requests may wait for."""

    def __init__(self, keys: list[str]) -> None:
        self.keys = keys
        self.waiters = 0
        self.task: asyncio.Task[tuple[Vectors, int]] | None = None


class VectorCache:
    """Looks items up, computes only the misses (once, however many requests want them), stores."""

    def __init__(self, store: VectorStore, *, prefix: str = "emb:") -> None:
        self.store = store
        self.prefix = prefix
        self._in_flight: dict[str, tuple[_Flight, int]] = {}
        self.hits = 0
        self.misses = 0

    def key(self, space: str, options: EmbedOptions, dimensions: int | None, item: ResolvedItem) -> str:
        return item_key(self.prefix, space, options, dimensions, item)

    async def get_or_compute(
        self, keys: Sequence[str], dimension: int, compute: Compute, policy: CachePolicy
    ) -> Lookup:
        """Vectors for `keys` in order; `compute(indices)` embeds the items at those indices."""
        rows: list[np.ndarray | None] = [None] * len(keys)
        if policy.lookup:
            rows = [decode_vector(value, dimension) for value in await self._lookup(keys)]
        stored = sum(row is not None for row in rows)
        joined, mine = self._partition(keys, rows, join=policy.lookup)
        flights = {id(f): f for f, _ in joined.values()}
        own = self._start(mine, compute, store=policy.store) if mine else None
        if own is not None:
            flights[id(own)] = own
        for flight in flights.values():  # registered now, so nobody cancels what we wait for
            flight.waiters += 1
        tokens = 0
        try:
            if own is not None:
                vectors, tokens = await self._wait(own)
                for position, key in enumerate(own.keys):
                    for i in mine[key]:
                        rows[i] = vectors[position]
            for i, (flight, position) in joined.items():
                rows[i] = (await self._wait(flight))[0][position]
        finally:
            for flight in flights.values():
                self._leave(flight)
        hits = stored + len(joined)
        self.hits += hits
        self.misses += len(keys) - hits
        complete = [row for row in rows if row is not None]
        assert len(complete) == len(keys), "every row is a hit, a computed or a joined vector"
        return Lookup(np.stack(complete).astype(np.float32), hits, len(keys) - hits, tokens)

    async def _lookup(self, keys: Sequence[str]) -> list[bytes | None]:
        """A store that breaks its no-raise promise still costs only a miss, never the request."""
        with _survive_store("lookup", "computing instead"):
            return await self.store.get_many(keys)
        return [None] * len(keys)

    async def _store(self, entries: dict[str, bytes]) -> None:
        """Vectors already computed are returned even if storing them fails."""
        with _survive_store("store", "vectors served uncached"):
            await self.store.set_many(entries)

    def _partition(
        self, keys: Sequence[str], rows: list[np.ndarray | None], *, join: bool
    ) -> tuple[dict[int, tuple[_Flight, int]], dict[str, list[int]]]:
        """Split the misses: those another request is computing, and ours (deduplicated by key)."""
        joined: dict[int, tuple[_Flight, int]] = {}
        mine: dict[str, list[int]] = {}
        for i, key in enumerate(keys):
            if rows[i] is not None:
                continue
            if join and key in self._in_flight:
                joined[i] = self._in_flight[key]
            else:
                mine.setdefault(key, []).append(i)
        return joined, mine

    def _start(self, mine: dict[str, list[int]], compute: Compute, *, store: bool) -> _Flight:
        """Compute (and store) the given keys; they stay joinable until stored, so none is computed twice."""
        flight = _Flight(list(mine))

        async def run() -> tuple[Vectors, int]:
            vectors, tokens = await compute([indices[0] for indices in mine.values()])
            if store:
                await self._store({k: encode_vector(vectors[p]) for p, k in enumerate(flight.keys)})
            return vectors, tokens

        flight.task = asyncio.ensure_future(run())
        for position, key in enumerate(flight.keys):
            self._in_flight[key] = (flight, position)
        flight.task.add_done_callback(lambda _: self._land(flight))
        return flight

    def _land(self, flight: _Flight) -> None:
        for key in flight.keys:
            if self._in_flight.get(key, (None, 0))[0] is flight:
                del self._in_flight[key]

    @staticmethod
    async def _wait(flight: _Flight) -> tuple[Vectors, int]:
        assert flight.task is not None
        return await asyncio.shield(flight.task)

    def _leave(self, flight: _Flight) -> None:
        """The last waiter to go (its client gone) cancels work nobody wants any more.

        The flight stops being joinable at once: a request arriving before the cancellation
        lands must start its own computation, not join one that is about to raise.
        """
        flight.waiters -= 1
        if flight.waiters == 0 and flight.task is not None and not flight.task.done():
            flight.task.cancel()
            self._land(flight)
