"""What every HTTP embeddings API shares: one client, errors translated at the door, retries,
client-side limits, request splitting and answer checking. `jina`, `voyage` and
`openai_compat` each supply only a `Wire` (their body, their usage, their model table).

How an upstream failure ends up (`upstream_errors` is the one place httpx and status codes
are translated)::

    timeout, connection error, 500 502 503 504 529   retried, then ProviderError
    429                                              retried, then Overloaded(retry_after)
    Retry-After beyond `retry_deadline_s`            Overloaded(retry_after) at once
    400 413 422                                      a batch is bisected; the bad item: InputRejected(index)
    401 402 403                                      UpstreamRefused (the key is never in a message)
    another status, bad JSON, bad vectors            ProviderError

Retries use tenacity rather than stamina: `wait_random_exponential` is AWS's full jitter as it
stands, and `stop_before_delay` looks at the coming sleep, so a Retry-After that would end past
the deadline stops the loop before it sleeps (stamina's jitter is additive and its timeout is
checked after the sleep). Rates use `limits` (moving window, the same library as the gateway's
per-key rates, with a Redis storage should deployment rates ever be shared by replicas).
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import logging
import math
import os
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, Protocol

import httpx
import msgspec
import numpy as np
from limits import RateLimitItemPerMinute
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import MovingWindowRateLimiter
from pydantic import BaseModel, ConfigDict, Field, SecretStr
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt, stop_before_delay
from tenacity.wait import wait_random_exponential

from providers.base import (
    EmbedOptions,
    EmbedResult,
    Image,
    InputRejected,
    Item,
    Modality,
    ModelLoadError,
    Overloaded,
    ProviderError,
    ProviderInfo,
    Text,
    UpstreamRefused,
    Usage,
    Vectors,
)

logger = logging.getLogger(__name__)

RETRIED_STATUSES = frozenset({500, 502, 503, 504, 529})
REJECTED_STATUSES = frozenset({400, 413, 422})
REFUSED_STATUSES = frozenset({401, 402, 403})
OFF_LOOP_BYTES = 1 << 20  # answers bigger than this are decoded on a worker thread
HEADER_SAFE = re.compile(r"[\x21-\x7e]+")
TEXT_BYTES_PER_TOKEN = 4  # a typical figure, only to share an upstream's total among items


class HttpOptions(BaseModel):
    """Settings every HTTP deployment has; each API's options model adds its own and sets defaults."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="The upstream's model name.")
    base_url: str
    api_key: SecretStr | None = Field(default=None, description="The key itself; prefer `api_key_env`.")
    api_key_env: str | None = Field(default=None, description="Environment variable holding the key.")
    dimensions: int | None = Field(default=None, ge=1, description="Output dimension; default from the model.")
    modalities: list[Modality] | None = Field(default=None, min_length=1, description="Default from the model.")
    space: str | None = Field(
        default=None, description="Declare the vector space, e.g. to pair two upstreams serving one model."
    )
    timeout_s: float = Field(default=30.0, gt=0, description="Whole time of one upstream call.")
    connect_timeout_s: float = Field(default=5.0, gt=0)
    retry_deadline_s: float = Field(default=60.0, gt=0, description="Time for a call and all its retries.")
    max_attempts: int = Field(default=4, ge=1)
    backoff_initial_s: float = Field(default=0.5, gt=0, description="Full-jitter window of the first retry.")
    backoff_max_s: float = Field(default=8.0, gt=0)
    requests_per_minute: int | None = Field(default=None, ge=1, description="Client-side cap (moving window).")
    tokens_per_minute: int | None = Field(default=None, ge=1, description="Client-side cap on estimated tokens.")
    max_concurrent_requests: int = Field(default=8, ge=1, description="Upstream calls in flight.")
    max_queued: int = Field(default=256, ge=0, description="Embeds waiting for a call slot before Overloaded.")
    max_batch_size: int = Field(default=2048, ge=1, description="Inputs per upstream call.")
    max_request_tokens: int | None = Field(
        default=None, ge=1, description="Estimated tokens per call (text: UTF-8 bytes, an upper bound)."
    )
    max_request_bytes: int | None = Field(default=None, ge=1024, description="Request body bytes per call.")
    image_pixels_per_token: float = Field(default=560.0, gt=0, description="Image token estimate (Voyage: 560).")


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """What an API's documentation says of one of its models."""

    dimension: int
    modalities: frozenset[Modality] = frozenset({Modality.TEXT})
    fuses_parts: bool = False
    flexible: bool = False
    """Takes an output dimension (Matryoshka)."""
    max_request_tokens: int | None = None


