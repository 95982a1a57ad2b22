"""One keep-alive connection pool per upstream: `UpstreamPool` sends to a plain `http://` URL reached
without a proxy on `providers.http_direct` (asyncio protocols and httptools' parser: a local
deployment's path), otherwise on aiohttp (`providers.http_aiohttp`), or on httpcore (httpx's own
transport layer) when the environment names an HTTPS or SOCKS proxy, which aiohttp does not speak.

A call through `httpx.AsyncClient` costs ~0.8 ms of CPU on top of the bytes it moves (URL merging,
cookies, auth and redirect machinery, events, response decoders); the same POST on the httpcore pool
under it ~0.5 ms, and ~0.4 ms on `providers.http_backend`'s lean asyncio streams (one run). Through
the gateway a miss cost ~0.2 ms less CPU on aiohttp than on that httpcore pool at 1 client and
~0.6 ms less at 16 (httpcore's pool walks all of its connections on every request and every
release). Side by side in a later run (uvloop, POSTs one after another to `bench/fake_upstream.py`):
aiohttp ~0.19-0.24 ms of CPU and ~0.28-0.33 ms of wall time a POST, the direct pool ~0.08 and ~0.18,
a raw asyncio-streams client ~0.08 and ~0.17. What the httpx client did is kept by all three pools
(the direct pool takes no proxy and no TLS): proxies from the environment (`HTTP(S)_PROXY`,
`ALL_PROXY`, `NO_PROXY`, as urllib reads them, resolved once per pool), certificates from
`SSL_CERT_FILE` / `SSL_CERT_DIR` (else certifi), credentials in the URL as Basic auth, gzip and
deflate answers, its User-Agent, and no redirects followed. Errors are httpcore's (the aiohttp pool
translates its own): `providers.http_errors` translates them.
"""

from __future__ import annotations

import base64
import urllib.request
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import httpcore
import httpx

from providers.http_backend import StreamBackend

if TYPE_CHECKING:
    from providers.http_aiohttp import AiohttpPool
    from providers.http_direct import DirectPool

KEEPALIVE_EXPIRY_S = 5.0  # httpx's default: an idle connection older than this is not reused
ACCEPT_ENCODING = b"gzip, deflate"
USER_AGENT = f"python-httpx/{httpx.__version__}".encode()
AnyPool = httpcore.AsyncConnectionPool | httpcore.AsyncHTTPProxy | httpcore.AsyncSOCKSProxy
Transport = Literal["auto", "direct", "aiohttp", "httpcore"]
DROPPED = (httpcore.RemoteProtocolError, httpcore.ReadError, httpcore.WriteError)
"""httpcore's words for a connection that broke before its answer ("Server disconnected without sending
a response", a reset): sent once more, since an embeddings request is a pure function of its body."""


@dataclass(frozen=True, slots=True)
class Reply:
    """An upstream's answer, its body read whole and decompressed."""

    status: int
    headers: list[tuple[bytes, bytes]]
    content: bytes
    reason: bytes = b""

    def as_httpx(self) -> httpx.Response:
        """The answer as an `httpx.Response`, for the error helpers (only error answers pay for it)."""
        extensions = {"reason_phrase": self.reason} if self.reason else None
        return httpx.Response(self.status, headers=self.headers, content=self.content, extensions=extensions)


def environment_proxy(url: httpx.URL) -> str | None:
    """The proxy the environment names for `url` (its scheme's, else `all`), unless `NO_PROXY` exempts it."""
    proxies = urllib.request.getproxies()
    proxy = proxies.get(url.scheme) or proxies.get("all")
    if not proxy or urllib.request.proxy_bypass(url.netloc.decode("ascii")):
        return None
    return proxy if "://" in proxy else f"http://{proxy}"


def fixed_headers(url: httpx.URL, headers: Mapping[str, str]) -> list[tuple[bytes, bytes]]:
    """The headers every POST to `url` carries, as httpx would send them; `headers` win over its
    defaults, and credentials in the URL win over `headers` as Basic auth (httpx's rule)."""
    fixed = {
        b"Host": url.netloc,
        b"Accept-Encoding": ACCEPT_ENCODING,
        b"Connection": b"keep-alive",
        b"User-Agent": USER_AGENT,
        **{name.encode("ascii"): value.encode("latin-1") for name, value in headers.items()},
    }
    if url.username or url.password:
        pair = f"{url.username}:{url.password}".encode()
        fixed[b"Authorization"] = b"Basic " + base64.b64encode(pair)
    return list(fixed.items())


