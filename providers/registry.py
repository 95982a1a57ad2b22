"""Provider kinds by name: the only place that knows which modules exist."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from providers.base import EmbeddingProvider
from providers.siglip import SiglipProvider

ProviderFactory = Callable[..., EmbeddingProvider]

PROVIDERS: dict[str, ProviderFactory] = {
    "siglip": SiglipProvider.from_options,
}


def create_provider(kind: str, options: dict[str, Any], *, name: str) -> EmbeddingProvider:
    """Build (not load) a provider of `kind`; unknown kinds raise `KeyError`."""
    if kind not in PROVIDERS:
        raise KeyError(f"unknown provider {kind!r}; known: {', '.join(sorted(PROVIDERS))}")
    return PROVIDERS[kind](options, name=name)
