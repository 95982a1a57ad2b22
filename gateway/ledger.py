"""Spend budgets in USD: an atomic reserve-and-settle ledger, shared by replicas through Redis.

Before a paid upstream call the gateway *reserves* an upper bound of its cost against every
budget involved (the deployment's and the client key's); after the call it *settles* with the
real cost (0 if the call failed). The invariant every implementation keeps:

    a reservation is granted only if, for every (budget, period) with a limit,
    spent + amount <= limit, and then it is added to all of them at once (all or nothing).

So concurrent calls, in one process or in many sharing one Redis, never push a budget past its
limit; only a settle whose real cost exceeds its estimate can, by that one call's excess.
Spend is kept per scope per UTC day and per UTC month, in integer nano-USD (exact, and safe in
Lua's doubles below 2**53, about 9 million USD). A crash between reserve and settle leaves the
estimate counted: conservative, the ledger never under-counts what was granted.

`MemoryLedger` serves one process (the default without Redis); `RedisLedger` keeps the spend in
two Redis hashes per period and reserves with one Lua script, so replicas share the budgets.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol, TypeVar

from redis import exceptions as redis_errors
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

logger = logging.getLogger(__name__)

NANO_PER_USD = 1_000_000_000
MAX_NANO = 2**53  # Lua numbers are doubles: integers are exact below this
DAY_TTL_S = 400 * 86_400  # a year of daily history for /v1/usage, plus margin
MONTH_TTL_S = 800 * 86_400
_T = TypeVar("_T")


def usd_to_nano(usd: float) -> int:
    """USD as integer nano-USD, the ledger's exact unit; refuses negatives, NaN and absurd sums."""
    if not math.isfinite(usd) or usd < 0:
        raise ValueError(f"an amount in USD must be finite and >= 0, not {usd!r}")
    nano = round(usd * NANO_PER_USD)
    if nano >= MAX_NANO:
        raise ValueError(f"{usd} USD is beyond what the ledger counts exactly")
    return nano


def nano_to_usd(nano: int) -> float:
    """Nano-USD back to USD, for messages and reports."""
    return nano / NANO_PER_USD


def utc_now() -> datetime:
    """The ledger's default clock: budgets follow UTC days and months."""
    return datetime.now(UTC)


def _today(now: Callable[[], datetime]) -> date:
    moment = now()
    if moment.tzinfo is None:
        raise ValueError("the ledger clock must return timezone-aware datetimes")
    return moment.astimezone(UTC).date()


