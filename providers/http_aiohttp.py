"""One keep-alive connection pool per upstream, on aiohttp's client (its HTTP/1.1 parser is C, llhttp):
for https upstreams and http proxies. A POST costs ~0.2 ms of CPU on it (uvloop, against
`bench/fake_upstream.py`), less than the httpcore pool and more than the direct pool
(`providers.http_direct`), which serves plain http:// without a proxy.
`providers.http_transport.UpstreamPool` picks; a proxy aiohttp does not speak (HTTPS or SOCKS) goes
to httpcore.

The httpcore pool's behaviour is kept: the environment's proxy is resolved once by the caller
(aiohttp's `trust_env` would ask urllib on every request), certificates from `SSL_CERT_FILE` /
`SSL_CERT_DIR` (else certifi), credentials in the URL as Basic auth, gzip and deflate undone by
`providers.http_transport.decompress` (one decoder for both pools), httpx's User-Agent, no redirects,
no cookies, idle connections kept `KEEPALIVE_EXPIRY_S`, at most `max_connections` open. A POST whose
connection the server drops before any answer (a keep-alive connection it had just closed) is sent
once more; the pool drops connections it saw close, so the second goes on another or a fresh one.
An embeddings request is a pure function of its body, so resending it is safe (RFC 9112, 9.3.1).
aiohttp's errors become httpcore's here, so `providers.http_errors` translates one family.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import aiohttp
import httpcore
import httpx
from yarl import URL

from providers.http_transport import KEEPALIVE_EXPIRY_S, Reply, decompress, fixed_headers


def dropped(error: aiohttp.ClientError) -> bool:
    """The connection went away with no answer (closed or reset): a keep-alive connection the server
    had just closed, worth sending once more; not a connection that could not be made."""
    return isinstance(error, aiohttp.ServerDisconnectedError | aiohttp.ClientOSError) and not isinstance(
        error, aiohttp.ClientConnectorError
    )


@contextmanager
def as_httpcore_errors() -> Iterator[None]:
    """aiohttp's errors as the httpcore errors that `providers.http_errors` translates."""
    try:
        yield
    except aiohttp.ConnectionTimeoutError as exc:  # a free connection (pool) or a TCP connect, not in time
        raise httpcore.ConnectTimeout(str(exc) or "no connection in time") from exc
    except TimeoutError as exc:  # aiohttp's SocketTimeoutError: a read, past `sock_read`
        raise httpcore.ReadTimeout(str(exc) or "no answer in time") from exc
    except aiohttp.ClientProxyConnectionError as exc:
        raise httpcore.ProxyError(str(exc)) from exc
    except aiohttp.ClientConnectorError as exc:  # refused, DNS, TLS handshake and certificates
        raise httpcore.ConnectError(str(exc)) from exc
    except aiohttp.ClientHttpProxyError as exc:
        raise httpcore.ProxyError(f"the proxy answered {exc.status}: {exc.message}") from exc
    except aiohttp.ClientResponseError as exc:  # an answer that is not HTTP/1.1
        raise httpcore.RemoteProtocolError(exc.message or str(exc)) from exc
    except aiohttp.ClientPayloadError as exc:  # a body cut short
        raise httpcore.ReadError(str(exc)) from exc
    except aiohttp.ServerDisconnectedError as exc:
        raise httpcore.RemoteProtocolError(exc.message or "the server disconnected without an answer") from exc
    except (aiohttp.ClientError, OSError) as exc:
        raise httpcore.ReadError(str(exc) or type(exc).__name__) from exc


class AiohttpPool:
    """POSTs bodies to one URL over a bounded pool of keep-alive connections."""

    def __init__(self, url: str, headers: Mapping[str, str], proxy: str | None, *, max_connections: int) -> None:
        """`proxy`: the environment's, resolved once by the caller (`environment_proxy`)."""
        self.url = URL(url).with_user(None)  # the credentials travel as the Authorization header
        if proxy is not None and not proxy.startswith("http://"):
            raise ValueError(f"aiohttp takes http:// proxies only, not {proxy.split('://')[0]}")
        self.proxy = URL(proxy) if proxy is not None else None
        connector = aiohttp.TCPConnector(
            limit=max_connections,
            limit_per_host=0,
            keepalive_timeout=KEEPALIVE_EXPIRY_S,
            ssl=httpx.create_ssl_context(),
        )
        fixed = fixed_headers(httpx.URL(url), headers)
        self.session = aiohttp.ClientSession(
            connector=connector,
            headers={name.decode("ascii"): value.decode("latin-1") for name, value in fixed},
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
            trust_env=False,
        )
        self._timeout = (0.0, 0.0, aiohttp.ClientTimeout())

    def _timeouts(self, timeout_s: float, connect_timeout_s: float) -> aiohttp.ClientTimeout:
        """aiohttp's timeouts for these limits; the last one is kept (a retry's shorter budget is rare)."""
        last_read, last_connect, timeout = self._timeout
        if (last_read, last_connect) != (timeout_s, connect_timeout_s):
            timeout = aiohttp.ClientTimeout(
                total=None, connect=timeout_s, sock_connect=connect_timeout_s, sock_read=timeout_s
            )
            self._timeout = (timeout_s, connect_timeout_s, timeout)
        return timeout

    async def post(self, content: bytes, *, timeout_s: float, connect_timeout_s: float) -> Reply:
        """The answer to one POST of `content` (`timeout_s` bounds each read and the wait for a free
        connection; aiohttp has no write timeout: the caller's deadline bounds the whole call); errors
        are httpcore's."""
        limits = self._timeouts(timeout_s, connect_timeout_s)
        with as_httpcore_errors():
            try:
                return await self._send(content, limits)
            except aiohttp.ClientError as error:
                if not dropped(error):
                    raise
            return await self._send(content, limits)

    async def _send(self, content: bytes, limits: aiohttp.ClientTimeout) -> Reply:
        async with self.session.post(
            self.url,
            data=content,
            timeout=limits,
            proxy=self.proxy,
            allow_redirects=False,
        ) as response:
            body = await response.read()
            headers = list(response.raw_headers)
            reason = (response.reason or "").encode("latin-1")
        return Reply(response.status, headers, decompress(body, headers), reason)

    async def aclose(self) -> None:
        await self.session.close()
