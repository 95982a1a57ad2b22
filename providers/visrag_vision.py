"""VisRAG-Ret's eyes: a SigLIP ViT (published as a timm model) and the perceiver resampler.

The tower's encoder layers are transformers' `SiglipEncoder`; the patch and position embeddings
are written here, because timm resizes the learned position grid to each slice's patch grid with
its own `resample_abs_pos_embed` (bicubic *with* antialiasing, from the square checkpoint grid),
which transformers' `interpolate_pos_encoding` does differently (no antialiasing), and a slice is
padded on the right and bottom to whole patches (timm's `dynamic_img_pad`). The checkpoint's timm
names (`vpm.blocks.N.attn.qkv`, ...) are mapped onto transformers' (`encoder.layers.N.self_attn.
q_proj`, ...) when loading; the fused qkv is split in three.

The resampler turns any slice's patch features into `query_num` tokens of the language model's
width: learned queries (plus a fixed sin-cos grid) attend to the features (plus a sin-cos grid of
the slice's own patch grid), then a norm and a projection. Its module names are the checkpoint's.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812  (torch's own spelling)
from torch import nn

TIMM_TOWERS = {
    # name: (width, depth, heads, mlp_ratio, patch): timm's `vit_so400m_patch14_siglip_384`
    "vit_so400m_patch14_siglip_384": (1152, 27, 16, 3.7362, 14),
}
"""Hyperparameters of the timm towers VisRAG-Ret's checkpoints name in `vision_encoder`."""


@dataclass(frozen=True, slots=True)
class VisionConfig:
    """The tower as the language model sees it: width, the layers kept, heads, MLP width, patch."""

    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    patch_size: int
    hidden_act: str = "gelu"  # timm's default nn.GELU: the exact (erf) form
    layer_norm_eps: float = 1e-6

    @classmethod
    def from_model_config(cls, config: dict[str, Any]) -> VisionConfig:
        """From `vision_config` when the checkpoint carries one, else from the timm name in `vision_encoder`."""
        block = config.get("vision_config")
        drop = 1 if config.get("drop_vision_last_layer", True) else 0
        if block:
            width = int(block["hidden_size"])
            depth = int(block.get("depth", block.get("num_hidden_layers", 0)))
            heads = int(block.get("num_attention_heads", block.get("num_heads", 0)))
            mlp = int(block.get("intermediate_size") or int(width * float(block.get("mlp_ratio", 4.0))))
            patch = int(block.get("patch_size", config.get("patch_size", 14)))
            act = str(block.get("hidden_act", block.get("act_layer", "gelu")))
            eps = float(block.get("layer_norm_eps", 1e-6))
            return cls(width, depth - drop, heads, mlp, patch, _act_name(act), eps)
        name = str(config.get("vision_encoder", "")).split(".")[0]
        if name not in TIMM_TOWERS:
            raise ValueError(f"unknown vision_encoder {name!r}: known {sorted(TIMM_TOWERS)}, or give a vision_config")
        width, depth, heads, ratio, patch = TIMM_TOWERS[name]
        return cls(width, depth - drop, heads, int(width * ratio), patch)


def _act_name(name: str) -> str:
    """timm's activation names in transformers' spelling."""
    return {"gelu_tanh": "gelu_pytorch_tanh", "quick_gelu": "quick_gelu"}.get(name, name)


def resample_positions(grid: torch.Tensor, new_size: tuple[int, int]) -> torch.Tensor:
    """timm's `resample_abs_pos_embed` for a model without prefix tokens: the square grid of
    learned positions [1, n*n, width] resized to `new_size` (rows, columns), bicubic with
    antialiasing, in float32; returned unchanged when the size already matches."""
    side = math.isqrt(grid.shape[1])
    if (side, side) == new_size:
        return grid
    width = grid.shape[-1]
    square = grid.float().reshape(1, side, side, width).permute(0, 3, 1, 2)
    resized = F.interpolate(square, size=new_size, mode="bicubic", align_corners=None, antialias=True)
    return resized.permute(0, 2, 3, 1).reshape(1, -1, width).to(grid.dtype)


class PatchEmbeddings(nn.Module):
    """Pixels [batch, 3, H, W] → patch tokens [batch, rows * columns, width] with positions added."""

    def __init__(self, config: VisionConfig, positions: int) -> None:
        super().__init__()
        self.patch_size = config.patch_size
        self.patch_embedding = nn.Conv2d(3, config.hidden_size, config.patch_size, stride=config.patch_size)
        self.position_embedding = nn.Parameter(torch.zeros(1, positions, config.hidden_size))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        height, width = pixels.shape[-2:]
        pad_h, pad_w = -height % self.patch_size, -width % self.patch_size
        patches: torch.Tensor = self.patch_embedding(F.pad(pixels, (0, pad_w, 0, pad_h)))  # [batch, width, rows, cols]
        grid = (patches.shape[2], patches.shape[3])
        tokens = patches.flatten(2).transpose(1, 2)
        return tokens + resample_positions(self.position_embedding, grid)


