"""A plain `http://` upstream reached directly (no proxy, no TLS): a keep-alive pool on asyncio
protocols, answers parsed by httptools (llhttp in C, uvicorn's own parser).

Why: that is a local deployment's path (vLLM, TEI, Infinity or another gateway on the same network),
where the upstream answers in a millisecond and the client's own cost shows. Measured against
`bench/fake_upstream.py` (uvloop, one POST after another): aiohttp's session costs ~190-240 us of
CPU and ~280-330 us of wall time a POST, this pool ~85 us and ~180 us, about what a raw asyncio
streams client costs. Through the gateway an idle 1-item miss costs ~0.12-0.2 ms less CPU.
aiohttp builds a request object, a header multidict, a URL, a response object, a stream reader and
timer contexts for every POST; here one write of a prebuilt head and the body, one parser callback
per header. Hosted APIs are https and keep aiohttp (`providers.http_transport.UpstreamPool` picks).

What the other pools do is kept: the fixed headers (`fixed_headers`: httpx's, credentials in the URL
as Basic auth), gzip and deflate undone (`decompress`), no redirects followed, no cookies, idle
connections reused for `KEEPALIVE_EXPIRY_S` (the most recent first), at most `max_connections` open
(a wait for one bounded by `timeout_s`), `timeout_s` without progress (a read, or the socket taking
more of a large body) ends a call, and a POST whose connection closes before any answer is sent once
more on another (an embeddings request is a pure function of its body: RFC 9112, 9.3.1). A call
cancelled or failed mid-answer closes its connection: it is never reused in an unknown state.
Errors are httpcore's, so `providers.http_errors` translates one family.
"""

from __future__ import annotations

import asyncio
import socket
from collections import deque
from collections.abc import Mapping
from typing import cast

import aiohappyeyeballs
import httpcore
import httptools
import httpx

from providers.http_transport import KEEPALIVE_EXPIRY_S, Reply, decompress, fixed_headers

HAPPY_EYEBALLS_DELAY_S = 0.25  # aiohttp's: the next address is tried after this long without a connection
SINGLE_WRITE_BYTES = 64 * 1024
"""Bodies up to this size go out in one write with the head (one copy); larger ones as two writes."""


class Dropped(httpcore.RemoteProtocolError):
    """The connection closed or was reset before any byte of an answer: worth sending once more."""


