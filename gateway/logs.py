"""Logging: text or JSON lines, a request id on every response and log record, our own access log.

`RequestContextMiddleware` wraps the whole ASGI app (404s and error responses included): it takes
the client's `x-request-id` when it is short and safe, else makes one, echoes it in the response,
keeps it in a contextvar that `RequestIdFilter` copies onto every record logged while the request
runs, and writes one access line per request (method, path without its query string, status,
milliseconds). Nothing a client sent as content, no query string and no URL userinfo is logged by
default: httpx logs full image URLs (presigned signatures, `user:pass@`) at INFO, so it is kept at WARNING.
"""

from __future__ import annotations

import logging
import re
import secrets
import sys
import time
from collections.abc import Iterable
from contextvars import ContextVar
from typing import Literal

from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from pythonjsonlogger.json import JsonFormatter

REQUEST_ID_HEADER = "x-request-id"
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"
JSON_FIELDS = "{asctime}{levelname}{name}{message}{request_id}"
JSON_RENAMES = {"asctime": "time", "levelname": "level", "name": "logger"}
QUIET_LOGGERS = ("httpx", "httpcore", "httpx2")  # they log request URLs (userinfo, signed queries) at INFO

request_id: ContextVar[str | None] = ContextVar("request_id", default=None)
access_logger = logging.getLogger("gateway.access")

_REQUEST_ID_HEADER = REQUEST_ID_HEADER.encode()
_ACCESS = access_logger.name
_ACCESS_LINE = "%s %s %d %.1fms"
_SAFE_REQUEST_ID = re.compile(rb"[A-Za-z0-9._-]{1,64}")


class RequestIdFilter(logging.Filter):
    """Copies the current request's id onto each record (`missing` outside a request)."""

    def __init__(self, missing: str | None = "-") -> None:
        super().__init__()
        self.missing = missing

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get() or self.missing
        return True


class TextFormatter(logging.Formatter):
    """`TEXT_FORMAT`, with the date part of the timestamp formatted once a second, not once a line."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)
        self._second: tuple[int, str] = (-1, "")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802 (logging's name)
        second, stamp = self._second
        if int(record.created) != second:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", self.converter(record.created))
            self._second = (int(record.created), stamp)
        return f"{stamp},{int(record.msecs):03d}"


def configure_logging(level: str, log_format: Literal["text", "json"] = "text", *, access: bool = True) -> None:
    """One stderr handler on the root logger, replacing any; every other logger propagates to it.
    `access=False` silences the per-request access line (the request id is still echoed)."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter(JSON_FIELDS, style="{", rename_fields=JSON_RENAMES))
        handler.addFilter(RequestIdFilter(missing=None))
    else:
        handler.setFormatter(TextFormatter())
        handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(level.upper())
    # No format here uses them, and looking them up is most of a record's cost (the access line is per request).
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
    access_logger.setLevel(logging.NOTSET if access else logging.WARNING)


def _incoming_request_id(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    for name, value in headers:
        if name == _REQUEST_ID_HEADER:  # ASGI servers lower-case header names
            return value.decode("ascii") if _SAFE_REQUEST_ID.fullmatch(value) else None
    return None


class RequestContextMiddleware:
    """Pure ASGI: request id in, request id out, one access line per request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await self.app(scope, receive, send)
            return
        rid = _incoming_request_id(scope["headers"]) or secrets.token_hex(16)
        header = (_REQUEST_ID_HEADER, rid.encode("ascii"))
        status = 500  # what the server answers when the app fails before starting a response
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        token = request_id.set(rid)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if access_logger.isEnabledFor(logging.INFO):
                # raw_path: still percent-encoded (a `%0A` cannot forge a log line) and without the query string.
                raw = scope.get("raw_path")
                path = raw.partition(b"?")[0].decode("latin-1") if raw else scope["path"]
                elapsed_ms = (time.perf_counter() - started) * 1000
                # makeRecord + handle is what `info` does, less the stack walk for a caller no format shows.
                fields = {"method": scope["method"], "path": path, "status": status, "duration_ms": elapsed_ms}
                args = (scope["method"], path, status, elapsed_ms)
                access_logger.handle(
                    access_logger.makeRecord(_ACCESS, logging.INFO, __file__, 0, _ACCESS_LINE, args, None, extra=fields)
                )
            request_id.reset(token)
