"""The seam between the gateway and whatever computes vectors.

Everything a provider needs to know about an input lives here: `Item` (one input, one
vector) made of `Text` and `Image` parts, and `EmbedOptions` (what changes the vector).
A provider never sees the client's HTTP request, the cache or budgets.

Errors a provider may raise::

    ProviderError             the provider could not serve: 5xx, timeout, garbage (503; next deployment)
     ├── Overloaded           saturated or rate limited; retry after `retry_after` seconds (429; next deployment)
     ├── UpstreamRefused      an upstream refused our credentials or quota (502; next deployment)
     ├── ModelLoadError       weights could not be loaded at start-up
     └── InputRejected        an item it cannot embed; `index` names it (400; never retried elsewhere)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt
from PIL.Image import Image as PILImage

Vectors = npt.NDArray[np.float32]


class Modality(StrEnum):
    """What kind of content a part carries."""

    TEXT = "text"
    IMAGE = "image"


class InputType(StrEnum):
    """Asymmetric retrieval role; models without one ignore it."""

    QUERY = "query"
    DOCUMENT = "document"


@dataclass(frozen=True, slots=True)
class Text:
    """A text part."""

    text: str

    @property
    def modality(self) -> Modality:
        return Modality.TEXT


@dataclass(frozen=True, slots=True, eq=False)
class Image:
    """A decoded image part: the original bytes (for upstream APIs and hashing) and RGB pixels."""

    data: bytes
    mime: str
    sha256: str
    pixels: PILImage

    @property
    def modality(self) -> Modality:
        return Modality.IMAGE


Part = Text | Image


@dataclass(frozen=True, slots=True)
class Item:
    """One input that yields one vector; several parts make an interleaved (fused) input."""

    parts: tuple[Part, ...]

    @property
    def modalities(self) -> frozenset[Modality]:
        return frozenset(part.modality for part in self.parts)


@dataclass(frozen=True, slots=True)
class EmbedOptions:
    """The request options that change a vector (and so belong in a cache key)."""

    input_type: InputType | None = None


@dataclass(frozen=True, slots=True)
class Usage:
    """What an upstream API billed for one call, as its response reports it (local models: none).

    `billed_tokens` are the tokens its price per 1M tokens applies to (Jina: `total_tokens`, image
    tokens included; Voyage: `text_tokens`); `image_pixels` the pixels its price per 1B pixels
    applies to (Voyage: `image_pixels`)."""

    billed_tokens: int = 0
    image_pixels: int = 0
    calls: int = 1

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.billed_tokens + other.billed_tokens, self.image_pixels + other.image_pixels, self.calls + other.calls
        )


@dataclass(frozen=True, slots=True)
class EmbedResult:
    """L2-normalised vectors, one row per item, in item order, and the tokens each item cost
    (kept per item, so a cached item reports the usage it cost when it was computed).
    `usage` is what an upstream billed (None: nothing billable, e.g. a local model)."""

    vectors: Vectors
    item_tokens: tuple[int, ...] = ()
    usage: Usage | None = None

    @property
    def tokens(self) -> int:
        return sum(self.item_tokens)


@dataclass(frozen=True, slots=True)
class ProviderInfo:
    """What a provider can embed, and into what."""

    modalities: frozenset[Modality]
    dimension: int
    max_batch_size: int
    space: str = field(default="")
    """Everything that decides the vectors (family, weights identity, precision, preprocessing).
    Two deployments with equal `space` produce interchangeable vectors; caches key on it."""
    fuses_parts: bool = field(default=False)
    matryoshka_dimensions: tuple[int, ...] = field(default=())
    """Smaller sizes the weights were trained to truncate to (a model's config may override)."""


class ProviderError(Exception):
    """The provider could not serve the request."""


class Overloaded(ProviderError):
    """The provider's queue is full: the client should retry later."""

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class UpstreamRefused(ProviderError):
    """An upstream refused the call for reasons no retry fixes soon: bad credentials (401), no
    balance or quota (402, 403). The message names the deployment, never the key."""


class ModelLoadError(ProviderError):
    """Weights or processor files could not be loaded."""


class InputRejected(ProviderError):
    """One item cannot be embedded by this provider."""

    def __init__(self, message: str, index: int, part: int | None = None) -> None:
        super().__init__(message)
        self.index = index
        self.part = part


@runtime_checkable
class EmbeddingProvider(Protocol):
    """A source of vectors for one vector space."""

    @property
    def info(self) -> ProviderInfo:
        """Modalities, dimension and batch limit; valid after `load`."""
        ...

    def load(self) -> None:
        """Load weights or check credentials; blocking, called once before `start`."""

    async def start(self) -> None:
        """Start background work (batching loops, HTTP pools) on the running event loop."""

    async def close(self) -> None:
        """Stop background work and release resources."""

    async def embed(self, items: Sequence[Item], options: EmbedOptions) -> EmbedResult:
        """Embed `items`; return normalised vectors in the same order."""
        ...

    def stats(self) -> Mapping[str, float]:
        """Counters and gauges for /metrics, e.g. `parts_total`, `batches_total`, `queued`."""
        ...