class _Exchange(asyncio.Protocol):
    """One keep-alive connection carrying one request at a time: sends it, parses the answer."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.answer: asyncio.Future[Reply] | None = None
        self.closed = False
        self.keep_alive = False
        self.idle_since = 0.0
        self.progress = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self._start_answer()

    def _start_answer(self) -> None:
        self.headers: list[tuple[bytes, bytes]] = []
        self.chunks: list[bytes] = []
        self.reason = b""
        self.begun = False
        self.headers_done = False
        self.framed = False  # a Content-Length or chunked body: it does not end with the connection

    def send(self, request: bytes, body: bytes | None, timeout_s: float) -> asyncio.Future[Reply]:
        """Write a request (`body` separately when it is large); the answer arrives on the future."""
        assert self.transport is not None
        self.answer = self.loop.create_future()
        self.keep_alive = False  # until this answer says otherwise
        self._start_answer()
        self.progress = self.loop.time()
        self.timer = self.loop.call_later(timeout_s, self._check_progress, timeout_s)
        self.transport.write(request)
        if body is not None:
            self.transport.write(body)
        return self.answer

    def finish(self) -> None:
        """The call is over (answered, failed or cancelled)."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        answer = self.answer
        if answer is not None and (not answer.done() or answer.cancelled()):  # left mid-answer: unknown state
            answer.cancel()
            self.abort()
        self.answer = None

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def _check_progress(self, timeout_s: float) -> None:
        remaining = self.progress + timeout_s - self.loop.time()
        if remaining > 0:
            self.timer = self.loop.call_later(remaining, self._check_progress, timeout_s)
            return
        self.timer = None
        self._fail(httpcore.ReadTimeout("no answer in time"))
        self.abort()

    def _fail(self, error: Exception) -> None:
        if self.answer is not None and not self.answer.done():
            self.answer.set_exception(error)

    # --- asyncio.Protocol ---

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's has its methods without subclassing it

    def data_received(self, data: bytes) -> None:
        self.progress = self.loop.time()
        if self.answer is None or self.answer.done():  # bytes nobody asked for: the connection is spoilt
            self.abort()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(httpcore.RemoteProtocolError(f"the upstream's answer is not valid HTTP/1.1: {exc}"))
            self.abort()

    def resume_writing(self) -> None:  # the socket took more of a large body: progress
        self.progress = self.loop.time()

    def eof_received(self) -> bool:
        return False  # close our side too; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.answer is None or self.answer.done():
            return
        if self.headers_done and not self.framed:  # a body that ends with the connection (HTTP/1.0 style)
            self._complete(keep_alive=False)
        elif self.begun:
            self._fail(httpcore.ReadError(f"the connection closed in the middle of the answer ({exc or 'EOF'})"))
        else:
            self._fail(Dropped(f"Server disconnected without sending a response ({exc or 'EOF'})"))

    # --- httptools' callbacks ---

    def on_message_begin(self) -> None:
        if self.answer is None or self.answer.done():  # a second answer nobody asked for: spoilt
            self.abort()
        self.begun = True

    def on_status(self, status: bytes) -> None:
        self.reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        lowered = name.lower()
        if lowered == b"content-length" or (lowered == b"transfer-encoding" and b"chunked" in value.lower()):
            self.framed = True
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.headers_done = True

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)

    def on_message_complete(self) -> None:
        if self.parser.get_status_code() < 200:  # an interim answer (100 Continue): the real one follows
            self._start_answer()
            return
        self._complete(keep_alive=self.parser.should_keep_alive())

    def _complete(self, *, keep_alive: bool) -> None:
        self.keep_alive = keep_alive
        content = self.chunks[0] if len(self.chunks) == 1 else b"".join(self.chunks)
        if self.answer is not None and not self.answer.done():
            self.answer.set_result(Reply(self.parser.get_status_code(), self.headers, content, self.reason))


Waiter = asyncio.Future[_Exchange | None]
"""A caller waiting for a connection: handed an idle one, or None for the right to open one."""


