"""The vector cache: keys, partial hits, single flight, policies, corrupt values."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Mapping, Sequence

import numpy as np
import pytest

from gateway.cache import WRITE_BATCH_MAX, CachePolicy, VectorCache, encode_vector, item_key
from gateway.errors import InvalidRequest
from gateway.images import EncodedImage
from gateway.inputs import ResolvedItem
from gateway.stores import MemoryStore, RedisStore, VectorStore
from providers.base import EmbedOptions, InputType, Text, Vectors
from tests.servers import RedisServer

DIMENSION = 6


def vector_for(text: str) -> np.ndarray:
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")
    row = np.random.default_rng(seed).normal(size=DIMENSION).astype(np.float32)
    return row / np.linalg.norm(row)


class Computer:
    """Embeds texts deterministically and records every call (the cache's `compute` seam)."""

    def __init__(self, texts: list[str], delay: float = 0.0) -> None:
        self.texts = texts
        self.calls: list[list[str]] = []
        self.delay = delay

    async def __call__(self, indices: list[int]) -> tuple[Vectors, list[int]]:
        wanted = [self.texts[i] for i in indices]
        self.calls.append(wanted)
        await asyncio.sleep(self.delay)
        for text in wanted:
            if text.startswith("bad"):
                raise InvalidRequest(f"{text} is bad", param=f"input[{indices[wanted.index(text)]}]")
        return np.stack([vector_for(t) for t in wanted]), [len(t) for t in wanted]


def keys_for(texts: list[str], **options: object) -> list[str]:
    opts = EmbedOptions(**options)  # type: ignore[arg-type]
    return [item_key("emb:", "space-a", opts, None, ResolvedItem((Text(t),))) for t in texts]


@pytest.fixture(params=["memory", "redis"])
async def cache(request: pytest.FixtureRequest, redis_server: RedisServer) -> AsyncIterator[VectorCache]:
    store: VectorStore = MemoryStore(1 << 20) if request.param == "memory" else RedisStore(redis_server.url)
    yield VectorCache(store)
    await store.aclose()


async def test_partial_hits_keep_order_and_compute_only_misses(cache: VectorCache) -> None:
    texts = ["zero", "one", "two"]
    await cache.get_or_compute(keys_for(["zero", "two"]), DIMENSION, Computer(["zero", "two"]), CachePolicy())
    computer = Computer(texts)
    found = await cache.get_or_compute(keys_for(texts), DIMENSION, computer, CachePolicy())
    assert computer.calls == [["one"]]
    assert (found.hits, found.misses) == (2, 1)
    assert found.tokens == len("zero") + len("one") + len("two")  # usage is the same for hits and misses
    np.testing.assert_array_equal(found.vectors, np.stack([vector_for(t) for t in texts]))


async def test_cached_vector_is_byte_identical(cache: VectorCache) -> None:
    first = await cache.get_or_compute(keys_for(["a"]), DIMENSION, Computer(["a"]), CachePolicy())
    again = await cache.get_or_compute(keys_for(["a"]), DIMENSION, Computer(["a"]), CachePolicy())
    assert again.hits == 1
    assert first.vectors.tobytes() == again.vectors.tobytes()


async def test_duplicates_in_one_request_are_computed_once(cache: VectorCache) -> None:
    computer = Computer(["a", "b", "a"])
    found = await cache.get_or_compute(keys_for(["a", "b", "a"]), DIMENSION, computer, CachePolicy())
    assert computer.calls == [["a", "b"]]
    np.testing.assert_array_equal(found.vectors[0], found.vectors[2])


async def test_fifty_concurrent_identical_requests_compute_once(cache: VectorCache) -> None:
    computer = Computer(["same"], delay=0.05)
    results = await asyncio.gather(
        *(cache.get_or_compute(keys_for(["same"]), DIMENSION, computer, CachePolicy()) for _ in range(50))
    )
    assert len(computer.calls) == 1
    assert sum(r.misses for r in results) == 1
    assert {r.tokens for r in results} == {len("same")}  # every request reports the item's usage
    for result in results:
        np.testing.assert_array_equal(result.vectors[0], vector_for("same"))


async def test_no_cache_recomputes_but_stores_and_no_store_does_not_store(cache: VectorCache) -> None:
    computer = Computer(["x"])
    await cache.get_or_compute(keys_for(["x"]), DIMENSION, computer, CachePolicy(store=False))
    assert (await cache.store.get_many(keys_for(["x"]))) == [None]
    await cache.get_or_compute(keys_for(["x"]), DIMENSION, computer, CachePolicy(lookup=False))
    await cache.get_or_compute(keys_for(["x"]), DIMENSION, computer, CachePolicy(lookup=False))
    assert len(computer.calls) == 3
    found = await cache.get_or_compute(keys_for(["x"]), DIMENSION, computer, CachePolicy())
    assert found.hits == 1
    assert CachePolicy.from_header("no-cache") == CachePolicy(lookup=False, store=True)
    assert CachePolicy.from_header("no-store, max-age=0") == CachePolicy(lookup=True, store=False)


CORRUPT = {
    "empty": lambda key: b"",
    "short": lambda key: b"\x00" * 5,
    "too long": lambda key: encode_vector(key, np.ones(DIMENSION + 1) / np.sqrt(DIMENSION + 1), 1),
    "nan": lambda key: encode_vector(key, np.full(DIMENSION, np.nan), 1),
    "right length, not unit": lambda key: encode_vector(key, np.full(DIMENSION, 0.9), 1),
    "right length, zeros": lambda key: encode_vector(key, np.zeros(DIMENSION), 1),
    "another key's value": lambda key: encode_vector(keys_for(["other"])[0], vector_for("other"), 5),
    "flipped bytes": lambda key: bytes(b ^ 0xFF for b in encode_vector(key, vector_for("c"), 1)),
}


@pytest.mark.parametrize("corrupt", list(CORRUPT))
async def test_corrupt_or_wrong_length_value_is_a_miss(cache: VectorCache, corrupt: str) -> None:
    key = keys_for(["c"])
    await cache.store.set_many({key[0]: CORRUPT[corrupt](key[0])})
    computer = Computer(["c"])
    found = await cache.get_or_compute(key, DIMENSION, computer, CachePolicy())
    assert found.misses == 1
    np.testing.assert_array_equal(found.vectors[0], vector_for("c"))
    await cache.drain()
    assert await cache.store.get_many(key) == [encode_vector(key[0], vector_for("c"), 1)]  # repaired


async def test_abandoned_flight_is_cancelled_but_joined_one_is_not(cache: VectorCache) -> None:
    computer = Computer(["slow"], delay=0.3)
    leader = asyncio.create_task(cache.get_or_compute(keys_for(["slow"]), DIMENSION, computer, CachePolicy()))
    await asyncio.sleep(0.05)
    follower = asyncio.create_task(cache.get_or_compute(keys_for(["slow"]), DIMENSION, computer, CachePolicy()))
    await asyncio.sleep(0.05)
    leader.cancel()
    result = await follower  # the follower still gets its vector
    np.testing.assert_array_equal(result.vectors[0], vector_for("slow"))
    assert len(computer.calls) == 1


def test_key_depends_on_space_options_dimensions_and_content_only() -> None:
    item = ResolvedItem((Text("t"),))
    base = item_key("p:", "space-a", EmbedOptions(), None, item)
    assert base == item_key("p:", "space-a", EmbedOptions(), None, ResolvedItem((Text("t"),)))
    others = {
        item_key("p:", "space-b", EmbedOptions(), None, item),
        item_key("p:", "space-a", EmbedOptions(input_type=InputType.QUERY), None, item),
        item_key("p:", "space-a", EmbedOptions(input_type=InputType.DOCUMENT), None, item),
        item_key("p:", "space-a", EmbedOptions(), 8, item),
        item_key("p:", "space-a", EmbedOptions(), None, ResolvedItem((Text("u"),))),
        item_key("p:", "space-a", EmbedOptions(), None, ResolvedItem((Text("t"), Text("t")))),
    }
    assert base not in others
    assert len(others) == 6
    image = EncodedImage(b"png", hashlib.sha256(b"png").hexdigest(), "input[0].image")
    same_bytes_other_param = EncodedImage(b"png", hashlib.sha256(b"png").hexdigest(), "input[5].image_url")
    assert item_key("p:", "s", EmbedOptions(), None, ResolvedItem((image,))) == item_key(
        "p:", "s", EmbedOptions(), None, ResolvedItem((same_bytes_other_param,))
    )
    assert item_key("p:", "s", EmbedOptions(), None, ResolvedItem((Text("a"), image))) != item_key(
        "p:", "s", EmbedOptions(), None, ResolvedItem((image, Text("a")))
    )


class GatedStore(MemoryStore):
    """Writes wait for `opened`: a slow Redis, held still."""

    def __init__(self) -> None:
        super().__init__(1 << 20)
        self.opened = asyncio.Event()
        self.writes = 0

    async def set_many(self, entries: Mapping[str, bytes]) -> None:
        self.writes += 1
        await self.opened.wait()
        await super().set_many(entries)


async def test_answers_do_not_wait_for_the_store_and_pending_writes_are_joined_and_drained() -> None:
    store = GatedStore()
    cache = VectorCache(store)
    computer = Computer(["a", "b"])
    first = await asyncio.wait_for(cache.get_or_compute(keys_for(["a", "b"]), DIMENSION, computer, CachePolicy()), 1)
    await asyncio.sleep(0.01)
    assert store.writes == 1  # the write started after the answer and is still held
    assert await store.get_many(keys_for(["a"])) == [None]
    again = await cache.get_or_compute(keys_for(["b", "a"]), DIMENSION, Computer(["b", "a"]), CachePolicy())
    assert (again.hits, again.misses) == (2, 0)  # joined the flight whose write is pending: nothing computed
    np.testing.assert_array_equal(again.vectors, first.vectors[::-1])
    drained = asyncio.create_task(cache.drain())
    await asyncio.sleep(0.01)
    assert not drained.done()  # drain waits for the write
    store.opened.set()
    await asyncio.wait_for(drained, 1)
    assert await store.get_many(keys_for(["a", "b"])) == [
        encode_vector(key, vector_for(text), 1) for key, text in zip(keys_for(["a", "b"]), "ab", strict=True)
    ]
    later = Computer(["a"])
    assert (await cache.get_or_compute(keys_for(["a"]), DIMENSION, later, CachePolicy())).hits == 1
    assert later.calls == []


class CountingStore(MemoryStore):
    """Records every write: how many calls, and the keys of each."""

    def __init__(self) -> None:
        super().__init__(1 << 20)
        self.written: list[list[str]] = []

    async def set_many(self, entries: Mapping[str, bytes]) -> None:
        self.written.append(list(entries))
        await super().set_many(entries)


async def test_requests_computed_within_the_write_delay_are_stored_in_one_write() -> None:
    store = CountingStore()
    cache = VectorCache(store, write_delay_s=0.2)
    texts = [f"t{i}" for i in range(5)]
    results = await asyncio.gather(
        *(cache.get_or_compute(keys_for([t]), DIMENSION, Computer([t]), CachePolicy()) for t in texts)
    )
    assert all(r.misses == 1 for r in results)
    await cache.get_or_compute(keys_for(["t5", "t6"]), DIMENSION, Computer(["t5", "t6"]), CachePolicy())
    assert store.written == []  # answered, not yet written: still served from the flights
    again = Computer(texts)
    assert (await cache.get_or_compute(keys_for(texts), DIMENSION, again, CachePolicy())).hits == 5
    assert again.calls == []
    await asyncio.sleep(0.3)
    assert [sorted(keys) for keys in store.written] == [sorted(keys_for([*texts, "t5", "t6"]))]  # one write
    assert cache._in_flight == {}  # every flight landed with its write


async def test_a_full_write_queue_is_written_at_once_and_drain_writes_the_rest() -> None:
    store = CountingStore()
    cache = VectorCache(store, write_delay_s=60)
    many = [f"m{i}" for i in range(WRITE_BATCH_MAX)]
    await cache.get_or_compute(keys_for(many), DIMENSION, Computer(many), CachePolicy())
    await asyncio.sleep(0.01)
    assert len(store.written) == 1  # WRITE_BATCH_MAX entries waiting: written without the minute's wait
    await cache.get_or_compute(keys_for(["late"]), DIMENSION, Computer(["late"]), CachePolicy())
    await asyncio.sleep(0.01)
    assert len(store.written) == 1
    await asyncio.wait_for(cache.drain(), 1)
    assert store.written[1] == keys_for(["late"])
    assert await store.get_many(keys_for(["late"])) == [encode_vector(keys_for(["late"])[0], vector_for("late"), 4)]


class BrokenStore(MemoryStore):
    """A backend that breaks the no-raise promise on every call, as a buggy client library might."""

    def __init__(self, error: type[BaseException]) -> None:
        super().__init__(1 << 20)
        self.error = error

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        raise self.error("unexpected client state")

    async def set_many(self, entries: Mapping[str, bytes]) -> None:
        raise self.error("unexpected client state")


@pytest.mark.parametrize("error", [RuntimeError, asyncio.CancelledError])
async def test_a_store_that_raises_costs_a_miss_not_the_request(
    error: type[BaseException], caplog: pytest.LogCaptureFixture
) -> None:
    cache = VectorCache(BrokenStore(error))
    computer = Computer(["x", "y"])
    found = await cache.get_or_compute(keys_for(["x", "y"]), DIMENSION, computer, CachePolicy())
    assert (found.hits, found.misses) == (0, 2)
    np.testing.assert_array_equal(found.vectors, np.stack([vector_for("x"), vector_for("y")]))
    await cache.drain()  # the store is written after the answer
    logged = [r.getMessage() for r in caplog.records if r.name == "gateway.cache"]
    assert len(logged) == 2
    assert logged[0].startswith("cache lookup")
    assert logged[1].startswith("cache store")


async def test_a_cancelled_flight_is_never_joined(cache: VectorCache) -> None:
    """A request arriving between a flight's cancellation and its landing computes its own vector."""
    computer = Computer(["orphan"], delay=0.3)
    leader = asyncio.create_task(cache.get_or_compute(keys_for(["orphan"]), DIMENSION, computer, CachePolicy()))
    await asyncio.sleep(0.05)
    leader.cancel()
    await asyncio.sleep(0)  # the leader leaves and cancels its flight; the cancellation has not landed yet
    found = await cache.get_or_compute(keys_for(["orphan"]), DIMENSION, computer, CachePolicy())
    np.testing.assert_array_equal(found.vectors[0], vector_for("orphan"))
    assert leader.cancelled()
    assert len(computer.calls) == 2


async def test_a_joiner_never_gets_another_requests_error(cache: VectorCache) -> None:
    """A shares "shared" with B, whose other item is bad: B gets its own error, A its vector."""
    computer = Computer(["bad image", "shared"], delay=0.1)
    leader = asyncio.create_task(
        cache.get_or_compute(keys_for(["bad image", "shared"]), DIMENSION, computer, CachePolicy())
    )
    await asyncio.sleep(0.02)
    joiner_computer = Computer(["shared"])
    joiner = await cache.get_or_compute(keys_for(["shared"]), DIMENSION, joiner_computer, CachePolicy())
    np.testing.assert_array_equal(joiner.vectors[0], vector_for("shared"))
    assert joiner_computer.calls == [["shared"]]  # it computed its own item after the flight failed
    with pytest.raises(InvalidRequest) as error:
        await leader
    assert error.value.param == "input[0]"


async def test_a_value_keeps_its_token_count() -> None:
    store = MemoryStore(1 << 20)
    cache = VectorCache(store)
    await cache.get_or_compute(keys_for(["four"]), DIMENSION, Computer(["four"]), CachePolicy())
    hit = await cache.get_or_compute(keys_for(["four"]), DIMENSION, Computer(["four"]), CachePolicy())
    assert (hit.hits, hit.tokens) == (1, 4)
