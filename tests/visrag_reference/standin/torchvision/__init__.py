"""A minimal torchvision stand-in, installed only into the VisRAG reference environment.

No CPU torchvision wheel matching torch 2.13 is on the registry (its torchvision 0.28.0 wheel links
libtorch_cuda), and the published VisRAG-Ret code imports torchvision for three transforms:
Compose, ToTensor and Normalize. Those are implemented in `transforms/_basic.py` from torchvision's
documentation; every other name here exists only so `import timm` and `import timm.data` succeed,
and raises when used. It has no distribution metadata, so transformers sees no torchvision.
"""
