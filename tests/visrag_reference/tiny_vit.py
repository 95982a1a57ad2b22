"""A tiny SigLIP-style timm ViT, registered under a name `timm.create_model` resolves.

The published MiniCPM-V code builds its vision tower with `timm.create_model(config.vision_encoder)`.
A tiny model directory names a small tower instead of `vit_so400m_patch14_siglip_384`; its recipe
is written beside the weights (`TIMM_SPEC_FILE`) so whoever loads the directory registers the same
tower first. Built through timm's own `_create_vision_transformer`, the path the real so400m
entrypoint takes. Runs inside the reference environment only (needs timm).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

TIMM_SPEC_FILE = "tiny_timm_vit.json"

TINY_VIT_NAME = "vit_visrag_tiny_patch14_siglip_384"
# vit_so400m_patch14_siglip_384's arguments, narrowed: same patch, image size, MLP ratio, no class
# token and a MAP head (which the published code replaces by Identity).
TINY_VIT_ARGS: dict[str, Any] = {
    "img_size": 384,
    "patch_size": 14,
    "embed_dim": 64,
    "depth": 3,
    "num_heads": 4,
    "mlp_ratio": 3.7362,
    "class_token": False,
    "global_pool": "map",
}

# timm's register_model reads pretrained configs from the entrypoint's module: one per tiny tower,
# so building it logs no "no pretrained configuration" warning and keeps the real 384 input size.
default_cfgs: dict[str, dict[str, Any]] = {}


def spec() -> dict[str, Any]:
    """The recipe written beside a tiny directory's weights."""
    return {"name": TINY_VIT_NAME, "model_args": TINY_VIT_ARGS}


def register(recipe: dict[str, Any]) -> None:
    """Make `timm.create_model(recipe["name"], ...)` build the recipe's tower (idempotent)."""
    # timm exists in the reference environment only.
    from timm.models import is_model, register_model  # type: ignore[import-not-found]
    from timm.models.vision_transformer import _create_vision_transformer  # type: ignore[import-not-found]

    name: str = recipe["name"]
    if is_model(name):
        return
    model_args = dict(recipe["model_args"])
    size = int(model_args["img_size"])
    default_cfgs[name] = {"input_size": (3, size, size), "num_classes": 0}

    def entrypoint(pretrained: bool = False, **kwargs: Any) -> Any:
        return _create_vision_transformer(name, pretrained=pretrained, **dict(model_args, **kwargs))

    entrypoint.__name__ = entrypoint.__qualname__ = name
    entrypoint.__module__ = __name__
    register_model(entrypoint)


def register_from(directory: Path) -> bool:
    """Register the tower a model directory names, if it is a tiny one; True when it was."""
    path = directory / TIMM_SPEC_FILE
    if not path.is_file():
        return False
    register(json.loads(path.read_text()))
    return True
