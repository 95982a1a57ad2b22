"""Where cached vectors live: one small interface, three implementations.

- `MemoryStore`: bounded in-process LRU (by bytes); the embedded default, and the L1.
- `RedisStore`: one MGET per lookup; one SET for one entry, one Lua script doing every SET for
  several (in redis-py, a pipeline of 32 SETs costs ~0.5 ms of CPU, the script ~0.09 ms; Redis
  spends ~0.05 ms more on it), and a pipeline on a cluster (the keys span hash slots, which one
  script may not). On one Redis over `redis://` or `unix://` these go through `PipelinedRedis`
  (gateway/redis_pipeline.py: one shared connection, hiredis encoding and parsing): under uvloop a
  MGET of one key cost ~75-100 us of CPU in redis-py and costs ~45-50 us there, a SET of one
  1036-byte value ~80-105 us and ~45-50 us (~30 us of each are the socket syscalls): a 1-item miss
  spends ~0.04 ms less on its MGET (its SET is gathered with others', `gateway.cache`). TLS
  (`rediss://`) and the cluster client stay on redis-py. Every Redis failure is swallowed here: a
  lookup becomes all-miss, a store is skipped, a warning is logged and counted, and Redis is left
  alone for `retry_after_s` before the next try, so a dead or slow Redis costs at most one timeout
  per window.
- `TieredStore`: memory in front of Redis; Redis hits are copied into memory.
All three pass one contract suite (tests/test_stores.py).
"""

from __future__ import annotations

import abc
import asyncio
import functools
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from redis import exceptions as redis_errors
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from gateway.redis_pipeline import Arg, PipelinedRedis

logger = logging.getLogger(__name__)

SET_MANY = """
local ttl = tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  if ttl > 0 then
    redis.call('SET', key, ARGV[i + 1], 'EX', ttl)
  else
    redis.call('SET', key, ARGV[i + 1])
  end
end
return #KEYS
"""
"""KEYS: the entries' keys; ARGV: the TTL in seconds (0: none), then the values in key order."""
SET_MANY_SHA = hashlib.sha1(SET_MANY.encode()).hexdigest()  # Redis names scripts by SHA-1
SCRIPT_MAX_KEYS = 512
"""Entries per script call: a script holds Redis to itself while it runs, so a huge batch is cut up."""


class VectorStore(abc.ABC):
    """Bytes by key; never raises on backend failure."""

    @abc.abstractmethod
    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        """Values for `keys`, None where absent or unavailable."""

    @abc.abstractmethod
    async def set_many(self, entries: Mapping[str, bytes]) -> None:
        """Store `entries`, best effort."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Release connections."""

    @abc.abstractmethod
    def stats(self) -> dict[str, float]:
        """Gauges and counters for /metrics."""


