"""uvicorn's HTTP protocol with a read deadline per request, and one write per response.

uvicorn bounds idle keep-alive connections but not a request being read: a client that sends
its headers or body a byte at a time (slowloris) holds a connection and its buffers for as long
as it likes. Here each request must arrive whole within `read_timeout_s` of its first byte (or
of the connection opening), else the connection is closed.

uvicorn writes a response's status line and headers as soon as the app starts the response, and
its body in a second write: two syscalls and two TCP segments where one does (a socket write costs
~30-40 us on a small VM, a tenth of a cached answer). Here the head is held and goes out with the
first body bytes, in one write.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

logger = logging.getLogger(__name__)


class _HeadCapture:
    """Stands in for the transport while uvicorn writes a response's head: keeps the bytes."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.data = b""

    def write(self, data: bytes) -> None:
        self.data += data

    def is_closing(self) -> bool:
        return self.transport.is_closing()

    def close(self) -> None:
        self.transport.close()


class _HeadFirst:
    """Stands in for the transport during the first body write: the held head goes with it."""

    def __init__(self, transport: asyncio.Transport, head: bytes) -> None:
        self.transport = transport
        self.head: bytes | None = head

    def write(self, data: bytes) -> None:
        head, self.head = self.head, None
        self.transport.write(head + data if head is not None else data)

    def is_closing(self) -> bool:
        return self.transport.is_closing()

    def close(self) -> None:
        if self.head is not None:
            self.write(b"")
        self.transport.close()


def write_head_with_body(cycle: RequestResponseCycle) -> None:
    """Make `cycle` send its response head in the same write as the first body bytes."""
    send = cycle.send
    held: bytes | None = None

    async def send_head_with_body(message: Any) -> None:
        nonlocal held
        transport = cycle.transport
        if message["type"] == "http.response.start" and not cycle.response_started:
            capture = _HeadCapture(transport)
            cycle.transport = capture  # type: ignore[assignment]
            try:
                await send(message)
            finally:
                cycle.transport = transport
            held = capture.data
            return
        if held is None:
            await send(message)
            return
        first = _HeadFirst(transport, held)
        held = None
        cycle.transport = first  # type: ignore[assignment]
        try:
            await send(message)
        finally:
            cycle.transport = transport
            if first.head is not None and not transport.is_closing():  # nothing was written after all
                transport.write(first.head)

    cycle.send = send_head_with_body  # type: ignore[method-assign]


class DeadlineHttpToolsProtocol(HttpToolsProtocol):
    """HttpToolsProtocol whose request reading is bounded in time, writing each response once."""

    read_timeout_s: float = 60.0

    _read_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        write_head_with_body(cycle)
        super()._start_asgi_task(cycle, app)

    def _arm(self) -> None:
        if self._read_deadline is None:
            self._read_deadline = self.loop.call_later(self.read_timeout_s, self._expire)

    def _disarm(self) -> None:
        if self._read_deadline is not None:
            self._read_deadline.cancel()
            self._read_deadline = None

    def _expire(self) -> None:
        self._read_deadline = None
        logger.warning("closed a connection that sent no complete request within %.0fs", self.read_timeout_s)
        self.transport.close()


def deadline_protocol(read_timeout_s: float) -> type[DeadlineHttpToolsProtocol]:
    """The protocol class to pass as uvicorn's `http=`, with its deadline set."""
    return type("DeadlineProtocol", (DeadlineHttpToolsProtocol,), {"read_timeout_s": read_timeout_s})
