"""A deployment: one provider instance as configured, with its price, budget, breaker and counters.

The gateway names no provider: a deployment only knows what its provider says it can take
(`ProviderInfo`), and what the canary said about its vectors.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.breaker import CircuitBreaker
from gateway.config import DeploymentSettings
from gateway.ledger import Budget
from providers.base import EmbeddingProvider, Item


@dataclass(slots=True, eq=False)
class DeploymentCounters:
    """Counters for /metrics."""

    calls: int = 0
    failures: int = 0
    fallbacks: int = 0
    spend_usd: float = 0.0
    skipped: dict[str, int] = field(default_factory=dict)

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1


@dataclass(slots=True, eq=False)
class Deployment:
    """One place a model's vectors come from."""

    settings: DeploymentSettings
    provider: EmbeddingProvider
    breaker: CircuitBreaker
    verified: bool = True
    """False while the start-up canary could not reach it: held out until a later canary passes."""
    outstanding: int = 0
    counters: DeploymentCounters = field(default_factory=DeploymentCounters)

    @classmethod
    def from_settings(cls, settings: DeploymentSettings, provider: EmbeddingProvider) -> Deployment:
        breaker = CircuitBreaker(settings.breaker.failure_threshold, settings.breaker.cooldown_s)
        return cls(settings, provider, breaker)

    @property
    def name(self) -> str:
        return self.settings.name

    @property
    def priority(self) -> int:
        return self.settings.priority

    @property
    def budget(self) -> Budget:
        limits = self.settings.budget
        return Budget.for_deployment(self.name, usd_per_day=limits.usd_per_day, usd_per_month=limits.usd_per_month)

    def can_take(self, item: Item) -> bool:
        """Its provider embeds every part's modality, and fuses parts when the item has several."""
        info = self.provider.info
        return item.modalities <= info.modalities and (len(item.parts) == 1 or info.fuses_parts)
