"""What a call to a deployment costs: an upper bound before it (for budget reservations), the real
figure after it (from the usage the upstream reported)."""

from __future__ import annotations

from collections.abc import Sequence

from gateway.config import PriceSettings
from providers.base import Image, Item, Text, Usage


def estimate_usd(price: PriceSettings, items: Sequence[Item]) -> float:
    """An upper bound of what embedding `items` can cost: a text's UTF-8 bytes bound its tokens (no
    tokenizer makes a token of less than a byte); an image is bounded by the configured estimates."""
    if price.is_free:
        return 0.0
    tokens = 0
    pixels = 0
    for item in items:
        for part in item.parts:
            if isinstance(part, Text):
                tokens += len(part.text.encode("utf-8")) + 8  # + the few special tokens a model adds
            elif isinstance(part, Image):
                width, height = part.pixels.size
                tokens += price.estimate_tokens_per_image
                pixels += max(width * height, price.estimate_min_pixels_per_image)
    return tokens * price.usd_per_1m_tokens / 1e6 + pixels * price.usd_per_1b_pixels / 1e9


def actual_usd(price: PriceSettings, usage: Usage | None) -> float:
    """The cost of what the upstream says it billed."""
    if usage is None or price.is_free:
        return 0.0
    return usage.billed_tokens * price.usd_per_1m_tokens / 1e6 + usage.image_pixels * price.usd_per_1b_pixels / 1e9
