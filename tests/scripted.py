"""An in-process provider whose answers a test scripts: for the routing logic, not for wire formats
(the HTTP providers are tested against real fake servers in `tests/fake_upstreams.py`)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from providers.base import (
    EmbedOptions,
    EmbedResult,
    Image,
    Item,
    Modality,
    ProviderError,
    ProviderInfo,
    Text,
    Usage,
    Vectors,
)


def content_vector(item: Item, dimension: int, salt: str = "") -> np.ndarray:
    """A unit vector determined by the item's content (and `salt`: another space)."""
    digest = hashlib.sha256(salt.encode())
    for part in item.parts:
        digest.update(part.text.encode() if isinstance(part, Text) else bytes.fromhex(part.sha256))
    seed = int.from_bytes(digest.digest()[:8], "little")
    vector = np.random.default_rng(seed).standard_normal(dimension).astype(np.float32)
    return vector / np.linalg.norm(vector)


Step = Callable[[Sequence[Item]], EmbedResult] | ProviderError


@dataclass(eq=False)
class ScriptedProvider:
    """Answers with `content_vector`s unless the next scripted step says otherwise."""

    dimension: int = 8
    modalities: frozenset[Modality] = frozenset({Modality.TEXT, Modality.IMAGE})
    fuses_parts: bool = False
    space: str = "scripted"
    salt: str = ""
    tokens_per_item: int = 3
    steps: list[Step] = field(default_factory=list)
    calls: list[list[Item]] = field(default_factory=list)

    @property
    def info(self) -> ProviderInfo:
        return ProviderInfo(self.modalities, self.dimension, 64, self.space, self.fuses_parts)

    def load(self) -> None:
        pass

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    def stats(self) -> Mapping[str, float]:
        return {"upstream_calls_total": len(self.calls)}

    def vectors(self, items: Sequence[Item]) -> Vectors:
        return np.stack([content_vector(item, self.dimension, self.salt) for item in items])

    async def embed(self, items: Sequence[Item], options: EmbedOptions) -> EmbedResult:
        self.calls.append(list(items))
        if self.steps:
            step = self.steps.pop(0)
            if isinstance(step, ProviderError):
                raise step
            return step(items)
        tokens = tuple(self.tokens_per_item for _ in items)
        return EmbedResult(self.vectors(items), tokens, Usage(billed_tokens=sum(tokens)))


def text_items(*texts: str) -> list[Item]:
    return [Item((Text(text),)) for text in texts]


def image_item(image: Image) -> Item:
    return Item((image,))