TEXT_ONLY = frozenset({Modality.TEXT})
TEXT_AND_IMAGE = frozenset({Modality.TEXT, Modality.IMAGE})


def info_from_table(kind: str, spec: ModelSpec | None, options: HttpOptions, name: str) -> ProviderInfo:
    """`ProviderInfo` from a model table and the overrides in `options`; `space` names the output
    dimension when it is not the model's own (or the model is not in the table)."""
    if spec is None and options.dimensions is None:
        raise ModelLoadError(f"{name}: {kind} model {options.model!r} is not known here; set `dimensions`")
    if spec is not None and options.dimensions not in (None, spec.dimension) and not spec.flexible:
        raise ModelLoadError(
            f"{name}: {options.model!r} only gives {spec.dimension} dimensions, not {options.dimensions}"
        )
    dimension = options.dimensions or (spec.dimension if spec else 0)
    default = spec.dimension if spec else None
    modalities = frozenset(options.modalities) if options.modalities else (spec.modalities if spec else TEXT_ONLY)
    return ProviderInfo(
        modalities=modalities,
        dimension=dimension,
        max_batch_size=options.max_batch_size,
        space=f"{kind}:{options.model}" + ("" if dimension == default else f"|dimensions={dimension}"),
        fuses_parts=bool(spec and spec.fuses_parts),
    )


Probe = Callable[[Mapping[str, Any], int], Vectors]
"""A blocking call of a request body for `count` inputs, for `Wire.describe`: the vectors, of any dimension."""


class Wire(Protocol):
    """What one upstream API does its own way; `HttpProvider` does everything else."""

    path: str
    """Appended to `base_url`."""
    key_env: str | None
    """The environment variable that must hold a key, if the upstream needs one."""

    def describe(self, probe: Probe) -> ProviderInfo:
        """Modalities, dimension and space, from a table or a probe call."""
        ...

    def fragment(self, item: Item, index: int, options: EmbedOptions) -> Any:
        """The request body's element for `item` (blocking: runs on a thread when images are present);
        raises `InputRejected` for an item the API never takes."""
        ...

    def body(self, fragments: Sequence[Any], options: EmbedOptions) -> dict[str, Any]:
        """The JSON request body for these elements."""
        ...

    def usage(self, payload: Mapping[str, Any]) -> tuple[Usage, int]:
        """What the answer says was billed, and the token total to share among its items."""
        ...


# --- errors -------------------------------------------------------------------------------


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


@contextmanager
def upstream_errors(name: str, secret: str | None) -> Iterator[None]:
    """Translate httpx errors and error statuses into the provider error tree, with the deployment's
    name and without `secret` (an upstream may echo the key it was sent)."""

    def clean(text: str) -> str:
        return text.replace(secret, "***") if secret else text

    try:
        yield
    except (httpx.TimeoutException, TimeoutError) as exc:
        raise UpstreamTransient(f"{name}: the upstream did not answer in time") from exc
    except httpx.HTTPStatusError as exc:
        response = exc.response
        status, message = response.status_code, clean(upstream_message(response))
        said = f"{name}: the upstream answered {status}: {message}"
        if status == 429:
            raise UpstreamBusy(said, retry_after(response.headers)) from None
        if status in RETRIED_STATUSES:
            raise UpstreamTransient(said, retry_after(response.headers)) from None
        if status in REJECTED_STATUSES:
            raise UpstreamRejected(said, status, message) from None
        if status in REFUSED_STATUSES:
            raise UpstreamRefused(
                f"{name}: the upstream refused our credentials or quota ({status}): {message}"
            ) from None
        raise ProviderError(said) from None
    except httpx.TransportError as exc:
        raise UpstreamTransient(f"{name}: cannot reach the upstream: {clean(str(exc)) or type(exc).__name__}") from None


# --- answers --------------------------------------------------------------------------------


def read_answer(content: bytes, count: int, dimension: int | None, name: str) -> tuple[Any, Vectors]:
    """The decoded JSON answer and its checked vectors (blocking: big answers go to a thread)."""
    try:
        payload = msgspec.json.decode(content)
    except msgspec.DecodeError as exc:
        raise ProviderError(f"{name}: the upstream's answer is not JSON: {exc}") from None
    return payload, parse_embeddings(payload, count, dimension, name)


