"""Qwen2-VL-style embedders (GME: `Alibaba-NLP/gme-Qwen2-VL-2B-Instruct`, `-7B-Instruct`): texts,
images and interleaved items in one chat prompt, pooled from the decoder's last hidden state.

The prompt is the published `gme_inference.py`'s: the instruction as the system message, the
item's parts in order in the user message (an image as `<|vision_start|><|image_pad|><|vision_end|>`),
then `<|im_start|>assistant\\n<|endoftext|>`; the vector is the last token's hidden state, L2-normalised.
Queries (`input_type: query`) get the query instruction; documents and requests that say nothing
get the document instruction ("You are a helpful assistant.", as the published code always uses for them).

GME's published code feeds the text decoder without position ids, so on the transformers it was
written for every token, image tokens included, has the plain position 0..n-1 on all three rotary
axes; `positions: sequential` reproduces that, `positions: multimodal` uses Qwen2-VL's own 3D
positions (the model's `get_rope_index`) for checkpoints trained with them. Positions are computed
per item on the preprocessing threads and passed explicitly (left-padded with the ids), so the
forward never depends on the model's stateful `rope_deltas`.

Transformers' `Qwen2VLProcessor` cannot be built without torchvision (its video processor), so the
processor's job is done here with its two halves: the tokenizer, and the image processor whose
`image_grid_thw` says how many `<|image_pad|>` tokens each picture expands to.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

import numpy as np
import torch
from PIL.Image import Image as PILImage
from pydantic import Field

from providers.base import (
    EmbedOptions,
    Image,
    InputRejected,
    InputType,
    Item,
    Modality,
    ModelLoadError,
    Text,
    Vectors,
)
from providers.batching import Collate, Features, Prepared
from providers.fingerprint import checkpoint_identity
from providers.local import LocalOptions, LocalProvider, first_line
from providers.padding import pad_rows
from providers.torch_device import resolve_device, resolve_dtype

Pooling = Literal["last_token", "mean"]
Positions = Literal["sequential", "multimodal"]
VISION_TOKENS = ("<|vision_start|>", "<|image_pad|>", "<|vision_end|>", "<|video_pad|>")
IMAGE_PLACEHOLDER = "<|vision_start|><|image_pad|><|vision_end|>"
FACTOR = 28  # patch 14 x spatial merge 2: a merged image token covers 28x28 pixels
MAX_ASPECT_RATIO = 200
CPU_IMAGE_BATCH = 4


@dataclass(frozen=True, slots=True)
class Recipe:
    """How a checkpoint was trained to embed: prompts, pooling, positions, picture sizes, length."""

    query_instruction: str
    document_instruction: str
    pooling: Pooling
    positions: Positions
    min_pixels: int
    max_pixels: int
    max_length: int


GME = Recipe(
    query_instruction="Find an image that matches the given text.",  # the model card's text-to-image example
    document_instruction="You are a helpful assistant.",
    pooling="last_token",
    positions="sequential",
    min_pixels=256 * FACTOR * FACTOR,  # gme_inference.py: min_image_tokens=256
    max_pixels=1280 * FACTOR * FACTOR,  # max_image_tokens=1280
    max_length=1800,
)
KNOWN_MODELS: dict[str, Recipe] = {
    "Alibaba-NLP/gme-Qwen2-VL-2B-Instruct": GME,
    "Alibaba-NLP/gme-Qwen2-VL-7B-Instruct": GME,
}
"""Defaults per hub id; any other checkpoint gets GME's."""


