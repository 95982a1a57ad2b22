"""Provider kinds by name: the only place that knows which modules exist."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from providers import jina, openai_compat, voyage
from providers.base import EmbeddingProvider
from providers.siglip import SiglipProvider
from providers.visrag import VisragProvider

ProviderFactory = Callable[..., EmbeddingProvider]

PROVIDERS: dict[str, ProviderFactory] = {
    "siglip": SiglipProvider.from_options,
    "visrag": VisragProvider.from_options,
    "jina": jina.from_options,
    "voyage": voyage.from_options,
    "openai_compatible": openai_compat.from_options,
    "openai": openai_compat.from_options,
}


WEIGHTS_FROM_HUB = {"siglip", "visrag"}
"""Kinds whose `model` option is a hub id or a local directory of weights (the CLI probes the hub)."""


def loads_weights(kind: str) -> bool:
    return kind in WEIGHTS_FROM_HUB


def create_provider(kind: str, options: dict[str, Any], *, name: str) -> EmbeddingProvider:
    """Build (not load) a provider of `kind`; unknown kinds raise `KeyError`."""
    if kind not in PROVIDERS:
        raise KeyError(f"unknown provider {kind!r}; known: {', '.join(sorted(PROVIDERS))}")
    return PROVIDERS[kind](options, name=name)
