"""Upstream failures, translated where they enter: httpx and httpcore errors and error statuses
become the provider error tree, with the deployment's name and never the key::

    timeout, connection error, 500 502 503 504 529   UpstreamTransient (retried)
    429                                              UpstreamBusy(retry_after) (retried)
    400 413 422                                      UpstreamRejected (a batch is bisected)
    401 402 403                                      UpstreamRefused (the key is never in a message)
    another status, a body that does not decompress  ProviderError

What the retry loop makes of them is in `providers.http`.
"""

from __future__ import annotations

import email.utils
import math
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpcore
import httpx
import msgspec

from providers.base import ProviderError, UpstreamRefused

RETRIED_STATUSES = frozenset({500, 502, 503, 504, 529})
REJECTED_STATUSES = frozenset({400, 413, 422})
REFUSED_STATUSES = frozenset({401, 402, 403})
HTTPCORE_UNREACHABLE = (
    httpcore.NetworkError,
    httpcore.ProtocolError,
    httpcore.ProxyError,
    httpcore.UnsupportedProtocol,
)
"""httpcore's errors short of an answer, other than timeouts (httpx calls them `TransportError`)."""


class UpstreamTransient(ProviderError):
    """A failure worth retrying; `retry_after` is the upstream's own hint, if it gave one."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class UpstreamBusy(UpstreamTransient):
    """429: the upstream's rate limit."""


class UpstreamRejected(ProviderError):
    """400 / 413 / 422: the upstream refused the body; bisection finds the item."""

    def __init__(self, message: str, status: int, detail: str) -> None:
        super().__init__(message)
        self.status = status
        self.detail = detail


def upstream_message(response: httpx.Response) -> str:
    """The upstream's own words, from any of the error bodies in use: `{"detail": str | [{loc, msg}]}`
    (Jina, Voyage), `{"error": {"message"}}` (OpenAI, vLLM), `{"error": str}` (TEI), `{"message"}`."""
    try:
        body = msgspec.json.decode(response.content)
    except msgspec.DecodeError:
        body = None
    message: Any = None
    if isinstance(body, dict):
        detail, error = body.get("detail"), body.get("error")
        if isinstance(detail, list):
            message = "; ".join(_pydantic_error(e) for e in detail)
        elif detail is not None:
            message = detail
        elif isinstance(error, dict):
            message = error.get("message")
        elif error is not None:
            message = error
        else:
            message = body.get("message")
    if not isinstance(message, str) or not message.strip():
        message = response.text.strip() or response.reason_phrase or "no message"
    return _clip(message)


def _pydantic_error(entry: Any) -> str:
    if not isinstance(entry, dict):
        return str(entry)
    loc = ".".join(str(p) for p in entry.get("loc", ()) if p != "body")
    return f"{loc}: {entry.get('msg', '')}" if loc else str(entry.get("msg", entry))


def _clip(text: str, limit: int = 500) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def retry_after(headers: httpx.Headers, now: float | None = None) -> float | None:
    """Seconds the upstream asks us to wait: `retry-after-ms`, then `Retry-After` (seconds or an HTTP date)."""
    for header, unit in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        if (seconds := _seconds(headers.get(header), unit)) is not None:
            return seconds
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - (time.time() if now is None else now), 0.0)


def _seconds(value: str | None, unit: float) -> float | None:
    if value is None:
        return None
    try:
        seconds = float(value) * unit
    except ValueError:
        return None
    return max(seconds, 0.0) if math.isfinite(seconds) else None


def status_error(name: str, response: httpx.Response, secret: str | None) -> ProviderError:
    """The provider error for an answer with an error status (never a 2xx)."""
    status, message = response.status_code, _without(upstream_message(response), secret)
    said = f"{name}: the upstream answered {status}: {message}"
    if status == 429:
        return UpstreamBusy(said, retry_after(response.headers))
    if status in RETRIED_STATUSES:
        return UpstreamTransient(said, retry_after(response.headers))
    if status in REJECTED_STATUSES:
        return UpstreamRejected(said, status, message)
    if status in REFUSED_STATUSES:
        return UpstreamRefused(f"{name}: the upstream refused our credentials or quota ({status}): {message}")
    return ProviderError(said)


def _without(text: str, secret: str | None) -> str:
    """`text` with `secret` masked: an upstream may echo the key it was sent."""
    return text.replace(secret, "***") if secret else text


@contextmanager
def upstream_errors(name: str, secret: str | None) -> Iterator[None]:
    """Translate httpx and httpcore errors, and httpx's error statuses, into the provider error tree."""
    try:
        yield
    except (httpx.TimeoutException, httpcore.TimeoutException, TimeoutError) as exc:
        raise UpstreamTransient(f"{name}: the upstream did not answer in time") from exc
    except httpx.HTTPStatusError as exc:
        raise status_error(name, exc.response, secret) from None
    except zlib.error as exc:
        raise ProviderError(f"{name}: the upstream's answer does not decompress: {exc}") from None
    except (httpx.TransportError, *HTTPCORE_UNREACHABLE) as exc:
        reason = _without(str(exc), secret) or type(exc).__name__
        raise UpstreamTransient(f"{name}: cannot reach the upstream: {reason}") from None
