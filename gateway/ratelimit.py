"""Per-client-key request rates, shared by replicas through Redis when one is configured.

The `limits` library's sliding-window counter: two counters per key and minute, one round trip
per request, smooth at the window's edge. A Redis failure lets the request through (rates are a
fairness tool; budgets, which are money, fail closed instead) and is logged.
"""

from __future__ import annotations

import logging
import time

from limits import RateLimitItemPerMinute
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import SlidingWindowCounterRateLimiter

from gateway.auth import ClientKey
from gateway.errors import RateLimited

logger = logging.getLogger(__name__)


def _storage(redis_url: str | None, prefix: str, timeout_s: float) -> Storage:
    if redis_url is None:
        return MemoryStorage()
    scheme, _, rest = redis_url.partition("://")
    return RedisStorage(
        f"async+{scheme}://{rest}",
        implementation="redispy",
        key_prefix=f"{prefix}rate",
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
    )


class KeyRateLimiter:
    """`requests_per_minute` of each client key."""

    def __init__(self, redis_url: str | None = None, *, prefix: str = "emb:", timeout_s: float = 0.25) -> None:
        self.storage = _storage(redis_url, prefix, timeout_s)
        self.limiter = SlidingWindowCounterRateLimiter(self.storage)
        self.refused = 0

    async def hit(self, key: ClientKey | None) -> None:
        """Count one request of `key`; 429 `rate_limit_exceeded` with Retry-After when it is over."""
        if key is None or key.requests_per_minute is None:
            return
        item = RateLimitItemPerMinute(key.requests_per_minute)
        try:
            if await self.limiter.hit(item, "key", key.name):
                return
            stats = await self.limiter.get_window_stats(item, "key", key.name)
        except Exception as exc:  # a storage failure must not refuse service: rates fail open
            logger.warning("rate limit storage failed, letting the request through: %s", exc)
            return
        self.refused += 1
        retry_after = max(1.0, stats.reset_time - time.time())
        raise RateLimited(
            f"the API key '{key.name}' is over its rate limit of {key.requests_per_minute} requests per minute",
            retry_after=retry_after,
            code="rate_limit_exceeded",
        )
