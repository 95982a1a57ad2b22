"""torchvision.transforms stand-in: the three transforms the published code uses, for real.

InterpolationMode is here because resampler.py and timm import it (as a name, never to resize).
"""

from ._basic import Compose, InterpolationMode, Normalize, ToTensor

__all__ = ["Compose", "InterpolationMode", "Normalize", "ToTensor"]
