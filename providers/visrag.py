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
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
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
from providers.torch_device import resolve_device, resolve_dtype
from providers.visrag_model import VisragConfig, VisragRet
from providers.visrag_prompt import PromptBuilder, VisragInput, collate
from providers.visrag_tokenizer import SentencePieceLlamaTokenizer

INSTRUCTION = "Represent this query for retrieving relevant documents: "
CPU_IMAGE_BATCH = 2  # a page is up to ten 448² vision passes: bigger CPU batches only queue longer
ACCELERATOR_IMAGE_BATCH = 8
CHECKPOINT_FILES = ["*.json", "*.safetensors", "*.model"]


class VisragOptions(LocalOptions):
    """Settings of one VisRAG-Ret deployment."""

    model: str = Field(default="openbmb/VisRAG-Ret", description="Hub id or local directory of the checkpoint.")
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
    max_queue: int = Field(
        default=256,
        ge=1,
        description="Inputs queued before requests are refused (429); a queued page holds up to 6 MB of pixels.",
    )


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
            raise ModelLoadError(first_line(exc)) from exc
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


class VisragProvider(LocalProvider[VisragOptions, VisragEncoder, VisragInput]):
    """A VisRAG-Ret deployment behind the shared batching engine: one unit per item."""

    family = "visrag"
    options_type = VisragOptions
    cpu_image_batch = CPU_IMAGE_BATCH
    accelerator_image_batch = ACCELERATOR_IMAGE_BATCH

    def build_encoder(self) -> VisragEncoder:
        return VisragEncoder(self.options)

    def space_details(self) -> str:
        instruction = hashlib.sha256(self.options.query_instruction.encode()).hexdigest()[:16]
        return f"max_length={self.options.max_length}|query_instruction={instruction}"

    def units(self, items: Sequence[Item], options: EmbedOptions) -> list[VisragInput]:
        instruction = self.options.query_instruction if options.input_type is InputType.QUERY else None
        return [unit_of(item, index, instruction) for index, item in enumerate(items)]

    def collate(self) -> Collate:
        return collate


__all__ = ["INSTRUCTION", "VisragEncoder", "VisragOptions", "VisragProvider", "checkpoint_directory", "unit_of"]
