"""Turn an image reference (http(s) URL, data URI or bare base64) into a decoded `Image`.

URLs are fetched by `gateway.fetch.ImageFetcher` (the SSRF guard). Every image is charged to
its request's `ImageBudget` (encoded bytes, pixels read from the header, fetch slots and a
deadline) before anything is decoded; hashing, header probes and decoding run on a pool of
their own, never on the event loop.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import functools
import hashlib
import io
import re
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from PIL import Image as PILImageModule
from PIL import ImageOps, UnidentifiedImageError
from PIL.Image import Image as PILImage

from gateway.config import ImageSettings, LimitSettings
from gateway.errors import InvalidRequest
from gateway.fetch import ImageFetcher
from providers.base import Image

FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")
SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")
WIDE_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I"}


def decode_image(data: bytes, *, max_pixels: int, param: str, sha256: str | None = None) -> Image:
    """Open, bound, orient and convert to RGB; every failure is the client's 400.

    `sha256` is the digest already taken for the cache key, so the bytes are hashed once.
    """
    if not data:
        raise InvalidRequest(f"{param} is empty", param=param, code="invalid_image")
    with _client_errors(param), warnings.catch_warnings():
        warnings.simplefilter("error", PILImageModule.DecompressionBombWarning)
        opened = PILImageModule.open(io.BytesIO(data), formats=FORMATS)
        width, height = opened.size
        if width * height > max_pixels:
            raise InvalidRequest(
                f"{param} is {width}x{height} pixels, over the limit of {max_pixels}",
                param=param,
                code="image_too_large",
            )
        mime = PILImageModule.MIME.get(opened.format or "", "application/octet-stream")
        opened.seek(0)  # first frame of animations
        oriented = ImageOps.exif_transpose(opened)
        rgb = _to_eight_bits(oriented).convert("RGB")
        rgb.load()
    return Image(data=data, mime=mime, sha256=sha256 or hashlib.sha256(data).hexdigest(), pixels=rgb)


def _to_eight_bits(image: PILImage) -> PILImage:
    """16-bit greyscale scaled to 8 bits: PIL's own conversion clips every value over 255 to white."""
    if image.mode not in WIDE_MODES:
        return image
    wide = np.asarray(image, dtype=np.uint32)
    return PILImageModule.fromarray((wide >> 8).clip(0, 255).astype(np.uint8), "L")


def probe_image(data: bytes, *, param: str) -> tuple[int, int]:
    """Width and height from the header alone, so pixel limits are checked before anything is decoded."""
    with _client_errors(param), warnings.catch_warnings():
        warnings.simplefilter("ignore", PILImageModule.DecompressionBombWarning)
        with PILImageModule.open(io.BytesIO(data), formats=FORMATS) as opened:
            return opened.size


@contextlib.contextmanager
def _client_errors(param: str) -> Iterator[None]:
    """PIL's errors, where they enter, as the client's 400 naming its input."""
    try:
        yield
    except (PILImageModule.DecompressionBombError, PILImageModule.DecompressionBombWarning) as exc:
        raise InvalidRequest(f"{param} is too large to decode: {exc}", param=param, code="image_too_large") from exc
    except UnidentifiedImageError as exc:
        raise InvalidRequest(
            f"{param} is not an image in a supported format (png, jpeg, webp, gif, bmp)",
            param=param,
            code="invalid_image",
        ) from exc
    except (OSError, ValueError, SyntaxError) as exc:  # truncated or corrupt files
        raise InvalidRequest(f"{param} could not be decoded: {exc}", param=param, code="invalid_image") from exc


def decode_base64(text: str, *, param: str) -> bytes:
    """Strict standard base64 (whitespace ignored)."""
    compact = "".join(text.split())
    try:
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidRequest(f"{param} is not valid base64: {exc}", param=param, code="invalid_base64") from exc


def parse_data_uri(uri: str, *, param: str) -> bytes:
    """`data:[<mime>];base64,<payload>`; only base64 payloads carry images."""
    header, sep, payload = uri.partition(",")
    if not sep or not header.endswith(";base64"):
        raise InvalidRequest(
            f"{param} is a data URI without ';base64,': images must be base64-encoded",
            param=param,
            code="invalid_base64",
        )
    return decode_base64(payload, param=param)


@dataclass(frozen=True, slots=True)
class EncodedImage:
    """Image bytes as received, not yet decoded: enough to hash (and so to look up a cache)."""

    data: bytes
    sha256: str
    param: str
    width: int = 0
    height: int = 0


