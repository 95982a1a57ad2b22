"""Encoded test images in every accepted format, made with PIL."""

from __future__ import annotations

import base64
import io

from PIL import Image


def encode(image: Image.Image, fmt: str, **save: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save)
    return buffer.getvalue()


def gradient(width: int = 48, height: int = 40, seed: int = 0) -> Image.Image:
    """A deterministic, non-uniform RGB picture (so orientation and crops matter)."""
    image = Image.new("RGB", (width, height))
    image.putdata(
        [
            ((x * 5 + seed * 37) % 256, (y * 7 + seed * 11) % 256, ((x + y) * 3 + seed) % 256)
            for y in range(height)
            for x in range(width)
        ]
    )
    return image


def png(seed: int = 0) -> bytes:
    return encode(gradient(seed=seed), "PNG")


def data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
