"""The circuit breaker's transitions, its single probe and the probe whose caller vanished."""

from __future__ import annotations

import pytest

from gateway.breaker import CircuitBreaker, CircuitState


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


def opened(clock: Clock, threshold: int = 3, cooldown_s: float = 10.0) -> CircuitBreaker:
    breaker = CircuitBreaker(failure_threshold=threshold, cooldown_s=cooldown_s, clock=clock)
    for _ in range(threshold):
        breaker.record_failure()
    assert breaker.state is CircuitState.OPEN
    return breaker


def test_closed_until_the_threshold_of_consecutive_failures(clock: Clock) -> None:
    breaker = CircuitBreaker(failure_threshold=3, cooldown_s=10, clock=clock)
    assert (breaker.state, breaker.failures, breaker.opened_total, breaker.retry_after()) == ("closed", 0, 0, 0.0)
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.allow()
    assert (breaker.state, breaker.failures) == (CircuitState.CLOSED, 2)
    breaker.record_failure()
    assert (breaker.state, breaker.failures, breaker.opened_total) == (CircuitState.OPEN, 3, 1)
    assert not breaker.allow()
    assert breaker.retry_after() == 10.0


def test_a_success_resets_the_count(clock: Clock) -> None:
    breaker = CircuitBreaker(failure_threshold=3, cooldown_s=10, clock=clock)
    for _ in range(5):  # never three in a row
        breaker.record_failure()
        breaker.record_failure()
        breaker.record_success()
        assert breaker.failures == 0
    assert breaker.state is CircuitState.CLOSED
    assert breaker.opened_total == 0


def test_open_refuses_until_the_cooldown_then_allows_exactly_one_probe(clock: Clock) -> None:
    breaker = opened(clock)
    clock.advance(9.5)
    assert not breaker.allow()
    assert breaker.retry_after() == pytest.approx(0.5)
    clock.advance(0.5)
    assert breaker.retry_after() == 0.0
    assert breaker.allow()  # the probe
    assert breaker.state is CircuitState.HALF_OPEN
    assert [breaker.allow() for _ in range(5)] == [False] * 5  # everyone else waits for it
    clock.advance(5)
    assert not breaker.allow()
    assert breaker.retry_after() == pytest.approx(5.0)


def test_probe_success_closes(clock: Clock) -> None:
    breaker = opened(clock)
    clock.advance(10)
    assert breaker.allow()
    breaker.record_success()
    assert (breaker.state, breaker.failures, breaker.retry_after()) == (CircuitState.CLOSED, 0, 0.0)
    assert all(breaker.allow() for _ in range(5))
    breaker.record_failure()  # the count starts again from zero
    assert breaker.state is CircuitState.CLOSED


def test_probe_failure_reopens_for_another_cooldown(clock: Clock) -> None:
    breaker = opened(clock)
    clock.advance(10)
    assert breaker.allow()
    clock.advance(2)
    breaker.record_failure()
    assert (breaker.state, breaker.opened_total) == (CircuitState.OPEN, 2)
    assert breaker.retry_after() == 10.0  # from the probe's failure, not from the first opening
    clock.advance(9.9)
    assert not breaker.allow()
    clock.advance(0.1)
    assert breaker.allow()
    assert breaker.state is CircuitState.HALF_OPEN


def test_a_vanished_probe_does_not_wedge_the_breaker(clock: Clock) -> None:
    breaker = opened(clock)
    clock.advance(10)
    assert breaker.allow()  # this probe's caller is cancelled and never reports
    clock.advance(9.9)
    assert not breaker.allow()
    clock.advance(0.1)
    assert breaker.allow()  # a new probe after another cool-down
    assert not breaker.allow()
    breaker.record_success()
    assert breaker.state is CircuitState.CLOSED
    assert breaker.opened_total == 1  # an expired probe is not a new opening


def test_a_released_probe_frees_the_next_caller_at_once(clock: Clock) -> None:
    breaker = opened(clock)
    clock.advance(10)
    assert breaker.allow()  # the probe meets a saturated upstream: no verdict either way
    assert not breaker.allow()
    breaker.release()
    assert breaker.retry_after() == 0.0
    assert breaker.allow()  # the next caller probes without waiting out the lease
    assert not breaker.allow()
    assert (breaker.state, breaker.opened_total) == (CircuitState.HALF_OPEN, 1)


def test_release_outside_a_probe_changes_nothing(clock: Clock) -> None:
    breaker = CircuitBreaker(failure_threshold=2, cooldown_s=10, clock=clock)
    breaker.record_failure()
    breaker.release()
    assert (breaker.state, breaker.failures) == (CircuitState.CLOSED, 1)
    breaker.record_failure()
    breaker.release()  # open: the cool-down stands
    assert (breaker.state, breaker.retry_after()) == (CircuitState.OPEN, 10.0)


def test_late_results_while_open_neither_close_nor_extend(clock: Clock) -> None:
    breaker = opened(clock)
    clock.advance(4)
    breaker.record_success()  # a call started before the circuit opened
    assert breaker.state is CircuitState.OPEN
    breaker.record_failure()
    assert breaker.retry_after() == 6.0
    assert breaker.opened_total == 1


def test_threshold_one_and_zero_cooldown(clock: Clock) -> None:
    breaker = CircuitBreaker(failure_threshold=1, cooldown_s=0, clock=clock)
    breaker.record_failure()
    assert (breaker.state, breaker.failures) == (CircuitState.OPEN, 1)
    assert breaker.allow()  # no cool-down: the next caller probes at once
    assert breaker.state is CircuitState.HALF_OPEN


@pytest.mark.parametrize(("threshold", "cooldown_s", "named"), [(0, 1.0, "failure_threshold"), (1, -1.0, "cooldown_s")])
def test_invalid_settings_are_refused(threshold: int, cooldown_s: float, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        CircuitBreaker(failure_threshold=threshold, cooldown_s=cooldown_s)


def test_default_clock_is_monotonic() -> None:
    breaker = CircuitBreaker(failure_threshold=1, cooldown_s=30)
    breaker.record_failure()
    assert not breaker.allow()
    assert 29.0 < breaker.retry_after() <= 30.0