class ImageBudget:
    """One request's share: encoded bytes and pixels left, its own fetch slots, and a deadline for
    all its fetches. Charged where bytes are read and before any pixel is decoded."""

    def __init__(self, limits: LimitSettings, settings: ImageSettings) -> None:
        self.limits = limits
        self.bytes_left = limits.max_request_image_bytes
        self.pixels_left = limits.max_request_pixels
        self.fetch_slots = asyncio.Semaphore(settings.max_fetches_per_request)
        self.deadline = asyncio.get_running_loop().time() + settings.request_fetch_timeout_s

    def charge_bytes(self, size: int, param: str) -> None:
        self.bytes_left -= size
        if self.bytes_left < 0:
            raise InvalidRequest(
                f"{param} takes the request's images over {self.limits.max_request_image_bytes} encoded bytes "
                "(limits.max_request_image_bytes)",
                param=param,
                code="image_too_large",
            )

    def charge_pixels(self, pixels: int, param: str) -> None:
        self.pixels_left -= pixels
        if self.pixels_left < 0:
            raise InvalidRequest(
                f"{param} takes the request's images over {self.limits.max_request_pixels} pixels "
                "(limits.max_request_pixels)",
                param=param,
                code="image_too_large",
            )


class ImageLoader:
    """Fetches and decodes images under the configured limits."""

    def __init__(self, settings: ImageSettings, limits: LimitSettings | None = None) -> None:
        self.settings = settings
        self.limits = limits or LimitSettings()
        self._fetcher = ImageFetcher(settings)
        # Its own pool: decoding never waits behind DNS lookups or other blocking work on the default one.
        self._decode_pool = ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="image-decode")

    def budget(self) -> ImageBudget:
        """A fresh budget for one request."""
        return ImageBudget(self.limits, self.settings)

    async def aclose(self) -> None:
        await self._fetcher.aclose()
        self._decode_pool.shutdown(wait=False, cancel_futures=True)

    async def decode(self, image: EncodedImage) -> Image:
        """Decode on the decode pool: PIL work never runs on the event loop."""
        decode = functools.partial(
            decode_image, image.data, max_pixels=self.limits.max_image_pixels, param=image.param, sha256=image.sha256
        )
        return await asyncio.get_running_loop().run_in_executor(self._decode_pool, decode)

    async def load(self, source: str, *, param: str, budget: ImageBudget | None = None) -> EncodedImage:
        """The bytes behind `source` (URL, data URI or bare base64): size-checked, hashed, and its header
        read, so the request's byte and pixel budgets are charged before anything is decoded."""
        budget = budget or self.budget()
        data = await self._read(source, param=param, budget=budget)
        if data is None:  # inline: base64 is decoded on the pool, not the event loop (20 MB is ~20 ms)
            data = await asyncio.get_running_loop().run_in_executor(
                self._decode_pool, functools.partial(decode_inline, source, param=param)
            )
        if len(data) > self.limits.max_image_bytes:
            raise InvalidRequest(
                f"{param} is {len(data)} bytes, over the limit of {self.limits.max_image_bytes} "
                "(limits.max_image_bytes)",
                param=param,
                code="image_too_large",
            )
        if not data:
            raise InvalidRequest(f"{param} is empty", param=param, code="invalid_image")
        budget.charge_bytes(len(data), param)
        inspect = functools.partial(_inspect, data, param=param)
        digest, (width, height) = await asyncio.get_running_loop().run_in_executor(self._decode_pool, inspect)
        if width * height > self.limits.max_image_pixels:
            raise InvalidRequest(
                f"{param} is {width}x{height} pixels, over the limit of {self.limits.max_image_pixels} "
                "(limits.max_image_pixels)",
                param=param,
                code="image_too_large",
            )
        budget.charge_pixels(width * height, param)
        return EncodedImage(data, digest, param, width, height)

    async def _read(self, source: str, *, param: str, budget: ImageBudget) -> bytes | None:
        """A URL's bytes, fetched under the request's budget; None for inline data (checked for size here)."""
        scheme_match = SCHEME.match(source) if "://" in source[:16] or source.startswith("data:") else None
        scheme = scheme_match.group(1).lower() if scheme_match else ""
        if scheme in ("http", "https"):
            try:
                async with asyncio.timeout_at(budget.deadline), budget.fetch_slots:
                    return await self._fetcher.fetch(source, param=param, max_bytes=self.limits.max_image_bytes)
            except TimeoutError as exc:
                raise InvalidRequest(
                    f"{param}: the request's image fetches took over {self.settings.request_fetch_timeout_s:g}s "
                    "(images.request_fetch_timeout_s)",
                    param=param,
                    code="image_fetch_failed",
                ) from exc
        if scheme not in ("", "data"):
            raise InvalidRequest(
                f"{param} uses the scheme '{scheme}'; send an http(s) URL, a data URI or base64",
                param=param,
                code="invalid_image_url",
            )
        if len(source) > 4 * (self.limits.max_image_bytes // 3) + 1024:  # refused before decoding base64
            raise InvalidRequest(
                f"{param} is over the limit of {self.limits.max_image_bytes} bytes (limits.max_image_bytes)",
                param=param,
                code="image_too_large",
            )
        return None


def decode_inline(source: str, *, param: str) -> bytes:
    """A data URI's or bare base64's bytes."""
    return parse_data_uri(source, param=param) if source.startswith("data:") else decode_base64(source, param=param)


def _inspect(data: bytes, *, param: str) -> tuple[str, tuple[int, int]]:
    return hashlib.sha256(data).hexdigest(), probe_image(data, param=param)
