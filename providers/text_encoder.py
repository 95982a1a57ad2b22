"""Plain text encoders (BERT, XLM-R, MPNet, decoder embedders...) through `AutoModel`.

Pooling (mean / CLS / last token), the sequence limit and the query/document prompts come from
the checkpoint's sentence-transformers files when it has them (`providers.sentence_transformers_files`),
so a deployment gives the vectors `SentenceTransformer.encode(..., normalize_embeddings=True)`
gives; the options override them. Vectors are always L2-normalised (the gateway's contract),
whether or not the checkpoint lists a Normalize module.

One text is one unit of the batching engine, tokenised unpadded on the prepare threads; a batch
is padded to its longest text on the tokenizer's own side (right for encoders, left where the
tokenizer says so, as decoder embedders do) and pooled over the attention mask only, so a text's
vector does not depend on its batch-mates. A text over the limit is refused (400) unless the
deployment opts into truncation: silently embedding the first 256 tokens of a long document is a
retrieval bug the caller never sees.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, field_validator

from providers.base import (
    EmbedOptions,
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
from providers.sentence_transformers_files import SentenceTransformerFiles, read_files
from providers.torch_device import resolve_device, resolve_dtype

Pooling = Literal["mean", "cls", "last_token"]
POOLINGS: tuple[Pooling, ...] = ("mean", "cls", "last_token")
UNBOUNDED = 1_000_000  # transformers' "no limit" model_max_length is 1e30


class TextEncoderOptions(LocalOptions):
    """Settings of one text-encoder deployment."""

    pooling: Literal["auto", "mean", "cls", "last_token"] = Field(
        default="auto", description="`auto`: the checkpoint's sentence-transformers Pooling module, else mean."
    )
    query_prompt: str | None = Field(
        default=None,
        description="Prepended to `input_type: query` texts. None: the checkpoint's "
        "config_sentence_transformers.json prompt `query`, else none.",
    )
    document_prompt: str | None = Field(
        default=None,
        description="Prepended to `input_type: document` texts. None: the checkpoint's prompt `document` "
        "(or `passage`), else none.",
    )
    max_length: int | None = Field(
        default=None,
        ge=1,
        description="Tokens per text, prompt and special tokens included. None: sentence-transformers' "
        "`max_seq_length`, else the tokenizer's limit capped by the model's positions.",
    )
    truncate: bool = Field(default=False, description="Cut longer texts to `max_length` instead of refusing them.")
    modalities: list[Modality] = Field(default=[Modality.TEXT], min_length=1, description="Text only.")

    @field_validator("modalities")
    @classmethod
    def _text_only(cls, value: list[Modality]) -> list[Modality]:
        if set(value) != {Modality.TEXT}:
            raise ValueError("a text encoder embeds text only: modalities must be [text]")
        return value


@dataclass(frozen=True, slots=True)
class TextUnit:
    """One text as the model reads it: the prompt already prepended; `index` names its item."""

    index: int
    text: str
    prompt: str = ""


@dataclass(frozen=True, slots=True)
class TextSettings:
    """What the options and the checkpoint's files decide together (resolved once, at load)."""

    pooling: Pooling
    include_prompt: bool
    max_length: int
    truncate: bool
    lower_case: bool
    prompts: dict[InputType | None, str]


def position_limit(model: Any) -> int | None:
    """Tokens the model's position table holds: `max_position_embeddings`, less the ids RoBERTa-style
    embeddings (XLM-R, MPNet) skip below their padding index (514 → 512)."""
    positions = getattr(model.config, "max_position_embeddings", None)
    if not positions:
        return None
    table = getattr(getattr(model, "embeddings", None), "position_embeddings", None)
    padding_idx = getattr(table, "padding_idx", None)
    return int(positions) - (padding_idx + 1 if padding_idx is not None else 0)


def resolve_pooling(options: TextEncoderOptions, files: SentenceTransformerFiles) -> Pooling:
    if options.pooling != "auto":
        return options.pooling
    if not files.pooling:
        return "mean"
    mode = files.pooling[0]
    if len(files.pooling) == 1 and mode in POOLINGS:
        return mode
    raise ValueError(
        f"the Pooling module asks for {'+'.join(files.pooling)} pooling, which this family does not do; "
        "set pooling: mean, cls or last_token"
    )