def parse_embeddings(payload: Any, count: int, dimension: int | None, name: str) -> Vectors:
    """The `data` of an OpenAI-shaped answer as L2-normalised float32 rows in input order (by
    `index`); anything short of `count` finite, non-zero vectors of `dimension` is a ProviderError."""
    data = payload.get("data") if isinstance(payload, dict) else None
    if not isinstance(data, list):
        raise ProviderError(f"{name}: the upstream's answer has no `data` list")
    if len(data) != count:
        raise ProviderError(f"{name}: the upstream returned {len(data)} vectors for {count} inputs")
    rows: list[Any] = [None] * count
    for position, entry in enumerate(data):
        index = entry.get("index", position) if isinstance(entry, dict) else None
        if type(index) is not int or not 0 <= index < count or rows[index] is not None:
            raise ProviderError(f"{name}: the upstream's data[{position}] has a missing, bad or repeated index")
        embedding = entry.get("embedding")
        if isinstance(embedding, str):  # base64 little-endian float32, should an upstream ignore `float`
            try:
                embedding = np.frombuffer(base64.b64decode(embedding, validate=True), dtype="<f4")
            except ValueError:
                embedding = None
        rows[index] = embedding
    try:
        matrix = np.array(rows, dtype=np.float64)  # float64 first: a float32 cast of a big value would overflow
    except (ValueError, TypeError):
        raise ProviderError(f"{name}: the upstream's embeddings are not lists of numbers of one length") from None
    if matrix.ndim != 2 or matrix.shape[1] == 0:
        raise ProviderError(f"{name}: the upstream's embeddings are not lists of numbers")
    if dimension is not None and matrix.shape[1] != dimension:
        raise ProviderError(f"{name}: the upstream returned {matrix.shape[1]} dimensions, expected {dimension}")
    if not np.isfinite(matrix).all():
        raise ProviderError(f"{name}: the upstream returned NaN or infinite values")
    peaks = np.abs(matrix).max(axis=1, keepdims=True)
    if (peaks == 0).any():
        raise ProviderError(f"{name}: the upstream returned a zero vector")
    scaled = matrix / peaks  # no square can overflow now
    normalised: Vectors = (scaled / np.linalg.norm(scaled, axis=1, keepdims=True)).astype(np.float32)
    return normalised


def usage_int(usage: Any, key: str, name: str, *, required: bool = True) -> int:
    """`usage[key]` as a non-negative int; a missing one is 0 unless `required`."""
    value = usage.get(key) if isinstance(usage, dict) else None
    if value is None and not required:
        return 0
    if type(value) is not int or value < 0:
        raise ProviderError(f"{name}: the upstream's answer has no valid `usage.{key}`")
    return value


def apportion(total: int, weights: Sequence[float]) -> tuple[int, ...]:
    """Split `total` over `weights` in proportion, in whole numbers summing to exactly `total`."""
    if not weights:
        return ()
    weight_sum = sum(weights)
    shares = [total * w / weight_sum for w in weights] if weight_sum > 0 else [total / len(weights)] * len(weights)
    floors = [math.floor(s) for s in shares]
    by_remainder = sorted(range(len(shares)), key=lambda i: floors[i] - shares[i])
    for i in by_remainder[: total - sum(floors)]:
        floors[i] += 1
    return tuple(floors)


def plan_batches(
    costs: Sequence[int], sizes: Sequence[int], *, max_items: int, max_tokens: int | None, max_bytes: int | None
) -> list[range]:
    """Consecutive runs of items that fit one call each; an item over a cap alone gets its own call."""
    batches: list[range] = []
    start, tokens, size = 0, 0, 0
    for i, (cost, length) in enumerate(zip(costs, sizes, strict=True)):
        full = i - start >= max_items
        full |= max_tokens is not None and tokens + cost > max_tokens
        full |= max_bytes is not None and size + length + 1 > max_bytes
        if full and i > start:
            batches.append(range(start, i))
            start, tokens, size = i, 0, 0
        tokens, size = tokens + cost, size + length + 1
    batches.append(range(start, len(costs)))
    return batches


@dataclass(frozen=True, slots=True)
class Answer:
    """The outcome of one batch (one or, after bisection, several calls)."""

    vectors: Vectors
    item_tokens: tuple[int, ...]
    usage: Usage

    def __add__(self, other: Answer) -> Answer:
        return Answer(
            np.concatenate([self.vectors, other.vectors]),
            self.item_tokens + other.item_tokens,
            self.usage + other.usage,
        )


