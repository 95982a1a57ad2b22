"""jina-clip-v2 (`jinaai/jina-clip-v2`) locally, in the space of Jina's API for the same model.

The checkpoint has no transformers class: it runs its published remote code (`auto_map` to
jinaai/jina-clip-implementation; XLM-R text tower, EVA02 vision tower), so loading it is an explicit
choice (`trust_remote_code: true`). Vectors are computed through that code's own feature methods and
preprocessing, the way its `encode_text` / `encode_image` compute them (the reference they are tested
against): texts by `AutoTokenizer` (truncated to `text_max_length`) into `get_text_features`, whose
tower masks pad ids and mean-pools, so padding a batch to its longest text changes no vector; images
by the checkpoint's `AutoImageProcessor` (512² for jina-clip-v2) into `get_image_features`; then the
config's `truncate_dim`, if any, and L2 normalisation. Queries (`input_type: query`) get the task
instruction of `retrieval.query`, read from the checkpoint. Matryoshka sizes come from the config.

Jina's API embeds one text or one image per input; here an interleaved item is the normalised mean of
its parts' normalised vectors (as SigLIP), so the gateway routes interleaved items to local
deployments only.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from pydantic import Field

from providers.base import (
    EmbedOptions,
    EmbedResult,
    InputType,
    Item,
    Modality,
    ModelLoadError,
    Part,
    Text,
    Vectors,
)
from providers.batching import Collate, Features, Prepared, collate
from providers.fingerprint import checkpoint_identity
from providers.local import LocalOptions, LocalProvider, first_line, fuse
from providers.padding import pad_rows
from providers.torch_device import resolve_device, resolve_dtype

QUERY_TASK = "retrieval.query"


class JinaClipOptions(LocalOptions):
    """Settings of one jina-clip deployment."""

    model: str = Field(default="jinaai/jina-clip-v2", description="Hub id or local directory of the checkpoint.")
    trust_remote_code: bool = Field(
        default=False,
        description="Run the checkpoint's own Python code (its `auto_map`), which jina-clip needs: it has no "
        "transformers class. Off by default because that code runs with the gateway's rights.",
    )
    query_instruction: str | None = Field(
        default=None,
        description="Prepended to `input_type: query` texts. None: the checkpoint's own instruction for "
        "`retrieval.query` (jina-clip-v2: 'Represent the query for retrieving evidence documents: ').",
    )
    text_max_length: int = Field(
        default=8192,
        ge=1,
        description="Truncate texts to this many tokens. Jina's API takes up to 8192; the published "
        "`encode_text` defaults to 512, so pass it `max_length=8192` to compare longer texts.",
    )


def checkpoint_instruction(model: Any, task: str | None) -> str:
    """The instruction the published `encode_text(task=...)` prepends ('' where the checkpoint has none)."""
    getter = getattr(getattr(model, "text_model", None), "get_instruction_from_task", None)
    if not callable(getter):
        return ""
    with warnings.catch_warnings():  # a tower without instructions warns and returns None
        warnings.simplefilter("ignore")
        try:
            instruction = getter(task)
        except ValueError:  # the checkpoint has instructions, but none for this task
            return ""
    return instruction if isinstance(instruction, str) else ""


def pad_texts(pad_id: int) -> Collate:
    """Right-pad token ids to the batch's longest with `pad_id` (the tower masks it); stack pixels."""

    def collate_padded(features: Sequence[Features]) -> Features:
        if "input_ids" not in features[0]:
            return collate(features)
        return {"input_ids": pad_rows([f["input_ids"][0] for f in features], pad_id)}

    return collate_padded


