"""One circuit breaker per deployment: stop sending work to an upstream that keeps failing.

    closed ──(failure_threshold consecutive failures)──▶ open
    open ──(cooldown_s passed; the next allow() is the probe)──▶ half_open
    half_open ──(the probe's success)──▶ closed
    half_open ──(the probe's failure)──▶ open, for another cool-down

While half-open exactly one caller holds the probe. A probe whose caller vanished (cancelled,
crashed: neither success nor failure within `cooldown_s`) expires, and the next caller after
that gets a new probe, so a lost probe never wedges the breaker; `release()` frees the probe
at once when its call ended with no verdict (the upstream was saturated). Synchronous and free of I/O:
the gateway calls it from the event loop, which also makes each call atomic (not for threads).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import StrEnum


class CircuitState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Counts consecutive failures; opens at `failure_threshold`; probes after `cooldown_s`."""

    def __init__(
        self,
        failure_threshold: int = 5,
        cooldown_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        if cooldown_s < 0:
            raise ValueError("cooldown_s must be >= 0")
        self.failure_threshold = failure_threshold
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._state = CircuitState.CLOSED
        self._failures = 0
        self._next_probe_at = 0.0  # open: end of the cool-down; half-open: when the probe expires
        self.opened_total = 0

    @property
    def state(self) -> CircuitState:
        return self._state

    @property
    def failures(self) -> int:
        """Consecutive failures counted since the last success."""
        return self._failures

    def allow(self) -> bool:
        """Whether a call may go to this deployment now; True while open means: you are the probe."""
        if self._state is CircuitState.CLOSED:
            return True
        now = self._clock()
        if now < self._next_probe_at:
            return False
        self._state = CircuitState.HALF_OPEN
        self._next_probe_at = now + self.cooldown_s  # the probe's lease: a vanished probe expires
        return True

    def record_success(self) -> None:
        """A call succeeded: closes a half-open circuit and resets the count.

        Ignored while open: it comes from a call started before the circuit opened, and says
        less about the upstream now than the failures that opened it.
        """
        if self._state is CircuitState.OPEN:
            return
        self._state = CircuitState.CLOSED
        self._failures = 0

    def record_failure(self) -> None:
        """A call failed in a way that blames the upstream (unavailable, timeout; not a bad input).

        While half-open any failure reopens the circuit: it is the probe's, or that of a call
        older than a cool-down, and either says the upstream is still failing.
        """
        self._failures += 1
        if self._state is CircuitState.HALF_OPEN or (
            self._state is CircuitState.CLOSED and self._failures >= self.failure_threshold
        ):
            self._open()
        # While open, late failures of calls started earlier are counted but do not extend the cool-down.

    def release(self) -> None:
        """The probe's call ended with no verdict on the upstream (it was saturated, or the caller
        gave up): the next caller may probe at once, instead of after the probe's lease."""
        if self._state is CircuitState.HALF_OPEN:
            self._next_probe_at = self._clock()

    def _open(self) -> None:
        self._state = CircuitState.OPEN
        self._next_probe_at = self._clock() + self.cooldown_s
        self.opened_total += 1

    def retry_after(self) -> float:
        """Seconds until a probe would be allowed (0 when closed, or when one would be now)."""
        if self._state is CircuitState.CLOSED:
            return 0.0
        return max(0.0, self._next_probe_at - self._clock())