# --- limits ---------------------------------------------------------------------------------


class CallLimits:
    """Client-side `requests_per_minute` / `tokens_per_minute` (moving windows) and the cap on calls
    in flight, with a bounded queue of embeds waiting for their first slot. Every refusal is an
    immediate `Overloaded`, so the gateway can try the next deployment instead of waiting here."""

    def __init__(self, options: HttpOptions, name: str) -> None:
        self.name = name
        self.storage = MemoryStorage()
        self.window = MovingWindowRateLimiter(self.storage)
        self.rates = [
            (RateLimitItemPerMinute(limit), unit)
            for limit, unit in ((options.requests_per_minute, "requests"), (options.tokens_per_minute, "tokens"))
            if limit is not None
        ]
        self.slots = asyncio.Semaphore(options.max_concurrent_requests)
        self.max_queued = options.max_queued
        self.queued = 0
        self.in_flight = 0
        self.refused = 0

    async def reserve(self, calls: int, tokens: int) -> None:
        """Charge `calls` and `tokens` to the windows, or refuse with the time until the window frees.
        A charge over a whole window is cut to the window, so an oversized embed can still pass alone."""
        charges = [(item, min(calls if unit == "requests" else tokens, item.amount), unit) for item, unit in self.rates]
        for item, cost, unit in charges:
            if not await self.window.test(item, cost=cost):
                stats = await self.window.get_window_stats(item)
                self.refused += 1
                raise Overloaded(
                    f"{self.name}: the deployment's {unit}_per_minute ({item.amount}) is used up",
                    retry_after=max(stats.reset_time - time.time(), 0.001),
                )
        for item, cost, _ in charges:
            await self.window.hit(item, cost=cost)

    async def acquire(self, *, admit: bool) -> None:
        """A call slot. `admit`: the embed's first call, refused when the queue is full; its later calls
        wait without counting (the embed was admitted), so an embed never refuses itself."""
        if admit and self.slots.locked() and self.queued >= self.max_queued:
            self.refused += 1
            raise Overloaded(f"{self.name}: {self.in_flight} calls in flight and {self.queued} waiting", 1.0)
        self.queued += admit
        try:
            await self.slots.acquire()
        finally:
            self.queued -= admit
        self.in_flight += 1

    def release(self) -> None:
        self.in_flight -= 1
        self.slots.release()

    async def close(self) -> None:
        timer = getattr(self.storage, "timer", None)  # the storage's expiry task, if it has one running
        if isinstance(timer, asyncio.Task):
            timer.cancel()
        await self.storage.reset()


# --- the provider -------------------------------------------------------------------------------