def open_pool(url: httpx.URL, proxy_url: str | None, *, max_connections: int) -> AnyPool:
    """A pool for `url` as httpx's transport would build it (through `proxy_url`, if any), on the
    lean asyncio backend."""
    ssl_context = httpx.create_ssl_context()
    backend = StreamBackend()
    if proxy_url is None:
        return httpcore.AsyncConnectionPool(
            ssl_context=ssl_context,
            max_connections=max_connections,
            keepalive_expiry=KEEPALIVE_EXPIRY_S,
            network_backend=backend,
        )
    proxy = httpx.Proxy(proxy_url)
    target = httpcore.URL(
        scheme=proxy.url.raw_scheme, host=proxy.url.raw_host, port=proxy.url.port, target=proxy.url.raw_path
    )
    if proxy.url.scheme in ("http", "https"):
        return httpcore.AsyncHTTPProxy(
            proxy_url=target,
            proxy_auth=proxy.raw_auth,
            proxy_headers=proxy.headers.raw,
            proxy_ssl_context=proxy.ssl_context,
            ssl_context=ssl_context,
            max_connections=max_connections,
            keepalive_expiry=KEEPALIVE_EXPIRY_S,
            network_backend=backend,
        )
    if proxy.url.scheme in ("socks5", "socks5h"):
        return httpcore.AsyncSOCKSProxy(
            proxy_url=target,
            proxy_auth=proxy.raw_auth,
            ssl_context=ssl_context,
            max_connections=max_connections,
            keepalive_expiry=KEEPALIVE_EXPIRY_S,
            network_backend=backend,
        )
    raise ValueError(f"a proxy from the environment has the scheme {proxy.url.scheme!r}, not http, https or socks5")


def decompress(content: bytes, headers: list[tuple[bytes, bytes]]) -> bytes:
    """`content` undone of the `Content-Encoding` we offered (gzip, deflate); any other is left as sent.
    Raises `zlib.error` for a body that is not what its header says."""
    encoding = next((value for name, value in headers if name.lower() == b"content-encoding"), b"")
    for coding in (c.strip() for c in reversed(encoding.lower().split(b","))):
        if coding in (b"gzip", b"x-gzip"):
            content = zlib.decompress(content, zlib.MAX_WBITS | 16)
        elif coding == b"deflate":
            try:
                content = zlib.decompress(content)
            except zlib.error:  # some servers send raw deflate, without the zlib header
                content = zlib.decompress(content, -zlib.MAX_WBITS)
    return content


class UpstreamPool:
    """POSTs bodies to one URL over a bounded pool of keep-alive connections: the direct pool for plain
    http:// without a proxy, else aiohttp's, or httpcore's where the environment's proxy needs it
    (`transport` forces one, for tests and comparisons)."""

    def __init__(
        self, url: str, headers: Mapping[str, str], *, max_connections: int, transport: Transport = "auto"
    ) -> None:
        from providers.http_aiohttp import AiohttpPool  # they build on this module's helpers
        from providers.http_direct import DirectPool

        parsed = httpx.URL(url)
        proxy = environment_proxy(parsed)
        if transport == "auto":
            if proxy is None:
                transport = "direct" if parsed.scheme == "http" else "aiohttp"
            else:
                transport = "aiohttp" if proxy.startswith("http://") else "httpcore"
        if transport == "direct" and proxy is not None:
            raise ValueError("the direct pool does not go through a proxy")
        self.transport = transport
        self.pool: DirectPool | AiohttpPool | HttpcorePool
        if transport == "direct":
            self.pool = DirectPool(url, headers, max_connections=max_connections)
        elif transport == "aiohttp":
            self.pool = AiohttpPool(url, headers, proxy, max_connections=max_connections)
        else:
            self.pool = HttpcorePool(url, headers, proxy, max_connections=max_connections)

    async def post(self, content: bytes, *, timeout_s: float, connect_timeout_s: float) -> Reply:
        """The answer to one POST of `content`; httpcore's errors (see the pools)."""
        return await self.pool.post(content, timeout_s=timeout_s, connect_timeout_s=connect_timeout_s)

    async def aclose(self) -> None:
        await self.pool.aclose()


class HttpcorePool:
    """POSTs bodies to one URL over httpcore's bounded pool of keep-alive connections."""

    def __init__(self, url: str, headers: Mapping[str, str], proxy: str | None, *, max_connections: int) -> None:
        parsed = httpx.URL(url)
        self.url = httpcore.URL(
            scheme=parsed.raw_scheme, host=parsed.raw_host, port=parsed.port, target=parsed.raw_path
        )
        self.headers = fixed_headers(parsed, headers)
        self.pool = open_pool(parsed, proxy, max_connections=max_connections)

    async def post(self, content: bytes, *, timeout_s: float, connect_timeout_s: float) -> Reply:
        """The answer to one POST of `content` (`timeout_s` bounds each read, write and the wait for a
        connection); httpcore's errors as they are. A connection that breaks before its answer (a
        keep-alive connection the server had just closed) costs one more try, as on the aiohttp pool."""
        headers = [*self.headers, (b"Content-Length", str(len(content)).encode("ascii"))]
        timeouts = {"connect": connect_timeout_s, "read": timeout_s, "write": timeout_s, "pool": timeout_s}
        extensions = {"timeout": timeouts}
        try:
            response = await self.pool.request(
                b"POST", self.url, headers=headers, content=content, extensions=extensions
            )
        except DROPPED:
            response = await self.pool.request(
                b"POST", self.url, headers=headers, content=content, extensions=extensions
            )
        content = decompress(response.content, response.headers)
        return Reply(response.status, response.headers, content, response.extensions.get("reason_phrase", b""))

    async def aclose(self) -> None:
        await self.pool.aclose()
