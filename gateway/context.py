"""The per-request facts that travel from the handler to the deployments, in one object."""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.auth import ClientKey
from gateway.cache import CachePolicy


@dataclass(slots=True)
class RequestSpend:
    """What one request cost and which deployments computed its vectors (for the response headers)."""

    usd: float = 0.0
    deployments: list[str] = field(default_factory=list)

    def add(self, deployment: str, usd: float) -> None:
        self.usd += usd
        if deployment not in self.deployments:
            self.deployments.append(deployment)


@dataclass(frozen=True, slots=True)
class RequestContext:
    """Who asked (None: an open gateway), how the cache may be used, and the running spend."""

    key: ClientKey | None = None
    policy: CachePolicy = field(default_factory=CachePolicy)
    spend: RequestSpend = field(default_factory=RequestSpend)
