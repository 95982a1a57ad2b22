"""E5-V (`royokong/e5-v`): a LLaVA-NeXT (llama3) VLM used as an embedder, through transformers'
own `LlavaNextForConditionalGeneration` and `AutoProcessor`.

Each input is wrapped in the model card's one-word-summary prompt inside llama3's chat format, and
its vector is the final hidden state of the prompt's last token (or, configured, the mean over the
prompt), L2-normalised. A text and a picture in one item take the prompt the E5-V code uses for
composed image retrieval (CIRR), so `fuses_parts` is true. E5-V has no query instruction: a
request's `input_type` changes nothing. Each item is one unit of the batching engine: sequences are
batched LEFT-padded with position ids counted from each sequence's first real token, so an item's
vector does not depend on its batch-mates; texts and pictured items queue separately.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from PIL.Image import Image as PILImage
from pydantic import Field, field_validator

from providers.base import (
    EmbedOptions,
    Image,
    InputRejected,
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

SENTENCE = "<sent>"
"""Where a prompt takes the item's text (the published code's placeholder)."""
PROMPT = "{prompt}"
"""Where the chat template takes the prompt."""
LLAMA3_TEMPLATE = (
    "<|start_header_id|>user<|end_header_id|>\n\n{prompt}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n \n"
)
TEXT_PROMPT = "<sent>\nSummary above sentence in one word: "
IMAGE_PROMPT = "<image>\nSummary above image in one word: "
INTERLEAVED_PROMPT = '<image>Modify this image with "<sent>", desribe modified image in one word:'
"""retrieval.py's CIRR prompt for llama3, verbatim (its spelling included: the weights saw it)."""
CPU_IMAGE_BATCH = 2  # an image is up to five 336² tiles and ~2,900 tokens of an 8B model
ACCELERATOR_IMAGE_BATCH = 8


class E5vOptions(LocalOptions):
    """Settings of one E5-V deployment (or another LLaVA-NeXT checkpoint used the E5-V way)."""

    model: str = Field(default="royokong/e5-v", description="Hub id or local directory of the checkpoint.")
    chat_template: str = Field(
        default=LLAMA3_TEMPLATE, description="Wraps every prompt; `{prompt}` marks where (E5-V's llama3 turn)."
    )
    text_prompt: str = Field(default=TEXT_PROMPT, description="A text input's prompt; `<sent>` marks the text.")
    image_prompt: str = Field(default=IMAGE_PROMPT, description="An image input's prompt, with the image token.")
    interleaved_prompt: str = Field(
        default=INTERLEAVED_PROMPT,
        description="The prompt of an item with a text and an image (E5-V's composed-image-retrieval prompt).",
    )
    pooling: Literal["last_token", "mean"] = Field(
        default="last_token", description="The last prompt token's final hidden state (E5-V), or their mean."
    )
    max_length: int = Field(
        default=4096,
        ge=16,
        description="Tokens per input, prompt and image tokens included; longer inputs are refused (400), not cut.",
    )
    max_batch_size: int = Field(default=16, ge=1, description="Text inputs per forward pass.")
    image_max_batch_size: int | None = Field(
        default=None,
        ge=1,
        description=f"Inputs with an image per forward pass. Default: {CPU_IMAGE_BATCH} on CPU, "
        f"{ACCELERATOR_IMAGE_BATCH} (at most `max_batch_size`) on an accelerator.",
    )
    max_queue: int = Field(
        default=256,
        ge=1,
        description="Inputs queued before requests are refused (429); a queued image holds up to 7 MB of pixels.",
    )

    @field_validator("chat_template")
    @classmethod
    def _has_prompt_slot(cls, value: str) -> str:
        if value.count(PROMPT) != 1:
            raise ValueError(f"chat_template must contain {PROMPT} exactly once")
        return value

    @field_validator("text_prompt", "interleaved_prompt")
    @classmethod
    def _has_sentence_slot(cls, value: str) -> str:
        if SENTENCE not in value:
            raise ValueError(f"the prompt must contain {SENTENCE} where the text goes")
        return value


@dataclass(frozen=True, slots=True, eq=False)
class E5vInput:
    """One item as E5-V reads it: its text and/or picture, and its index in the request."""

    index: int
    text: str | None = None
    image: PILImage | None = None


