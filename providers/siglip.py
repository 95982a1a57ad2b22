"""SigLIP and SigLIP2 (NaFlex) dual encoders through `AutoModel` / `AutoProcessor`.

Text is padded to `text_max_length` (64) with truncation and fed without an attention mask,
as SigLIP was trained: its text tower pools the last position, so padding to the longest text
in a batch would make a text's vector depend on its neighbours. An interleaved item is the L2-normalised mean of
its parts' normalised vectors, so text and image live in one space.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from pydantic import Field

from providers.base import (
    EmbedOptions,
    EmbedResult,
    Image,
    Item,
    Modality,
    ModelLoadError,
    Part,
    Text,
    Vectors,
)
from providers.batching import Features, Prepared
from providers.fingerprint import checkpoint_identity
from providers.local import LocalOptions, LocalProvider, first_line, fuse
from providers.torch_device import resolve_device, resolve_dtype

CPU_IMAGE_BATCH = 8  # bench/bench_siglip.py: 5.3 images/s at 8 against 4.7 at 24-27 on 2 cores


class SiglipOptions(LocalOptions):
    """Settings of one SigLIP / SigLIP2 deployment."""

    text_max_length: int = Field(default=64, ge=1, description="Pad/truncate texts to this many tokens.")
    text_attention_mask: bool = Field(
        default=False,
        description="Feed the text tower an attention mask. SigLIP and SigLIP2 were trained without one "
        "(big_vision, open_clip; transformers 4.x's SiglipTokenizer returned input_ids only), so the default "
        "leaves it out even where a transformers 5 tokenizer declares it.",
    )
    image_max_batch_size: int | None = Field(
        default=None,
        ge=1,
        description="Images per forward pass. Default: 8 on CPU, where bigger image batches run slower "
        "(bench: 5.3 images/s at 8 against 4.7 at 24-27 on 2 cores); `max_batch_size` on an accelerator.",
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
            raise ModelLoadError(first_line(exc)) from exc
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


class SiglipProvider(LocalProvider[SiglipOptions, SiglipEncoder, Part]):
    """A SigLIP / SigLIP2 deployment behind the shared batching engine: one unit per part."""

    family = "siglip"
    options_type = SiglipOptions
    cpu_image_batch = CPU_IMAGE_BATCH

    def build_encoder(self) -> SiglipEncoder:
        return SiglipEncoder(self.options)

    def space_details(self) -> str:
        return f"text_max_length={self.options.text_max_length}|text_attention_mask={self.options.text_attention_mask}"

    def units(self, items: Sequence[Item], options: EmbedOptions) -> list[Part]:
        return [part for item in items for part in item.parts]

    def assemble(self, items: Sequence[Item], vectors: Vectors, tokens: Sequence[int]) -> EmbedResult:
        counts = [len(item.parts) for item in items]
        starts = np.cumsum([0, *counts])
        item_tokens = tuple(sum(tokens[start : start + count]) for start, count in zip(starts, counts, strict=False))
        return EmbedResult(fuse(vectors, counts), item_tokens)


__all__ = ["Image", "SiglipEncoder", "SiglipOptions", "SiglipProvider", "fuse"]
