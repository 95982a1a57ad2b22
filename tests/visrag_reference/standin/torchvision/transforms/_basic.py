"""Compose, ToTensor and Normalize, written from torchvision's documented semantics.

The published VisRAG-Ret code builds its image transform from exactly these three:
`Compose([ToTensor(), Normalize(mean, std)])`. Self-contained (torch, numpy and PIL only) so the
harness tests can load this file on its own and check it against the documentation.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

# PIL modes whose pixels are not 8-bit: torchvision keeps their values unscaled; never needed here.
_UNSCALED_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "F"})


class InterpolationMode(enum.Enum):
    """The interpolation names torchvision exposes (data only: nothing here resizes)."""

    NEAREST = "nearest"
    NEAREST_EXACT = "nearest-exact"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"
    BOX = "box"
    HAMMING = "hamming"
    LANCZOS = "lanczos"


class Compose:
    """Applies the transforms in order, each to the previous one's output."""

    def __init__(self, transforms: Sequence[Callable[[Any], Any]]) -> None:
        self.transforms = list(transforms)

    def __call__(self, img: Any) -> Any:
        for transform in self.transforms:
            img = transform(img)
        return img


class ToTensor:
    """PIL image or HxWxC ndarray -> CxHxW float tensor; 8-bit values are divided by 255 into [0, 1].

    As documented: images in 8-bit modes (L, LA, P, RGB, RGBA, CMYK, YCbCr, 1) and uint8 arrays are
    scaled; other arrays are converted without scaling.
    """

    def __call__(self, pic: Image.Image | np.ndarray) -> torch.Tensor:
        if isinstance(pic, np.ndarray):
            array = pic[:, :, None] if pic.ndim == 2 else pic
            tensor = torch.from_numpy(array.transpose((2, 0, 1))).contiguous()
        elif isinstance(pic, Image.Image):
            if pic.mode in _UNSCALED_MODES:
                raise NotImplementedError(f"ToTensor stand-in: PIL mode {pic.mode} is not supported")
            pixels = torch.from_numpy(np.array(pic, np.uint8, copy=True))
            if pic.mode == "1":
                pixels = 255 * pixels
            channels = len(pic.getbands())
            tensor = pixels.view(pic.size[1], pic.size[0], channels).permute((2, 0, 1)).contiguous()
        else:
            raise TypeError(f"pic should be a PIL Image or ndarray, got {type(pic)}")
        if tensor.dtype == torch.uint8:
            return tensor.to(dtype=torch.get_default_dtype()).div(255)
        return tensor


class Normalize:
    """output[c] = (input[c] - mean[c]) / std[c] on a float tensor of shape (..., C, H, W)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], inplace: bool = False) -> None:
        self.mean = mean
        self.std = std
        self.inplace = inplace

    def __call__(self, tensor: torch.Tensor) -> torch.Tensor:
        if not tensor.is_floating_point():
            raise TypeError(f"Input tensor should be a float tensor. Got {tensor.dtype}.")
        if tensor.ndim < 3:
            raise ValueError(f"Expected tensor to be a tensor image of size (..., C, H, W). Got {tuple(tensor.shape)}.")
        if not self.inplace:
            tensor = tensor.clone()
        mean = torch.as_tensor(self.mean, dtype=tensor.dtype, device=tensor.device)
        std = torch.as_tensor(self.std, dtype=tensor.dtype, device=tensor.device)
        if (std == 0).any():
            raise ValueError(f"std evaluated to zero after conversion to {tensor.dtype}, leading to division by zero.")
        return tensor.sub_(mean.view(-1, 1, 1)).div_(std.view(-1, 1, 1))
