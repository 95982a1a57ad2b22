"""The spend ledger: one contract for memory and Redis, plus what only Redis can do (be shared by
processes, fail, come back)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
import redis

from gateway.ledger import (
    Budget,
    BudgetExceeded,
    LedgerUnavailable,
    MemoryLedger,
    Period,
    RedisLedger,
    SpendLedger,
    charged,
    nano_to_usd,
    usd_to_nano,
)
from tests.servers import ROOT, RedisCluster, RedisServer

START = datetime(2026, 12, 30, 12, 0, tzinfo=UTC)
START_DAY = START.date()
TEAM_A = Budget.for_key("team-a", usd_per_day=1.00)
SLACK_S = 10.0  # Redis timeout where the test is not about timeouts: a loaded CI box must not fail it


class Clock:
    """The ledger's clock, moved by hand across UTC days and months."""

    def __init__(self, moment: datetime) -> None:
        self.moment = moment

    def __call__(self) -> datetime:
        return self.moment


@pytest.fixture
def clock() -> Clock:
    return Clock(START)


@pytest.fixture(params=["memory", "redis"])
async def ledger(request: pytest.FixtureRequest, clock: Clock) -> AsyncIterator[SpendLedger]:
    instance: SpendLedger
    if request.param == "memory":
        instance = MemoryLedger(now=clock)
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        instance = RedisLedger.from_url(server.url, "test:", timeout_s=SLACK_S, now=clock)
    yield instance
    await instance.aclose()


async def spent(ledger: SpendLedger, scope: str, day: date = START_DAY) -> float:
    return (await ledger.usage([day]))[day].get(scope, 0.0)


async def paid_call(ledger: SpendLedger, budgets: Sequence[Budget], estimate: float, actual: float) -> float:
    """Reserve, wait as an upstream call would, settle; the actual cost, or BudgetExceeded."""
    reservation = await ledger.reserve(budgets, estimate)
    await asyncio.sleep(0.002)
    await ledger.settle(reservation, actual)
    return actual


async def twenty_calls(ledgers: Sequence[SpendLedger]) -> tuple[list[float], list[BudgetExceeded]]:
    """20 concurrent calls estimated at 0.09 USD, costing 0.05 to 0.09, against 1.00 USD a day."""
    results = await asyncio.gather(
        *(paid_call(ledgers[i % len(ledgers)], [TEAM_A], 0.09, 0.05 + (i % 5) / 100) for i in range(20)),
        return_exceptions=True,
    )
    accepted = [r for r in results if isinstance(r, float)]
    refused = [r for r in results if isinstance(r, BudgetExceeded)]
    assert len(accepted) + len(refused) == 20, results
    return accepted, refused


def assert_budget_held(accepted: list[float], refused: list[BudgetExceeded], total: float) -> None:
    assert total == pytest.approx(sum(accepted), abs=1e-9)  # every settled cost, exactly
    assert total <= 1.00 + 1e-9
    assert len(accepted) >= 11  # 11 estimates fit at once: the budget ran out mid-way, not at the start
    assert refused
    for error in refused:
        assert error.budget == TEAM_A
        assert error.period is Period.DAY
        assert str(error).startswith("budget of key 'team-a' is spent: ")
        assert "USD used today (UTC)" in str(error)


async def test_concurrent_calls_never_overshoot(ledger: SpendLedger) -> None:
    accepted, refused = await twenty_calls([ledger])
    assert_budget_held(accepted, refused, await spent(ledger, "key:team-a"))


async def test_two_ledgers_on_separate_connections_share_the_budget(redis_server: RedisServer, clock: Clock) -> None:
    ledgers = [RedisLedger.from_url(redis_server.url, "test:", timeout_s=SLACK_S, now=clock) for _ in range(2)]
    accepted, refused = await twenty_calls(ledgers)
    for reader in ledgers:
        assert_budget_held(accepted, refused, await spent(reader, "key:team-a"))
        await reader.aclose()


