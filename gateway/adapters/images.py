"""Turn what RAG frameworks hand an embedder (a path, URL, bytes, stream or PIL image) into the
gateway's image value: http(s) URLs and data URIs go as they are (the gateway fetches them), local
content goes inline as a data URI, so the gateway never needs to see the client's disk."""

from __future__ import annotations

import base64
import io
import os
from pathlib import Path
from typing import BinaryIO

from PIL import Image

ImageSource = str | os.PathLike[str] | bytes | bytearray | BinaryIO | Image.Image
"""Accepted image forms. A `str` is a URL (`http://`, `https://`), a data URI, or else a file path."""

_PASSED_THROUGH = ("http://", "https://", "data:")


def image_input(source: ImageSource) -> str:
    """The gateway's `{"image": ...}` value for `source`."""
    if isinstance(source, str) and source[:8].lower().startswith(_PASSED_THROUGH):
        return source
    return data_uri(image_bytes(source))


def image_bytes(source: ImageSource) -> bytes:
    """The encoded bytes of a local image: a file's content, a stream's rest, a PIL image as lossless PNG."""
    if isinstance(source, Image.Image):
        buffer = io.BytesIO()
        source.save(buffer, format="PNG")
        return buffer.getvalue()
    if isinstance(source, bytes | bytearray):
        return bytes(source)
    if isinstance(source, str | os.PathLike):
        return Path(source).read_bytes()
    return source.read()


def data_uri(data: bytes) -> str:
    """`data:<mime>;base64,...`; the mime is sniffed from the header (the gateway decodes by content and
    names the input if the bytes are not an image, so unknown bytes still go, as octet-stream)."""
    try:
        with Image.open(io.BytesIO(data)) as opened:
            mime = Image.MIME.get(opened.format or "", "application/octet-stream")
    except (OSError, ValueError, Image.DecompressionBombError):
        mime = "application/octet-stream"
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
