"""`PipelinedRedis` against a real redis-server: replies reach their own callers whatever happens to
their neighbours (errors, timeouts, a restart), and the connection comes up as the URL says."""

from __future__ import annotations

import asyncio
import hashlib
import signal
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis
import uvloop
from redis import exceptions as redis_errors

from gateway.redis_pipeline import PipelinedRedis
from gateway.stores import RedisStore
from tests.servers import RedisServer


@pytest.fixture
async def client(redis_server: RedisServer) -> AsyncIterator[PipelinedRedis]:
    instance = PipelinedRedis(redis_server.url, connect_timeout=1.0)
    yield instance
    await instance.aclose()


def connected_clients(raw: redis.Redis) -> int:
    return int(raw.info("clients")["connected_clients"])


async def many_concurrent_commands(client: PipelinedRedis, raw: redis.Redis) -> None:
    values = {f"k{i}": f"value {i}".encode() * (1 + i % 7) for i in range(200)}
    assert await asyncio.gather(*(client.set(k, v) for k, v in values.items())) == [None] * 200
    got = await asyncio.gather(*(client.execute("GET", k) for k in values))
    assert got == list(values.values())
    pairs = [[k, f"k{(i + 1) % 200}"] for i, k in enumerate(values)]
    assert await asyncio.gather(*(client.mget(pair) for pair in pairs)) == [[values[a], values[b]] for a, b in pairs]
    assert connected_clients(raw) == 2  # `raw` and the client's one connection: no pool


async def test_many_concurrent_commands_share_one_connection_and_get_their_own_replies(
    client: PipelinedRedis, redis_server: RedisServer
) -> None:
    await many_concurrent_commands(client, redis.Redis.from_url(redis_server.url))


def test_the_same_under_uvloop(redis_server: RedisServer) -> None:
    async def scenario() -> None:  # uvloop's transports are not asyncio's classes: the gateway runs on them
        client = PipelinedRedis(redis_server.url)
        await many_concurrent_commands(client, redis.Redis.from_url(redis_server.url))
        await a_timed_out_command_leaves_later_replies_in_place(client)
        await client.aclose()

    uvloop.run(scenario())


async def test_an_error_reply_fails_only_its_own_command(client: PipelinedRedis) -> None:
    await client.set("text", b"not a number")
    results = await asyncio.gather(
        client.set("a", b"1"),
        client.execute("INCR", "text"),  # ERR value is not an integer
        client.execute("GET", "a"),
        client.execute("LPUSH", "text", "x"),  # WRONGTYPE
        client.execute("INCR", "counter"),
        return_exceptions=True,
    )
    assert results[0] is None
    assert isinstance(results[1], redis_errors.ResponseError)
    assert "not an integer" in str(results[1])
    assert results[2] == b"1"
    assert isinstance(results[3], redis_errors.ResponseError)
    assert str(results[3]).startswith("WRONGTYPE")
    assert results[4] == 1
    with pytest.raises(redis_errors.ResponseError, match="not an integer"):  # a batch raises its first error
        await client.pipeline([("SET", "b", "2"), ("INCR", "text"), ("SET", "c", "3")])
    assert await client.mget(["b", "c"]) == [b"2", b"3"]  # the batch's other commands ran


async def a_timed_out_command_leaves_later_replies_in_place(client: PipelinedRedis) -> None:
    await client.set("k", b"v")
    # BLPOP holds this connection's later commands until it answers (nil, after 0.3 s).
    blocked = asyncio.create_task(asyncio.wait_for(client.execute("BLPOP", "empty", 0.3), 0.05))
    await asyncio.sleep(0)  # BLPOP is written first
    behind = asyncio.create_task(client.execute("GET", "k"))
    with pytest.raises(TimeoutError):
        await blocked
    assert await behind == b"v"  # not BLPOP's late nil
    assert await client.mget(["k", "absent"]) == [b"v", None]


async def test_a_timed_out_command_does_not_shift_the_replies_after_it(client: PipelinedRedis) -> None:
    await a_timed_out_command_leaves_later_replies_in_place(client)


@pytest.mark.parametrize("noticed", [False, True], ids=["stale", "noticed"])
async def test_a_restarted_redis_costs_no_command(
    client: PipelinedRedis, redis_server: RedisServer, noticed: bool
) -> None:
    await client.set("k", b"v")
    redis_server.stop()
    redis_server.start()  # same port, empty
    if noticed:
        await asyncio.sleep(0.05)  # the loop sees the connection close: the next command reconnects
    # Otherwise the connection is stale and nothing shows it until MGET is written to it; the close
    # that follows fails MGET, which goes once more on a fresh connection.
    assert await client.mget(["k"]) == [None]
    await client.set("k", b"again")
    assert await client.mget(["k"]) == [b"again"]
    stats = redis.Redis.from_url(redis_server.url).info("stats")
    assert stats["total_connections_received"] == 3  # the client's one, start()'s probe, and this one


