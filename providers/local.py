"""What every local (torch) family shares: options, lifecycle, batching engine, stats.

A family brings an encoder (load weights, `prepare` one unit, `forward` a batch) and says how a
request's items become the engine's units and how the units' vectors become one row per item.
Everything else, which the gateway relies on being the same for every family (start-up load,
`info`, the engine with its per-modality batch sizes, `/metrics` stats), lives here once.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Generic, Literal, Protocol, Self

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from typing_extensions import TypeVar

from providers.base import (
    EmbedOptions,
    EmbedResult,
    Item,
    Modality,
    Part,
    ProviderError,
    ProviderInfo,
    Vectors,
)
from providers.batching import BatchingEngine, Collate, LocalEncoder, collate


class LocalOptions(BaseModel):
    """Settings every local deployment has; a family adds its own and may change defaults."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="Hub id or local directory of the checkpoint.")
    revision: str | None = Field(default=None, description="Hub branch, tag or commit.")
    device: str = Field(default="auto", description="`auto`, `cpu`, `cuda`, `cuda:1`, ...")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    max_batch_size: int = Field(default=32, ge=1, description="Text inputs per forward pass.")
    image_max_batch_size: int | None = Field(
        default=None,
        ge=1,
        description="Inputs with an image per forward pass. Default: the family's CPU batch on a CPU "
        "(bigger image batches run slower there), `max_batch_size` on an accelerator.",
    )
    max_wait_ms: float = Field(default=5.0, ge=0, description="How long an input may wait for batch-mates.")
    max_queue: int = Field(default=1024, ge=1, description="Inputs queued before requests are refused (429).")
    preprocess_threads: int = Field(default=2, ge=1)
    modalities: list[Modality] = Field(
        default=[Modality.TEXT, Modality.IMAGE],
        description="Serve only some modalities, e.g. [text] for a text-only endpoint of the same space.",
        min_length=1,
    )


UnitT = TypeVar("UnitT", default=Part)
UnitT_contra = TypeVar("UnitT_contra", contravariant=True, default=Part)
OptionsT = TypeVar("OptionsT", bound=LocalOptions)


class LoadedEncoder(LocalEncoder[UnitT_contra], Protocol[UnitT_contra]):
    """A `LocalEncoder` after loading: where it runs, in what precision, which weights, how wide."""

    device: torch.device
    dtype: torch.dtype
    identity: str
    dimension: int


EncoderT = TypeVar("EncoderT", bound=LoadedEncoder[Any])


class LocalProvider(ABC, Generic[OptionsT, EncoderT, UnitT]):
    """One local deployment: an encoder of a family behind the shared batching engine."""

    family: ClassVar[str]
    """First field of `info.space`: two families never share a space."""
    options_type: ClassVar[type[LocalOptions]]
    cpu_image_batch: ClassVar[int] = 8
    accelerator_image_batch: ClassVar[int | None] = None
    """Inputs with an image per pass on an accelerator (None: `max_batch_size`)."""
    fuses_parts: ClassVar[bool] = True

    def __init__(self, options: OptionsT, *, name: str | None = None) -> None:
        self.options = options
        self.name = name or self.family
        self._encoder: EncoderT | None = None
        self._info: ProviderInfo | None = None
        self._engine: BatchingEngine[UnitT] | None = None

    @classmethod
    def from_options(cls, options: dict[str, Any], *, name: str) -> Self:
        return cls(cls.options_type.model_validate(options), name=name)  # type: ignore[arg-type]

    # --- what a family provides -------------------------------------------------------------

    @abstractmethod
    def build_encoder(self) -> EncoderT:
        """Load the weights (blocking; raise `ModelLoadError` with one readable line)."""

    @abstractmethod
    def space_details(self) -> str:
        """Everything besides family, weights and dtype that changes a vector (prompts, lengths...)."""

    @abstractmethod
    def units(self, items: Sequence[Item], options: EmbedOptions) -> list[UnitT]:
        """The engine's units for these items (raise `InputRejected` naming an item it cannot take)."""

    def assemble(self, items: Sequence[Item], vectors: Vectors, tokens: Sequence[int]) -> EmbedResult:
        """One row per item from the units' rows; by default one unit is one item."""
        return EmbedResult(vectors, tuple(tokens))

    def collate(self) -> Collate:
        """How prepared units become one batch (default: concatenate equal-shaped tensors)."""
        return collate

    def matryoshka_dimensions(self) -> tuple[int, ...]:
        """Smaller sizes the loaded weights were trained to truncate to (default: none declared)."""
        return ()

    # --- shared lifecycle -------------------------------------------------------------------

    @property
    def encoder(self) -> EncoderT:
        if self._encoder is None:
            raise ProviderError(f"model {self.name!r} is not loaded")
        return self._encoder

    @property
    def engine(self) -> BatchingEngine[UnitT]:
        if self._engine is None:
            raise ProviderError(f"model {self.name!r} is not started")
        return self._engine

    @property
    def info(self) -> ProviderInfo:
        if self._info is None:
            raise ProviderError(f"model {self.name!r} is not loaded")
        return self._info

    def load(self) -> None:
        if self._encoder is not None:
            return
        encoder = self._encoder = self.build_encoder()
        details = self.space_details()
        self._info = ProviderInfo(  # read on every request: built once
            modalities=frozenset(self.options.modalities),
            dimension=encoder.dimension,
            max_batch_size=self.options.max_batch_size,
            space=f"{self.family}|{encoder.identity}|{encoder.dtype}" + (f"|{details}" if details else ""),
            fuses_parts=self.fuses_parts,
            matryoshka_dimensions=self.matryoshka_dimensions(),
        )

    @property
    def batch_sizes(self) -> dict[Modality, int]:
        """Text inputs and inputs with an image per forward pass."""
        text = self.options.max_batch_size
        image = self.options.image_max_batch_size
        if image is None:
            on_cpu = self.encoder.device.type == "cpu"
            image = self.cpu_image_batch if on_cpu else (self.accelerator_image_batch or text)
            image = min(image, text)
        return {Modality.TEXT: text, Modality.IMAGE: image}

    async def start(self) -> None:
        self._engine = BatchingEngine(
            self.encoder,
            name=self.name,
            max_batch_size=self.batch_sizes,
            max_wait_s=self.options.max_wait_ms / 1000,
            max_queue=self.options.max_queue,
            preprocess_threads=self.options.preprocess_threads,
            collate=self.collate(),
        )
        await self._engine.start()

    async def close(self) -> None:
        if self._engine is not None:
            await self._engine.close()

    def stats(self) -> Mapping[str, float]:
        engine = self._engine
        if engine is None:
            return {}
        return {
            "parts_total": engine.parts_run,
            "batches_total": engine.batches_run,
            "forward_seconds_total": engine.forward_seconds,
            "queued": engine.queued,
        }

    async def embed(self, items: Sequence[Item], options: EmbedOptions) -> EmbedResult:
        vectors, tokens = await self.engine.encode(self.units(items, options))
        return self.assemble(items, vectors, tokens)


def fuse(part_vectors: Vectors, parts_per_item: Sequence[int]) -> Vectors:
    """One row per item: the normalised mean of its parts' (normalised) rows."""
    if all(n == 1 for n in parts_per_item):
        return part_vectors
    rows = []
    start = 0
    for count in parts_per_item:
        mean = part_vectors[start : start + count].mean(axis=0)
        rows.append(mean / max(float(np.linalg.norm(mean)), 1e-12))
        start += count
    return np.stack(rows).astype(np.float32)


def first_line(exc: BaseException) -> str:
    """A loader's exception as one log-friendly line."""
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
