"""SigLIP and SigLIP2 (NaFlex) dual encoders through `AutoModel` / `AutoProcessor`.

Text is padded to `text_max_length` (64) with truncation and fed without an attention mask,
as SigLIP was trained: its text tower pools the last position, so padding to the longest text
in a batch would make a text's vector depend on its neighbours. An interleaved item is the L2-normalised mean of
its parts' normalised vectors, so text and image live in one space.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from providers.base import (
    EmbedOptions,
    EmbedResult,
    Image,
    Item,
    Modality,
    ModelLoadError,
    Part,
    ProviderError,
    ProviderInfo,
    Text,
    Vectors,
)
from providers.batching import BatchingEngine, Features, Prepared
from providers.fingerprint import checkpoint_identity
from providers.torch_device import resolve_device, resolve_dtype

CPU_IMAGE_BATCH = 8  # bench/bench_siglip.py: 5.3 images/s at 8 against 4.7 at 24-27 on 2 cores


class SiglipOptions(BaseModel):
    """Settings of one SigLIP / SigLIP2 deployment."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="Hub id or local directory of the checkpoint.")
    revision: str | None = Field(default=None, description="Hub branch, tag or commit.")
    device: str = Field(default="auto", description="`auto`, `cpu`, `cuda`, `cuda:1`, ...")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    text_max_length: int = Field(default=64, ge=1, description="Pad/truncate texts to this many tokens.")
    text_attention_mask: bool = Field(
        default=False,
        description="Feed the text tower an attention mask. SigLIP and SigLIP2 were trained without one "
        "(big_vision, open_clip; transformers 4.x's SiglipTokenizer returned input_ids only), so the default "
        "leaves it out even where a transformers 5 tokenizer declares it.",
    )
    max_batch_size: int = Field(default=32, ge=1, description="Texts per forward pass.")
    image_max_batch_size: int | None = Field(
        default=None,
        ge=1,
        description="Images per forward pass. Default: 8 on CPU, where bigger image batches run slower "
        "(bench: 5.3 images/s at 8 against 4.7 at 24-27 on 2 cores); `max_batch_size` on an accelerator.",
    )
    max_wait_ms: float = Field(default=5.0, ge=0, description="How long a part may wait for batch-mates.")
    max_queue: int = Field(default=1024, ge=1, description="Parts queued before requests are refused (429).")
    preprocess_threads: int = Field(default=2, ge=1)
    modalities: list[Modality] = Field(
        default=[Modality.TEXT, Modality.IMAGE],
        description="Serve only some towers, e.g. [text] for a text-only endpoint of the same space.",
        min_length=1,
    )


