"""Provider kinds by name: the only place that knows which modules exist.

Modules are imported when a kind is first built, so a gateway serving SigLIP never imports the
code (or the optional dependencies) of families it does not serve.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, cast

from providers.base import EmbeddingProvider

ProviderFactory = Callable[..., EmbeddingProvider]

PROVIDERS: dict[str, str] = {
    "siglip": "providers.siglip:SiglipProvider.from_options",
    "visrag": "providers.visrag:VisragProvider.from_options",
    "text_encoder": "providers.text_encoder:TextEncoderProvider.from_options",
    "jina_clip": "providers.jina_clip:JinaClipProvider.from_options",
    "e5v": "providers.e5v:E5vProvider.from_options",
    "qwen2_vl": "providers.qwen2_vl:Qwen2VlProvider.from_options",
    "jina": "providers.jina:from_options",
    "voyage": "providers.voyage:from_options",
    "openai_compatible": "providers.openai_compat:from_options",
    "openai": "providers.openai_compat:from_options",
}
"""Kind → `module:attribute path` of the factory `(options, *, name) -> EmbeddingProvider`."""

WEIGHTS_FROM_HUB = {"siglip", "visrag", "text_encoder", "jina_clip", "e5v", "qwen2_vl"}
"""Kinds whose `model` option is a hub id or a local directory of weights (the CLI probes the hub)."""


def loads_weights(kind: str) -> bool:
    return kind in WEIGHTS_FROM_HUB


def factory(kind: str) -> ProviderFactory:
    """The factory of `kind`, importing its module; unknown kinds raise `KeyError`."""
    if kind not in PROVIDERS:
        raise KeyError(f"unknown provider {kind!r}; known: {', '.join(sorted(PROVIDERS))}")
    module_name, path = PROVIDERS[kind].split(":")
    target: Any = importlib.import_module(module_name)
    for attribute in path.split("."):
        target = getattr(target, attribute)
    return cast(ProviderFactory, target)


def create_provider(kind: str, options: dict[str, Any], *, name: str) -> EmbeddingProvider:
    """Build (not load) a provider of `kind`; unknown kinds raise `KeyError`."""
    return factory(kind)(options, name=name)