def resolve_max_length(options: TextEncoderOptions, files: SentenceTransformerFiles, tokenizer: Any, model: Any) -> int:
    limit = position_limit(model)
    declared = tokenizer.model_max_length if tokenizer.model_max_length < UNBOUNDED else None
    length = options.max_length or files.max_seq_length or min(x for x in (declared, limit, UNBOUNDED) if x)
    if limit is not None and length > limit:
        raise ValueError(f"max_length {length} is over the {limit} positions the model has")
    if length >= UNBOUNDED:
        raise ValueError("neither the tokenizer nor the model config gives a length limit; set max_length")
    return length


def resolve_prompts(options: TextEncoderOptions, files: SentenceTransformerFiles) -> dict[InputType | None, str]:
    """Query and document prompts; an input without a type gets sentence-transformers' default prompt."""
    found = files.prompts
    query = options.query_prompt if options.query_prompt is not None else found.get("query", "")
    document = options.document_prompt
    if document is None:
        document = found.get("document", found.get("passage", ""))
    default = found.get(files.default_prompt_name, "") if files.default_prompt_name else ""
    return {InputType.QUERY: query, InputType.DOCUMENT: document, None: default}


def pool(hidden: torch.Tensor, mask: torch.Tensor, pooling: Pooling) -> torch.Tensor:
    """One row per sequence from its token states, reading only the positions `mask` marks."""
    if pooling == "mean":
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
    marked = mask.to(torch.long)
    if pooling == "cls":  # the first marked position (the first real token, whatever the padding side)
        index = marked.argmax(dim=1)
    else:  # the last marked position
        positions = torch.arange(1, mask.shape[1] + 1, device=mask.device)
        index = (marked * positions).argmax(dim=1)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), index]


class TextEncoder:
    """Loads the checkpoint; prepares texts and runs forward passes (the engine's `LocalEncoder`)."""

    def __init__(self, options: TextEncoderOptions) -> None:
        from transformers import AutoModel, AutoTokenizer

        self.options = options
        self.device = resolve_device(options.device)
        self.dtype = resolve_dtype(options.dtype, self.device)
        try:
            tokenizer = AutoTokenizer.from_pretrained(options.model, revision=options.revision)
            model = AutoModel.from_pretrained(options.model, revision=options.revision, dtype=self.dtype)
            files = read_files(options.model, options.revision)
        except Exception as exc:  # OSError, ValueError, hub errors, bad JSON...
            raise ModelLoadError(f"{options.model}: {first_line(exc)}") from exc
        config = model.config
        if hasattr(config, "vision_config") or hasattr(config, "text_config"):
            raise ModelLoadError(f"{options.model}: {config.model_type} is a multimodal model, not a text encoder")
        if files.other_modules:
            raise ModelLoadError(
                f"{options.model}: modules.json lists {', '.join(files.other_modules)}, which this family does not "
                "apply (its vectors would differ from sentence-transformers')"
            )
        try:
            self.settings = TextSettings(
                pooling=resolve_pooling(options, files),
                include_prompt=files.include_prompt,
                max_length=resolve_max_length(options, files, tokenizer, model),
                truncate=options.truncate,
                lower_case=files.do_lower_case,
                prompts=resolve_prompts(options, files),
            )
        except ValueError as exc:
            raise ModelLoadError(f"{options.model}: {exc}") from exc
        self.tokenizer = tokenizer
        self.model = model.to(self.device).eval()
        self.left_padding = tokenizer.padding_side == "left"
        self.pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
        # Measured once here: the prepare threads must not change the tokenizer's truncation state.
        self.prompt_lengths = {prompt: self._prompt_length(prompt) for prompt in self.settings.prompts.values()}
        self.identity = checkpoint_identity(options.model, options.revision, getattr(config, "_commit_hash", None))
        try:  # a probe pass proves the checkpoint reads text and tells the dimension
            probe = self.forward(Modality.TEXT, self.collate([self.prepare(TextUnit(0, "probe")).features]))
        except Exception as exc:
            raise ModelLoadError(
                f"{options.model}: {type(model).__name__} is not a text encoder ({first_line(exc)})"
            ) from exc
        if not np.isfinite(probe).all():
            raise ModelLoadError(f"{options.model} gives non-finite vectors in {self.dtype}")
        self.dimension = int(probe.shape[1])

    def _prompt_length(self, prompt: str) -> int:
        """Tokens the prompt takes at the start of a text, as sentence-transformers counts them: the
        prompt tokenised alone, less a trailing special token (the text's own follows it)."""
        if not prompt:
            return 0
        ids = self.tokenizer(self._cased(prompt), verbose=False)["input_ids"]
        return len(ids) - (1 if ids and ids[-1] in self.tokenizer.all_special_ids else 0)

    def _cased(self, text: str) -> str:
        return text.lower() if self.settings.lower_case else text

    def prepare(self, unit: TextUnit) -> Prepared:
        settings = self.settings
        limit = settings.max_length
        encoded = self.tokenizer(
            self._cased(unit.text),
            truncation=settings.truncate,
            max_length=limit if settings.truncate else None,
            verbose=False,  # an overlong text is refused below, not warned about
        )
        count = len(encoded["input_ids"])
        if count > limit:
            raise InputRejected(
                f"text is {count} tokens (prompt and special tokens included), the model takes at most {limit}; "
                "set truncate: true on the deployment to cut longer texts instead",
                unit.index,
            )
        features = {
            key: torch.tensor([encoded[key]], dtype=torch.long)
            for key in ("input_ids", "attention_mask", "token_type_ids")
            if key in encoded
        }
        if not settings.include_prompt:
            pooled = torch.ones(1, count, dtype=torch.long)
            prompt_tokens = self.prompt_lengths.get(unit.prompt, 0)
            if prompt_tokens < count:  # a text that is all prompt keeps its tokens
                pooled[:, :prompt_tokens] = 0
            features["pooling_mask"] = pooled
        return Prepared(Modality.TEXT, features, count)

    def collate(self, features: Sequence[Features]) -> Features:
        """Pad to the longest sequence on the tokenizer's side: `pad_token_id` for ids, 0 for masks."""
        return {
            key: pad_rows(
                [item[key][0] for item in features], self.pad_id if key == "input_ids" else 0, left=self.left_padding
            )
            for key in features[0]
        }

    @torch.inference_mode()
    def forward(self, modality: Modality, batch: Features) -> Vectors:
        inputs = {key: tensor.to(self.device) for key, tensor in batch.items() if key != "pooling_mask"}
        hidden = self.model(**inputs).last_hidden_state
        mask = batch.get("pooling_mask", batch["attention_mask"]).to(self.device)
        pooled = pool(hidden.float(), mask, self.settings.pooling)
        normalised = torch.nn.functional.normalize(pooled, dim=-1)
        return normalised.cpu().numpy().astype(np.float32, copy=False)