class SiglipEncoder:
    """Loads the checkpoint; prepares parts and runs forward passes (the engine's `LocalEncoder`)."""

    def __init__(self, options: SiglipOptions) -> None:
        from transformers import AutoModel, AutoProcessor

        self.options = options
        self.device = resolve_device(options.device)
        self.dtype = resolve_dtype(options.dtype, self.device)
        try:
            processor = AutoProcessor.from_pretrained(options.model, revision=options.revision)  # type: ignore[no-untyped-call]
            model = AutoModel.from_pretrained(options.model, revision=options.revision, dtype=self.dtype)
        except Exception as exc:  # transformers raises OSError, ValueError, HF hub errors...
            raise ModelLoadError(_first_line(exc)) from exc
        if not hasattr(model, "get_text_features") or not hasattr(model, "get_image_features"):
            raise ModelLoadError(f"{type(model).__name__} is not a SigLIP-style dual encoder")
        self.model = model.to(self.device).eval()
        self.tokenizer = processor.tokenizer
        self.image_processor = processor.image_processor
        self.identity = checkpoint_identity(
            options.model, options.revision, getattr(model.config, "_commit_hash", None)
        )
        vision = self.model.config.vision_config
        self._patches_per_image = (vision.image_size // vision.patch_size) ** 2 if hasattr(vision, "image_size") else 0
        # A probe pass proves the checkpoint runs and tells the dimension of its space.
        probe = self.prepare(Text("probe"))
        self.dimension = int(self.forward(probe.modality, probe.features).shape[1])

    def prepare(self, part: Part) -> Prepared:
        if isinstance(part, Text):
            encoded = self.tokenizer(
                [part.text],
                padding="max_length",
                max_length=self.options.text_max_length,
                truncation=True,
                return_attention_mask=True,
                return_tensors="pt",
            )
            tokens = int(encoded["attention_mask"].sum())
            features = {"input_ids": encoded["input_ids"]}
            if self.options.text_attention_mask:
                features["attention_mask"] = encoded["attention_mask"]
            return Prepared(Modality.TEXT, features, tokens)
        processed = self.image_processor(images=[part.pixels], return_tensors="pt")
        features = dict(processed.items())
        mask = features.get("pixel_attention_mask")
        tokens = int(mask.sum()) if mask is not None else self._patches_per_image
        return Prepared(Modality.IMAGE, features, tokens)

    @torch.inference_mode()
    def forward(self, modality: Modality, batch: Features) -> Vectors:
        inputs = {k: v.to(self.device) for k, v in batch.items()}
        if modality is Modality.TEXT:
            output = self.model.get_text_features(**inputs)
        else:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
            output = self.model.get_image_features(**inputs)
        pooled = output if isinstance(output, torch.Tensor) else output.pooler_output
        normalised = torch.nn.functional.normalize(pooled.float(), dim=-1)
        return normalised.cpu().numpy().astype(np.float32, copy=False)


class SiglipProvider:
    """A SigLIP / SigLIP2 deployment behind the shared batching engine."""

    def __init__(self, options: SiglipOptions, *, name: str = "siglip") -> None:
        self.options = options
        self.name = name
        self._encoder: SiglipEncoder | None = None
        self._info: ProviderInfo | None = None
        self._engine: BatchingEngine | None = None

    @classmethod
    def from_options(cls, options: dict[str, Any], *, name: str) -> SiglipProvider:
        return cls(SiglipOptions.model_validate(options), name=name)

    @property
    def encoder(self) -> SiglipEncoder:
        if self._encoder is None:
            raise ProviderError(f"model {self.name!r} is not loaded")
        return self._encoder

    @property
    def engine(self) -> BatchingEngine:
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
        encoder = self._encoder = SiglipEncoder(self.options)
        self._info = ProviderInfo(  # read on every request: built once
            modalities=frozenset(self.options.modalities),
            dimension=encoder.dimension,
            max_batch_size=self.options.max_batch_size,
            space=(
                f"siglip|{encoder.identity}|{encoder.dtype}|text_max_length={self.options.text_max_length}"
                f"|text_attention_mask={self.options.text_attention_mask}"
            ),
            fuses_parts=True,
        )

    @property
    def batch_sizes(self) -> dict[Modality, int]:
        """Texts and images per forward pass; images default to 8 on CPU, where bigger batches run slower."""
        text = self.options.max_batch_size
        image = self.options.image_max_batch_size
        if image is None:
            image = min(CPU_IMAGE_BATCH, text) if self.encoder.device.type == "cpu" else text
        return {Modality.TEXT: text, Modality.IMAGE: image}

    async def start(self) -> None:
        self._engine = BatchingEngine(
            self.encoder,
            name=self.name,
            max_batch_size=self.batch_sizes,
            max_wait_s=self.options.max_wait_ms / 1000,
            max_queue=self.options.max_queue,
            preprocess_threads=self.options.preprocess_threads,
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
        parts: list[Part] = [part for item in items for part in item.parts]
        vectors, tokens = await self.engine.encode(parts)
        counts = [len(item.parts) for item in items]
        starts = np.cumsum([0, *counts])
        item_tokens = tuple(sum(tokens[start : start + count]) for start, count in zip(starts, counts, strict=False))
        return EmbedResult(fuse(vectors, counts), item_tokens)


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


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


__all__ = ["Image", "SiglipEncoder", "SiglipOptions", "SiglipProvider", "fuse"]
