"""Client-side limits of one HTTP deployment: how an embed is split into calls (items, estimated
tokens and body bytes per call), and how many calls it may make (rates per minute, calls in flight,
a bounded queue). Rates use `limits` (moving window, the same library as the gateway's per-key
rates, with a Redis storage should deployment rates ever be shared by replicas)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from limits import RateLimitItemPerMinute
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import MovingWindowRateLimiter

from providers.base import Overloaded


def plan_batches(
    costs: Sequence[int], sizes: Sequence[int], *, max_items: int, max_tokens: int | None, max_bytes: int | None
) -> list[range]:
    """Consecutive runs of items that fit one call each; an item over a cap alone gets its own call."""
    batches: list[range] = []
    start, tokens, size = 0, 0, 0
    for i, (cost, length) in enumerate(zip(costs, sizes, strict=True)):
        full = i - start >= max_items
        full |= max_tokens is not None and tokens + cost > max_tokens
        full |= max_bytes is not None and size + length + 1 > max_bytes
        if full and i > start:
            batches.append(range(start, i))
            start, tokens, size = i, 0, 0
        tokens, size = tokens + cost, size + length + 1
    batches.append(range(start, len(costs)))
    return batches


class CallLimits:
    """Client-side `requests_per_minute` / `tokens_per_minute` (moving windows) and the cap on calls
    in flight, with a bounded queue of embeds waiting for their first slot. Every refusal is an
    immediate `Overloaded`, so the gateway can try the next deployment instead of waiting here."""

    def __init__(
        self,
        name: str,
        *,
        requests_per_minute: int | None,
        tokens_per_minute: int | None,
        max_concurrent_requests: int,
        max_queued: int,
    ) -> None:
        self.name = name
        self.storage = MemoryStorage()
        self.window = MovingWindowRateLimiter(self.storage)
        self.rates = [
            (RateLimitItemPerMinute(limit), unit)
            for limit, unit in ((requests_per_minute, "requests"), (tokens_per_minute, "tokens"))
            if limit is not None
        ]
        self.slots = asyncio.Semaphore(max_concurrent_requests)
        self.max_queued = max_queued
        self.queued = 0
        self.in_flight = 0
        self.refused = 0

    async def reserve(self, calls: int, tokens: int) -> None:
        """Charge `calls` and `tokens` to the windows, or refuse with the time until the window frees.
        A charge over a whole window is cut to the window, so an oversized embed can still pass alone."""
        if not self.rates:
            return
        charges = [(item, min(calls if unit == "requests" else tokens, item.amount), unit) for item, unit in self.rates]
        for item, cost, unit in charges:
            if not await self.window.test(item, cost=cost):
                stats = await self.window.get_window_stats(item)
                self.refused += 1
                raise Overloaded(
                    f"{self.name}: the deployment's {unit}_per_minute ({item.amount}) is used up",
                    retry_after=max(stats.reset_time - time.time(), 0.001),
                )
        for item, cost, _ in charges:
            await self.window.hit(item, cost=cost)

    async def acquire(self, *, admit: bool) -> None:
        """A call slot. `admit`: the embed's first call, refused when the queue is full; its later calls
        wait without counting (the embed was admitted), so an embed never refuses itself."""
        if admit and self.slots.locked() and self.queued >= self.max_queued:
            self.refused += 1
            raise Overloaded(f"{self.name}: {self.in_flight} calls in flight and {self.queued} waiting", 1.0)
        self.queued += admit
        try:
            await self.slots.acquire()
        finally:
            self.queued -= admit
        self.in_flight += 1

    def release(self) -> None:
        self.in_flight -= 1
        self.slots.release()

    async def close(self) -> None:
        timer = getattr(self.storage, "timer", None)  # the storage's expiry task, if it has one running
        if isinstance(timer, asyncio.Task):
            timer.cancel()
        await self.storage.reset()
