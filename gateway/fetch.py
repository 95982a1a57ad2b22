"""Fetch one image URL for a client without letting the URL reach what it must not.

Every hop is parsed as httpx parses it (IDNA 2008), its host resolved once on our own threads
(the default executor decodes images), every address checked, and the connection made to a
checked address, the original name kept for `Host` and for TLS (SNI and the certificate check),
so a second lookup can never answer differently. Bodies are read raw under a byte cap
(`Accept-Encoding: identity`; any Content-Encoding is refused, so nothing is decompressed), and
the wait for a fetch slot plus all hops share one timeout. Sending goes straight to an httpx
transport: no cookie jar, no proxies or certificates from the environment, no automatic redirects.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import logging
import re
import socket
import ssl
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import httpx

from gateway.config import ImageSettings
from gateway.errors import InvalidRequest, clip

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[Sequence[IPAddress]]]
"""`(host, port) -> addresses`; raises OSError when the name does not resolve."""

logger = logging.getLogger(__name__)

# Not globally routable, although Python 3.11's `is_global` says they are.
_NOT_GLOBAL = tuple(
    ipaddress.ip_network(net)
    for net in (
        "192.0.0.0/24",  # IETF protocol assignments (3.11 lists only parts of it)
        "192.88.99.0/24",  # 6to4 relay anycast
        "::/96",  # IPv4-compatible IPv6, deprecated
        "64:ff9b:1::/48",  # local-use NAT64 (RFC 8215)
        "3fff::/20",  # documentation (RFC 9637)
    )
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_LABEL = re.compile(r"[a-z0-9_-]{1,63}", re.IGNORECASE)
_MAX_PORT = 65535


def is_forbidden_address(address: IPAddress) -> bool:
    """True unless `address` is globally routable unicast, judged also through the IPv4 address that
    an IPv4-mapped, 6to4, Teredo or NAT64 address carries, since packets to it reach that one."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return is_forbidden_address(address.ipv4_mapped)
        inner = address.sixtofour or (address.teredo[1] if address.teredo else None)
        if inner is None and address in _NAT64:
            inner = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if inner is not None and is_forbidden_address(inner):
            return True
    return not address.is_global or address.is_multicast or any(address in net for net in _NOT_GLOBAL)


