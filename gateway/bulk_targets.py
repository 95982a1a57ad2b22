"""Who computes bulk vectors: running gateways over HTTP, or the gateway's own service in this process.

Both answer one batch with `embed(inputs, extra)` and translate every failure, where it enters, into
the four outcomes the run acts on:

    TargetError
    ├── ItemRejected   a 4xx naming `input[i]`: that item is reported, the rest are sent again
    ├── Busy           429 / 503: wait (the `Retry-After` given, else a backoff) and send again
    ├── Transient      another 5xx or a broken connection: a few more tries, then the batch fails
    │   └── Unreachable  no answer at all: after those tries the run stops (rerun to resume)
    └── Fatal          a 4xx about the request, not an item (unknown model, bad key): the run stops
"""

from __future__ import annotations

import asyncio
import base64
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import httpx
import msgspec
import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from litestar import Litestar

    from gateway.config import Settings

ITEM_PARAM = re.compile(r"^input\[(\d+)\]")


class TargetError(Exception):
    """A batch that did not come back as vectors."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ItemRejected(TargetError):
    def __init__(self, index: int, message: str) -> None:
        super().__init__(message)
        self.index = index


class Busy(TargetError):
    def __init__(self, message: str, retry_after: float | None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Transient(TargetError):
    pass


class Unreachable(Transient):
    pass


class Fatal(TargetError):
    pass


@dataclass(frozen=True, slots=True)
class Answer:
    """One batch's vectors in input order, and how many were cache hits (None: the target does not say)."""

    vectors: npt.NDArray[np.float32]
    cache_hits: int | None


class Target(Protocol):
    """Embeds one batch of `input` elements for the run's model."""

    async def embed(self, inputs: Sequence[Any], extra: dict[str, Any]) -> Answer: ...
    async def aclose(self) -> None: ...


def _retry_after(value: str | None) -> float | None:
    try:
        return max(float(value), 0.0) if value is not None else None
    except ValueError:
        return None


def translate(status: int, error: dict[str, Any], retry_after: str | None) -> TargetError:
    """The outcome of an OpenAI-shaped error body: the one table both targets use."""
    message = str(error.get("message") or f"HTTP {status}")
    param = error.get("param")
    match = ITEM_PARAM.match(param) if isinstance(param, str) else None
    if 400 <= status < 500 and match is not None:  # the batch's index means nothing in a report: "item"
        return ItemRejected(int(match.group(1)), message.replace(match.group(0), "item", 1))
    if status in (429, 503):
        return Busy(message, _retry_after(retry_after))
    if status >= 500:
        return Transient(f"HTTP {status}: {message}")
    hint = " (lower --batch-size)" if status == 413 else ""
    return Fatal(f"HTTP {status}: {message}{hint}")


class RemoteTarget:
    """Running gateways: each batch goes to the URL with the fewest batches in flight."""

    def __init__(
        self,
        urls: Sequence[str],
        model: str,
        *,
        api_key: str | None = None,
        timeout_s: float = 300.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if not urls:
            raise ValueError("at least one --url is needed")
        self.urls = [url.rstrip("/") for url in urls]
        self.model = model
        self.in_flight = dict.fromkeys(self.urls, 0)
        self.requests = dict.fromkeys(self.urls, 0)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.AsyncClient(
            headers=headers, timeout=timeout_s, limits=httpx.Limits(max_connections=None), transport=transport
        )

    def _pick(self) -> str:
        return min(self.urls, key=lambda url: (self.in_flight[url], self.requests[url]))

    async def embed(self, inputs: Sequence[Any], extra: dict[str, Any]) -> Answer:
        url = self._pick()
        body = msgspec.json.encode({"model": self.model, "input": list(inputs), "encoding_format": "base64", **extra})
        self.in_flight[url] += 1
        self.requests[url] += 1
        try:
            response = await self.client.post(
                f"{url}/v1/embeddings", content=body, headers={"Content-Type": "application/json"}
            )
        except httpx.TransportError as exc:
            raise Unreachable(f"{url}: {type(exc).__name__}: {exc}") from exc
        finally:
            self.in_flight[url] -= 1
        if response.status_code != 200:
            try:
                error = msgspec.json.decode(response.content).get("error") or {}
            except (msgspec.DecodeError, AttributeError):
                error = {"message": response.text[:200]}
            raise translate(response.status_code, error, response.headers.get("retry-after"))
        data = msgspec.json.decode(response.content)["data"]
        rows = [np.frombuffer(base64.b64decode(row["embedding"]), dtype="<f4") for row in data]
        hits = response.headers.get("x-cache-hits")
        return Answer(np.stack(rows).astype(np.float32), int(hits) if hits is not None else None)

    async def aclose(self) -> None:
        await self.client.aclose()


class InProcessTarget:
    """The gateway's own app and service in this process: the same parsing, limits, cache and
    deployments as a served request, without HTTP. Use as `async with`: it loads the models."""

    def __init__(self, settings: Settings, model: str) -> None:
        from gateway.app import create_app

        self.model = model
        self.app: Litestar = create_app(settings)
        self._lifespan: Any = None

    async def __aenter__(self) -> InProcessTarget:
        self._lifespan = self.app.lifespan()
        await self._lifespan.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def embed(self, inputs: Sequence[Any], extra: dict[str, Any]) -> Answer:
        from gateway.context import RequestContext
        from gateway.errors import GatewayError

        service = self.app.state.service
        body = msgspec.json.encode({"model": self.model, "input": list(inputs), **extra})
        try:
            with service.admit():
                parsed = await asyncio.to_thread(service.parse, body, "application/json")
                result = await service.embed(parsed, RequestContext())
        except GatewayError as exc:
            raise translate(exc.status_code, exc.body()["error"], exc.headers().get("Retry-After")) from exc
        return Answer(np.asarray(result.vectors, dtype=np.float32), result.cache_hits)

    async def aclose(self) -> None:
        lifespan, self._lifespan = self._lifespan, None
        if lifespan is not None:
            await lifespan.__aexit__(None, None, None)