class DirectPool:
    """POSTs bodies to one plain `http://` URL over a bounded pool of keep-alive connections."""

    def __init__(self, url: str, headers: Mapping[str, str], *, max_connections: int) -> None:
        parsed = httpx.URL(url)
        if parsed.scheme != "http":
            raise ValueError(f"the direct pool speaks plain http://, not {parsed.scheme}://")
        self.host = parsed.host
        self.port = parsed.port or 80
        lines = b"".join(name + b": " + value + b"\r\n" for name, value in fixed_headers(parsed, headers))
        self.head = b"POST " + parsed.raw_path + b" HTTP/1.1\r\n" + lines + b"Content-Length: "
        self.max_connections = max_connections
        self.idle: list[_Exchange] = []
        self.open = 0  # connections open or being opened, idle ones included
        self.waiters: deque[Waiter] = deque()
        self.closing = False

    async def post(self, content: bytes, *, timeout_s: float, connect_timeout_s: float) -> Reply:
        """The answer to one POST of `content` (`timeout_s` bounds the wait for a free connection and
        any time without progress; `connect_timeout_s` a new connection); errors are httpcore's."""
        head = self.head + str(len(content)).encode("ascii") + b"\r\n\r\n"
        request, body = (head + content, None) if len(content) <= SINGLE_WRITE_BYTES else (head, content)
        try:
            reply = await self._call(request, body, timeout_s, connect_timeout_s)
        except Dropped:
            reply = await self._call(request, body, timeout_s, connect_timeout_s)
        return Reply(reply.status, reply.headers, decompress(reply.content, reply.headers), reply.reason)

    async def _call(self, request: bytes, body: bytes | None, timeout_s: float, connect_timeout_s: float) -> Reply:
        connection = await self._acquire(timeout_s, connect_timeout_s)
        try:
            reply = await connection.send(request, body, timeout_s)
        finally:
            connection.finish()
            self._release(connection)
        return reply

    async def _acquire(self, timeout_s: float, connect_timeout_s: float) -> _Exchange:
        now = asyncio.get_running_loop().time()
        while self.idle:
            connection = self.idle.pop()  # the most recently used: the likeliest to be alive
            stale = now - connection.idle_since > KEEPALIVE_EXPIRY_S
            if stale or connection.closed or connection.transport is None or connection.transport.is_closing():
                self._discard(connection)
                continue
            return connection
        if self.open < self.max_connections:
            return await self._connect(connect_timeout_s)
        waiter: Waiter = asyncio.get_running_loop().create_future()
        self.waiters.append(waiter)
        try:
            async with asyncio.timeout(timeout_s):
                try:
                    handed = await waiter
                except asyncio.CancelledError:
                    self._pass_on(waiter)
                    raise
        except TimeoutError:
            raise httpcore.PoolTimeout("no connection free in time") from None
        return handed if handed is not None else await self._connect(connect_timeout_s, granted=True)

    async def _connect(self, connect_timeout_s: float, *, granted: bool = False) -> _Exchange:
        """A new connection; `granted`: its place was counted by whoever handed it over."""
        if not granted:
            self.open += 1
        if self.closing:  # a caller that waited while the pool was being closed
            self._vacate()
            raise httpcore.ConnectError("the connection pool is closed")
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(connect_timeout_s):
                _, connection = await loop.create_connection(lambda: _Exchange(loop), sock=await self._socket(loop))
        except TimeoutError:
            self._vacate()
            raise httpcore.ConnectTimeout("no connection made in time") from None
        except OSError as exc:
            self._vacate()
            raise httpcore.ConnectError(str(exc) or type(exc).__name__) from exc
        except BaseException:
            self._vacate()
            raise
        return connection

    async def _socket(self, loop: asyncio.AbstractEventLoop) -> socket.socket:
        """A connected socket to the upstream: every address the name resolves to, raced with happy
        eyeballs as aiohttp does (uvloop's `create_connection` tries one address after another, so an
        unreachable IPv6 address would spend the whole connect timeout)."""
        addresses = await loop.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)
        sock = await aiohappyeyeballs.start_connection(addresses, happy_eyeballs_delay=HAPPY_EYEBALLS_DELAY_S)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def _release(self, connection: _Exchange) -> None:
        """A connection back from a call: to a waiting caller, to the idle list, or closed."""
        if connection.closed or not connection.keep_alive or self.closing:
            self._discard(connection)
            return
        connection.idle_since = asyncio.get_running_loop().time()
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(connection)
                return
        self.idle.append(connection)

    def _discard(self, connection: _Exchange) -> None:
        if not connection.closed and connection.transport is not None:
            connection.closed = True
            connection.transport.close()
        self._vacate()

    def _vacate(self) -> None:
        """One place fewer is taken: a waiting caller may open a connection in it."""
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.open -= 1

    def _pass_on(self, waiter: Waiter) -> None:
        """A waiter given up (timed out or cancelled): what it was handed goes to the next one."""
        if not waiter.done() or waiter.cancelled():
            if waiter in self.waiters:
                self.waiters.remove(waiter)
            return
        handed = waiter.result()
        if handed is None:
            self._vacate()
        else:
            self._release(handed)

    async def aclose(self) -> None:
        self.closing = True
        idle, self.idle = self.idle, []
        for connection in idle:
            self._discard(connection)