class MemoryStore(VectorStore):
    """An LRU bounded by the bytes of its values (plus key overhead)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, bytes] = OrderedDict()
        self._size = 0

    @staticmethod
    def _cost(key: str, value: bytes) -> int:
        return len(key) + len(value) + 64

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        values = []
        for key in keys:
            value = self._entries.get(key)
            if value is not None:
                self._entries.move_to_end(key)
            values.append(value)
        return values

    async def set_many(self, entries: Mapping[str, bytes]) -> None:
        for key, value in entries.items():
            old = self._entries.pop(key, None)
            if old is not None:
                self._size -= self._cost(key, old)
            cost = self._cost(key, value)
            if cost > self.max_bytes:
                continue
            self._entries[key] = value
            self._size += cost
        while self._size > self.max_bytes:
            key, value = self._entries.popitem(last=False)
            self._size -= self._cost(key, value)

    async def aclose(self) -> None:
        self._entries.clear()
        self._size = 0

    def stats(self) -> dict[str, float]:
        return {"memory_entries": len(self._entries), "memory_bytes": self._size}


class RedisStore(VectorStore):
    """Redis (or Redis Cluster) with fail-soft semantics."""

    def __init__(
        self,
        url: str,
        *,
        ttl_s: int | None = None,
        timeout_s: float = 0.25,
        retry_after_s: float = 1.0,
        cluster: bool = False,
    ) -> None:
        # One quick retry covers connections left stale by a Redis restart; more would stall requests
        # (`PipelinedRedis` does the same itself). On one Redis each command is bounded here by
        # `asyncio.timeout` rather than by redis-py's `socket_timeout`, which wraps every write in
        # `asyncio.wait_for` (a task per command, ~20 us of a miss's CPU). The cluster client keeps
        # `socket_timeout`: its first command also maps the slots and connects to each node, more
        # than one command's bound.
        options: dict[str, Any] = {
            "socket_timeout": timeout_s if cluster else None,
            "socket_connect_timeout": timeout_s,
            "retry": Retry(NoBackoff(), 1),
        }
        self.timeout_s = None if cluster else timeout_s
        self._client: PipelinedRedis | Redis | RedisCluster
        self._set_many: Callable[..., Awaitable[Any]]
        if cluster:
            self._client = RedisCluster.from_url(url, **options)
        elif urlsplit(url).scheme in {"redis", "unix"}:
            self._client = PipelinedRedis(url, connect_timeout=timeout_s)
        else:  # rediss://
            self._client = Redis.from_url(url, **options, health_check_interval=30)
        if isinstance(self._client, PipelinedRedis):
            # EVALSHA, then EVAL where Redis answers NOSCRIPT (restarted, or SCRIPT FLUSH).
            self._set_many = functools.partial(self._client.evalsha_or_eval, SET_MANY_SHA, SET_MANY)
        else:
            # redis-py loads the script again if Redis answers NOSCRIPT.
            self._set_many = self._client.register_script(SET_MANY)
        self._cluster = cluster
        self.scripting = True
        self.ttl_s = ttl_s
        self.retry_after_s = retry_after_s
        self._down_until = 0.0
        self.errors = 0

    @property
    def available(self) -> bool:
        return time.monotonic() >= self._down_until

    def _failed(self, operation: str, exc: Exception) -> None:
        if isinstance(exc, TimeoutError) and isinstance(self._client, PipelinedRedis):
            # Its one connection may be hung: the next try (after `retry_after_s`) starts afresh
            # instead of queueing behind it. Done here, not on any cancellation inside the client:
            # a request cancelled for its own reasons must not break its neighbours' commands.
            self._client.abort()
        self.errors += 1
        self._down_until = time.monotonic() + self.retry_after_s
        logger.warning(
            "redis %s failed (%s: %s); serving without it for %.1fs",
            operation,
            type(exc).__name__,
            exc,
            self.retry_after_s,
        )

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys or not self.available:
            return [None] * len(keys)
        try:
            async with asyncio.timeout(self.timeout_s):
                if isinstance(self._client, RedisCluster):
                    values = await self._client.mget_nonatomic(list(keys))
                else:
                    values = await self._client.mget(list(keys))
        except (redis_errors.RedisError, OSError) as exc:
            self._failed("MGET", exc)
            return [None] * len(keys)
        return [v if isinstance(v, bytes) else None for v in values]

    async def set_many(self, entries: Mapping[str, bytes]) -> None:
        if not entries or not self.available:
            return
        try:
            if len(entries) == 1:
                [(key, value)] = entries.items()
                async with asyncio.timeout(self.timeout_s):
                    await self._client.set(key, value, ex=self.ttl_s)
            elif self._cluster or not self.scripting:
                await self._pipelined(entries)
            else:
                await self._scripted(entries)
        except (redis_errors.RedisError, OSError) as exc:
            self._failed("SET", exc)

    async def _scripted(self, entries: Mapping[str, bytes]) -> None:
        """Every SET in one script call (per `SCRIPT_MAX_KEYS`): one command to encode and parse. A
        Redis that refuses scripts (an ACL, a proxy, a managed service) gets pipelines from then on."""
        keys, values = list(entries), list(entries.values())
        try:
            for start in range(0, len(keys), SCRIPT_MAX_KEYS):
                end = start + SCRIPT_MAX_KEYS
                async with asyncio.timeout(self.timeout_s):
                    await self._set_many(keys=keys[start:end], args=[self.ttl_s or 0, *values[start:end]])
        except redis_errors.ResponseError as exc:
            self.scripting = False
            logger.warning("redis refused the SET script (%s); writing with pipelines from now on", exc)
            await self._pipelined(entries)

    async def _pipelined(self, entries: Mapping[str, bytes]) -> None:
        """One SET per entry in a pipeline, which the cluster client splits by node (with
        `PipelinedRedis`, the SETs written back to back and awaited together)."""
        if isinstance(self._client, PipelinedRedis):
            ex: tuple[Arg, ...] = () if self.ttl_s is None else ("EX", self.ttl_s)
            async with asyncio.timeout(self.timeout_s):
                await self._client.pipeline([("SET", key, value, *ex) for key, value in entries.items()])
            return
        async with self._client.pipeline(transaction=False) as pipe:
            for key, value in entries.items():
                pipe.set(key, value, ex=self.ttl_s)
            async with asyncio.timeout(self.timeout_s):
                await pipe.execute()

    async def aclose(self) -> None:
        await self._client.aclose()

    def stats(self) -> dict[str, float]:
        return {"redis_errors": self.errors, "redis_up": float(self.available)}


class TieredStore(VectorStore):
    """An in-process L1 in front of a shared L2 (Redis)."""

    def __init__(self, l1: MemoryStore, l2: VectorStore) -> None:
        self.l1 = l1
        self.l2 = l2

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        values = await self.l1.get_many(keys)
        missing = [i for i, v in enumerate(values) if v is None]
        if missing:
            found = await self.l2.get_many([keys[i] for i in missing])
            backfill = {}
            for i, value in zip(missing, found, strict=True):
                if value is not None:
                    values[i] = value
                    backfill[keys[i]] = value
            await self.l1.set_many(backfill)
        return values

    async def set_many(self, entries: Mapping[str, bytes]) -> None:
        await self.l1.set_many(entries)
        await self.l2.set_many(entries)

    async def aclose(self) -> None:
        await self.l2.aclose()

    def stats(self) -> dict[str, float]:
        return {**self.l1.stats(), **self.l2.stats()}