def unit_of(item: Item, index: int, prompt: str) -> TextUnit:
    """The one text of an item; the router already refuses others (text-only, no fusion): defend."""
    for position, part in enumerate(item.parts):
        if not isinstance(part, Text):
            raise InputRejected("this model embeds text only", index, position)
    match item.parts:
        case (Text(text=text),):
            return TextUnit(index, prompt + text, prompt)
    raise InputRejected("this model embeds one text per input, not interleaved parts", index)


class TextEncoderProvider(LocalProvider[TextEncoderOptions, TextEncoder, TextUnit]):
    """A text-encoder deployment behind the shared batching engine: one unit per text."""

    family = "text_encoder"
    options_type = TextEncoderOptions
    fuses_parts = False

    def build_encoder(self) -> TextEncoder:
        return TextEncoder(self.options)

    def space_details(self) -> str:
        settings = self.encoder.settings
        prompts = json.dumps({str(k): v for k, v in settings.prompts.items()}, sort_keys=True)
        digest = hashlib.sha256(prompts.encode()).hexdigest()[:16]
        return (
            f"pooling={settings.pooling}|include_prompt={settings.include_prompt}|max_length={settings.max_length}"
            f"|truncate={settings.truncate}|lower_case={settings.lower_case}|prompts={digest}"
        )

    def units(self, items: Sequence[Item], options: EmbedOptions) -> list[TextUnit]:
        prompt = self.encoder.settings.prompts[options.input_type]
        return [unit_of(item, index, prompt) for index, item in enumerate(items)]

    def collate(self) -> Collate:
        return self.encoder.collate


__all__ = [
    "TextEncoder",
    "TextEncoderOptions",
    "TextEncoderProvider",
    "TextSettings",
    "TextUnit",
    "pool",
    "position_limit",
    "unit_of",
]