class VisionTower(nn.Module):
    """The SigLIP ViT without its pooling head and without the layers the model drops."""

    def __init__(self, config: VisionConfig, positions: int) -> None:
        from transformers import SiglipVisionConfig
        from transformers.models.siglip.modeling_siglip import SiglipEncoder

        super().__init__()
        self.config = config
        self.embeddings = PatchEmbeddings(config, positions)
        settings: dict[str, Any] = {
            "hidden_size": config.hidden_size,
            "intermediate_size": config.intermediate_size,
            "num_hidden_layers": config.num_hidden_layers,
            "num_attention_heads": config.num_attention_heads,
            "patch_size": config.patch_size,
            "hidden_act": config.hidden_act,
            "layer_norm_eps": config.layer_norm_eps,
            "attn_implementation": "sdpa",  # timm's fused attention: torch's SDPA
        }
        # SiglipVisionTransformer builds its encoder from the vision config too; the annotation says SiglipConfig.
        self.encoder = SiglipEncoder(SiglipVisionConfig(**settings))  # type: ignore[arg-type]
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(inputs_embeds=self.embeddings(pixels)).last_hidden_state
        normed: torch.Tensor = self.post_layernorm(hidden)
        return normed


TIMM_LAYER_NAMES = {
    "norm1": "layer_norm1",
    "norm2": "layer_norm2",
    "attn.proj": "self_attn.out_proj",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}
_BLOCK = re.compile(r"blocks\.(\d+)\.(.+)\.(weight|bias)")


def timm_to_tower(state: dict[str, torch.Tensor], layers: int) -> dict[str, torch.Tensor]:
    """The checkpoint's `vpm.*` tensors (prefix removed) under `VisionTower`'s names. Blocks past
    `layers` (a dropped last layer saved anyway) and timm's pooling head are left out; any other
    tensor means a tower this module does not build, so it raises."""
    mapped: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        if name.startswith(("attn_pool.", "head.")):
            continue
        if name.startswith("patch_embed.proj."):
            mapped[name.replace("patch_embed.proj.", "embeddings.patch_embedding.")] = tensor
        elif name == "pos_embed":
            mapped["embeddings.position_embedding"] = tensor
        elif name.startswith("norm."):
            mapped[name.replace("norm.", "post_layernorm.")] = tensor
        elif (block := _BLOCK.fullmatch(name)) is not None:
            index, module, kind = int(block[1]), block[2], block[3]
            if index >= layers:
                continue
            prefix = f"encoder.layers.{index}."
            if module == "attn.qkv":
                for part, chunk in zip(("q", "k", "v"), tensor.chunk(3, dim=0), strict=True):
                    mapped[f"{prefix}self_attn.{part}_proj.{kind}"] = chunk
            elif module in TIMM_LAYER_NAMES:
                mapped[f"{prefix}{TIMM_LAYER_NAMES[module]}.{kind}"] = tensor
            else:
                raise ValueError(f"vision tensor vpm.{name} has no place in a SigLIP tower")
        else:
            raise ValueError(f"vision tensor vpm.{name} has no place in a SigLIP tower")
    return mapped


@lru_cache(maxsize=256)
def sincos_grid(width: int, rows: int, columns: int) -> np.ndarray:
    """The MAE 2D sin-cos position table [rows * columns, width] in float32, computed in numpy as the
    published resampler computes it: the first half encodes the column, the second the row.
    Cached and shared: read it, never write into it."""
    column, row = np.meshgrid(np.arange(columns, dtype=np.float32), np.arange(rows, dtype=np.float32))
    return np.concatenate([_sincos(width // 2, column), _sincos(width // 2, row)], axis=1)


def _sincos(width: int, positions: np.ndarray) -> np.ndarray:
    omega = np.arange(width // 2, dtype=np.float32)
    omega /= width / 2.0
    omega = 1.0 / 10000**omega
    angles = np.einsum("m,d->md", positions.reshape(-1), omega)
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)


class Resampler(nn.Module):
    """`query_num` learned queries cross-attend to one slice's patch features."""

    def __init__(self, queries: int, width: int, heads: int, kv_width: int) -> None:
        super().__init__()
        side = math.isqrt(queries)
        self.width = width
        self.query = nn.Parameter(torch.zeros(queries, width))
        self.pos_embed = nn.Parameter(torch.from_numpy(sincos_grid(width, side, side).copy()), requires_grad=False)
        self.kv_proj: nn.Module = nn.Linear(kv_width, width, bias=False) if kv_width != width else nn.Identity()
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_q = nn.LayerNorm(width, eps=1e-6)
        self.ln_kv = nn.LayerNorm(width, eps=1e-6)
        self.ln_post = nn.LayerNorm(width, eps=1e-6)
        self.proj = nn.Parameter(torch.zeros(width, width))

    def forward(self, features: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """[slices, rows * columns, kv_width] of slices sharing one patch `grid` → [slices, queries, width]."""
        keys_at = torch.from_numpy(sincos_grid(self.width, *grid)).to(device=features.device, dtype=features.dtype)
        kv = self.ln_kv(self.kv_proj(features)).permute(1, 0, 2)  # [tokens, slices, width]
        queries = self.ln_q(self.query)
        attended = self.attn(
            queries.unsqueeze(1).repeat(1, kv.shape[1], 1) + self.pos_embed.unsqueeze(1),
            kv + keys_at.unsqueeze(1),
            kv,
            need_weights=False,
        )[0]
        return torch.matmul(self.ln_post(attended.permute(1, 0, 2)), self.proj)


__all__ = [
    "TIMM_TOWERS",
    "PatchEmbeddings",
    "Resampler",
    "VisionConfig",
    "VisionTower",
    "resample_positions",
    "sincos_grid",
    "timm_to_tower",
]
