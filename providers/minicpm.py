"""The MiniCPM decoder (the language model inside MiniCPM-V 2.0 and VisRAG-Ret), in plain torch.

A Llama decoder (RMSNorm, rotary attention, SwiGLU MLP) with two MiniCPM scalings: input
embeddings times `scale_emb`, and each residual branch times `scale_depth / sqrt(layers)`.
`dim_model_base` only scales the logits, which an embedder never computes. Plain torch rather
than transformers' Llama classes: their signatures (rotary config, cache and mask plumbing)
change between minor releases, and this one forward is small. The rotary angles are computed
from the positions in every forward, so no buffer can be left uninitialised by a meta-device
load (the NaNs the remote code gives on transformers 5). Module names follow the checkpoint's
`llm.model.*` names, so its tensors load unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812  (torch's own spelling)
from torch import nn


@dataclass(frozen=True, slots=True)
class MiniCPMConfig:
    """The decoder fields of a MiniCPM(-V) `config.json`."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_linear_factor: float = 1.0
    scale_emb: float = 1.0
    scale_depth: float = 1.0

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> MiniCPMConfig:
        scaling = config.get("rope_scaling")
        factor = 1.0
        if scaling is not None:
            if scaling.get("type", scaling.get("rope_type")) != "linear":
                raise ValueError(f"rope_scaling {scaling} is not supported (only linear)")
            factor = float(scaling["factor"])
        if config.get("hidden_act", "silu") != "silu":
            raise ValueError(f"hidden_act {config['hidden_act']!r} is not supported (only silu)")
        heads = int(config["num_attention_heads"])
        return cls(
            vocab_size=int(config["vocab_size"]),
            hidden_size=int(config["hidden_size"]),
            intermediate_size=int(config["intermediate_size"]),
            num_hidden_layers=int(config["num_hidden_layers"]),
            num_attention_heads=heads,
            num_key_value_heads=int(config.get("num_key_value_heads") or heads),
            rms_norm_eps=float(config.get("rms_norm_eps", 1e-6)),
            rope_theta=float(config.get("rope_theta", 10000.0)),
            rope_linear_factor=factor,
            scale_emb=float(config.get("scale_emb", 1)),
            scale_depth=float(config.get("scale_depth", 1)),
        )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


class RMSNorm(nn.Module):
    """Root-mean-square norm; the statistic in float32, the scaling in the input's dtype, as MiniCPM does."""

    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        variance = hidden.float().pow(2).mean(dim=-1, keepdim=True)
        return (hidden * torch.rsqrt(variance + self.eps)).to(hidden.dtype) * self.weight


def rotary_angles(config: MiniCPMConfig, length: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the rotary angles for positions 0..length-1, in float32 (shape [length, head_dim])."""
    dim = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, dim, 2, device=device).float() / dim))
    positions = torch.arange(length, device=device, dtype=torch.float32) / config.rope_linear_factor
    angles = torch.outer(positions, inv_freq)
    both = torch.cat((angles, angles), dim=-1)
    return both.cos(), both.sin()


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate [batch, heads, length, head_dim] in float32 (as MiniCPM does), back in x's dtype."""
    wide = x.float()
    return (wide * cos + _rotate_half(wide) * sin).to(x.dtype)


class Attention(nn.Module):
    def __init__(self, config: MiniCPMConfig) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = (
            config.num_attention_heads,
            config.num_key_value_heads,
            config.head_dim,
        )
        self.q_proj = nn.Linear(config.hidden_size, self.heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(config.hidden_size, self.kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(config.hidden_size, self.kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.heads * self.head_dim, config.hidden_size, bias=False)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        batch, length, _ = hidden.shape
        q = self.q_proj(hidden).view(batch, length, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(hidden).view(batch, length, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(hidden).view(batch, length, self.kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if self.kv_heads != self.heads:
            k = k.repeat_interleave(self.heads // self.kv_heads, dim=1)
            v = v.repeat_interleave(self.heads // self.kv_heads, dim=1)
        out = F.scaled_dot_product_attention(q.contiguous(), k.contiguous(), v.contiguous(), attn_mask=mask)
        projected: torch.Tensor = self.o_proj(out.transpose(1, 2).reshape(batch, length, self.heads * self.head_dim))
        return projected


class MLP(nn.Module):
    def __init__(self, config: MiniCPMConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        down: torch.Tensor = self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
        return down


class DecoderLayer(nn.Module):
    def __init__(self, config: MiniCPMConfig) -> None:
        super().__init__()
        self.self_attn = Attention(config)
        self.mlp = MLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.residual_scale = config.scale_depth / math.sqrt(config.num_hidden_layers)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        attended: torch.Tensor = self.self_attn(self.input_layernorm(hidden), mask, cos, sin)
        hidden = hidden + attended * self.residual_scale
        mixed: torch.Tensor = self.mlp(self.post_attention_layernorm(hidden))
        return hidden + mixed * self.residual_scale


class MiniCPMDecoder(nn.Module):
    """Token embeddings, decoder layers and the final norm: `llm.model` of the checkpoint."""

    def __init__(self, config: MiniCPMConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Input embeddings, scaled by `scale_emb` (vision tokens are written over them unscaled)."""
        embedded: torch.Tensor = self.embed_tokens(input_ids)
        return embedded * self.config.scale_emb

    def forward(self, embeddings: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Last hidden state for right-padded `embeddings` [batch, length, hidden]; `attention_mask` is
        1 on real tokens. Each token sees the real tokens up to itself; positions count from 0."""
        length = embeddings.shape[1]
        causal = torch.ones(length, length, dtype=torch.bool, device=embeddings.device).tril()
        mask = (causal[None, :, :] & attention_mask.bool()[:, None, :])[:, None, :, :]
        cos, sin = rotary_angles(self.config, length, embeddings.device)
        hidden = embeddings
        for layer in self.layers:
            hidden = layer(hidden, mask, cos, sin)
        normed: torch.Tensor = self.norm(hidden)
        return normed


__all__ = ["MiniCPMConfig", "MiniCPMDecoder", "RMSNorm", "apply_rotary", "rotary_angles"]