class HttpProvider:
    """An embeddings API over HTTP: `wire` speaks its dialect, this class does the rest."""

    def __init__(self, wire: Wire, options: HttpOptions, *, name: str) -> None:
        self.wire = wire
        self.options = options
        self.name = name
        self._key: SecretStr | None = None
        self._info: ProviderInfo | None = None
        self._client: httpx.AsyncClient | None = None
        self._limits: CallLimits | None = None
        self.counters = dict.fromkeys(
            ("upstream_calls_total", "upstream_errors_total", "upstream_retries_total", "upstream_rate_limited_total"),
            0,
        )

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} {self.options.base_url} {self.options.model}>"

    @property
    def info(self) -> ProviderInfo:
        if self._info is None:
            raise ProviderError(f"model {self.name!r} is not loaded")
        return self._info

    @property
    def url(self) -> str:
        return self.options.base_url.rstrip("/") + self.wire.path

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._key is not None:
            headers["Authorization"] = f"Bearer {self._key.get_secret_value()}"
        return headers

    @property
    def _secret(self) -> str | None:
        return self._key.get_secret_value() if self._key is not None else None

    def load(self) -> None:
        """Find the key (option, then environment), then learn the model's shape (table or probe)."""
        if self._info is not None:
            return
        key, env = self.options.api_key, self.options.api_key_env or self.wire.key_env
        if key is None and env is not None:
            value = os.environ.get(env, "").strip()
            if not value:
                raise ModelLoadError(f"{self.name}: no API key: set the environment variable {env} (or `api_key`)")
            key = SecretStr(value)
        if key is not None and not HEADER_SAFE.fullmatch(key.get_secret_value()):
            raise ModelLoadError(f"{self.name}: the API key has characters an HTTP header cannot carry")
        self._key = key
        info = self.wire.describe(self._probe)
        self._info = replace(info, space=self.options.space) if self.options.space else info

    def _probe(self, body: Mapping[str, Any], count: int) -> Vectors:
        timeout = httpx.Timeout(self.options.timeout_s, connect=self.options.connect_timeout_s)
        with upstream_errors(self.name, self._secret), httpx.Client(timeout=timeout) as client:
            response = client.post(self.url, content=msgspec.json.encode(body), headers=self._headers())
            response.raise_for_status()
        return read_answer(response.content, count, None, self.name)[1]

    async def start(self) -> None:
        limits = httpx.Limits(max_connections=self.options.max_concurrent_requests)
        self._client = httpx.AsyncClient(headers=self._headers(), limits=limits, follow_redirects=False)
        self._limits = CallLimits(self.options, self.name)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
        if self._limits is not None:
            await self._limits.close()

    def stats(self) -> Mapping[str, float]:
        limits = self._limits
        return {
            **{k: float(v) for k, v in self.counters.items()},
            "refused_total": float(limits.refused if limits else 0),
            "in_flight": float(limits.in_flight if limits else 0),
            "queued": float(limits.queued if limits else 0),
        }

    # --- embedding ---

    def _estimate(self, item: Item) -> tuple[int, float]:
        """Tokens of `item`: an upper bound (UTF-8 bytes) for caps and rates, a typical figure for shares."""
        upper, typical = 0, 0.0
        for part in item.parts:
            if isinstance(part, Text):
                size = len(part.text.encode())
                upper, typical = upper + size, typical + size / TEXT_BYTES_PER_TOKEN
            else:
                tokens = part.pixels.width * part.pixels.height / self.options.image_pixels_per_token
                upper, typical = upper + math.ceil(tokens), typical + tokens
        return max(upper, 1), max(typical, 1.0)

    def _check(self, items: Sequence[Item]) -> None:
        info = self.info
        for index, item in enumerate(items):
            if len(item.parts) > 1 and not info.fuses_parts:
                raise InputRejected(
                    f"{self.name}: this upstream embeds one text or one image per input, not interleaved parts", index
                )
            for position, part in enumerate(item.parts):
                if part.modality not in info.modalities:
                    raise InputRejected(
                        f"{self.name}: this upstream does not take {part.modality.value} input", index, position
                    )

    def _fragments(self, items: Sequence[Item], options: EmbedOptions) -> tuple[list[Any], list[int]]:
        """Each item's element of the request body, and its size in the body (JSON bytes)."""
        fragments = [self.wire.fragment(item, i, options) for i, item in enumerate(items)]
        return fragments, [len(msgspec.json.encode(f)) for f in fragments]

    async def embed(self, items: Sequence[Item], options: EmbedOptions) -> EmbedResult:
        if self._client is None or self._limits is None:
            raise ProviderError(f"model {self.name!r} is not started")
        self._check(items)
        if not items:
            return EmbedResult(np.zeros((0, self.info.dimension), np.float32), (), Usage(calls=0))
        has_images = any(isinstance(part, Image) for item in items for part in item.parts)
        fragments, sizes = (
            await asyncio.to_thread(self._fragments, items, options) if has_images else self._fragments(items, options)
        )
        estimates = [self._estimate(item) for item in items]
        batches = plan_batches(
            [upper for upper, _ in estimates],
            sizes,
            max_items=self.options.max_batch_size,
            max_tokens=self.options.max_request_tokens,
            max_bytes=self.options.max_request_bytes,
        )
        await self._limits.reserve(len(batches), sum(upper for upper, _ in estimates))
        weights = [typical for _, typical in estimates]
        limits = self._limits

        async def run(batch: range, *, held: bool) -> Answer:
            if not held:  # the embed was admitted: its later calls wait without counting in the queue
                await limits.acquire(admit=False)
            try:
                chunk = slice(batch.start, batch.stop)
                return await self._batch(batch.start, fragments[chunk], weights[chunk], options)
            finally:
                limits.release()

        await limits.acquire(admit=True)  # no await between this and `run(held=True)`: the slot cannot leak
        try:
            async with asyncio.TaskGroup() as group:  # the first failure cancels the other calls
                rest = [group.create_task(run(batch, held=False)) for batch in batches[1:]]
                answer = await run(batches[0], held=True)
        except BaseExceptionGroup as errors:
            raise _first_error(errors) from None
        for task in rest:
            answer += task.result()
        return EmbedResult(answer.vectors, answer.item_tokens, answer.usage)

    async def _batch(self, start: int, fragments: list[Any], weights: list[float], options: EmbedOptions) -> Answer:
        """One call for these items; if the upstream rejects the body, halves until the bad item is alone."""
        try:
            content = await self._call(self.wire.body(fragments, options))
        except UpstreamRejected as exc:
            if len(fragments) == 1:
                raise InputRejected(
                    f"{self.name}: the upstream rejected this input ({exc.status}): {exc.detail}", start
                ) from None
            middle = len(fragments) // 2
            left = await self._batch(start, fragments[:middle], weights[:middle], options)
            return left + await self._batch(start + middle, fragments[middle:], weights[middle:], options)
        read = (content, len(fragments), self.info.dimension, self.name)
        try:
            payload, vectors = (
                await asyncio.to_thread(read_answer, *read) if len(content) > OFF_LOOP_BYTES else read_answer(*read)
            )
            usage, total = self.wire.usage(payload)
        except ProviderError:
            self.counters["upstream_errors_total"] += 1
            raise
        return Answer(vectors, apportion(total, weights), usage)

    async def _call(self, body: Mapping[str, Any]) -> bytes:
        """POST `body` and return the answer's bytes, with retries of transient failures, within `retry_deadline_s`."""
        content = msgspec.json.encode(body)
        options = self.options
        deadline = time.monotonic() + options.retry_deadline_s
        backoff = wait_random_exponential(multiplier=options.backoff_initial_s, max=options.backoff_max_s)

        def wait(state: RetryCallState) -> float:
            error = state.outcome.exception() if state.outcome else None
            hint = error.retry_after if isinstance(error, UpstreamTransient) else None
            return hint if hint is not None else backoff(state)

        retrying = AsyncRetrying(
            retry=retry_if_exception_type(UpstreamTransient),
            wait=wait,
            stop=stop_after_attempt(options.max_attempts) | stop_before_delay(options.retry_deadline_s),
            before_sleep=self._note_retry,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    return await self._attempt(content, deadline)
        except UpstreamTransient as exc:
            beyond = exc.retry_after is not None and time.monotonic() + exc.retry_after >= deadline
            if isinstance(exc, UpstreamBusy) or beyond:
                hint = exc.retry_after if exc.retry_after is not None else options.backoff_max_s
                raise Overloaded(str(exc), retry_after=hint) from None
            raise ProviderError(str(exc)) from None
        raise AssertionError("unreachable: tenacity re-raises the last error")

    def _note_retry(self, state: RetryCallState) -> None:
        self.counters["upstream_retries_total"] += 1
        error = state.outcome.exception() if state.outcome else None
        logger.info("%s; retry %d in %.2f s", error, state.attempt_number, state.upcoming_sleep)

    async def _attempt(self, content: bytes, deadline: float) -> bytes:
        assert self._client is not None
        remaining = deadline - time.monotonic()
        budget = max(min(self.options.timeout_s, remaining), 0.001)
        timeout = httpx.Timeout(budget, connect=min(self.options.connect_timeout_s, budget))
        self.counters["upstream_calls_total"] += 1
        try:
            with upstream_errors(self.name, self._secret):
                async with asyncio.timeout(budget):
                    response = await self._client.post(self.url, content=content, timeout=timeout)
                response.raise_for_status()
                return response.content
        except ProviderError as exc:
            self.counters["upstream_errors_total"] += 1
            self.counters["upstream_rate_limited_total"] += isinstance(exc, UpstreamBusy)
            raise


def _first_error(errors: BaseExceptionGroup[BaseException]) -> BaseException:
    """The error to raise for a failed embed: the earliest rejected input, else the first failure."""
    leaves: list[BaseException] = []
    pending: list[BaseException] = [errors]
    while pending:
        error = pending.pop(0)
        if isinstance(error, BaseExceptionGroup):
            pending.extend(error.exceptions)
        elif not isinstance(error, asyncio.CancelledError):
            leaves.append(error)
    rejected = [e for e in leaves if isinstance(e, InputRejected)]
    if rejected:
        return min(rejected, key=lambda e: e.index)
    return leaves[0] if leaves else errors