class Qwen2VlOptions(LocalOptions):
    """Settings of one Qwen2-VL-style deployment; unset fields take the known model's defaults."""

    model: str = Field(
        default="Alibaba-NLP/gme-Qwen2-VL-2B-Instruct", description="Hub id or local directory of the checkpoint."
    )
    query_instruction: str | None = Field(
        default=None, description="System message of `input_type: query` inputs (GME: the model card's example)."
    )
    document_instruction: str | None = Field(
        default=None, description="System message of every other input (GME: 'You are a helpful assistant.')."
    )
    pooling: Literal["auto", "last_token", "mean"] = Field(
        default="auto", description="`last_token` (GME) or `mean` over the attention mask."
    )
    positions: Literal["auto", "sequential", "multimodal"] = Field(
        default="auto", description="Rotary positions: `sequential` as GME's published code, or Qwen2-VL's 3D ones."
    )
    min_pixels: int | None = Field(
        default=None, ge=FACTOR * FACTOR, description="Smallest picture area after resizing."
    )
    max_pixels: int | None = Field(default=None, ge=FACTOR * FACTOR, description="Largest picture area after resizing.")
    max_length: int | None = Field(
        default=None, ge=16, description="Tokens per input, image tokens included; longer inputs are refused (400)."
    )
    max_batch_size: int = Field(default=16, ge=1, description="Text inputs per forward pass.")

    def recipe(self) -> Recipe:
        """The known model's defaults with this deployment's settings on top."""
        known = KNOWN_MODELS.get(self.model, GME)
        recipe = Recipe(
            query_instruction=known.query_instruction if self.query_instruction is None else self.query_instruction,
            document_instruction=(
                known.document_instruction if self.document_instruction is None else self.document_instruction
            ),
            pooling=known.pooling if self.pooling == "auto" else self.pooling,
            positions=known.positions if self.positions == "auto" else self.positions,
            min_pixels=self.min_pixels or known.min_pixels,
            max_pixels=self.max_pixels or known.max_pixels,
            max_length=self.max_length or known.max_length,
        )
        if recipe.min_pixels > recipe.max_pixels:
            raise ValueError(f"min_pixels ({recipe.min_pixels}) is over max_pixels ({recipe.max_pixels})")
        return recipe


@dataclass(frozen=True, slots=True, eq=False)
class Qwen2VlInput:
    """One item as the model reads it: its parts in order, the system message, its request index."""

    parts: tuple[str | PILImage, ...]
    instruction: str
    index: int


def published_resize(image: PILImage) -> PILImage:
    """GME's `_fetch_image`: RGB, each side rounded to a multiple of 28 (area kept between 4 and
    16384 tokens, sides at most 1:200) with PIL's default (bicubic) filter, before the image
    processor resizes again to `min_pixels`..`max_pixels`."""
    image = image.convert("RGB")
    width, height = image.size
    h_bar = max(FACTOR, round(height / FACTOR) * FACTOR)
    w_bar = max(FACTOR, round(width / FACTOR) * FACTOR)
    low, high = 4 * FACTOR * FACTOR, 16384 * FACTOR * FACTOR
    if h_bar * w_bar > high:
        beta = math.sqrt(height * width / high)
        h_bar = max(FACTOR, math.floor(height / beta / FACTOR) * FACTOR)  # published: no floor (a crash)
        w_bar = max(FACTOR, math.floor(width / beta / FACTOR) * FACTOR)
    elif h_bar * w_bar < low:
        beta = math.sqrt(low / (height * width))
        h_bar, w_bar = math.ceil(height * beta / FACTOR) * FACTOR, math.ceil(width * beta / FACTOR) * FACTOR
    if max(h_bar, w_bar) / min(h_bar, w_bar) > MAX_ASPECT_RATIO:  # squeezed to 1:200, as published
        h_bar, w_bar = (w_bar * MAX_ASPECT_RATIO, w_bar) if h_bar > w_bar else (h_bar, h_bar * MAX_ASPECT_RATIO)
    return image.resize((w_bar, h_bar))


def prompt_of(unit: Qwen2VlInput) -> str:
    """The published chat prompt, with one placeholder per image (expanded once the grid is known)."""
    content = "".join(IMAGE_PLACEHOLDER if not isinstance(part, str) else part for part in unit.parts)
    return (
        f"<|im_start|>system\n{unit.instruction}<|im_end|>\n<|im_start|>user\n{content}<|im_end|>\n"
        "<|im_start|>assistant\n<|endoftext|>"
    )


