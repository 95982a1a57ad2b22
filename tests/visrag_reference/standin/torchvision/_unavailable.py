"""Placeholders for the torchvision names that timm imports at module level.

The VisRAG reference only ever calls Compose, ToTensor and Normalize; timm still imports a few
more names when `timm` and `timm.data` load. Each of those is a class that fails loudly when used,
so the stand-in can never silently change what the published code computes.
"""

from __future__ import annotations

from typing import Any, NoReturn


def unavailable(qualified_name: str) -> type:
    """A class named like the torchvision one, which raises as soon as it is built or called."""

    def refuse(*_args: Any, **_kwargs: Any) -> NoReturn:
        raise NotImplementedError(
            f"{qualified_name} is not provided by the VisRAG reference's torchvision stand-in "
            "(only transforms.Compose, ToTensor and Normalize are)"
        )

    return type(qualified_name.rsplit(".", 1)[-1], (), {"__init__": refuse, "__call__": refuse})