class JinaClipEncoder:
    """Loads the checkpoint's remote code; prepares parts and runs forward passes (the engine's `LocalEncoder`)."""

    def __init__(self, options: JinaClipOptions) -> None:
        if not options.trust_remote_code:
            raise ModelLoadError(
                f"{options.model} runs its own Python code (transformers `auto_map`); set "
                "`trust_remote_code: true` on this deployment to allow it"
            )
        from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

        self.options = options
        self.device = resolve_device(options.device)
        self.dtype = resolve_dtype(options.dtype, self.device)
        source = {"revision": options.revision, "trust_remote_code": True}
        try:
            model = AutoModel.from_pretrained(options.model, **source)
            self.tokenizer = AutoTokenizer.from_pretrained(options.model, **source)
            self.image_processor = AutoImageProcessor.from_pretrained(options.model, **source)  # type: ignore[no-untyped-call]
        except Exception as exc:  # hub errors, missing files, errors raised by the remote code itself
            raise ModelLoadError(first_line(exc)) from exc
        missing = [name for name in ("get_text_features", "get_image_features") if not hasattr(model, name)]
        if missing:
            raise ModelLoadError(f"{type(model).__name__} has no {' or '.join(missing)}: not a jina-clip model")
        self.model = model.to(device=self.device, dtype=self.dtype).eval()
        config = model.config
        self.pad_id = int(self.tokenizer.pad_token_id)
        self.truncate_dim: int | None = getattr(config, "truncate_dim", None) or None
        self.query_instruction = (
            options.query_instruction
            if options.query_instruction is not None
            else checkpoint_instruction(model, QUERY_TASK)
        )
        self.document_instruction = checkpoint_instruction(model, None)
        vision = getattr(config, "vision_config", None)
        size, patch = getattr(vision, "image_size", 0), getattr(vision, "patch_size", 0)
        self.image_tokens = (size // patch) ** 2 if size and patch else 1
        self.identity = checkpoint_identity(options.model, options.revision, getattr(config, "_commit_hash", None))
        try:  # a probe pass proves the remote code keeps the contract and tells the dimension
            probe = self.prepare(Text("probe"))
            vector = self.forward(probe.modality, probe.features)
        except Exception as exc:
            raise ModelLoadError(f"{options.model}: probe pass failed: {first_line(exc)}") from exc
        if not np.isfinite(vector).all():
            raise ModelLoadError(f"{options.model} gives non-finite vectors in {self.dtype}")
        self.dimension = int(vector.shape[1])
        trained = getattr(config, "matryoshka_dimensions", None) or ()
        self.matryoshka_dimensions = tuple(sorted(int(d) for d in trained if 0 < int(d) < self.dimension))

    def prepare(self, part: Part) -> Prepared:
        if isinstance(part, Text):
            encoded = self.tokenizer(
                [part.text], truncation=True, max_length=self.options.text_max_length, return_tensors="pt"
            )
            ids = encoded["input_ids"]
            return Prepared(Modality.TEXT, {"input_ids": ids}, int(ids.shape[1]))
        pixels = self.image_processor([part.pixels])["pixel_values"]
        return Prepared(Modality.IMAGE, {"pixel_values": pixels}, self.image_tokens)

    @torch.inference_mode()
    def forward(self, modality: Modality, batch: Features) -> Vectors:
        if modality is Modality.TEXT:
            features = self.model.get_text_features(input_ids=batch["input_ids"].to(self.device))
        else:
            pixels = batch["pixel_values"].to(device=self.device, dtype=self.dtype)
            features = self.model.get_image_features(pixel_values=pixels)
        if self.truncate_dim:
            features = features[:, : self.truncate_dim]
        normalised = torch.nn.functional.normalize(features.float(), dim=-1)
        return normalised.cpu().numpy().astype(np.float32, copy=False)


class JinaClipProvider(LocalProvider[JinaClipOptions, JinaClipEncoder, Part]):
    """A jina-clip deployment behind the shared batching engine: one unit per part, parts fused by mean."""

    family = "jina_clip"
    options_type = JinaClipOptions

    def build_encoder(self) -> JinaClipEncoder:
        return JinaClipEncoder(self.options)

    def matryoshka_dimensions(self) -> tuple[int, ...]:
        return self.encoder.matryoshka_dimensions

    def space_details(self) -> str:
        encoder = self.encoder
        instructions = f"{encoder.query_instruction}\x00{encoder.document_instruction}"
        digest = hashlib.sha256(instructions.encode()).hexdigest()[:16]
        return (
            f"text_max_length={self.options.text_max_length}|instructions={digest}|truncate_dim={encoder.truncate_dim}"
        )

    def units(self, items: Sequence[Item], options: EmbedOptions) -> list[Part]:
        encoder = self.encoder
        query = options.input_type is InputType.QUERY
        instruction = encoder.query_instruction if query else encoder.document_instruction
        return [
            Text(instruction + part.text) if isinstance(part, Text) and instruction else part
            for item in items
            for part in item.parts
        ]

    def collate(self) -> Collate:
        return pad_texts(self.encoder.pad_id)

    def assemble(self, items: Sequence[Item], vectors: Vectors, tokens: Sequence[int]) -> EmbedResult:
        counts = [len(item.parts) for item in items]
        starts = np.cumsum([0, *counts])
        item_tokens = tuple(sum(tokens[start : start + count]) for start, count in zip(starts, counts, strict=False))
        return EmbedResult(fuse(vectors, counts), item_tokens)


__all__ = ["QUERY_TASK", "JinaClipEncoder", "JinaClipOptions", "JinaClipProvider", "checkpoint_instruction"]