class Qwen2VlEncoder:
    """Loads the checkpoint; prepares items and runs forward passes (the engine's `LocalEncoder`)."""

    def __init__(self, options: Qwen2VlOptions) -> None:
        from transformers import AutoImageProcessor, AutoTokenizer, Qwen2VLForConditionalGeneration

        self.recipe = options.recipe()
        self.device = resolve_device(options.device)
        self.dtype = resolve_dtype(options.dtype, self.device)
        try:
            self.tokenizer: Any = AutoTokenizer.from_pretrained(options.model, revision=options.revision)
            self.image_processor: Any = AutoImageProcessor.from_pretrained(  # type: ignore[no-untyped-call]
                options.model, revision=options.revision
            )
            loaded = Qwen2VLForConditionalGeneration.from_pretrained(
                options.model, revision=options.revision or "main", dtype=self.dtype
            )
        except Exception as exc:  # transformers raises OSError, ValueError, HF hub errors...
            raise ModelLoadError(first_line(exc)) from exc
        self.model: Any = loaded.model.to(self.device).eval()  # the decoder and vision tower; no LM head
        config: Any = loaded.config
        self.image_token_id = int(config.image_token_id)
        self.merge = int(config.vision_config.spatial_merge_size)
        self.pad_id = int(self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0)
        self.identity = checkpoint_identity(options.model, options.revision, getattr(config, "_commit_hash", None))
        # A probe pass proves the checkpoint runs (finite numbers) and tells the dimension.
        try:
            probe = self.prepare(Qwen2VlInput(("probe",), self.recipe.document_instruction, 0))
        except InputRejected as exc:
            raise ModelLoadError(f"max_length is too short for the prompt alone: {exc}") from exc
        vectors = self.forward(probe.modality, collate([probe.features], self.pad_id))
        if not np.isfinite(vectors).all():
            raise ModelLoadError(f"{options.model} gives non-finite vectors in {self.dtype}")
        self.dimension = int(vectors.shape[1])

    def prepare(self, part: Qwen2VlInput) -> Prepared:
        """Token ids, positions and (with pictures) patches of one item, batch dimension 1."""
        images = [published_resize(p) for p in part.parts if not isinstance(p, str)]
        text = prompt_of(part)
        features: Features = {}
        if images:
            size = {"shortest_edge": self.recipe.min_pixels, "longest_edge": self.recipe.max_pixels}
            pictures = self.image_processor(images=images, size=size, return_tensors="pt")
            grid = pictures["image_grid_thw"]
            for count in (grid.prod(-1) // self.merge**2).tolist():
                text = text.replace("<|image_pad|>", "<|placeholder|>" * count, 1)
            text = text.replace("<|placeholder|>", "<|image_pad|>")
            features["pixel_values"] = pictures["pixel_values"]
            features["image_grid_thw"] = grid
        ids = self.tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
        length = int(ids.shape[1])
        if length > self.recipe.max_length:
            raise InputRejected(
                f"input is {length} tokens (image tokens and prompt included), over max_length="
                f"{self.recipe.max_length}",
                part.index,
            )
        features["input_ids"] = ids
        features["position_ids"] = self._positions(ids, features.get("image_grid_thw")).permute(1, 0, 2)
        return Prepared(Modality.IMAGE if images else Modality.TEXT, features, length)

    def _positions(self, ids: torch.Tensor, grid: torch.Tensor | None) -> torch.Tensor:
        """[3, 1, length] rotary positions of one unpadded item."""
        if self.recipe.positions == "sequential" or grid is None:
            return torch.arange(ids.shape[1]).view(1, 1, -1).expand(3, 1, -1).contiguous()
        token_types = (ids == self.image_token_id).long()
        positions, _ = self.model.get_rope_index(ids, mm_token_type_ids=token_types, image_grid_thw=grid)
        return positions  # type: ignore[no-any-return]

    @torch.inference_mode()
    def forward(self, modality: Modality, batch: Features) -> Vectors:
        inputs = {name: tensor.to(self.device) for name, tensor in batch.items()}
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        mask = inputs["attention_mask"]
        hidden = self.model(**inputs, use_cache=False).last_hidden_state
        if self.recipe.pooling == "last_token":
            pooled = hidden[:, -1]  # left padded: every row's last token is its own
        else:
            kept = mask.unsqueeze(-1).bool()  # masked_fill, not a product: a padding row may hold NaN
            pooled = hidden.masked_fill(~kept, 0).sum(dim=1) / kept.sum(dim=1).to(hidden.dtype)
        normalised = torch.nn.functional.normalize(pooled.float(), dim=-1)
        return normalised.cpu().numpy().astype(np.float32, copy=False)


def collate(features: Sequence[Features], pad_id: int = 0) -> Features:
    """Left-pad ids (`pad_id`, masked out) and positions (0) to the longest item; concatenate the
    items' patches and grids in item order, as Qwen2-VL flattens them."""
    ids = [item["input_ids"][0] for item in features]
    batch: Features = {
        "input_ids": pad_rows(ids, pad_id, left=True),
        "attention_mask": pad_rows([torch.ones_like(row) for row in ids], 0, left=True),
        "position_ids": pad_rows([item["position_ids"][0] for item in features], 0, left=True).transpose(0, 1),
    }
    pictured = [item for item in features if "pixel_values" in item]
    if pictured:
        batch["pixel_values"] = torch.cat([item["pixel_values"] for item in pictured])
        batch["image_grid_thw"] = torch.cat([item["image_grid_thw"] for item in pictured])
    return batch


def unit_of(item: Item, index: int, instruction: str) -> Qwen2VlInput:
    """An item's parts in order; a text may not spell the vision tokens the prompt is built from."""
    parts: list[str | PILImage] = []
    for position, part in enumerate(item.parts):
        if isinstance(part, Text):
            if any(token in part.text for token in VISION_TOKENS):
                raise InputRejected("a text may not contain Qwen2-VL's vision tokens", index, position)
            parts.append(part.text)
        elif isinstance(part, Image):
            parts.append(part.pixels)
    return Qwen2VlInput(tuple(parts), instruction, index)


class Qwen2VlProvider(LocalProvider[Qwen2VlOptions, Qwen2VlEncoder, Qwen2VlInput]):
    """A Qwen2-VL-style deployment behind the shared batching engine: one unit per item."""

    family = "qwen2_vl"
    options_type = Qwen2VlOptions
    cpu_image_batch = CPU_IMAGE_BATCH

    def build_encoder(self) -> Qwen2VlEncoder:
        return Qwen2VlEncoder(self.options)

    def space_details(self) -> str:
        recipe = self.options.recipe()
        prompts = f"{recipe.query_instruction}\x00{recipe.document_instruction}".encode()
        return (
            f"pooling={recipe.pooling}|positions={recipe.positions}|pixels={recipe.min_pixels}-{recipe.max_pixels}"
            f"|max_length={recipe.max_length}|instructions={hashlib.sha256(prompts).hexdigest()[:16]}"
        )

    def units(self, items: Sequence[Item], options: EmbedOptions) -> list[Qwen2VlInput]:
        recipe = self.encoder.recipe
        query = options.input_type is InputType.QUERY
        instruction = recipe.query_instruction if query else recipe.document_instruction
        return [unit_of(item, index, instruction) for index, item in enumerate(items)]

    def collate(self) -> Collate:
        return partial(collate, pad_id=self.encoder.pad_id)


__all__ = ["GME", "KNOWN_MODELS", "Qwen2VlEncoder", "Qwen2VlInput", "Qwen2VlOptions", "Qwen2VlProvider", "unit_of"]
