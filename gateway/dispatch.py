"""The one loop over a model's deployments: local first, paid fallback under budgets, one space.

For a batch of cache misses, deployments are tried by priority (equal priorities: fewest requests
in flight first). Each takes the pending items it can embed. A deployment is skipped when its
circuit is open, the canary has not verified it, its or the key's budget would be overrun, or it
is saturated; a retryable failure moves the remaining items to the next deployment of the SAME
model, never to another model. A rejected input is the client's fault: raised at once.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import numpy as np

from gateway.context import RequestContext
from gateway.cost import actual_usd, estimate_usd
from gateway.deployments import Deployment
from gateway.errors import (
    BadGateway,
    GatewayError,
    InsufficientQuota,
    RateLimited,
    ServiceUnavailable,
)
from gateway.ledger import Budget, BudgetExceeded, LedgerUnavailable, Reservation, SpendLedger
from gateway.router import ServedModel
from providers.base import (
    EmbedOptions,
    EmbedResult,
    InputRejected,
    Item,
    Overloaded,
    ProviderError,
    UpstreamRefused,
    Vectors,
)

logger = logging.getLogger(__name__)
NORM_TOLERANCE = 1e-3
SQUARES_LOW, SQUARES_HIGH = (1 - NORM_TOLERANCE) ** 2, (1 + NORM_TOLERANCE) ** 2
"""Unit length within the tolerance, on squared norms: one reduction passes a good batch (a NaN or an
infinity makes its row's sum fail both bounds); a failing one is then explained by the checks below."""


@dataclass(slots=True)
class Outcome:
    """Why one deployment did not (fully) serve a batch."""

    deployment: str
    kind: str  # overloaded | budget | refused | failed | open | unverified
    reason: str
    retry_after: float | None = None


@dataclass(slots=True)
class Attempts:
    """What happened on the way through the deployments, to explain a failure."""

    outcomes: list[Outcome] = field(default_factory=list)

    def add(self, deployment: Deployment, kind: str, reason: str, retry_after: float | None = None) -> None:
        self.outcomes.append(Outcome(deployment.name, kind, reason, retry_after))
        deployment.counters.skip(kind)

    def error(self, model: str) -> GatewayError:
        """429 when waiting helps (saturation), 429 insufficient_quota when a budget is spent, 503 when
        deployments failed, 502 when upstreams refused our credentials."""
        kinds = {o.kind for o in self.outcomes}
        detail = "; ".join(f"'{o.deployment}' {o.reason}" for o in self.outcomes) or "no deployment"
        message = f"no deployment of model '{model}' could embed these inputs: {detail}"
        waits = [o.retry_after for o in self.outcomes if o.retry_after is not None]
        if "overloaded" in kinds:
            return RateLimited(message, retry_after=min(waits) if waits else 1.0)
        if "budget" in kinds:
            return InsufficientQuota(message, retry_after=min(waits) if waits else _until_tomorrow())
        if kinds & {"failed", "open", "unverified"}:
            return ServiceUnavailable(message, code="model_unavailable")
        if "refused" in kinds:
            return BadGateway(message, code="upstream_refused")
        return ServiceUnavailable(message, code="model_unavailable")


def _until_tomorrow() -> float:
    now = datetime.now(UTC)
    tomorrow = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return (tomorrow - now).total_seconds()


def in_order(deployments: Sequence[Deployment]) -> Iterator[Deployment]:
    """By priority; within a priority, fewest requests in flight first (ties broken at random)."""
    if len(deployments) == 1:
        return iter(deployments)
    return iter(sorted(deployments, key=lambda d: (d.priority, d.outstanding, random.random())))


def check_vectors(result: EmbedResult, count: int, dimension: int) -> str | None:
    """Why `result` is not `count` finite unit vectors of `dimension`, or None: never serve a wrong vector."""
    vectors = result.vectors
    if vectors.shape != (count, dimension):
        return f"returned vectors of shape {vectors.shape}, expected ({count}, {dimension})"
    if result.item_tokens and len(result.item_tokens) != count:
        return f"reported {len(result.item_tokens)} token counts for {count} items"
    if count == 1:  # the usual single miss: one dot product, compared in Python
        row = vectors[0].astype(np.float64)  # a float32 sum of squares could overflow
        square = float(row @ row)
        if SQUARES_LOW <= square <= SQUARES_HIGH:  # NaN compares false
            return None
    else:
        squares = np.einsum("ij,ij->i", vectors, vectors, dtype=np.float64)
        if count == 0 or (squares.min() >= SQUARES_LOW and squares.max() <= SQUARES_HIGH):
            return None
    if not np.isfinite(vectors).all():
        return "returned non-finite vectors"
    norms = np.linalg.norm(vectors.astype(np.float64), axis=1)  # float32 squares could overflow
    if np.any(np.abs(norms - 1.0) > NORM_TOLERANCE):
        return "returned vectors that are not unit length"
    return None


@dataclass(frozen=True, slots=True)
class Batch:
    """The items one deployment is asked for, with their positions in the request's batch."""

    items: list[Item]
    indices: list[int]
    options: EmbedOptions
    context: RequestContext


@dataclass(frozen=True, slots=True)
class Dispatched:
    """Vectors for every item of a batch, in order, and what each cost in tokens."""

    vectors: Vectors
    item_tokens: list[int]


class Dispatcher:
    """Runs batches of a model's misses through its deployments, charging budgets on the way."""

    def __init__(self, ledger: SpendLedger) -> None:
        self.ledger = ledger
        self.spend_by_key: dict[str, float] = {}

    async def embed(
        self, model: ServedModel, items: Sequence[Item], options: EmbedOptions, context: RequestContext
    ) -> Dispatched:
        vectors: Vectors | None = None  # made when a deployment takes only some of the items
        tokens = [0] * len(items)
        pending = list(range(len(items)))
        attempts = Attempts()
        for deployment in in_order(model.deployments):
            eligible = [i for i in pending if deployment.can_take(items[i])]
            if not eligible:
                continue
            if attempts.outcomes:  # an earlier deployment failed or was skipped: this is a fallback
                deployment.counters.fallbacks += 1
            taken = list(items) if len(eligible) == len(items) else [items[i] for i in eligible]
            result = await self._try(deployment, Batch(taken, eligible, options, context), attempts)
            if result is None:
                continue
            if len(eligible) == len(items):  # the usual case: one deployment took them all, in order
                item_tokens = list(result.item_tokens) if result.item_tokens else tokens
                return Dispatched(result.vectors.astype(np.float32, copy=False), item_tokens)
            if vectors is None:
                vectors = np.zeros((len(items), model.dimension), dtype=np.float32)
            vectors[eligible] = result.vectors
            for position, index in enumerate(eligible):
                tokens[index] = result.item_tokens[position] if result.item_tokens else 0
            done = set(eligible)
            pending = [i for i in pending if i not in done]
            if not pending:
                return Dispatched(vectors, tokens)
        raise attempts.error(model.name)

    async def _try(self, deployment: Deployment, batch: Batch, attempts: Attempts) -> EmbedResult | None:
        """One deployment's attempt at a batch: its result, or None after recording why not."""
        items, context = batch.items, batch.context
        breaker = deployment.breaker
        if not deployment.verified:
            attempts.add(deployment, "unverified", "is held out until the start-up canary can check its vectors")
            return None
        wait = breaker.retry_after()
        if wait > 0:
            attempts.add(deployment, "open", f"has its circuit open (retry in {wait:.0f} s)", wait)
            return None
        reservation = await self._reserve(deployment, items, context, attempts)
        if reservation is False:
            return None
        if not breaker.allow():
            await self._settle(reservation, 0.0)
            attempts.add(deployment, "open", "has its circuit half-open with a probe in flight", breaker.retry_after())
            return None
        deployment.outstanding += 1
        deployment.counters.calls += 1
        try:
            result = await self._call(deployment, items, batch.options)
        except InputRejected as exc:
            breaker.record_success()  # it answered: the input is at fault, not the deployment
            await self._settle(reservation, 0.0)
            raise InputRejected(str(exc), batch.indices[exc.index], exc.part) from exc
        except Overloaded as exc:
            breaker.release()
            await self._settle(reservation, 0.0)
            attempts.add(deployment, "overloaded", f"is saturated ({exc})", exc.retry_after)
            return None
        except ProviderError as exc:
            breaker.record_failure()
            deployment.counters.failures += 1
            await self._settle(reservation, 0.0)
            kind = "refused" if isinstance(exc, UpstreamRefused) else "failed"
            logger.warning("deployment %s failed: %s", deployment.name, exc)
            attempts.add(deployment, kind, f"failed ({exc})")
            return None
        finally:  # cancelled mid-call: the reservation is left as it is (the upstream may have billed)
            deployment.outstanding -= 1
        breaker.record_success()
        usd = actual_usd(deployment.settings.price, result.usage)
        if reservation is not None:  # a free deployment reserved nothing: no coroutine to settle
            await self._settle(reservation, usd)
        deployment.counters.spend_usd += usd
        context.spend.add(deployment.name, usd)
        if context.key is not None and usd:
            self.spend_by_key[context.key.name] = self.spend_by_key.get(context.key.name, 0.0) + usd
        return result

    @staticmethod
    async def _call(deployment: Deployment, items: list[Item], options: EmbedOptions) -> EmbedResult:
        """The provider's result, checked: a malformed one is that deployment's failure."""
        result = await deployment.provider.embed(items, options)
        problem = check_vectors(result, len(items), deployment.provider.info.dimension)
        if problem is not None:
            raise ProviderError(f"deployment '{deployment.name}' {problem}")
        return result

    async def _reserve(
        self, deployment: Deployment, items: list[Item], context: RequestContext, attempts: Attempts
    ) -> Reservation | bool | None:
        """A reservation for a paid call (None for a free one), or False after recording the skip."""
        usd = estimate_usd(deployment.settings.price, items)
        if usd <= 0:
            return None
        budgets: list[Budget] = [deployment.budget]
        if context.key is not None:
            limits = context.key.budget
            budgets.append(
                Budget.for_key(context.key.name, usd_per_day=limits.usd_per_day, usd_per_month=limits.usd_per_month)
            )
        try:
            return await self.ledger.reserve(budgets, usd)
        except BudgetExceeded as exc:
            attempts.add(deployment, "budget", f"is over budget: {exc}", exc.retry_after_s(datetime.now(UTC)))
        except LedgerUnavailable as exc:
            attempts.add(deployment, "failed", f"is paid and its budget cannot be checked ({exc})")
        return False

    async def _settle(self, reservation: Reservation | bool | None, usd: float) -> None:
        if reservation is None or reservation is False or reservation is True:
            return
        # settle never raises for a backend failure: the estimate then stays counted (never overspends)
        await asyncio.shield(self.ledger.settle(reservation, usd))