def collate_left(pad_id: int) -> Collate:
    """Left-pad `input_ids` (with `pad_id`) and `attention_mask` (with 0); give every row position
    ids from its first real token, as it has alone; list all pictures' tiles in item order (the
    model splits them again by `image_sizes`)."""

    def collate(features: Sequence[Features]) -> Features:
        mask = pad_rows([f["attention_mask"][0] for f in features], 0, left=True)
        batch: Features = {
            "input_ids": pad_rows([f["input_ids"][0] for f in features], pad_id, left=True),
            "attention_mask": mask,
            "position_ids": (mask.cumsum(-1) - 1).clamp(min=0),
        }
        pictured = [f for f in features if "pixel_values" in f]
        if pictured:
            batch["pixel_values"] = torch.cat([f["pixel_values"][0] for f in pictured])
            batch["image_sizes"] = torch.cat([f["image_sizes"] for f in pictured])
        return batch

    return collate


def check_architecture(config: Any, source: str) -> None:
    """E5-V's code paths (anyres tiles, `image_sizes`) are LLaVA-NeXT's."""
    if config.model_type != "llava_next":
        raise ValueError(f"{source} is a {config.model_type!r} checkpoint, not LLaVA-NeXT (llava_next)")


def load_checkpoint(options: E5vOptions, dtype: torch.dtype) -> tuple[Any, Any, Any]:
    """Config, processor and model of a LLaVA-NeXT checkpoint (the architecture checked first)."""
    from transformers import AutoConfig, AutoProcessor, LlavaNextForConditionalGeneration

    config = AutoConfig.from_pretrained(options.model, revision=options.revision)
    check_architecture(config, options.model)
    processor = AutoProcessor.from_pretrained(options.model, revision=options.revision)  # type: ignore[no-untyped-call]
    model = LlavaNextForConditionalGeneration.from_pretrained(
        options.model, revision=options.revision or "main", dtype=dtype
    )
    return config, processor, model


def complete_processor(processor: Any, config: Any) -> None:
    """Processor files saved before transformers 4.45 lack the vision settings (the model expanded
    `<image>` itself then): take them from the model's config, as that code did. The `1` is the
    vision tower's class token, which the token count of `default` feature selection subtracts."""
    if getattr(processor, "patch_size", None) is None:
        processor.patch_size = config.vision_config.patch_size
        processor.vision_feature_select_strategy = config.vision_feature_select_strategy
        processor.num_additional_image_tokens = 1


