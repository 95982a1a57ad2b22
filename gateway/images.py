"""Turn an image reference (http(s) URL, data URI or bare base64) into a decoded `Image`.

URL fetching guards the network: http/https only, a total timeout, a byte cap, a redirect
cap, a process-wide limit on fetches in flight, and no private, loopback or link-local
destination unless the config allows its network. Decoding (PIL) runs on a worker thread.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import io
import ipaddress
import socket
import warnings
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import httpx
from PIL import Image as PILImageModule
from PIL import ImageOps, UnidentifiedImageError

from gateway.config import ImageSettings, LimitSettings
from gateway.errors import InvalidRequest
from providers.base import Image

FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def decode_image(data: bytes, *, max_pixels: int, param: str, sha256: str | None = None) -> Image:
    """Open, bound, orient and convert to RGB; every failure is the client's 400.

    `sha256` is the digest already taken for the cache key, so the bytes are hashed once.
    """
    if not data:
        raise InvalidRequest(f"{param} is empty", param=param, code="invalid_image")
    try:
        with warnings.catch_warnings():
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
            rgb = oriented.convert("RGB")
            rgb.load()
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
    return Image(data=data, mime=mime, sha256=sha256 or hashlib.sha256(data).hexdigest(), pixels=rgb)


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


class ImageLoader:
    """Fetches and decodes images under the configured limits."""

    def __init__(
        self, settings: ImageSettings, limits: LimitSettings | None = None, client: httpx.AsyncClient | None = None
    ) -> None:
        self.settings = settings
        self.limits = limits or LimitSettings()
        self._client = client or httpx.AsyncClient(follow_redirects=False, trust_env=False)
        self._owns_client = client is None
        self._fetch_slots = asyncio.Semaphore(settings.max_concurrent_fetches)
        self._allowed: list[IPNetwork] = [
            ipaddress.ip_network(n, strict=False) for n in settings.allowed_private_networks
        ]

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    async def decode(self, image: EncodedImage) -> Image:
        """Decode on a worker thread: PIL work never runs on the event loop."""
        return await asyncio.to_thread(
            decode_image, image.data, max_pixels=self.limits.max_image_pixels, param=image.param, sha256=image.sha256
        )

    async def load(self, source: str, *, param: str) -> EncodedImage:
        """The bytes behind `source` (URL, data URI or bare base64), size-checked and hashed."""
        scheme = urlsplit(source).scheme.lower() if "://" in source[:16] or source.startswith("data:") else ""
        if scheme in ("http", "https"):
            data = await self.fetch(source, param=param)
        elif scheme == "data":
            data = parse_data_uri(source, param=param)
        elif scheme:
            raise InvalidRequest(
                f"{param} uses the scheme '{scheme}'; send an http(s) URL, a data URI or base64",
                param=param,
                code="invalid_image_url",
            )
        else:
            data = decode_base64(source, param=param)
        if len(data) > self.limits.max_image_bytes:
            raise InvalidRequest(
                f"{param} is {len(data)} bytes, over the limit of {self.limits.max_image_bytes}",
                param=param,
                code="image_too_large",
            )
        if not data:
            raise InvalidRequest(f"{param} is empty", param=param, code="invalid_image")
        return EncodedImage(data, hashlib.sha256(data).hexdigest(), param)

    async def fetch(self, url: str, *, param: str) -> bytes:
        """GET `url` with the SSRF guard checked on every hop."""
        async with self._fetch_slots:
            try:
                async with asyncio.timeout(self.settings.fetch_timeout_s):
                    return await self._follow(url, param=param)
            except TimeoutError as exc:
                raise InvalidRequest(
                    f"{param}: fetching the image timed out after {self.settings.fetch_timeout_s:g}s",
                    param=param,
                    code="image_fetch_failed",
                ) from exc
            except httpx.HTTPError as exc:
                raise InvalidRequest(
                    f"{param}: the image could not be fetched ({type(exc).__name__}: {exc})",
                    param=param,
                    code="image_fetch_failed",
                ) from exc

    async def _follow(self, url: str, *, param: str) -> bytes:
        for _ in range(self.settings.max_redirects + 1):
            await self._check_destination(url, param=param)
            async with self._client.stream("GET", url) as response:
                if response.is_redirect and "location" in response.headers:
                    url = urljoin(url, response.headers["location"])
                    continue
                if response.status_code != 200:
                    raise InvalidRequest(
                        f"{param}: the image URL answered HTTP {response.status_code}",
                        param=param,
                        code="image_fetch_failed",
                    )
                return await self._read_capped(response, param=param)
        raise InvalidRequest(
            f"{param}: more than {self.settings.max_redirects} redirects", param=param, code="image_fetch_failed"
        )

    async def _read_capped(self, response: httpx.Response, *, param: str) -> bytes:
        limit = self.limits.max_image_bytes
        declared = response.headers.get("content-length", "")
        too_large = InvalidRequest(f"{param} is over the limit of {limit} bytes", param=param, code="image_too_large")
        if declared.isdigit() and int(declared) > limit:
            raise too_large
        buffer = bytearray()
        async for chunk in response.aiter_bytes():
            buffer += chunk
            if len(buffer) > limit:
                raise too_large
        return bytes(buffer)

    async def _check_destination(self, url: str, *, param: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InvalidRequest(f"{param}: only http(s) URLs can be fetched", param=param, code="invalid_image_url")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise InvalidRequest(
                f"{param}: the host {parts.hostname!r} could not be resolved", param=param, code="image_fetch_failed"
            ) from exc
        for info in infos:
            address = ipaddress.ip_address(info[4][0])
            if _is_internal(address) and not any(address in net for net in self._allowed):
                raise InvalidRequest(
                    f"{param}: the URL points at a private, loopback or link-local address ({address}), "
                    "which this gateway does not fetch",
                    param=param,
                    code="image_url_forbidden",
                )


def _is_internal(address: IPAddress) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return (
        address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_reserved
        or address.is_multicast
        or address.is_unspecified
    )
