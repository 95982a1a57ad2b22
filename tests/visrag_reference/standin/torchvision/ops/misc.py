"""torchvision.ops.misc stand-in: timm imports FrozenBatchNorm2d for isinstance checks only."""

from .._unavailable import unavailable

FrozenBatchNorm2d = unavailable("torchvision.ops.misc.FrozenBatchNorm2d")
