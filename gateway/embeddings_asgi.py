"""`POST /v1/embeddings` (and `/embeddings`) as a bare ASGI app in front of Litestar's router.

Why: Litestar's per-request work (routing, the handler's signature model, Request and Response
objects, its exception middleware) cost ~0.2 ms of CPU per request, measured side by side: ~20% of
a 1-item miss and ~40% of a cached answer. Here the same `gateway.api.embeddings_answer` runs with
none of it: the same key check, rate limit, admission, body limit, parsing, disconnect handling,
headers and error envelopes, and the route's Prometheus metrics through the same `RouteMetrics`.
Every other route, and any other method on these paths (405), stays with Litestar; the request id
and access line come from `RequestContextMiddleware` around both.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from litestar.datastructures import State
from litestar.enums import ScopeType
from litestar.types import ASGIApp, HTTPResponseBodyEvent, HTTPResponseStartEvent, Receive, Scope, Send

from gateway.api import JSON, embeddings_answer
from gateway.errors import GatewayError
from gateway.metrics import RouteMetrics, prometheus_config

logger = logging.getLogger(__name__)
PATHS = frozenset({"/v1/embeddings", "/embeddings"})


class BodyTooLarge(Exception):
    """The body is over `limits.max_body_bytes` (announced or streamed)."""


class ClientGone(Exception):
    """The client disconnected before its body arrived."""


def _error(message: str, code: str, error_type: str = "invalid_request_error") -> bytes:
    return orjson.dumps({"error": {"message": message, "type": error_type, "param": None, "code": code}})


class EmbeddingsEndpoint:
    """Serves `POST` on `PATHS`; passes everything else to `app` (Litestar's handler)."""

    def __init__(self, app: ASGIApp, state: State, max_body_bytes: int) -> None:
        self.app = app
        self.state = state
        self.max_body_bytes = max_body_bytes
        self._metered: ASGIApp = RouteMetrics(app=self._serve, config=prometheus_config())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP or scope["method"] != "POST" or scope["path"] not in PATHS:
            await self.app(scope, receive, send)
            return
        scope["path_template"] = scope["path"]  # the route's label in the request metrics
        await self._metered(scope, receive, send)

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers: dict[str, str] = {}
        for name, value in scope["headers"]:  # the first of a repeated header, as Litestar's `get`
            headers.setdefault(name.decode("latin-1"), value.decode("latin-1"))

        async def read_body() -> bytes:
            return await self._read_body(receive, headers.get("content-length"))

        extra: dict[str, str] = {}
        try:
            body, extra = await embeddings_answer(self.state, headers.get, read_body, receive)
            status = 200
        except GatewayError as exc:
            status, body, extra = exc.status_code, orjson.dumps(exc.body()), exc.headers()
        except BodyTooLarge:
            status, body = 413, _error("Request Entity Too Large", "request_too_large")
        except ClientGone:
            return
        except Exception:
            logger.exception("unhandled error on POST %s", scope["path"])
            status, body = 500, _error("The server had an internal error", "internal_error", "server_error")
        response_headers = [
            (b"content-type", JSON.encode()),
            (b"content-length", str(len(body)).encode()),
            *((name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in extra.items()),
        ]
        start: HTTPResponseStartEvent = {"type": "http.response.start", "status": status, "headers": response_headers}
        await send(start)
        end: HTTPResponseBodyEvent = {"type": "http.response.body", "body": body, "more_body": False}
        await send(end)

    async def _read_body(self, receive: Receive, announced: str | None) -> bytes:
        if announced is not None and announced.isdigit() and int(announced) > self.max_body_bytes:
            raise BodyTooLarge
        chunks: list[bytes] = []
        total = 0
        while True:
            message: Any = await receive()
            if message["type"] == "http.disconnect":
                raise ClientGone
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > self.max_body_bytes:
                raise BodyTooLarge
            chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)
