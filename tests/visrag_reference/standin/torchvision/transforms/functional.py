"""torchvision.transforms.functional stand-in: only InterpolationMode, which timm imports."""

from ._basic import InterpolationMode

__all__ = ["InterpolationMode"]