class Period(StrEnum):
    """The windows a budget may limit: a UTC day and a UTC month."""

    DAY = "day"
    MONTH = "month"

    def resets_at(self, day: date) -> datetime:
        """When the window holding `day` ends (UTC midnight, or the first of the next month)."""
        if self is Period.DAY:
            start = day + timedelta(days=1)
        else:
            start = date(day.year + day.month // 12, day.month % 12 + 1, 1)
        return datetime(start.year, start.month, start.day, tzinfo=UTC)

    @property
    def phrase(self) -> str:
        return "today (UTC)" if self is Period.DAY else "this month (UTC)"


@dataclass(frozen=True)
class Budget:
    """One scope's limits; a scope with no limit is still recorded, for spend reporting.

    `scope` is the ledger's key ("deployment:jina-api", "key:team-a"); `label` is how messages
    name its owner ("key 'team-a'"), the scope itself when empty.
    """

    scope: str
    usd_per_day: float | None = None
    usd_per_month: float | None = None
    label: str = ""

    def __post_init__(self) -> None:
        if not self.scope:
            raise ValueError("a budget needs a scope")
        for limit in (self.usd_per_day, self.usd_per_month):
            if limit is not None:
                usd_to_nano(limit)  # validates
        if not self.label:
            object.__setattr__(self, "label", self.scope)

    @classmethod
    def for_deployment(
        cls, name: str, *, usd_per_day: float | None = None, usd_per_month: float | None = None
    ) -> Budget:
        """A deployment's budget, named as operators configured it."""
        return cls(f"deployment:{name}", usd_per_day, usd_per_month, f"deployment '{name}'")

    @classmethod
    def for_key(cls, name: str, *, usd_per_day: float | None = None, usd_per_month: float | None = None) -> Budget:
        """A client key's budget; `name` is the key's configured name, never the secret."""
        return cls(f"key:{name}", usd_per_day, usd_per_month, f"key '{name}'")

    def limit_usd(self, period: Period) -> float | None:
        return self.usd_per_day if period is Period.DAY else self.usd_per_month

    def limit_nano(self, period: Period) -> int | None:
        limit = self.limit_usd(period)
        return None if limit is None else usd_to_nano(limit)


def _usd_text(usd: float) -> str:
    """Cents when they say it all, else up to six decimals: 5.00, 1.15, 0.00003."""
    text = f"{usd:.6f}".rstrip("0")
    whole, _, decimals = text.partition(".")
    return f"{whole}.{decimals.ljust(2, '0')}"


class BudgetExceeded(Exception):
    """A reservation would take a budget past its limit; nothing was reserved anywhere."""

    def __init__(
        self,
        budget: Budget,
        period: Period,
        *,
        limit_usd: float,
        spent_usd: float,
        requested_usd: float,
        resets_at: datetime,
    ) -> None:
        self.budget = budget
        self.period = period
        self.limit_usd = limit_usd
        self.spent_usd = spent_usd
        self.requested_usd = requested_usd
        self.resets_at = resets_at
        super().__init__(
            f"budget of {budget.label} is spent: {_usd_text(spent_usd)} of {_usd_text(limit_usd)} USD used "
            f"{period.phrase}, and this request may cost up to {_usd_text(requested_usd)} USD"
        )

    def retry_after_s(self, now: datetime) -> float:
        """Seconds until the period resets (for a Retry-After header)."""
        return max(0.0, (self.resets_at - now).total_seconds())


class LedgerUnavailable(Exception):
    """The shared ledger (Redis) is down or slow: paid deployments must be skipped, never overspent."""


@dataclass(frozen=True)
class Reservation:
    """What `reserve` counted: settled later under the same day and month, whatever the clock says then."""

    scopes: tuple[str, ...]
    nano: int
    day: date

    @property
    def usd(self) -> float:
        return nano_to_usd(self.nano)


class SpendLedger(Protocol):
    """Budgets shared by every request (and, with Redis, every replica)."""

    async def reserve(self, budgets: Sequence[Budget], usd: float) -> Reservation:
        """Count `usd` against every budget, all or nothing; 0 USD succeeds and records nothing.

        Raises BudgetExceeded (naming the first budget that would overflow) or LedgerUnavailable.
        """

    async def settle(self, reservation: Reservation, actual_usd: float) -> None:
        """Replace the reserved estimate by the real cost on every scope; never raises for a
        backend failure (the call already happened; the estimate stays counted)."""

    async def usage(self, days: Sequence[date]) -> dict[date, dict[str, float]]:
        """USD spent per scope on each of `days` (an empty dict for a day without spend)."""

    async def aclose(self) -> None:
        """Release connections."""


@dataclass
class Charge:
    """A reservation in progress; set `actual_usd` once the upstream says what it cost."""

    reservation: Reservation
    actual_usd: float | None = None


@asynccontextmanager
async def charged(ledger: SpendLedger, budgets: Sequence[Budget], estimate_usd: float) -> AsyncIterator[Charge]:
    """Reserve, run the body, settle, so no path forgets the settle.

    The settle uses `charge.actual_usd` when the body set it; otherwise the estimate if the body
    finished (conservative) and 0 if it raised or was cancelled (the call failed).
    """
    reservation = await ledger.reserve(budgets, estimate_usd)
    charge = Charge(reservation)
    try:
        yield charge
    except BaseException:
        actual = 0.0 if charge.actual_usd is None else charge.actual_usd
        await asyncio.shield(ledger.settle(reservation, actual))
        raise
    await ledger.settle(reservation, reservation.usd if charge.actual_usd is None else charge.actual_usd)


def _scopes(budgets: Sequence[Budget]) -> tuple[str, ...]:
    scopes = tuple(budget.scope for budget in budgets)
    if len(set(scopes)) != len(scopes):
        raise ValueError(f"a reservation names a scope twice: {scopes}")
    return scopes


def _exceeded(budget: Budget, period: Period, spent_nano: int, nano: int, day: date) -> BudgetExceeded:
    return BudgetExceeded(
        budget,
        period,
        limit_usd=budget.limit_usd(period) or 0.0,  # only limited periods are checked
        spent_usd=nano_to_usd(spent_nano),
        requested_usd=nano_to_usd(nano),
        resets_at=period.resets_at(day),
    )


def _month(day: date) -> str:
    return f"{day:%Y-%m}"


class MemoryLedger:
    """One process's budgets: the check and the increments run with no await between them, so
    the event loop makes each reservation atomic. Not for threads, not shared by replicas."""

    def __init__(self, *, now: Callable[[], datetime] = utc_now, keep_days: int = 400) -> None:
        self._now = now
        self.keep_days = keep_days
        self._days: dict[date, dict[str, int]] = {}
        self._months: dict[str, dict[str, int]] = {}

    def _tables(self, day: date) -> dict[Period, dict[str, int]]:
        if day not in self._days:
            self._forget_before(day - timedelta(days=self.keep_days))
        return {
            Period.DAY: self._days.setdefault(day, {}),
            Period.MONTH: self._months.setdefault(_month(day), {}),
        }

    def _forget_before(self, oldest: date) -> None:
        """Bound memory: days past `keep_days`, and months older than twice that."""
        for day in [d for d in self._days if d < oldest]:
            del self._days[day]
        oldest_month = _month(oldest - timedelta(days=self.keep_days))
        for month in [m for m in self._months if m < oldest_month]:
            del self._months[month]

    async def reserve(self, budgets: Sequence[Budget], usd: float) -> Reservation:
        nano = usd_to_nano(usd)
        scopes = _scopes(budgets)
        day = _today(self._now)
        if nano == 0:
            return Reservation(scopes, 0, day)
        tables = self._tables(day)
        for budget in budgets:
            for period, table in tables.items():
                limit = budget.limit_nano(period)
                spent = table.get(budget.scope, 0)
                if limit is not None and spent + nano > limit:
                    raise _exceeded(budget, period, spent, nano, day)
        for table in tables.values():
            for scope in scopes:
                table[scope] = table.get(scope, 0) + nano
        return Reservation(scopes, nano, day)

    async def settle(self, reservation: Reservation, actual_usd: float) -> None:
        delta = usd_to_nano(actual_usd) - reservation.nano
        if delta == 0:
            return
        for table in self._tables(reservation.day).values():
            for scope in reservation.scopes:
                table[scope] = max(0, table.get(scope, 0) + delta)

    async def usage(self, days: Sequence[date]) -> dict[date, dict[str, float]]:
        return {day: {s: nano_to_usd(v) for s, v in self._days.get(day, {}).items()} for day in days}

    async def aclose(self) -> None:
        self._days.clear()
        self._months.clear()


# KEYS: the day hash, the month hash. ARGV: the amount (nano), the two hashes' TTLs, then per scope:
# the scope, its day limit and its month limit ('' = none). Returns 0, or {scope index, period 1|2,
# spent} on refusal. The amount stays a string: HINCRBY refuses a Lua number written as 1e+15.
_RESERVE = """
local amount = tonumber(ARGV[1])
local count = (#ARGV - 3) / 3
for i = 0, count - 1 do
  local scope = ARGV[4 + 3 * i]
  for p = 1, 2 do
    local limit = ARGV[4 + 3 * i + p]
    if limit ~= '' then
      local spent = tonumber(redis.call('HGET', KEYS[p], scope) or '0')
      if spent + amount > tonumber(limit) then
        return {i + 1, p, spent}
      end
    end
  end
end
for p = 1, 2 do
  for i = 0, count - 1 do
    redis.call('HINCRBY', KEYS[p], ARGV[4 + 3 * i], ARGV[1])
  end
  redis.call('EXPIRE', KEYS[p], ARGV[1 + p])
end
return 0
"""

# KEYS: the day hash, the month hash. ARGV: the delta (nano, may be negative), the two TTLs, then
# the scopes. Spend never goes below 0 (a Redis restarted between reserve and settle lost the
# reservation: the refund must not become credit).
_SETTLE = """
for p = 1, 2 do
  for i = 4, #ARGV do
    if redis.call('HINCRBY', KEYS[p], ARGV[i], ARGV[1]) < 0 then
      redis.call('HSET', KEYS[p], ARGV[i], 0)
    end
  end
  redis.call('EXPIRE', KEYS[p], ARGV[1 + p])
end
return 0
"""


def _text(value: bytes | str) -> str:
    """Hash fields as str, whether or not the client decodes responses."""
    return value.decode() if isinstance(value, bytes) else value


class RedisLedger:
    """Budgets in Redis (or Redis Cluster), shared by every replica.

    Spend lives in `{prefix}{spend}:d:2026-12-02` and `{prefix}{spend}:m:2026-12`, one field per
    scope; the `{spend}` hash tag keeps them in one cluster slot, so one script reads and writes
    both. Every call is bounded by `timeout_s`; after a failure, reservations are refused at once
    for `retry_after_s`, so a dead Redis costs one timeout per window, not one per request.
    A timeout that strikes after the script ran leaves its reservation counted (conservative).
    Replicas date spend by their own clocks: keep them in sync (NTP) around midnight UTC.
    """

    def __init__(
        self,
        client: Redis | RedisCluster,
        prefix: str = "gateway:",
        *,
        timeout_s: float = 0.5,
        retry_after_s: float = 1.0,
        now: Callable[[], datetime] = utc_now,
        owns_client: bool = False,
    ) -> None:
        if "{" in prefix or "}" in prefix:
            raise ValueError("the ledger prefix may not hold braces: they would change the cluster hash slot")
        self._client = client
        self.prefix = prefix
        self.timeout_s = timeout_s
        self.retry_after_s = retry_after_s
        self._now = now
        self._owns_client = owns_client
        self._reserve = client.register_script(_RESERVE)
        self._settle = client.register_script(_SETTLE)
        self._down_until = 0.0
        self.errors = 0

    @classmethod
    def from_url(
        cls,
        url: str,
        prefix: str = "gateway:",
        *,
        timeout_s: float = 0.5,
        retry_after_s: float = 1.0,
        cluster: bool = False,
        max_connections: int = 16,
        now: Callable[[], datetime] = utc_now,
    ) -> RedisLedger:
        """A ledger with its own client, built as `RedisStore` builds its (one quick retry for
        connections left stale by a restart, socket timeouts of `timeout_s`)."""
        options: dict[str, Any] = {
            "socket_timeout": timeout_s,
            "socket_connect_timeout": timeout_s,
            "retry": Retry(NoBackoff(), 1),
        }
        client: Redis | RedisCluster
        if cluster:
            client = RedisCluster.from_url(url, **options)
        else:
            # A bounded pool that callers queue on: a burst of paid calls reuses a few connections
            # instead of opening one per call (and failing past redis-py's default of 100).
            pool = BlockingConnectionPool.from_url(
                url, **options, max_connections=max_connections, timeout=timeout_s, health_check_interval=30
            )
            client = Redis.from_pool(pool)
        return cls(client, prefix, timeout_s=timeout_s, retry_after_s=retry_after_s, now=now, owns_client=True)

    def day_key(self, day: date) -> str:
        return f"{self.prefix}{{spend}}:d:{day.isoformat()}"

    def month_key(self, day: date) -> str:
        return f"{self.prefix}{{spend}}:m:{_month(day)}"

    @property
    def available(self) -> bool:
        return time.monotonic() >= self._down_until

    async def _call(self, operation: str, call: Callable[[], Awaitable[_T]]) -> _T:
        """Run one Redis call within `timeout_s`; any failure becomes LedgerUnavailable."""
        try:
            async with asyncio.timeout(self.timeout_s):
                return await call()
        except (redis_errors.RedisError, OSError, TimeoutError) as exc:
            self.errors += 1
            self._down_until = time.monotonic() + self.retry_after_s
            logger.warning(
                "spend ledger: redis %s failed (%s: %s); paid deployments are skipped for %.1fs",
                operation,
                type(exc).__name__,
                exc,
                self.retry_after_s,
            )
            raise LedgerUnavailable(f"the spend ledger is unavailable: redis {operation} failed") from exc

    async def reserve(self, budgets: Sequence[Budget], usd: float) -> Reservation:
        nano = usd_to_nano(usd)
        scopes = _scopes(budgets)
        day = _today(self._now)
        if nano == 0:
            return Reservation(scopes, 0, day)
        if not self.available:
            raise LedgerUnavailable("the spend ledger is unavailable: redis failed moments ago")
        args: list[str | int] = [nano, DAY_TTL_S, MONTH_TTL_S]
        for budget in budgets:
            limits = (budget.limit_nano(Period.DAY), budget.limit_nano(Period.MONTH))
            args += [budget.scope, *("" if limit is None else limit for limit in limits)]
        keys = [self.day_key(day), self.month_key(day)]
        refused = await self._call("reserve", lambda: self._reserve(keys=keys, args=args))
        if refused != 0:
            index, period, spent = refused
            periods = (Period.DAY, Period.MONTH)
            raise _exceeded(budgets[int(index) - 1], periods[int(period) - 1], int(spent), nano, day)
        return Reservation(scopes, nano, day)

    async def settle(self, reservation: Reservation, actual_usd: float) -> None:
        delta = usd_to_nano(actual_usd) - reservation.nano
        if delta == 0:
            return
        keys = [self.day_key(reservation.day), self.month_key(reservation.day)]
        args: list[str | int] = [delta, DAY_TTL_S, MONTH_TTL_S, *reservation.scopes]
        try:
            await self._call("settle", lambda: self._settle(keys=keys, args=args))
        except LedgerUnavailable:
            logger.warning(
                "spend ledger: a settle of %+.9f USD on %s was lost", nano_to_usd(delta), ", ".join(reservation.scopes)
            )

    async def usage(self, days: Sequence[date]) -> dict[date, dict[str, float]]:
        async def read() -> list[Any]:
            async with self._client.pipeline(transaction=False) as pipe:
                for day in days:
                    pipe.hgetall(self.day_key(day))
                return await pipe.execute()

        tables = await self._call("usage", read) if days else []
        return {
            day: {_text(scope): nano_to_usd(int(value)) for scope, value in table.items()}
            for day, table in zip(days, tables, strict=True)
        }

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()
