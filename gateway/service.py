"""The embeddings use case, free of HTTP: request in, vectors and usage out."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gateway.errors import GatewayError, ServiceUnavailable, from_provider_error
from gateway.inputs import InputResolver, parse_input
from gateway.router import Router
from gateway.schema import EmbeddingRequest
from providers.base import EmbedOptions, ProviderError, Vectors


@dataclass(frozen=True, slots=True)
class Embeddings:
    """The result of one request: unit-length rows in input order, and the tokens computed."""

    model: str
    vectors: Vectors
    prompt_tokens: int


def truncate(vectors: Vectors, dimensions: int) -> Vectors:
    """Matryoshka: keep the first `dimensions` components and renormalise."""
    head = vectors[:, :dimensions]
    norms = np.linalg.norm(head, axis=1, keepdims=True)
    normalised: Vectors = (head / np.maximum(norms, 1e-12)).astype(np.float32)
    return normalised


class EmbeddingService:
    """Validates a request against its model, resolves inputs and asks the provider."""

    def __init__(self, router: Router, resolver: InputResolver, *, max_inputs: int) -> None:
        self.router = router
        self.resolver = resolver
        self.max_inputs = max_inputs

    async def embed(self, request: EmbeddingRequest) -> Embeddings:
        model = self.router.resolve(request.model)
        options = EmbedOptions(input_type=request.resolved_input_type())
        specs = parse_input(request.input, max_items=self.max_inputs)
        model.check_items(specs)
        dimensions = model.check_dimensions(request.dimensions)
        items = await self.resolver.resolve(specs)
        try:
            result = await model.provider.embed(items, options)
        except ProviderError as exc:
            raise from_provider_error(exc, [spec.param for spec in specs]) from exc
        vectors = result.vectors
        if vectors.shape != (len(items), model.dimension) or not np.isfinite(vectors).all():
            raise ServiceUnavailable(
                f"model '{model.name}' returned malformed vectors {vectors.shape}", code="model_unavailable"
            )
        if dimensions is not None:
            vectors = truncate(vectors, dimensions)
        return Embeddings(model.name, vectors, result.tokens)


__all__ = ["EmbeddingService", "Embeddings", "GatewayError", "truncate"]