class E5vEncoder:
    """Loads the checkpoint; prepares items and runs forward passes (the engine's `LocalEncoder`)."""

    def __init__(self, options: E5vOptions) -> None:
        self.options = options
        self.device = resolve_device(options.device)
        self.dtype = resolve_dtype(options.dtype, self.device)
        try:
            config, processor, model = load_checkpoint(options, self.dtype)
        except Exception as exc:  # hub errors, missing files, another architecture
            raise ModelLoadError(first_line(exc)) from exc
        complete_processor(processor, config)
        self.processor = processor
        self.image_token: str = processor.image_token
        for name, prompt, count in (
            ("text_prompt", options.text_prompt, 0),
            ("image_prompt", options.image_prompt, 1),
            ("interleaved_prompt", options.interleaved_prompt, 1),
        ):
            if prompt.count(self.image_token) != count:
                raise ModelLoadError(f"{name} must contain the image token {self.image_token} {count} time(s)")
        tokenizer = processor.tokenizer
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_id = int(pad or 0)
        self.model = model.to(self.device).eval()
        self.identity = checkpoint_identity(options.model, options.revision, getattr(config, "_commit_hash", None))
        # A probe pass proves the checkpoint runs (finite numbers) and tells the dimension.
        probe = self.forward(Modality.TEXT, collate_left(self.pad_id)([self.prepare(E5vInput(0, "probe")).features]))
        if not np.isfinite(probe).all():
            raise ModelLoadError(f"{options.model} gives non-finite vectors in {self.dtype}")
        self.dimension = int(probe.shape[1])

    def prompt(self, unit: E5vInput) -> str:
        """The whole prompt of one unit, in the chat template."""
        options = self.options
        if unit.image is None:
            inner = options.text_prompt
        elif unit.text is None:
            inner = options.image_prompt
        else:
            inner = options.interleaved_prompt
        if unit.text is not None:
            inner = inner.replace(SENTENCE, unit.text)
        return options.chat_template.replace(PROMPT, inner)

    def prepare(self, unit: E5vInput) -> Prepared:
        image = unit.image
        if image is None:  # the tokenizer alone, as the processor does without images: a text may say <image>
            encoded = self.processor.tokenizer([self.prompt(unit)], return_tensors="pt")
        else:
            rgb = image if image.mode == "RGB" else image.convert("RGB")
            encoded = self.processor(text=[self.prompt(unit)], images=[rgb], return_tensors="pt")
        tokens = int(encoded["input_ids"].shape[1])
        if tokens > self.options.max_length:
            what = "text" if unit.image is None else "input (image tokens included)"
            raise InputRejected(
                f"{what} is {tokens} tokens with its prompt, over this model's max_length of {self.options.max_length}",
                unit.index,
            )
        features = {name: value for name, value in encoded.items() if isinstance(value, torch.Tensor)}
        return Prepared(Modality.TEXT if unit.image is None else Modality.IMAGE, features, tokens)

    @torch.inference_mode()
    def forward(self, modality: Modality, batch: Features) -> Vectors:
        inputs = {name: tensor.to(self.device) for name, tensor in batch.items()}
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        # The base model: its last hidden state is the final (normed) layer, and no vocabulary-wide
        # logits are computed for every position.
        hidden = self.model.model(**inputs).last_hidden_state
        if self.options.pooling == "last_token":
            pooled = hidden[:, -1].float()
        else:  # summed in float32: thousands of bf16 rows would lose digits
            mask = inputs["attention_mask"].unsqueeze(-1).float()
            pooled = (hidden.float() * mask).sum(1) / mask.sum(1).clamp(min=1)
        normalised = torch.nn.functional.normalize(pooled, dim=-1)
        return normalised.cpu().numpy().astype(np.float32, copy=False)


def unit_of(item: Item, index: int, image_token: str) -> E5vInput:
    """The text and picture of one item; at most one of each."""
    texts = [(i, part.text) for i, part in enumerate(item.parts) if isinstance(part, Text)]
    images = [(i, part.pixels) for i, part in enumerate(item.parts) if isinstance(part, Image)]
    for kind, found in (("text", texts), ("image", images)):
        if len(found) > 1:
            raise InputRejected(f"E5-V embeds one {kind} per input, with at most one of the other", index, found[1][0])
    if texts and images and image_token in texts[0][1]:
        raise InputRejected(f"a text with an image must not contain the image token {image_token}", index, texts[0][0])
    return E5vInput(index, texts[0][1] if texts else None, images[0][1] if images else None)


class E5vProvider(LocalProvider[E5vOptions, E5vEncoder, E5vInput]):
    """An E5-V deployment behind the shared batching engine: one unit per item."""

    family = "e5v"
    options_type = E5vOptions
    cpu_image_batch = CPU_IMAGE_BATCH
    accelerator_image_batch = ACCELERATOR_IMAGE_BATCH

    def build_encoder(self) -> E5vEncoder:
        return E5vEncoder(self.options)

    def space_details(self) -> str:
        options = self.options
        prompts = "\0".join(
            (options.chat_template, options.text_prompt, options.image_prompt, options.interleaved_prompt)
        )
        return f"pooling={options.pooling}|prompts={hashlib.sha256(prompts.encode()).hexdigest()[:16]}"

    def units(self, items: Sequence[Item], options: EmbedOptions) -> list[E5vInput]:
        image_token = self.encoder.image_token
        return [unit_of(item, index, image_token) for index, item in enumerate(items)]

    def collate(self) -> Collate:
        return collate_left(self.encoder.pad_id)


__all__ = [
    "IMAGE_PROMPT",
    "INTERLEAVED_PROMPT",
    "LLAMA3_TEMPLATE",
    "TEXT_PROMPT",
    "E5vEncoder",
    "E5vInput",
    "E5vOptions",
    "E5vProvider",
    "collate_left",
    "unit_of",
]
