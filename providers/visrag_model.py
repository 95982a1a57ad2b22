"""VisRAG-Ret as one torch module: vision tower, resampler and MiniCPM decoder, loaded from the
published checkpoint's tensors as they are named (`vpm.*` timm names, `resampler.*`, `llm.model.*`).

`embed` runs a collated batch (see `providers.visrag_prompt`): each picture through the tower and
the resampler (an item's overview alone, its slices together, as the published code groups them),
the resulting tokens written over the placeholder embeddings, the decoder over the right-padded
sequences, then the model card's pooling: a mean weighted by position (token i of n counts i),
L2-normalised. Right padding with a causal mask leaves every real token's state untouched by its
batch-mates, so an item's vector does not depend on what it was batched with.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812  (torch's own spelling)
from torch import nn

from providers.minicpm import MiniCPMConfig, MiniCPMDecoder
from providers.visrag_vision import Resampler, VisionConfig, VisionTower, sincos_grid, timm_to_tower

Features = dict[str, torch.Tensor]


@dataclass(frozen=True, slots=True)
class VisragConfig:
    """What `config.json` says about the prompt and the pictures; the towers read their own parts."""

    query_num: int
    slice_mode: bool
    max_slice_nums: int
    scale_resolution: int
    patch_size: int
    llm: MiniCPMConfig
    vision: VisionConfig

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> VisragConfig:
        query_num = int(config.get("query_num", 64))
        if math.isqrt(query_num) ** 2 != query_num:
            raise ValueError(f"query_num {query_num} is not a square")
        return cls(
            query_num=query_num,
            slice_mode=bool(config.get("slice_mode", True)),
            max_slice_nums=int(config.get("max_slice_nums", 9)),
            scale_resolution=int(config.get("scale_resolution", 448)),
            patch_size=int(config.get("patch_size", 14)),
            llm=MiniCPMConfig.from_dict(config),
            vision=VisionConfig.from_model_config(config),
        )

    @classmethod
    def from_file(cls, path: Path) -> VisragConfig:
        return cls.from_dict(json.loads(path.read_text()))


def normalise(pixels: torch.Tensor) -> torch.Tensor:
    """The published transform on uint8 pixels: ToTensor's x / 255 in float32, then
    Normalize(mean=0.5, std=0.5) (timm's Inception constants): (x - 0.5) / 0.5."""
    return pixels.float().div(255).sub(0.5).div(0.5)


class VisragRet(nn.Module):
    """The published `VisRAG_Ret` forward, pooled and normalised."""

    def __init__(self, config: VisragConfig, positions: int) -> None:
        super().__init__()
        self.config = config
        width = config.llm.hidden_size
        self.vpm = VisionTower(config.vision, positions)
        self.resampler = Resampler(config.query_num, width, width // 128, config.vision.hidden_size)
        self.llm = MiniCPMDecoder(config.llm)

    @classmethod
    def from_state_dict(cls, config: VisragConfig, state: dict[str, torch.Tensor], dtype: torch.dtype) -> VisragRet:
        """Build on the meta device and adopt the checkpoint's tensors (cast to `dtype`); every
        parameter must come from the checkpoint, and every checkpoint tensor must find a place
        (the language model head aside: an embedder has no logits)."""
        vision = {k.removeprefix("vpm."): v for k, v in state.items() if k.startswith("vpm.")}
        mapped = {f"vpm.{k}": v for k, v in timm_to_tower(vision, config.vision.num_hidden_layers).items()}
        for name, tensor in state.items():
            if name.startswith("resampler."):
                mapped[name] = tensor
            elif name.startswith("llm.model."):
                mapped["llm." + name.removeprefix("llm.model.")] = tensor
            elif not name.startswith(("vpm.", "llm.lm_head.")):
                raise ValueError(f"checkpoint tensor {name} has no place in VisRAG-Ret")
        positions = mapped["vpm.embeddings.position_embedding"].shape[1]
        with torch.device("meta"):
            model = cls(config, positions)
        if "resampler.pos_embed" not in mapped:  # a fixed table: an export may leave it out
            side = math.isqrt(config.query_num)
            mapped["resampler.pos_embed"] = torch.from_numpy(sincos_grid(config.llm.hidden_size, side, side).copy())
        model.load_state_dict({k: v.to(dtype) for k, v in mapped.items()}, strict=True, assign=True)
        return model.eval()

    def _vision_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pictures of one size [n, 3, H, W] (uint8) → resampled tokens [n * query_num, width]."""
        patch = self.config.vision.patch_size
        grid = (math.ceil(pixels.shape[-2] / patch), math.ceil(pixels.shape[-1] / patch))
        features = self.vpm(normalise(pixels).to(self.vpm.embeddings.patch_embedding.weight.dtype))
        tokens: torch.Tensor = self.resampler(features, grid)
        return tokens.reshape(-1, tokens.shape[-1])

    def embed(self, batch: Features) -> torch.Tensor:
        """Unit vectors [batch, width] in float32 for a collated batch."""
        input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]
        embeddings = self.llm.embed(input_ids)
        pictures = [batch[f"pixels.{i}"] for i in range(len(batch)) if f"pixels.{i}" in batch]
        if pictures:
            tokens = torch.cat([self._vision_tokens(group) for group in pictures])
            rows, columns = batch["vision_rows"], batch["vision_columns"]
            embeddings[rows, columns] = tokens.to(embeddings.dtype)
        hidden = self.llm(embeddings, attention_mask)
        weights = attention_mask * attention_mask.cumsum(dim=1)
        pooled = (hidden * weights.unsqueeze(-1).float()).sum(dim=1) / weights.sum(dim=1, keepdim=True).float()
        return F.normalize(pooled.float(), p=2, dim=1)


__all__ = ["VisragConfig", "VisragRet", "normalise"]
