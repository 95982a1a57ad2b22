"""One contract for every vector store, plus what only Redis can do (fail, come back)."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis

from gateway import stores
from gateway.stores import MemoryStore, RedisStore, TieredStore, VectorStore
from tests.servers import RedisCluster, RedisServer


@pytest.fixture(params=["memory", "redis", "tiered"])
async def store(request: pytest.FixtureRequest, redis_server: RedisServer) -> AsyncIterator[VectorStore]:
    kinds = {
        "memory": lambda: MemoryStore(1 << 20),
        "redis": lambda: RedisStore(redis_server.url),
        "tiered": lambda: TieredStore(MemoryStore(1 << 20), RedisStore(redis_server.url)),
    }
    instance: VectorStore = kinds[request.param]()
    yield instance
    await instance.aclose()


async def test_missing_keys_are_none(store: VectorStore) -> None:
    assert await store.get_many(["a", "b"]) == [None, None]
    assert await store.get_many([]) == []


async def test_values_come_back_in_key_order(store: VectorStore) -> None:
    await store.set_many({"k1": b"\x01" * 8, "k3": b"\x03" * 8})
    assert await store.get_many(["k3", "k2", "k1"]) == [b"\x03" * 8, None, b"\x01" * 8]


async def test_overwrite(store: VectorStore) -> None:
    await store.set_many({"k": b"old"})
    await store.set_many({"k": b"new"})
    assert await store.get_many(["k"]) == [b"new"]


async def test_memory_store_is_bounded_lru() -> None:
    store = MemoryStore(max_bytes=3 * (1 + 100 + 64))
    await store.set_many({"a": b"x" * 100, "b": b"x" * 100, "c": b"x" * 100})
    await store.get_many(["a"])  # a is now the most recent
    await store.set_many({"d": b"x" * 100})
    assert [v is not None for v in await store.get_many(["a", "b", "c", "d"])] == [True, False, True, True]
    assert store.stats()["memory_bytes"] <= store.max_bytes


async def test_redis_ttl_and_prefix_free_keys(redis_server: RedisServer) -> None:
    store = RedisStore(redis_server.url, ttl_s=100)
    await store.set_many({"emb:x": b"v"})
    raw = redis.Redis.from_url(redis_server.url)
    assert 0 < raw.ttl("emb:x") <= 100
    assert raw.get("emb:x") == b"v"
    await store.aclose()


async def test_redis_down_is_a_miss_then_it_comes_back(redis_server: RedisServer) -> None:
    store = RedisStore(redis_server.url, retry_after_s=0.2, timeout_s=0.2)
    await store.set_many({"k": b"v"})
    redis_server.stop()
    assert await store.get_many(["k"]) == [None]  # no exception
    await store.set_many({"k2": b"v"})  # no exception
    await asyncio.sleep(0.25)  # past retry_after_s: the next write tries Redis, on the script path
    await store.set_many({"k4": b"v", "k5": b"w"})  # no exception
    assert store.stats()["redis_errors"] >= 2
    redis_server.start()  # same port, empty
    await asyncio.sleep(0.25)
    await store.set_many({"k3": b"back"})
    assert await store.get_many(["k3"]) == [b"back"]
    assert store.stats()["redis_up"] == 1.0
    await store.aclose()


async def test_redis_cluster_through_the_cluster_client(tmp_path: Path) -> None:
    cluster = RedisCluster(tmp_path)
    cluster.start()
    try:
        store = RedisStore(cluster.url, cluster=True)
        entries = {f"emb:{i}": bytes([i]) * 8 for i in range(50)}  # spread over many hash slots
        await store.set_many(entries)
        keys = [*entries, "emb:absent"]
        assert await store.get_many(keys) == [*entries.values(), None]
        await store.set_many({"emb:one": b"single"})
        assert await store.get_many(["emb:one"]) == [b"single"]
        assert store.stats()["redis_errors"] == 0
        await store.aclose()
    finally:
        cluster.stop()


async def test_tiered_copies_redis_hits_into_memory(redis_server: RedisServer) -> None:
    l1 = MemoryStore(1 << 20)
    shared = RedisStore(redis_server.url)
    await shared.set_many({"from-other-replica": b"v"})
    tiered = TieredStore(l1, shared)
    assert await tiered.get_many(["from-other-replica"]) == [b"v"]
    assert await l1.get_many(["from-other-replica"]) == [b"v"]
    await tiered.aclose()


def calls(raw: redis.Redis, command: str) -> int:
    """`command`s the server has run to the end (its own count, from INFO commandstats)."""
    stats: dict[str, dict[str, int]] = raw.info("commandstats")
    counts = stats.get(f"cmdstat_{command}", {})
    return counts.get("calls", 0) - counts.get("failed_calls", 0)


def script_runs(raw: redis.Redis) -> int:
    """Runs of the SET script: by EVALSHA, or by EVAL (which loads it) where Redis does not know it
    yet; that first EVALSHA fails (NOSCRIPT) and does not count."""
    return calls(raw, "evalsha") + calls(raw, "eval")


async def test_redis_writes_several_entries_in_one_script_call_and_one_entry_in_a_set(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = redis.Redis.from_url(redis_server.url)
    store = RedisStore(redis_server.url, ttl_s=100)
    entries = {f"emb:{i}": bytes([i]) * 1024 for i in range(32)}
    await store.set_many(entries)
    assert script_runs(raw) == 1
    assert await store.get_many(list(entries)) == list(entries.values())
    assert all(0 < raw.ttl(key) <= 100 for key in entries)
    await store.set_many({"emb:alone": b"v"})
    assert script_runs(raw) == 1  # a plain SET
    assert 0 < raw.ttl("emb:alone") <= 100
    monkeypatch.setattr(stores, "SCRIPT_MAX_KEYS", 10)
    more = {f"emb:more:{i}": b"m" * 8 for i in range(25)}
    await store.set_many(more)
    assert script_runs(raw) == 1 + 3  # 10 + 10 + 5
    assert await store.get_many(list(more)) == list(more.values())
    assert store.stats()["redis_errors"] == 0
    await store.aclose()


async def test_redis_entries_without_a_ttl_do_not_expire(redis_server: RedisServer) -> None:
    raw = redis.Redis.from_url(redis_server.url)
    store = RedisStore(redis_server.url, ttl_s=None)
    await store.set_many({"a": b"1", "b": b"2", "c": b"3"})
    await store.set_many({"d": b"4"})
    assert [raw.ttl(key) for key in "abcd"] == [-1] * 4
    assert raw.mget(list("abcd")) == [b"1", b"2", b"3", b"4"]
    await store.aclose()


async def test_a_flushed_script_is_loaded_again(redis_server: RedisServer) -> None:
    raw = redis.Redis.from_url(redis_server.url)
    store = RedisStore(redis_server.url)
    await store.set_many({"a": b"1", "b": b"2"})
    raw.script_flush()  # as after a Redis restart: EVALSHA answers NOSCRIPT
    await store.set_many({"c": b"3", "d": b"4"})
    assert await store.get_many(["a", "b", "c", "d"]) == [b"1", b"2", b"3", b"4"]
    assert (script_runs(raw), calls(raw, "eval")) == (2, 2)  # each run the one that loaded it
    assert store.stats()["redis_errors"] == 0
    await store.aclose()


async def test_a_redis_that_refuses_scripts_gets_pipelines(redis_server: RedisServer) -> None:
    raw = redis.Redis.from_url(redis_server.url)
    raw.execute_command("ACL", "SETUSER", "default", "-evalsha")  # as an ACL or a proxy may: NOPERM
    store = RedisStore(redis_server.url, ttl_s=100)
    await store.set_many({"a": b"1", "b": b"2"})
    await store.set_many({"c": b"3", "d": b"4"})
    assert raw.mget(list("abcd")) == [b"1", b"2", b"3", b"4"]
    assert all(0 < raw.ttl(key) <= 100 for key in "abcd")
    assert (store.scripting, store.stats()["redis_errors"]) == (False, 0)
    await store.aclose()


async def test_a_stalled_redis_costs_one_timeout_then_is_left_alone(redis_server: RedisServer) -> None:
    store = RedisStore(redis_server.url, timeout_s=0.2, retry_after_s=30)
    await store.set_many({"k": b"v"})
    assert redis_server.process is not None
    redis_server.process.send_signal(signal.SIGSTOP)  # alive, connected, silent
    try:
        start = time.monotonic()
        assert await store.get_many(["k"]) == [None]
        assert 0.15 < time.monotonic() - start < 1.0  # the one timeout, not one per try
        start = time.monotonic()
        await store.set_many({"a": b"1", "b": b"2"})
        assert await store.get_many(["k"]) == [None]
        assert time.monotonic() - start < 0.05  # left alone for retry_after_s
        assert store.stats() == {"redis_errors": 1, "redis_up": 0.0}
    finally:
        redis_server.process.send_signal(signal.SIGCONT)
    await store.aclose()
