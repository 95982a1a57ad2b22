"""The raw transformers computation the gateway must reproduce, written as the model cards do."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import AutoModel, AutoProcessor


class RawSiglip:
    """Reference SigLIP vectors as the model was trained: input ids padded to 64 (no attention mask),
    pooler output, L2-normalised."""

    def __init__(self, directory: Path) -> None:
        self.model = AutoModel.from_pretrained(directory).eval()
        self.processor = AutoProcessor.from_pretrained(directory)

    @torch.inference_mode()
    def texts(self, texts: list[str]) -> np.ndarray:
        inputs = self.processor.tokenizer(
            texts, padding="max_length", max_length=64, truncation=True, return_tensors="pt"
        )
        pooled = self.model.get_text_features(input_ids=inputs["input_ids"]).pooler_output
        return torch.nn.functional.normalize(pooled, dim=-1).numpy()

    @torch.inference_mode()
    def images(self, encoded: list[bytes]) -> np.ndarray:
        pictures = [Image.open(io.BytesIO(data)).convert("RGB") for data in encoded]
        inputs = self.processor.image_processor(images=pictures, return_tensors="pt")
        pooled = self.model.get_image_features(**inputs).pooler_output
        return torch.nn.functional.normalize(pooled, dim=-1).numpy()

    def fused(self, text: str, image: bytes) -> np.ndarray:
        mean = (self.texts([text])[0] + self.images([image])[0]) / 2
        return mean / np.linalg.norm(mean)
