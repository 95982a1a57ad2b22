"""uvicorn's HTTP protocol with a read deadline per request.

uvicorn bounds idle keep-alive connections but not a request being read: a client that sends
its headers or body a byte at a time (slowloris) holds a connection and its buffers for as long
as it likes. Here each request must arrive whole within `read_timeout_s` of its first byte (or
of the connection opening), else the connection is closed.
"""

from __future__ import annotations

import asyncio
import logging

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

logger = logging.getLogger(__name__)


class DeadlineHttpToolsProtocol(HttpToolsProtocol):
    """HttpToolsProtocol whose request reading is bounded in time."""

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