def redact_url(url: str) -> str:
    """`scheme://host[:port]/path` of `url` for logs: no credentials, query or fragment; never raises."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    text = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"
    return "".join(c if c.isprintable() else f"%{ord(c):02X}" for c in text)


class ThreadedResolver:
    """`getaddrinfo` on a small pool of its own, so slow DNS never holds the default executor's threads."""

    def __init__(self, threads: int) -> None:
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="image-dns")

    async def __call__(self, host: str, port: int) -> list[IPAddress]:
        # Bytes, so Python's IDNA 2003 codec never re-spells the name httpx encoded.
        infos = await asyncio.get_running_loop().run_in_executor(
            self._pool, socket.getaddrinfo, host.encode("ascii"), port, 0, socket.SOCK_STREAM
        )
        # A scope id ("fe80::1%eth0") is dropped: such addresses are refused unless allowed, and an
        # allowed one then fails to connect rather than becoming a URL httpx cannot parse.
        return list(dict.fromkeys(ipaddress.ip_address(str(info[4][0]).partition("%")[0]) for info in infos))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class ImageFetcher:
    """GETs image URLs under the SSRF guard, a byte cap, a redirect cap and one timeout per URL."""

    def __init__(
        self,
        settings: ImageSettings,
        *,
        resolver: Resolver | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        """`resolver` replaces the system's (tests, or a DNS client of your own); `ssl_context` the
        certifi CA bundle (e.g. a corporate CA)."""
        self._settings = settings
        self._allowed = [ipaddress.ip_network(net, strict=False) for net in settings.allowed_private_networks]
        self._slots = asyncio.Semaphore(settings.max_concurrent_fetches)
        self._own_resolver: ThreadedResolver | None = None
        if resolver is None:
            resolver = self._own_resolver = ThreadedResolver(settings.dns_threads)
        self._resolve = resolver
        # No keep-alive: a pooled connection is keyed by IP, and reusing one made for another name
        # would send this name's request over a TLS session verified for the other.
        self._transport = httpx.AsyncHTTPTransport(
            verify=ssl_context or True, trust_env=False, limits=httpx.Limits(max_keepalive_connections=0)
        )

    async def aclose(self) -> None:
        """Close connections and the DNS threads."""
        await self._transport.aclose()
        if self._own_resolver is not None:
            self._own_resolver.close()

    async def fetch(self, url: str, *, param: str, max_bytes: int) -> bytes:
        """The body behind `url`, following up to `max_redirects` redirects; any failure is the client's 400."""
        timeout = self._settings.fetch_timeout_s
        try:
            async with asyncio.timeout(timeout), self._slots:
                return await self._follow(url, param=param, max_bytes=max_bytes)
        except TimeoutError as exc:
            raise _failed(param, f"fetching the image timed out after {timeout:g}s") from exc

    async def _follow(self, url: str, *, param: str, max_bytes: int) -> bytes:
        current = _parse(url, param=param)
        for _ in range(self._settings.max_redirects + 1):
            addresses = await self._checked_addresses(current, param=param)
            response = await self._send(current, addresses, param=param)
            try:
                if response.has_redirect_location:
                    current = _parse(response.headers["location"], param=param, base=current)
                    continue
                if response.status_code != 200:
                    raise _failed(param, f"the image URL answered HTTP {response.status_code}")
                return await _read_raw(response, param=param, max_bytes=max_bytes)
            except httpx.HTTPError as exc:
                raise _failed(param, f"the image could not be fetched ({type(exc).__name__})") from exc
            finally:
                await response.aclose()
        raise _failed(param, f"more than {self._settings.max_redirects} redirects")

    async def _checked_addresses(self, url: httpx.URL, *, param: str) -> list[IPAddress]:
        """Every address the host resolves to, once; one non-public address refuses them all."""
        host = _host(url)
        try:
            addresses = list(await self._resolve(host, url.port or _default_port(url)))
        except OSError as exc:
            raise _failed(param, f"the host {clip(host)} could not be resolved") from exc
        if not addresses:
            raise _failed(param, f"the host {clip(host)} has no address")
        for address in addresses:
            if is_forbidden_address(address) and not self._is_allowed(address):
                logger.info("refused image URL %s: it resolves to %s", redact_url(str(url)), address)
                raise InvalidRequest(
                    f"{param}: the URL points at a non-public address ({address}), which this gateway does not fetch",
                    param=param,
                    code="image_url_forbidden",
                )
        return addresses

    def _is_allowed(self, address: IPAddress) -> bool:
        """The address connected to (or the IPv4 it is a mapping of) is in `allowed_private_networks`."""
        mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
        return any(address in net or (mapped is not None and mapped in net) for net in self._allowed)

    async def _send(self, url: httpx.URL, addresses: list[IPAddress], *, param: str) -> httpx.Response:
        """GET `url` from the first checked address that accepts a connection."""
        headers = {"Host": url.netloc.decode("ascii"), "Accept-Encoding": "identity", "Accept": "image/*"}
        if url.username or url.password:
            credentials = f"{url.username}:{url.password}".encode()
            headers["Authorization"] = f"Basic {base64.b64encode(credentials).decode('ascii')}"
        extensions = {"sni_hostname": _host(url)} if url.scheme == "https" else {}
        refused: httpx.ConnectError | None = None
        for address in addresses:
            logger.debug("fetching image %s from %s", redact_url(str(url)), address)
            request = httpx.Request("GET", url.copy_with(host=str(address)), headers=headers, extensions=extensions)
            try:
                return await self._transport.handle_async_request(request)
            except httpx.ConnectError as exc:
                refused = exc
            except httpx.HTTPError as exc:
                raise _failed(param, f"the image could not be fetched ({type(exc).__name__})") from exc
        reason = clip(str(refused)) if refused is not None else "no address"
        raise _failed(param, f"could not connect to the image host {clip(_host(url))}: {reason}") from refused


async def _read_raw(response: httpx.Response, *, param: str, max_bytes: int) -> bytes:
    """The body as sent, never decoded, cut as soon as it passes `max_bytes`."""
    encodings = [e.strip() for value in response.headers.get_list("content-encoding") for e in value.split(",")]
    if any(e.lower() not in ("", "identity") for e in encodings):
        raise _failed(param, f"the image server sent an encoded body (Content-Encoding {clip(', '.join(encodings))})")
    too_large = InvalidRequest(f"{param} is over the limit of {max_bytes} bytes", param=param, code="image_too_large")
    declared = response.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and int(declared) > max_bytes:
        raise too_large
    body = bytearray()
    async for chunk in response.aiter_raw():
        body += chunk
        if len(body) > max_bytes:
            raise too_large
    return bytes(body)


def _parse(text: str, *, param: str, base: httpx.URL | None = None) -> httpx.URL:
    """`text` (relative to `base`, for a redirect) as httpx will request it, or invalid_image_url."""
    try:
        url = base.join(text) if base is not None else httpx.URL(text)
    except (httpx.InvalidURL, ValueError, TypeError) as exc:
        raise _invalid(param, f"{clip(text)} is not a valid URL") from exc
    if url.scheme not in ("http", "https"):
        raise _invalid(param, f"only http(s) URLs can be fetched, not {clip(url.scheme)}")
    if url.port is not None and not 0 < url.port <= _MAX_PORT:
        raise _invalid(param, f"the port {url.port} is out of range")
    host = url.raw_host.decode("ascii")
    if not _valid_host(host):
        raise _invalid(param, f"the host {clip(host)} is not a valid host name")
    return url


def _valid_host(host: str) -> bool:
    """An IP literal, or DNS labels of 1 to 63 letters, digits, '-' or '_' (one trailing dot allowed)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        name = host.removesuffix(".")
        return 0 < len(name) <= 253 and all(_LABEL.fullmatch(label) for label in name.split("."))
    return True


def _host(url: httpx.URL) -> str:
    """The name to resolve and to present to TLS: the URL's host without the root's trailing dot."""
    return url.raw_host.decode("ascii").removesuffix(".")


def _default_port(url: httpx.URL) -> int:
    return 443 if url.scheme == "https" else 80


def _invalid(param: str, why: str) -> InvalidRequest:
    return InvalidRequest(f"{param}: {why}", param=param, code="invalid_image_url")


def _failed(param: str, why: str) -> InvalidRequest:
    return InvalidRequest(f"{param}: {why}", param=param, code="image_fetch_failed")
