"""Image processor of the tiny jina-clip stand-in, with the published `JinaCLIPImageProcessor`'s
parameters and calling contract (`processor(images)` -> `BatchFeature({"pixel_values": ...})`).

The published one runs open_clip's eval transform through torchvision (resize the shortest side,
bicubic; centre crop; to tensor; normalise by the OpenAI CLIP mean/std); this one does the same
steps with PIL and numpy, since torchvision is not installed here."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image
from transformers.image_processing_utils import BaseImageProcessor, BatchFeature

OPENAI_DATASET_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_DATASET_STD = (0.26862954, 0.26130258, 0.27577711)


class TinyJinaCLIPImageProcessor(BaseImageProcessor):
    """Resize (shortest side), centre crop, normalise."""

    model_input_names: ClassVar[list[str]] = ["pixel_values"]

    def __init__(  # noqa: PLR0917 (the published processor's positional signature)
        self,
        size: int = 32,
        mean: tuple[float, ...] = OPENAI_DATASET_MEAN,
        std: tuple[float, ...] = OPENAI_DATASET_STD,
        resize_mode: str = "shortest",
        interpolation: str = "bicubic",
        fill_color: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.size = size
        self.mean = list(mean)
        self.std = list(std)
        self.resize_mode = resize_mode
        self.interpolation = interpolation
        self.fill_color = fill_color

    def _transform(self, image: Image.Image) -> torch.Tensor:
        size = self.size
        width, height = image.size
        if width <= height:
            new_width, new_height = size, int(size * height / width)
        else:
            new_width, new_height = int(size * width / height), size
        resample = Image.Resampling.BICUBIC if self.interpolation == "bicubic" else Image.Resampling.BILINEAR
        image = image.convert("RGB").resize((new_width, new_height), resample)
        left = round((new_width - size) / 2.0)  # torchvision's CenterCrop
        top = round((new_height - size) / 2.0)
        image = image.crop((left, top, left + size, top + size))
        array = np.asarray(image, dtype=np.float32) / 255.0
        array = (array - np.asarray(self.mean, dtype=np.float32)) / np.asarray(self.std, dtype=np.float32)
        return torch.from_numpy(array.transpose(2, 0, 1).copy())

    def preprocess(self, images: Any, **kwargs: Any) -> BatchFeature:
        if isinstance(images, Image.Image):
            images = [images]
        return BatchFeature(data={"pixel_values": torch.stack([self._transform(image) for image in images])})