CHILD = """
import asyncio, sys
from datetime import datetime
from gateway.ledger import Budget, BudgetExceeded, RedisLedger

async def main(url: str, moment: str) -> None:
    ledger = RedisLedger.from_url(url, "test:", timeout_s=10.0, now=lambda: datetime.fromisoformat(moment))
    budget = Budget.for_key("team-a", usd_per_day=1.00)

    async def call() -> int:
        try:
            reservation = await ledger.reserve([budget], 0.01)
        except BudgetExceeded:
            return 0
        await asyncio.sleep(0.001)
        await ledger.settle(reservation, 0.01)
        return 1

    print("ready", flush=True)
    sys.stdin.readline()
    print(sum(await asyncio.gather(*(call() for _ in range(100)))), flush=True)
    await ledger.aclose()

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


async def test_a_second_process_shares_the_budget(redis_server: RedisServer, clock: Clock) -> None:
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CHILD,
        redis_server.url,
        START.isoformat(),
        cwd=ROOT,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert child.stdin is not None
    assert child.stdout is not None
    ledger = RedisLedger.from_url(redis_server.url, "test:", timeout_s=SLACK_S, now=clock)
    try:
        assert await asyncio.wait_for(child.stdout.readline(), 30) == b"ready\n"
        child.stdin.write(b"go\n")
        await child.stdin.drain()
        results = await asyncio.gather(
            *(paid_call(ledger, [TEAM_A], 0.01, 0.01) for _ in range(100)), return_exceptions=True
        )
        child_accepted = int(await asyncio.wait_for(child.stdout.readline(), 30))
        assert await child.wait() == 0
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()
    accepted = sum(1 for r in results if isinstance(r, float))
    assert all(isinstance(r, float | BudgetExceeded) for r in results)
    assert accepted + child_accepted == 100  # 200 calls of 0.01 USD against 1.00: exactly 100 granted
    assert await spent(ledger, "key:team-a") == 1.00
    await ledger.aclose()


async def test_settle_below_the_estimate_releases_the_difference(ledger: SpendLedger) -> None:
    reservation = await ledger.reserve([TEAM_A], 0.80)
    with pytest.raises(BudgetExceeded):
        await ledger.reserve([TEAM_A], 0.30)
    await ledger.settle(reservation, 0.50)
    assert await spent(ledger, "key:team-a") == 0.50
    await ledger.reserve([TEAM_A], 0.50)  # now fits, to the nano-dollar
    assert await spent(ledger, "key:team-a") == 1.00


async def test_settle_above_the_estimate_is_recorded(ledger: SpendLedger) -> None:
    await ledger.settle(await ledger.reserve([TEAM_A], 0.50), 0.70)
    assert await spent(ledger, "key:team-a") == 0.70
    with pytest.raises(BudgetExceeded):
        await ledger.reserve([TEAM_A], 0.31)
    await ledger.settle(await ledger.reserve([TEAM_A], 0.30), 0.45)  # fits; then costs more than its estimate
    assert await spent(ledger, "key:team-a") == pytest.approx(1.15)  # over by that one call's excess
    with pytest.raises(BudgetExceeded, match=r"1\.15 of 1\.00 USD used today"):
        await ledger.reserve([TEAM_A], 0.000001)


async def test_a_failed_call_settles_to_nothing(ledger: SpendLedger) -> None:
    await ledger.settle(await ledger.reserve([TEAM_A], 0.60), 0.0)
    assert await spent(ledger, "key:team-a") == 0.0
    await ledger.reserve([TEAM_A], 1.00)


@pytest.mark.parametrize("order", ["deployment first", "key first"])
async def test_all_or_nothing(ledger: SpendLedger, order: str) -> None:
    deployment = Budget.for_deployment("jina-api", usd_per_day=0.10)
    key = Budget.for_key("team-a", usd_per_day=0.10)
    budgets = [deployment, key] if order == "deployment first" else [key, deployment]
    await ledger.reserve([key], 0.05)  # the key has spent elsewhere: it is the one that refuses
    await ledger.reserve(budgets, 0.04)
    with pytest.raises(BudgetExceeded) as refused:
        await ledger.reserve(budgets, 0.02)
    assert refused.value.budget == key
    assert str(refused.value) == (
        "budget of key 'team-a' is spent: 0.09 of 0.10 USD used today (UTC), and this request may cost up to 0.02 USD"
    )
    assert (await ledger.usage([START_DAY]))[START_DAY] == {"deployment:jina-api": 0.04, "key:team-a": 0.09}


async def test_day_and_month_limits_hold_independently(ledger: SpendLedger, clock: Clock) -> None:
    budget = Budget.for_key("team-a", usd_per_day=1.00, usd_per_month=1.50)
    await ledger.reserve([budget], 0.90)
    with pytest.raises(BudgetExceeded) as by_day:
        await ledger.reserve([budget], 0.20)
    assert (by_day.value.period, by_day.value.spent_usd, by_day.value.limit_usd) == (Period.DAY, 0.90, 1.00)
    assert by_day.value.resets_at == datetime(2026, 12, 31, tzinfo=UTC)
    assert by_day.value.retry_after_s(clock()) == 12 * 3600

    clock.moment = datetime(2026, 12, 31, tzinfo=UTC)  # a new UTC day: the day limit resets, the month's not
    await ledger.reserve([budget], 0.50)
    with pytest.raises(BudgetExceeded) as by_month:
        await ledger.reserve([budget], 0.20)
    assert (by_month.value.period, by_month.value.spent_usd, by_month.value.limit_usd) == (Period.MONTH, 1.40, 1.50)
    assert "1.40 of 1.50 USD used this month (UTC)" in str(by_month.value)
    assert by_month.value.resets_at == datetime(2027, 1, 1, tzinfo=UTC)

    clock.moment = datetime(2026, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
    with pytest.raises(BudgetExceeded):
        await ledger.reserve([budget], 0.20)
    clock.moment = datetime(2027, 1, 1, tzinfo=UTC)  # a new month (and year)
    await ledger.reserve([budget], 1.00)


async def test_a_settle_after_midnight_counts_on_the_reservation_day(ledger: SpendLedger, clock: Clock) -> None:
    clock.moment = datetime(2026, 12, 31, 23, 59, 59, tzinfo=UTC)
    reservation = await ledger.reserve([TEAM_A], 0.90)
    clock.moment = datetime(2027, 1, 1, 0, 0, 1, tzinfo=UTC)
    await ledger.settle(reservation, 0.40)
    usage = await ledger.usage([date(2026, 12, 31), date(2027, 1, 1)])
    assert usage == {date(2026, 12, 31): {"key:team-a": 0.40}, date(2027, 1, 1): {}}
    await ledger.reserve([TEAM_A], 1.00)  # the new day is untouched


async def test_usage_per_day_per_scope(ledger: SpendLedger, clock: Clock) -> None:
    local = Budget.for_deployment("local-gpu")  # no limits: still recorded
    jina = Budget.for_deployment("jina-api", usd_per_month=100)
    await ledger.settle(await ledger.reserve([jina, TEAM_A], 0.02), 0.015)
    await ledger.reserve([local, Budget.for_key("team-b")], 0.5)
    clock.moment += timedelta(days=2)
    await ledger.reserve([jina, TEAM_A], 0.25)
    first, second = START_DAY, START_DAY + timedelta(days=2)
    assert await ledger.usage([first, first + timedelta(days=1), second]) == {
        first: {"deployment:jina-api": 0.015, "key:team-a": 0.015, "deployment:local-gpu": 0.5, "key:team-b": 0.5},
        first + timedelta(days=1): {},
        second: {"deployment:jina-api": 0.25, "key:team-a": 0.25},
    }
    assert await ledger.usage([]) == {}


async def test_a_zero_reservation_succeeds_and_records_nothing(ledger: SpendLedger) -> None:
    await ledger.reserve([TEAM_A], 1.00)
    reservation = await ledger.reserve([TEAM_A, Budget.for_deployment("local")], 0.0)  # even on a spent budget
    assert reservation.usd == 0.0
    await ledger.settle(reservation, 0.0)
    assert (await ledger.usage([START_DAY]))[START_DAY] == {"key:team-a": 1.00}


async def test_charged_settles_on_every_path(ledger: SpendLedger) -> None:
    async with charged(ledger, [TEAM_A], 0.50) as charge:
        assert await spent(ledger, "key:team-a") == 0.50  # reserved while the call runs
        charge.actual_usd = 0.20
    assert await spent(ledger, "key:team-a") == 0.20

    with pytest.raises(RuntimeError):
        async with charged(ledger, [TEAM_A], 0.50):
            raise RuntimeError("upstream failed")
    assert await spent(ledger, "key:team-a") == 0.20

    entered = asyncio.Event()

    async def cancelled_call() -> None:
        async with charged(ledger, [TEAM_A], 0.50):
            entered.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(cancelled_call())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await spent(ledger, "key:team-a") == 0.20

    async with charged(ledger, [TEAM_A], 0.30):
        pass  # no cost reported: the estimate stands
    assert await spent(ledger, "key:team-a") == 0.50


async def test_redis_layout_and_ttls(redis_server: RedisServer, clock: Clock) -> None:
    ledger = RedisLedger.from_url(redis_server.url, "gw:", timeout_s=SLACK_S, now=clock)
    await ledger.reserve([TEAM_A, Budget.for_deployment("jina-api")], 0.25)
    raw = redis.Redis.from_url(redis_server.url)
    for key, ttl_days in (("gw:{spend}:d:2026-12-30", 400), ("gw:{spend}:m:2026-12", 800)):
        assert raw.hgetall(key) == {b"key:team-a": b"250000000", b"deployment:jina-api": b"250000000"}
        assert (ttl_days - 1) * 86400 < raw.ttl(key) <= ttl_days * 86400
    raw.close()
    await ledger.aclose()
    with pytest.raises(ValueError, match="braces"):
        RedisLedger.from_url(redis_server.url, "gw:{x}:")


async def test_redis_down_is_unavailable_quickly_then_it_comes_back(redis_server: RedisServer, clock: Clock) -> None:
    ledger = RedisLedger.from_url(redis_server.url, "test:", timeout_s=0.2, retry_after_s=0.2, now=clock)
    reservation = await ledger.reserve([TEAM_A], 0.50)
    redis_server.stop()
    started = time.monotonic()
    with pytest.raises(LedgerUnavailable, match="unavailable"):
        await ledger.reserve([TEAM_A], 0.10)
    with pytest.raises(LedgerUnavailable):  # within retry_after_s: refused without waiting on Redis
        await ledger.reserve([TEAM_A], 0.10)
    await ledger.settle(reservation, 0.10)  # the call happened: a lost settle is logged, never raised
    with pytest.raises(LedgerUnavailable):
        await ledger.usage([START_DAY])
    assert time.monotonic() - started < 2.0
    assert ledger.errors >= 2

    redis_server.start()  # same port, empty: the reservation of 0.50 is gone
    await asyncio.sleep(0.25)
    await ledger.settle(await ledger.reserve([TEAM_A], 1.00), 1.00)
    with pytest.raises(BudgetExceeded):
        await ledger.reserve([TEAM_A], 0.01)
    await ledger.aclose()


async def test_a_redis_that_stops_answering_times_out(redis_server: RedisServer, clock: Clock) -> None:
    ledger = RedisLedger.from_url(redis_server.url, "test:", timeout_s=0.2, retry_after_s=0.2, now=clock)
    await ledger.reserve([TEAM_A], 0.10)
    assert redis_server.process is not None
    os.kill(redis_server.process.pid, signal.SIGSTOP)  # connected, but silent
    try:
        started = time.monotonic()
        with pytest.raises(LedgerUnavailable):
            await ledger.reserve([TEAM_A], 0.10)
        assert time.monotonic() - started < 1.0
    finally:
        os.kill(redis_server.process.pid, signal.SIGCONT)
    await asyncio.sleep(0.25)
    await ledger.reserve([TEAM_A], 0.10)
    assert await spent(ledger, "key:team-a") in (0.20, 0.30)  # the timed-out script may have run: still counted
    await ledger.aclose()


async def test_a_refund_after_a_redis_restart_is_no_credit(redis_server: RedisServer, clock: Clock) -> None:
    ledger = RedisLedger.from_url(redis_server.url, "test:", timeout_s=SLACK_S, now=clock)
    reservation = await ledger.reserve([TEAM_A], 0.50)
    redis_server.stop()
    redis_server.start()  # the reservation is lost with Redis's memory
    await ledger.settle(reservation, 0.10)  # 0.40 back: must not leave -0.40 to spend again
    assert await spent(ledger, "key:team-a") == 0.0
    await ledger.reserve([TEAM_A], 1.00)
    with pytest.raises(BudgetExceeded):
        await ledger.reserve([TEAM_A], 0.01)
    await ledger.aclose()


async def test_redis_cluster_through_the_cluster_client(tmp_path: Path, clock: Clock) -> None:
    cluster = RedisCluster(tmp_path)
    cluster.start()
    try:
        ledger = RedisLedger.from_url(cluster.url, "test:", cluster=True, timeout_s=SLACK_S, now=clock)
        deployment = Budget.for_deployment("jina-api", usd_per_month=0.5)
        await ledger.settle(await ledger.reserve([deployment, TEAM_A], 0.40), 0.30)
        with pytest.raises(BudgetExceeded) as refused:
            await ledger.reserve([TEAM_A, deployment], 0.30)
        assert (refused.value.budget, refused.value.period) == (deployment, Period.MONTH)
        assert await ledger.usage([START_DAY]) == {START_DAY: {"deployment:jina-api": 0.30, "key:team-a": 0.30}}
        await ledger.aclose()
    finally:
        cluster.stop()


def test_amounts_are_exact_nano_usd() -> None:
    assert usd_to_nano(0.1) == 100_000_000
    assert usd_to_nano(1e-9) == 1
    assert usd_to_nano(0.0) == 0
    assert sum(usd_to_nano(0.1) for _ in range(10)) == usd_to_nano(1.0)  # where floats would drift
    assert nano_to_usd(usd_to_nano(123.456789012)) == 123.456789012
    for bad in (-0.01, float("nan"), float("inf"), 1e7):
        with pytest.raises(ValueError, match="USD"):
            usd_to_nano(bad)


async def test_misuse_is_refused(clock: Clock) -> None:
    with pytest.raises(ValueError, match="USD"):
        Budget.for_key("team-a", usd_per_day=-1)
    ledger = MemoryLedger(now=clock)
    with pytest.raises(ValueError, match="twice"):
        await ledger.reserve([TEAM_A, TEAM_A], 0.1)
    with pytest.raises(ValueError, match="USD"):
        await ledger.reserve([TEAM_A], -0.1)
    naive = MemoryLedger(now=lambda: datetime(2026, 12, 2))  # naive: the misuse under test
    with pytest.raises(ValueError, match="timezone"):
        await naive.reserve([TEAM_A], 0.1)
