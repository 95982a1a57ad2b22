"""The raw model call the gateway is measured against, and where its time goes, layer by layer.

`RawVisrag` is the gateway's computation without the server: the same `VisragEncoder` (native
model, fp32, CPU) in this process, each batch prepared (slicing, prompt, tokenisation), collated,
run and pooled exactly as the batching engine does it. Pages come in decoded (the gateway's PNG
decode is part of what it adds).

`profile` times one forward with hooks on every vision block and decoder layer, so a
reduced-depth run can be extrapolated to the real model: the layers of one kind cost the same at
the same width, and the rest (patch embedding, resampler, token embedding, pooling) does not
depend on depth.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL.Image import Image as PILImage

from providers.batching import Prepared
from providers.visrag import INSTRUCTION, VisragEncoder, VisragOptions
from providers.visrag_prompt import VisragInput, collate


def page_unit(picture: PILImage) -> VisragInput:
    """A page as a document: the picture, no text, no instruction."""
    return VisragInput("", picture)


def query_unit(text: str) -> VisragInput:
    """A query as the gateway builds it for `input_type: query`."""
    return VisragInput(INSTRUCTION + text)


class RawVisrag:
    """The gateway's encoder, driven directly."""

    def __init__(self, directory: Path) -> None:
        self.encoder = VisragEncoder(VisragOptions(model=str(directory), device="cpu", dtype="float32"))

    def prepare(self, units: Sequence[VisragInput]) -> list[Prepared]:
        return [self.encoder.prepare(unit) for unit in units]

    def embed(self, units: Sequence[VisragInput]) -> np.ndarray:
        """Unit vectors [n, width]: prepare, collate, forward (one modality per call, as the engine batches)."""
        prepared = self.prepare(units)
        return self.encoder.forward(prepared[0].modality, collate([p.features for p in prepared]))


def measure(raw: RawVisrag, units: Sequence[VisragInput], batch: int) -> dict[str, Any]:
    """Embed `units` in batches of `batch`; items/s over the whole run."""
    started = time.perf_counter()
    for start in range(0, len(units), batch):
        raw.embed(units[start : start + batch])
    span = time.perf_counter() - started
    return {"rate": len(units) / span, "items": len(units), "span_s": span, "s_per_item": span / len(units)}


@dataclass
class _Stopwatch:
    """Sums the time spent inside the modules it is hooked onto."""

    total: float = 0.0
    calls: int = 0
    _started: float = 0.0

    def enter(self, *_: object) -> None:
        self._started = time.perf_counter()

    def leave(self, *_: object) -> None:
        self.total += time.perf_counter() - self._started
        self.calls += 1


def profile(raw: RawVisrag, units: Sequence[VisragInput]) -> dict[str, float]:
    """One forward of `units` (one batch) timed: all, the vision blocks, the decoder layers, per layer."""
    model = raw.encoder.model
    groups = {"vision": model.vpm.encoder.layers, "lm": model.llm.layers}
    watches = {name: _Stopwatch() for name in groups}
    with ExitStack() as hooks:
        for name, layers in groups.items():
            for layer in layers:
                hooks.callback(layer.register_forward_pre_hook(watches[name].enter).remove)
                hooks.callback(layer.register_forward_hook(watches[name].leave).remove)
        started = time.perf_counter()
        raw.embed(units)
        total = time.perf_counter() - started
    vision_layers, lm_layers = len(groups["vision"]), len(groups["lm"])
    return {
        "items": len(units),
        "total_s": total,
        "vision_layers": vision_layers,
        "lm_layers": lm_layers,
        "vision_s": watches["vision"].total,
        "lm_s": watches["lm"].total,
        "rest_s": total - watches["vision"].total - watches["lm"].total,
        "vision_layer_s": watches["vision"].total / max(vision_layers, 1),
        "lm_layer_s": watches["lm"].total / max(lm_layers, 1),
    }


def full_depth_seconds(timing: dict[str, float], vision_layers: int, lm_layers: int) -> float:
    """The profiled batch's time with the real depths: the rest plus each layer's cost times the depth."""
    return timing["rest_s"] + vision_layers * timing["vision_layer_s"] + lm_layers * timing["lm_layer_s"]


def token_counts(raw: RawVisrag, units: Sequence[VisragInput]) -> list[int]:
    """Tokens of each prepared input (a page's placeholders included), as the gateway bills them."""
    return [p.tokens for p in raw.prepare(units)]


__all__ = ["RawVisrag", "full_depth_seconds", "measure", "page_unit", "profile", "query_unit", "token_counts"]
