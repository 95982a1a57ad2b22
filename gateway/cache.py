"""Per-item vector cache: content-addressed keys, compact values, single flight.

A key is sha256 over (the model's vector space, the options that change a vector, the
item's content: text bytes or image sha256, parts in order). `encoding_format`, `user`,
and whether an image came by URL or inline do not enter it. A value is 8 bytes of the key's
own digest (so a value copied under another key is refused), the item's token count (usage
is the same whether an item was cached or not) and the little-endian float32 vector. A value
of the wrong length, bound to another key, non-finite or not of unit length is a miss.

Stores are written behind: computed vectors go back to the client at once; the vectors of every
request computed within `write_delay_s` are then stored in one write (one command to Redis, not
one per request: at 16 clients, dozens). Until its write lands a vector stays joinable in process,
so a request arriving meanwhile is served it rather than computing it again; more than
`WRITE_BATCH_MAX` entries waiting are written at once; shutdown writes what waits (`drain`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import struct
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from gateway.content import image_digest, text_digest
from gateway.images import EncodedImage
from gateway.inputs import ResolvedItem
from gateway.stores import VectorStore
from providers.base import EmbedOptions, Text, Vectors

KEY_VERSION = "v2"  # v2: values bound to their key and carrying tokens; 16-bit greys scaled
BINDING = 8
HEADER = BINDING + 4
NORM_TOLERANCE = 1e-3
WRITE_BATCH_MAX = 512
"""Entries waiting for a write that make it go at once: a bound on the vectors held for writing."""
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
            digest.update(text_digest(part.text))
        else:
            assert isinstance(part, EncodedImage)
            digest.update(image_digest(part.sha256))
    return prefix + digest.hexdigest()


def _binding(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()[:BINDING]


def encode_vector(key: str, vector: np.ndarray, tokens: int) -> bytes:
    """The stored value: the key's binding, the token count, then the vector."""
    return _binding(key) + struct.pack("<I", tokens) + np.ascontiguousarray(vector, dtype="<f4").tobytes()


def decode_vector(key: str, value: bytes | None, dimension: int) -> tuple[np.ndarray, int] | None:
    """The vector and token count stored under `key`, or None for anything that is not exactly that."""
    if value is None or len(value) != HEADER + 4 * dimension or value[:BINDING] != _binding(key):
        return None
    vector = np.frombuffer(value, dtype="<f4", offset=HEADER).astype(np.float32)
    if not np.isfinite(vector).all() or abs(float(np.linalg.norm(vector)) - 1.0) > NORM_TOLERANCE:
        return None
    (tokens,) = struct.unpack_from("<I", value, BINDING)
    return vector, int(tokens)


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


Compute = Callable[[list[int]], Awaitable[tuple[Vectors, list[int]]]]
"""Embeds the items at the given indices: their vectors and each one's token count."""
Computed = tuple[Vectors, list[int]]


class _Flight:
    """One in-progress computation that several requests may wait for, joinable until stored."""

    def __init__(self, keys: list[str]) -> None:
        self.keys = keys
        self.waiters = 0
        self.task: asyncio.Task[Computed] | None = None
        self.queued = False
        """Computed and waiting for (or in) a write: it lands when the write does."""


