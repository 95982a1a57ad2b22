"""SigLIP deployment options that shape batching."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from providers.base import Modality
from providers.siglip import SiglipProvider


@pytest.mark.parametrize(
    ("options", "text", "image"),
    [
        ({}, 32, 8),  # on CPU big image batches are slower: images default to 8
        ({"max_batch_size": 4}, 4, 4),
        ({"image_max_batch_size": 16}, 32, 16),
        ({"max_batch_size": 64, "image_max_batch_size": 2}, 64, 2),
    ],
)
def test_batch_sizes_per_modality_on_cpu(
    model_dirs: dict[str, Path], options: dict[str, Any], text: int, image: int
) -> None:
    provider = SiglipProvider.from_options({"model": str(model_dirs["siglip"]), **options}, name="opts")
    provider.load()
    assert provider.batch_sizes == {Modality.TEXT: text, Modality.IMAGE: image}
