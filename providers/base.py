"""The seam between the gateway and whatever computes vectors.

Everything a provider needs to know about an input lives here: `Item` (one input, one
vector) made of `Text` and `Image` parts, and `EmbedOptions` (what changes the vector).
A provider never sees the client's HTTP request, the cache or budgets.

Errors a provider may raise::

    ProviderError             the provider could not serve (maps to 503)
     ├── Overloaded           its queue is full; retry after `retry_after` seconds (429)
     ├── ModelLoadError       weights could not be loaded at start-up
     └── InputRejected        an item it cannot embed; `index` names it (400)
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
class EmbedResult:
    """L2-normalised vectors, one row per item, in item order, and the tokens each item cost
    (kept per item, so a cached item reports the usage it cost when it was computed)."""

    vectors: Vectors
    item_tokens: tuple[int, ...] = ()

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


class ProviderError(Exception):
    """The provider could not serve the request."""


class Overloaded(ProviderError):
    """The provider's queue is full: the client should retry later."""

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


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