async def test_redis_gone_fails_pending_and_new_commands(client: PipelinedRedis, redis_server: RedisServer) -> None:
    await client.set("k", b"v")
    pending = asyncio.create_task(client.execute("BLPOP", "empty", 5))
    await asyncio.sleep(0.05)
    redis_server.stop()
    with pytest.raises(redis_errors.ConnectionError):  # its retry finds nobody listening
        await asyncio.wait_for(pending, 2)
    with pytest.raises(redis_errors.ConnectionError):
        await client.mget(["k"])
    redis_server.start()
    assert await client.mget(["k"]) == [None]


async def test_a_silent_server_times_out_the_connect(tmp_path: Path) -> None:
    with socket.socket() as listener:  # the kernel accepts connections; nobody ever answers AUTH
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        client = PipelinedRedis(f"redis://:pw@127.0.0.1:{port}/0", connect_timeout=0.1)
        with pytest.raises(redis_errors.TimeoutError):
            await client.mget(["k"])
        await client.aclose()


async def test_auth_and_select_from_the_url(tmp_path: Path) -> None:
    server = RedisServer(tmp_path, password="s3cret")
    server.start()
    try:
        client = PipelinedRedis(f"redis://:s3cret@127.0.0.1:{server.port}/3")
        await client.set("where", b"db 3")
        raw = redis.Redis(port=server.port, password="s3cret", db=3)
        assert raw.get("where") == b"db 3"
        assert redis.Redis(port=server.port, password="s3cret", db=0).get("where") is None
        await client.aclose()

        raw.execute_command("ACL", "SETUSER", "alice", "on", ">alice-pw", "~*", "+@all")
        alice = PipelinedRedis(f"redis://alice:alice-pw@127.0.0.1:{server.port}/3")
        assert await alice.mget(["where"]) == [b"db 3"]
        assert raw.execute_command("CLIENT", "LIST", "TYPE", "normal").count(b"user=alice") == 1
        await alice.aclose()

        for url in (f"redis://:wrong@127.0.0.1:{server.port}/0", f"redis://127.0.0.1:{server.port}/0"):
            refused = PipelinedRedis(url)
            with pytest.raises(redis_errors.RedisError):  # AUTH refused; without AUTH, NOAUTH
                await refused.mget(["where"])
            await refused.aclose()
    finally:
        server.stop()


async def test_a_flushed_script_runs_again_through_eval(client: PipelinedRedis, redis_server: RedisServer) -> None:
    script = "return redis.call('SET', KEYS[1], ARGV[1])"
    sha = hashlib.sha1(script.encode()).hexdigest()
    raw = redis.Redis.from_url(redis_server.url)

    def runs(command: str) -> int:
        stats = raw.info("commandstats").get(f"cmdstat_{command}", {})
        return int(stats.get("calls", 0) - stats.get("failed_calls", 0))

    assert await client.evalsha_or_eval(sha, script, ["a"], [b"1"]) == b"OK"  # unknown yet: EVAL
    assert await client.evalsha_or_eval(sha, script, ["b"], [b"2"]) == b"OK"  # EVALSHA
    raw.script_flush()
    assert await client.evalsha_or_eval(sha, script, ["c"], [b"3"]) == b"OK"  # NOSCRIPT, then EVAL
    assert (runs("eval"), runs("evalsha")) == (2, 1)
    assert raw.mget(["a", "b", "c"]) == [b"1", b"2", b"3"]
    with pytest.raises(redis_errors.ResponseError):  # any other error is the caller's
        await client.evalsha_or_eval(sha, "return redis.call('NOPE')", [], [])


async def test_a_unix_socket_url(tmp_path: Path) -> None:
    server = RedisServer(tmp_path, unix_socket=True, password="pw")
    server.start()
    try:
        client = PipelinedRedis(server.unix_url + "?db=2")
        await client.set("k", b"over the socket")
        assert redis.Redis(port=server.port, password="pw", db=2).get("k") == b"over the socket"
        await client.aclose()
    finally:
        server.stop()


def test_only_plain_urls() -> None:
    with pytest.raises(ValueError, match="redis:// and unix://"):
        PipelinedRedis("rediss://127.0.0.1:6390/0")


async def test_the_store_reconnects_after_a_timeout(redis_server: RedisServer) -> None:
    store = RedisStore(redis_server.url, timeout_s=0.2, retry_after_s=0.05)
    client = store._client
    assert isinstance(client, PipelinedRedis)
    await store.set_many({"k": b"v"})
    before = await client.execute("CLIENT", "ID")
    assert redis_server.process is not None
    redis_server.process.send_signal(signal.SIGSTOP)
    try:
        assert await store.get_many(["k"]) == [None]  # the timeout: its hung connection is dropped
    finally:
        redis_server.process.send_signal(signal.SIGCONT)
    await asyncio.sleep(0.1)
    assert await store.get_many(["k"]) == [b"v"]
    assert await client.execute("CLIENT", "ID") != before  # a new connection
    assert store.stats() == {"redis_errors": 1, "redis_up": 1.0}
    await store.aclose()
