"""The embeddings use case, free of HTTP: request in, vectors and usage out."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from gateway.cache import VectorCache
from gateway.config import LimitSettings
from gateway.context import RequestContext
from gateway.dispatch import Dispatcher
from gateway.errors import RateLimited, from_provider_error
from gateway.images import EncodedImage
from gateway.inputs import InputResolver, ItemSpec, ResolvedItem, parse_input, texts_only
from gateway.router import Router, ServedModel
from gateway.schema import EmbeddingRequest, parse_request
from providers.base import EmbedOptions, Item, ProviderError, Vectors

DECODE_BATCH_IMAGES = 8
"""Images decoded at once per request: one engine batch's worth (8 per pass on CPU), decoded while
the previous one runs, so a request of many large images never holds all their pixels at once."""


@dataclass(frozen=True, slots=True)
class ParsedRequest:
    """A request whose body is decoded and whose `input` is walked and named, under the limits."""

    request: EmbeddingRequest
    specs: list[ItemSpec]


@dataclass(frozen=True, slots=True)
class Embeddings:
    """The result of one request: unit-length rows in input order, what was computed, what was cached."""

    model: str
    vectors: Vectors
    prompt_tokens: int
    cache_hits: int = 0
    cache_misses: int = 0
    cost_usd: float = 0.0
    deployments: tuple[str, ...] = ()


def truncate(vectors: Vectors, dimensions: int) -> Vectors:
    """Matryoshka: keep the first `dimensions` components and renormalise."""
    head = vectors[:, :dimensions]
    norms = np.linalg.norm(head, axis=1, keepdims=True)
    normalised: Vectors = (head / np.maximum(norms, 1e-12)).astype(np.float32)
    return normalised


def decode_groups(items: Sequence[ResolvedItem], indices: list[int], max_images: int) -> list[list[int]]:
    """Split `indices` into runs holding at most `max_images` images each (texts ride along)."""
    groups: list[list[int]] = [[]]
    images = 0
    for i in indices:
        count = sum(isinstance(part, EncodedImage) for part in items[i].parts)
        if groups[-1] and images + count > max_images:
            groups.append([])
            images = 0
        groups[-1].append(i)
        images += count
    return groups


class EmbeddingService:
    """Validates a request against its model, resolves inputs, serves cached vectors, computes the rest."""

    def __init__(
        self,
        router: Router,
        resolver: InputResolver,
        cache: VectorCache,
        limits: LimitSettings,
        dispatcher: Dispatcher,
    ) -> None:
        self.router = router
        self.resolver = resolver
        self.cache = cache
        self.limits = limits
        self.dispatcher = dispatcher
        self.in_flight = 0

    @contextlib.contextmanager
    def admit(self) -> Iterator[None]:
        """Hold one of `limits.max_concurrent_requests` places for a request's whole life."""
        if self.in_flight >= self.limits.max_concurrent_requests:
            raise RateLimited(
                f"the gateway is handling {self.in_flight} requests (limits.max_concurrent_requests); retry shortly",
                retry_after=1.0,
            )
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1

    def parse(self, body: bytes, content_type: str, content_encoding: str = "") -> ParsedRequest:
        """Decode and walk a body (CPU work: the caller runs large ones off the event loop)."""
        request = parse_request(body, content_type, content_encoding)
        return ParsedRequest(request, parse_input(request.input, limits=self.limits))

    async def embed(self, parsed: ParsedRequest, context: RequestContext | None = None) -> Embeddings:
        request, specs = parsed.request, parsed.specs
        context = context or RequestContext()
        model = self.router.resolve(request.model)
        if context.key is not None:
            context.key.check_model(model.name)
        options = EmbedOptions(input_type=request.resolved_input_type())
        model.check_items(specs)
        dimensions = model.check_dimensions(request.dimensions)
        resolved = await self.resolver.resolve(specs)

        async def compute(indices: list[int]) -> tuple[Vectors, list[int]]:
            return await self._compute(
                model, indices, options=options, dimensions=dimensions, specs=specs, resolved=resolved, context=context
            )

        keys = [self.cache.key(model.space, options, dimensions, item) for item in resolved]
        found = await self.cache.get_or_compute(keys, dimensions or model.dimension, compute, context.policy)
        spend = context.spend
        return Embeddings(
            model.name, found.vectors, found.tokens, found.hits, found.misses, spend.usd, tuple(spend.deployments)
        )

    async def _compute(
        self,
        model: ServedModel,
        indices: list[int],
        *,
        options: EmbedOptions,
        dimensions: int | None,
        specs: Sequence[ItemSpec],
        resolved: Sequence[ResolvedItem],
        context: RequestContext,
    ) -> tuple[Vectors, list[int]]:
        """Embed the items at `indices`, decoding one batch of images while the previous one runs."""
        groups = decode_groups(resolved, indices, DECODE_BATCH_IMAGES)
        rows: list[Vectors] = []
        tokens: list[int] = []
        upcoming: asyncio.Task[list[Item]] | list[Item] | None = self._decode([resolved[i] for i in groups[0]])
        try:
            for number, group in enumerate(groups):
                assert upcoming is not None
                items = upcoming if isinstance(upcoming, list) else await upcoming
                upcoming = None
                if number + 1 < len(groups):
                    upcoming = self._decode([resolved[i] for i in groups[number + 1]])
                try:
                    result = await self.dispatcher.embed(model, items, options, context)
                except ProviderError as exc:  # InputRejected: the client's input, named by its param
                    raise from_provider_error(exc, [specs[i].param for i in group]) from exc
                vectors = result.vectors
                rows.append(truncate(vectors, dimensions) if dimensions else vectors)
                tokens.extend(result.item_tokens)
        finally:
            if isinstance(upcoming, asyncio.Task):
                upcoming.cancel()
                await asyncio.wait([upcoming])  # its errors are moot; our own cancellation still propagates
        vectors = rows[0] if len(rows) == 1 else np.concatenate(rows)
        return vectors.astype(np.float32, copy=False), tokens

    def _decode(self, items: list[ResolvedItem]) -> asyncio.Task[list[Item]] | list[Item]:
        """The model-ready items: decoded at once when they are all text (no image, nothing to wait
        for), else by a task started now, so it runs while the previous group is computed."""
        texts = texts_only(items)
        if texts is not None:
            return texts
        return asyncio.ensure_future(self.resolver.decode(items))