class VectorCache:
    """Looks items up, computes only the misses (once, however many requests want them), stores."""

    def __init__(self, store: VectorStore, *, prefix: str = "emb:", write_delay_s: float = 0.0) -> None:
        self.store = store
        self.prefix = prefix
        self.write_delay_s = write_delay_s
        self._in_flight: dict[str, tuple[_Flight, int]] = {}
        self._queue: list[tuple[_Flight, Computed]] = []
        self._queued_entries = 0
        self._flush_timer: asyncio.TimerHandle | None = None
        self._writing: set[asyncio.Task[None]] = set()
        self.hits = 0
        self.misses = 0

    def key(self, space: str, options: EmbedOptions, dimensions: int | None, item: ResolvedItem) -> str:
        return item_key(self.prefix, space, options, dimensions, item)

    async def get_or_compute(
        self, keys: Sequence[str], dimension: int, compute: Compute, policy: CachePolicy
    ) -> Lookup:
        """Vectors for `keys` in order; `compute(indices)` embeds the items at those indices.

        A joined flight that fails was another request's work: its error may name that request's
        inputs, so this request computes those items itself and only its own errors reach it.
        """
        rows: list[tuple[np.ndarray, int] | None] = [None] * len(keys)
        if policy.lookup:
            values = await self._lookup(keys)
            rows = [decode_vector(key, value, dimension) for key, value in zip(keys, values, strict=True)]
        stored = sum(row is not None for row in rows)
        joined, mine = self._partition(keys, rows, join=policy.lookup)
        flights = {id(f): f for f, _ in joined.values()}
        own = self._start(mine, compute, store=policy.store) if mine else None
        if own is not None:
            flights[id(own)] = own
        for flight in flights.values():  # registered now, so nobody cancels what we wait for
            flight.waiters += 1
        orphans: dict[str, list[int]] = {}
        try:
            if own is not None:
                ours = await self._wait(own)
                if len(own.keys) == len(keys):  # every item a distinct miss of ours: the rows in key order
                    self.misses += len(keys)
                    return Lookup(ours[0].astype(np.float32, copy=False), 0, len(keys), sum(ours[1]))
                self._fill(rows, own, mine, ours)
            for i, (flight, position) in joined.items():
                computed = await self._joined(flight)
                if computed is None:
                    orphans.setdefault(keys[i], []).append(i)
                else:
                    rows[i] = (computed[0][position], computed[1][position])
        finally:
            for flight in flights.values():
                self._leave(flight)
        if orphans:
            retry = self._start(orphans, compute, store=policy.store)
            retry.waiters += 1
            try:
                self._fill(rows, retry, orphans, await self._wait(retry))
            finally:
                self._leave(retry)
        hits = stored + len(joined) - sum(len(v) for v in orphans.values())
        self.hits += hits
        self.misses += len(keys) - hits
        complete = [row for row in rows if row is not None]
        assert len(complete) == len(keys), "every row is a hit, a computed or a joined vector"
        vectors = np.stack([vector for vector, _ in complete]).astype(np.float32)
        return Lookup(vectors, hits, len(keys) - hits, sum(tokens for _, tokens in complete))

    async def _joined(self, flight: _Flight) -> Computed | None:
        """Another request's flight: its result, or None if it failed (for whatever reason: its
        error belongs to that request) or was cancelled by its own client leaving."""
        try:
            return await self._wait(flight)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling() > 0:
                raise
            return None
        except Exception:
            return None

    @staticmethod
    def _fill(
        rows: list[tuple[np.ndarray, int] | None], flight: _Flight, wanted: dict[str, list[int]], computed: Computed
    ) -> None:
        vectors, tokens = computed
        for position, key in enumerate(flight.keys):
            for i in wanted[key]:
                rows[i] = (vectors[position], tokens[position])

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
        self, keys: Sequence[str], rows: Sequence[object | None], *, join: bool
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
        """Compute (and store, behind) the given keys; they stay joinable until stored, so none is
        computed twice."""
        flight = _Flight(list(mine))

        async def run() -> Computed:
            computed = await compute([indices[0] for indices in mine.values()])
            if store:  # no await from here to the return: a queued flight is never cancelled
                self._enqueue(flight, computed)
            return computed

        flight.task = asyncio.ensure_future(run())
        for position, key in enumerate(flight.keys):
            self._in_flight[key] = (flight, position)
        flight.task.add_done_callback(lambda _: None if flight.queued else self._land(flight))
        return flight

    def _enqueue(self, flight: _Flight, computed: Computed) -> None:
        """Queue a flight's vectors for the next write, which goes after `write_delay_s` (or at once
        when the queue is full); the answers to its waiters go out first either way."""
        flight.queued = True
        self._queue.append((flight, computed))
        self._queued_entries += len(flight.keys)
        if self._queued_entries >= WRITE_BATCH_MAX:
            self._flush()
        elif self._flush_timer is None:
            self._flush_timer = asyncio.get_running_loop().call_later(self.write_delay_s, self._flush)

    def _flush(self) -> None:
        """Start one write of everything queued; its flights land when it is done."""
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        batch, self._queue, self._queued_entries = self._queue, [], 0
        if not batch:
            return
        writing = asyncio.ensure_future(self._write(batch))
        self._writing.add(writing)
        writing.add_done_callback(lambda task: self._written(task, batch))

    async def _write(self, batch: list[tuple[_Flight, Computed]]) -> None:
        await asyncio.sleep(0)  # a write made full by a request goes after that request's answer
        entries: dict[str, bytes] = {}
        for flight, (vectors, tokens) in batch:
            for position, key in enumerate(flight.keys):
                entries[key] = encode_vector(key, vectors[position], tokens[position])
        await self._store(entries)

    def _written(self, task: asyncio.Task[None], batch: list[tuple[_Flight, Computed]]) -> None:
        self._writing.discard(task)
        for flight, _ in batch:
            self._land(flight)

    async def drain(self) -> None:
        """Write what is queued now and wait for every write (at shutdown, before the store closes)."""
        self._flush()
        while self._writing:
            await asyncio.wait(list(self._writing))

    def _land(self, flight: _Flight) -> None:
        for key in flight.keys:
            if self._in_flight.get(key, (None, 0))[0] is flight:
                del self._in_flight[key]

    @staticmethod
    async def _wait(flight: _Flight) -> Computed:
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
