"""VisRAG-Ret (`openbmb/VisRAG-Ret`): page screenshots and queries in one space, natively on this
project's transformers (no remote code, no timm).

Queries get the model's instruction ("Represent this query for retrieving relevant documents: ")
when the request says `input_type: query`; documents (and requests that say nothing) do not. A
picture and a text in one item are one sequence, the picture's placeholder first (the model's own
prompt), so `fuses_parts` is true. Each item is one unit of the batching engine: items are
batched right-padded, texts and pictured items in separate queues (a page is ten vision passes).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from providers.base import (
    EmbedOptions,
    EmbedResult,
    Image,
    InputRejected,
    InputType,
    Item,
    Modality,
    ModelLoadError,
    ProviderError,
    ProviderInfo,
    Text,
    Vectors,
)
from providers.batching import BatchingEngine, Features, Prepared
from providers.fingerprint import checkpoint_identity
from providers.torch_device import resolve_device, resolve_dtype
from providers.visrag_model import VisragConfig, VisragRet
from providers.visrag_prompt import PromptBuilder, VisragInput, collate
from providers.visrag_tokenizer import SentencePieceLlamaTokenizer

INSTRUCTION = "Represent this query for retrieving relevant documents: "
CPU_IMAGE_BATCH = 2  # a page is up to ten 448² vision passes: bigger CPU batches only queue longer
ACCELERATOR_IMAGE_BATCH = 8
CHECKPOINT_FILES = ["*.json", "*.safetensors", "*.model"]


class VisragOptions(BaseModel):
    """Settings of one VisRAG-Ret deployment."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(default="openbmb/VisRAG-Ret", description="Hub id or local directory of the checkpoint.")
    revision: str | None = Field(default=None, description="Hub branch, tag or commit.")
    device: str = Field(default="auto", description="`auto`, `cpu`, `cuda`, `cuda:1`, ...")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    query_instruction: str = Field(
        default=INSTRUCTION, description="Prepended to the text of `input_type: query` inputs (the model card's)."
    )
    max_length: int = Field(
        default=2048,
        ge=1024,
        description="Tokens per input, a page's placeholders included (the published code's `max_inp_length`).",
    )
    max_batch_size: int = Field(default=16, ge=1, description="Text inputs per forward pass.")
    image_max_batch_size: int | None = Field(
        default=None,
        ge=1,
        description=f"Inputs with a picture per forward pass. Default: {CPU_IMAGE_BATCH} on CPU, "
        f"{ACCELERATOR_IMAGE_BATCH} (at most `max_batch_size`) on an accelerator.",
    )
    max_wait_ms: float = Field(default=5.0, ge=0, description="How long an input may wait for batch-mates.")
    max_queue: int = Field(
        default=256,
        ge=1,
        description="Inputs queued before requests are refused (429); a queued page holds up to 6 MB of pixels.",
    )
    preprocess_threads: int = Field(default=2, ge=1)
    modalities: list[Modality] = Field(default=[Modality.TEXT, Modality.IMAGE], min_length=1)


def checkpoint_directory(source: str, revision: str | None) -> tuple[Path, str | None]:
    """A local directory as it is; a hub id downloaded (config, tokenizer, safetensors; `.bin`
    weights only where there are no safetensors). Returns the directory and its commit, if any."""
    path = Path(source)
    if path.is_dir():
        return path, None
    from huggingface_hub import snapshot_download

    directory = Path(snapshot_download(source, revision=revision, allow_patterns=CHECKPOINT_FILES))
    if not any(directory.glob("*.safetensors")):
        directory = Path(snapshot_download(source, revision=revision, allow_patterns=["*.bin"]))
    return directory, directory.name


