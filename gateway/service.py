"""The embeddings use case, free of HTTP: request in, vectors and usage out."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gateway.cache import CachePolicy, VectorCache
from gateway.errors import ServiceUnavailable, from_provider_error
from gateway.inputs import InputResolver, parse_input
from gateway.router import Router
from gateway.schema import EmbeddingRequest
from providers.base import EmbedOptions, ProviderError, Vectors


@dataclass(frozen=True, slots=True)
class Embeddings:
    """The result of one request: unit-length rows in input order, what was computed, what was cached."""

    model: str
    vectors: Vectors
    prompt_tokens: int
    cache_hits: int = 0
    cache_misses: int = 0


def truncate(vectors: Vectors, dimensions: int) -> Vectors:
    """Matryoshka: keep the first `dimensions` components and renormalise."""
    head = vectors[:, :dimensions]
    norms = np.linalg.norm(head, axis=1, keepdims=True)
    normalised: Vectors = (head / np.maximum(norms, 1e-12)).astype(np.float32)
    return normalised


class EmbeddingService:
    """Validates a request against its model, resolves inputs, serves cached vectors, computes the rest."""

    def __init__(self, router: Router, resolver: InputResolver, cache: VectorCache, *, max_inputs: int) -> None:
        self.router = router
        self.resolver = resolver
        self.cache = cache
        self.max_inputs = max_inputs

    async def embed(self, request: EmbeddingRequest, policy: CachePolicy | None = None) -> Embeddings:
        model = self.router.resolve(request.model)
        options = EmbedOptions(input_type=request.resolved_input_type())
        specs = parse_input(request.input, max_items=self.max_inputs)
        model.check_items(specs)
        dimensions = model.check_dimensions(request.dimensions)
        resolved = await self.resolver.resolve(specs)
        space = model.provider.info.space

        async def compute(indices: list[int]) -> tuple[Vectors, int]:
            items = await self.resolver.decode([resolved[i] for i in indices])
            try:
                result = await model.provider.embed(items, options)
            except ProviderError as exc:
                raise from_provider_error(exc, [specs[i].param for i in indices]) from exc
            vectors = result.vectors
            if vectors.shape != (len(items), model.dimension) or not np.isfinite(vectors).all():
                raise ServiceUnavailable(
                    f"model '{model.name}' returned malformed vectors {vectors.shape}", code="model_unavailable"
                )
            return (truncate(vectors, dimensions) if dimensions else vectors), result.tokens

        keys = [self.cache.key(space, options, dimensions, item) for item in resolved]
        found = await self.cache.get_or_compute(keys, dimensions or model.dimension, compute, policy or CachePolicy())
        return Embeddings(model.name, found.vectors, found.tokens, found.hits, found.misses)
