"""A random-weight VisRAG-Ret directory of the real widths, in the published checkpoint's format.

Built with the gateway's own native module (`providers.visrag_model.VisragRet`, random init) and
saved under the released checkpoint's weight names, so nothing is downloaded and the gateway loads
it exactly as it loads `openbmb/VisRAG-Ret`: `vpm.*` in timm's names (the fused `attn.qkv`, no
pooling head, the dropped last block absent), `resampler.*`, `llm.model.*` and `llm.lm_head.weight`
(which an embedder never reads, but the real checkpoint carries and the loader has to skip).

The widths are MiniCPM-V 2.0's (LM hidden 2304, 36 heads, MLP 5760, vocab 122753; SigLIP-so400m
tower 1152 wide, 16 heads, MLP 4304, patch 14, a 27x27 position grid; 64 resampler queries) and
the slicing parameters the real ones; only the depths are chosen (`lm_layers`, `vision_layers` =
the tower's blocks after `drop_vision_last_layer`). The tokenizer is the harness's small
SentencePiece model (`tests/visrag_reference/build_tiny.train_tokenizer`: the model's markup
tokens as single pieces, no dummy prefix) in the published `LlamaTokenizerWrapper`'s config; ids
stay far below the vocabulary, which only sizes the embedding table.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from providers.visrag_model import VisragConfig, VisragRet
from providers.visrag_vision import TIMM_LAYER_NAMES

BUILD_MARKER = "bench_build.json"
BUILD_VERSION = 1  # bump when the directory's contents change, so cached folders are rebuilt

# MiniCPM-V 2.0's language model (openbmb/VisRAG-Ret's config.json), depth aside.
REAL_LM: dict[str, Any] = {
    "hidden_size": 2304,
    "intermediate_size": 5760,
    "num_attention_heads": 36,
    "num_key_value_heads": 36,
    "vocab_size": 122753,
    "hidden_act": "silu",
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-05,
    "rope_theta": 10000.0,
    "rope_scaling": None,
    "scale_emb": 12,
    "dim_model_base": 256,
    "scale_depth": 1.4,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "tie_word_embeddings": False,
    "use_cache": True,
}
REAL_LM_LAYERS = 40
# timm's vit_so400m_patch14_siglip_384, under SiglipVisionConfig's names; depth aside.
REAL_VISION: dict[str, Any] = {
    "hidden_size": 1152,
    "intermediate_size": 4304,
    "num_attention_heads": 16,
    "patch_size": 14,
    "image_size": 384,
    "num_channels": 3,
    "layer_norm_eps": 1e-06,
    "hidden_act": "gelu",
}
REAL_VISION_LAYERS = 26  # 27 blocks, the last one dropped
VISRAG: dict[str, Any] = {
    "query_num": 64,
    "image_size": 448,
    "drop_vision_last_layer": True,
    "slice_mode": True,
    "patch_size": 14,
    "max_slice_nums": 9,
    "scale_resolution": 448,
}
TOKENIZER_CONFIG: dict[str, Any] = {
    "add_bos_token": True,
    "add_eos_token": False,
    "added_tokens_decoder": {
        str(index): {
            "content": content,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for index, content in enumerate(("<unk>", "<s>", "</s>"))
    },
    "bos_token": "<s>",
    "eos_token": "</s>",
    "unk_token": "<unk>",
    "pad_token": None,
    "clean_up_tokenization_spaces": False,
    "legacy": True,
    "sp_model_kwargs": {},
    "tokenizer_class": "LlamaTokenizerWrapper",
    "auto_map": {"AutoTokenizer": ["modeling_minicpmv.LlamaTokenizerWrapper", None]},
}


def model_config(lm_layers: int, vision_layers: int) -> dict[str, Any]:
    """config.json: the real widths, the chosen depths (the tower's before the dropped block)."""
    vision = {**REAL_VISION, "num_hidden_layers": vision_layers + 1}
    return {
        "architectures": ["VisRAG_Ret"],
        "model_type": "minicpmv",
        "vision_encoder": "vit_so400m_patch14_siglip_384.webli",
        **REAL_LM,
        "num_hidden_layers": lm_layers,
        **VISRAG,
        "vision_config": vision,
        "torch_dtype": "float32",
    }


_TOWER_TO_TIMM = {value: key for key, value in TIMM_LAYER_NAMES.items()}


def published_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`VisragRet.state_dict()` under the released checkpoint's names (the inverse of the loader's
    mapping: q/k/v fused back into timm's `attn.qkv`, `llm.*` under `llm.model.*`)."""
    out: dict[str, torch.Tensor] = {}
    fused: dict[str, dict[str, torch.Tensor]] = {}
    for name, tensor in state.items():
        if name.startswith("llm."):
            out["llm.model." + name.removeprefix("llm.")] = tensor
        elif name.startswith("resampler."):
            out[name] = tensor
        elif name.startswith("vpm.embeddings.patch_embedding."):
            out[name.replace("vpm.embeddings.patch_embedding.", "vpm.patch_embed.proj.")] = tensor
        elif name == "vpm.embeddings.position_embedding":
            out["vpm.pos_embed"] = tensor
        elif name.startswith("vpm.post_layernorm."):
            out[name.replace("vpm.post_layernorm.", "vpm.norm.")] = tensor
        elif name.startswith("vpm.encoder.layers."):
            index, module = name.removeprefix("vpm.encoder.layers.").split(".", 1)
            module, kind = module.rsplit(".", 1)
            if module in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
                fused.setdefault(f"vpm.blocks.{index}.attn.qkv.{kind}", {})[module[10]] = tensor
            else:
                out[f"vpm.blocks.{index}.{_TOWER_TO_TIMM[module]}.{kind}"] = tensor
        else:
            raise ValueError(f"no published name for {name}")
    for name, parts in fused.items():
        out[name] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return out


def randomise(model: torch.nn.Module, seed: int) -> None:
    """Seeded values of a trained model's scale: matrices N(0, 0.02), norm scales near 1, biases
    near 0 (the init leaves the resampler's query and projection at zero: every page would pool to
    the same vector, and the numbers a real model sees matter for nothing but honesty)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            noise = torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype)
            if name == "resampler.pos_embed":
                continue  # the fixed sin-cos table
            if parameter.ndim == 1 and not name.endswith("bias"):
                parameter.copy_(1.0 + 0.05 * noise)
            else:
                parameter.copy_(0.02 * noise)


def build(directory: Path, *, lm_layers: int, vision_layers: int, seed: int = 0) -> dict[str, Any]:
    """Write the directory (replacing it) and return its marker (depths, parameter counts)."""
    from safetensors.torch import save_file

    from tests.visrag_reference.build_tiny import train_tokenizer

    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    config = model_config(lm_layers, vision_layers)
    parsed = VisragConfig.from_dict(config)
    grid = int(REAL_VISION["image_size"]) // int(REAL_VISION["patch_size"])
    torch.manual_seed(seed)
    model = VisragRet(parsed, grid * grid)
    randomise(model, seed)
    state = published_names({k: v.contiguous() for k, v in model.state_dict().items()})
    generator = torch.Generator().manual_seed(seed + 1)
    state["llm.lm_head.weight"] = 0.02 * torch.randn(REAL_LM["vocab_size"], REAL_LM["hidden_size"], generator=generator)
    save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (directory / "tokenizer.model").write_bytes(train_tokenizer(seed))
    (directory / "tokenizer_config.json").write_text(json.dumps(TOKENIZER_CONFIG, indent=2) + "\n")
    embedder = sum(t.numel() for k, t in state.items() if k != "llm.lm_head.weight")
    marker = {
        "version": BUILD_VERSION,
        "seed": seed,
        "lm_layers": lm_layers,
        "vision_layers": vision_layers,
        "parameters": embedder,
        "parameters_with_lm_head": embedder + state["llm.lm_head.weight"].numel(),
    }
    (directory / BUILD_MARKER).write_text(json.dumps(marker, indent=2) + "\n")
    return marker


def ensure(directory: Path, *, lm_layers: int, vision_layers: int, rebuild: bool = False) -> dict[str, Any]:
    """The cached directory's marker, rebuilt when missing, stale or of other depths."""
    marker_path = directory / BUILD_MARKER
    if not rebuild and marker_path.is_file():
        marker: dict[str, Any] = json.loads(marker_path.read_text())
        wanted = {"version": BUILD_VERSION, "lm_layers": lm_layers, "vision_layers": vision_layers}
        if all(marker.get(key) == value for key, value in wanted.items()):
            return marker
    return build(directory, lm_layers=lm_layers, vision_layers=vision_layers)


def full_depth_parameters() -> dict[str, int]:
    """Parameter counts of the real model (embedder, and with the LM head), from its shapes."""
    with torch.device("meta"):
        model = VisragRet(VisragConfig.from_dict(model_config(REAL_LM_LAYERS, REAL_VISION_LAYERS)), 27 * 27)
    embedder = sum(p.numel() for p in model.parameters())
    head = int(REAL_LM["vocab_size"]) * int(REAL_LM["hidden_size"])
    return {"parameters": embedder, "parameters_with_lm_head": embedder + head}


__all__ = [
    "BUILD_MARKER",
    "REAL_LM_LAYERS",
    "REAL_VISION_LAYERS",
    "build",
    "ensure",
    "full_depth_parameters",
    "model_config",
    "published_names",
]
