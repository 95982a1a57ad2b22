"""httpcore's network layer on plain asyncio protocols, for the upstream pools.

httpcore's default backend goes through anyio: a cancel scope and a checkpoint around every read
and write, and each write its own syscall (headers and body of one request are two segments, each
waking the upstream). Here a read waits on one future, timeouts are one timer handle, and writes
are held until the next read, so a request leaves in one syscall; a body past `FLUSH_BYTES` is
sent as it comes, with the transport's flow control (and the write timeout) respected. Errors are
httpcore's own (`ConnectError`, `ReadTimeout`, ...), as its anyio backend raises them.
"""

from __future__ import annotations

import asyncio
import select
import socket
import ssl
import time
from collections.abc import Iterable
from typing import Any

import httpcore
from httpcore import AsyncNetworkBackend, AsyncNetworkStream

FLUSH_BYTES = 64 * 1024
POLL_AFTER_IDLE_S = 1.0
"""An idle connection is asked of the kernel whether the server closed it (httpcore asks before reusing
one) only once idle this long: sooner, what the loop has read is as current, and no server's keep-alive
timeout is that short. With 16 connections busy, the poll was ~80 us of every request."""
SocketOption = tuple[int, int, int] | tuple[int, int, bytes | bytearray] | tuple[int, int, None, int]


class _Receiver(asyncio.Protocol):
    """Buffers what arrives and wakes the one reader waiting for it; tracks flow control."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.closed = False
        self.error: BaseException | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.paused = False
        self.drained: asyncio.Future[None] | None = None

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self._wake()

    def eof_received(self) -> bool:
        self.closed = True
        self._wake()
        return False  # let the transport close itself

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.error = exc
        self._wake()
        self.resume_writing()

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        if self.drained is not None and not self.drained.done():
            self.drained.set_result(None)

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)


def _expire(future: asyncio.Future[None], error: type[Exception]) -> None:
    if not future.done():
        future.set_exception(error())


async def _wait(future: asyncio.Future[None], limit_s: float | None, error: type[Exception]) -> None:
    """Await `future`, failing it with `error` after `limit_s` seconds (None: no limit). One timer
    handle, where `asyncio.timeout` would also cancel and uncancel the task."""
    timer = None
    if limit_s is not None:
        timer = asyncio.get_running_loop().call_later(limit_s, _expire, future, error)
    try:
        await future
    finally:
        if timer is not None:
            timer.cancel()


class StreamConnection(AsyncNetworkStream):
    """One connection: reads from the protocol's buffer, writes held until the next read."""

    def __init__(self, transport: asyncio.Transport, receiver: _Receiver) -> None:
        self.transport = transport
        self.receiver = receiver
        self.pending: list[bytes] = []
        self.pending_bytes = 0
        self.last_read = time.monotonic()

    def _flush(self) -> bool:
        """Hand the held writes to the transport (one syscall); False, dropping them, if it is closing."""
        if not self.pending:
            return True
        if self.transport.is_closing():
            self.pending.clear()
            self.pending_bytes = 0
            return False
        self.transport.writelines(self.pending)
        self.pending.clear()
        self.pending_bytes = 0
        return True

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:  # noqa: ASYNC109 (httpcore's signature)
        if not buffer:
            return
        self.pending.append(buffer)
        self.pending_bytes += len(buffer)
        if self.pending_bytes < FLUSH_BYTES:
            return
        if not self._flush():
            raise httpcore.WriteError("the connection is closed")  # httpcore then reads what the server said
        receiver = self.receiver
        if receiver.paused and not receiver.closed:
            receiver.drained = asyncio.get_running_loop().create_future()
            try:
                await _wait(receiver.drained, timeout, httpcore.WriteTimeout)
            finally:
                receiver.drained = None

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:  # noqa: ASYNC109 (httpcore's)
        self._flush()  # on a closing connection the request is dropped: what the server sent, or EOF, is read
        receiver = self.receiver
        if not receiver.buffer and not receiver.closed:
            receiver.waiter = asyncio.get_running_loop().create_future()
            try:
                await _wait(receiver.waiter, timeout, httpcore.ReadTimeout)
            finally:
                receiver.waiter = None
        self.last_read = time.monotonic()
        if receiver.buffer:
            data = bytes(receiver.buffer[:max_bytes])
            del receiver.buffer[:max_bytes]
            return data
        if receiver.error is not None:
            raise httpcore.ReadError(str(receiver.error) or type(receiver.error).__name__)
        return b""

    async def aclose(self) -> None:
        self.transport.close()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's signature)
    ) -> AsyncNetworkStream:
        if not self._flush():
            raise httpcore.ConnectError("the connection closed before the TLS handshake")
        loop = asyncio.get_running_loop()
        try:
            transport = await loop.start_tls(
                self.transport,
                self.receiver,
                ssl_context,
                server_hostname=server_hostname,
                ssl_handshake_timeout=timeout,
            )
        except TimeoutError as exc:
            self.transport.close()
            raise httpcore.ConnectTimeout(str(exc)) from exc
        except (OSError, ssl.SSLError) as exc:
            self.transport.close()
            raise httpcore.ConnectError(str(exc)) from exc
        if transport is None:  # the connection closed during the handshake
            raise httpcore.ConnectError("the connection closed during the TLS handshake")
        return StreamConnection(transport, self.receiver)

    def get_extra_info(self, info: str) -> Any:
        if info == "ssl_object":
            return self.transport.get_extra_info("ssl_object")
        if info == "client_addr":
            return self.transport.get_extra_info("sockname")
        if info == "server_addr":
            return self.transport.get_extra_info("peername")
        if info == "socket":
            return self.transport.get_extra_info("socket")
        if info == "is_readable":  # an idle pooled connection that is readable was closed (or is broken)
            if self.receiver.buffer or self.receiver.closed:
                return True
            return time.monotonic() - self.last_read >= POLL_AFTER_IDLE_S and _socket_readable(self.transport)
        return None


def _socket_readable(transport: asyncio.Transport) -> bool:
    """What the kernel knows and the loop may not have read yet: a FIN or data waiting on the socket."""
    sock = transport.get_extra_info("socket")
    if sock is None or sock.fileno() < 0:
        return True
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    return bool(poller.poll(0))


class StreamBackend(AsyncNetworkBackend):
    """Connects TCP streams for httpcore's pools (TCP_NODELAY on, as asyncio sets it)."""

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's signature)
        local_address: str | None = None,
        socket_options: Iterable[SocketOption] | None = None,
    ) -> AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        local = (local_address, 0) if local_address else None
        try:
            async with asyncio.timeout(timeout):
                transport, receiver = await loop.create_connection(_Receiver, host, port, local_addr=local)
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout(str(exc) or f"connecting to {host}:{port} timed out") from exc
        except OSError as exc:
            raise httpcore.ConnectError(str(exc) or type(exc).__name__) from exc
        sock: socket.socket | None = transport.get_extra_info("socket")
        for option in socket_options or ():
            if sock is not None:
                sock.setsockopt(*option)
        return StreamConnection(transport, receiver)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