def read_tensors(directory: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the checkpoint's weight files, on the CPU, names unchanged."""
    from safetensors.torch import load_file

    files = sorted(directory.glob("*.safetensors"))
    if files:
        return {name: tensor for file in files for name, tensor in load_file(file).items()}
    binaries = sorted(directory.glob("pytorch_model*.bin"))
    if not binaries:
        raise FileNotFoundError(f"no *.safetensors or pytorch_model*.bin weights in {directory}")
    state: dict[str, torch.Tensor] = {}
    for file in binaries:
        state.update(torch.load(file, map_location="cpu", weights_only=True, mmap=True))
    return state


class VisragEncoder:
    """Loads the checkpoint; prepares items and runs forward passes (the engine's `LocalEncoder`)."""

    def __init__(self, options: VisragOptions) -> None:
        self.options = options
        self.device = resolve_device(options.device)
        self.dtype = resolve_dtype(options.dtype, self.device)
        try:
            directory, commit = checkpoint_directory(options.model, options.revision)
            config = VisragConfig.from_file(directory / "config.json")
            tokenizer = SentencePieceLlamaTokenizer.from_directory(directory)
            model = VisragRet.from_state_dict(config, read_tensors(directory), self.dtype)
            self.prompts = PromptBuilder(config, tokenizer, options.max_length)
        except Exception as exc:  # hub errors, missing files, unknown towers, tensors that do not fit
            raise ModelLoadError(_first_line(exc)) from exc
        self.model = model.to(self.device)
        self.identity = checkpoint_identity(options.model, options.revision, commit)
        # A probe pass proves the checkpoint runs (finite numbers) and tells the dimension.
        probe = self.forward(Modality.TEXT, collate([self.prepare(VisragInput("probe")).features]))
        if not np.isfinite(probe).all():
            raise ModelLoadError(f"{options.model} gives non-finite vectors in {self.dtype}")
        self.dimension = int(probe.shape[1])

    def prepare(self, part: VisragInput) -> Prepared:
        return self.prompts.prepare(part)

    @torch.inference_mode()
    def forward(self, modality: Modality, batch: Features) -> Vectors:
        inputs = {name: tensor.to(self.device) for name, tensor in batch.items()}
        vectors = self.model.embed(inputs)
        return vectors.cpu().numpy().astype(np.float32, copy=False)


def unit_of(item: Item, index: int, instruction: str | None) -> VisragInput:
    """The text and picture of one item, the instruction prepended to a query's text."""
    texts = [(i, part.text) for i, part in enumerate(item.parts) if isinstance(part, Text)]
    images = [(i, part.pixels) for i, part in enumerate(item.parts) if isinstance(part, Image)]
    for kind, found in (("text", texts), ("image", images)):
        if len(found) > 1:
            raise InputRejected(
                f"VisRAG-Ret embeds one {kind} per input, with at most one of the other", index, found[1][0]
            )
    text = texts[0][1] if texts else ""
    return VisragInput((instruction or "") + text, images[0][1] if images else None)


class VisragProvider:
    """A VisRAG-Ret deployment behind the shared batching engine."""

    def __init__(self, options: VisragOptions, *, name: str = "visrag") -> None:
        self.options = options
        self.name = name
        self._encoder: VisragEncoder | None = None
        self._info: ProviderInfo | None = None
        self._engine: BatchingEngine[VisragInput] | None = None

    @classmethod
    def from_options(cls, options: dict[str, Any], *, name: str) -> VisragProvider:
        return cls(VisragOptions.model_validate(options), name=name)

    @property
    def encoder(self) -> VisragEncoder:
        if self._encoder is None:
            raise ProviderError(f"model {self.name!r} is not loaded")
        return self._encoder

    @property
    def engine(self) -> BatchingEngine[VisragInput]:
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
        encoder = self._encoder = VisragEncoder(self.options)
        instruction = hashlib.sha256(self.options.query_instruction.encode()).hexdigest()[:16]
        self._info = ProviderInfo(  # read on every request: built once
            modalities=frozenset(self.options.modalities),
            dimension=encoder.dimension,
            max_batch_size=self.options.max_batch_size,
            space=f"visrag|{encoder.identity}|{encoder.dtype}|max_length={self.options.max_length}"
            f"|query_instruction={instruction}",
            fuses_parts=True,
        )

    @property
    def batch_sizes(self) -> dict[Modality, int]:
        """Text inputs and pictured inputs per forward pass."""
        text = self.options.max_batch_size
        image = self.options.image_max_batch_size
        if image is None:
            image = CPU_IMAGE_BATCH if self.encoder.device.type == "cpu" else ACCELERATOR_IMAGE_BATCH
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
            collate=collate,
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
        instruction = self.options.query_instruction if options.input_type is InputType.QUERY else None
        units = [unit_of(item, index, instruction) for index, item in enumerate(items)]
        vectors, tokens = await self.engine.encode(units)
        return EmbedResult(vectors, tuple(tokens))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


__all__ = ["INSTRUCTION", "VisragEncoder", "VisragOptions", "VisragProvider", "checkpoint_directory", "unit_of"]
