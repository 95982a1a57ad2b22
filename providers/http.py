"""What every HTTP embeddings API shares: one connection pool, errors translated at the door,
retries, client-side limits, request splitting and answer checking. `jina`, `voyage` and
`openai_compat` each supply only a `Wire` (their body, their usage, their model table).

How an upstream failure ends up (`providers.http_errors` translates httpcore, httpx and statuses)::

    timeout, connection error, 500 502 503 504 529   retried, then ProviderError
    429                                              retried, then Overloaded(retry_after)
    Retry-After beyond `retry_deadline_s`            Overloaded(retry_after) at once
    400 413 422                                      a batch is bisected; the bad item: InputRejected(index)
    401 402 403                                      UpstreamRefused (the key is never in a message)
    another status, bad JSON, bad vectors            ProviderError

A call that succeeds at once (nearly all of them) costs one POST on the pool
(`providers.http_transport`): tenacity's machinery only starts after a first failure. Retries use
tenacity rather than stamina: `wait_random_exponential` is AWS's full jitter as it stands, and the
stop looks at the coming sleep, so a Retry-After that would end past the deadline stops the loop
before it sleeps (stamina's jitter is additive and its timeout is checked after the sleep).
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

import httpx
import msgspec
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, SecretStr
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt
from tenacity.stop import stop_base
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
    Usage,
    Vectors,
)
from providers.http_answers import Answer, apportion, parse_embeddings, read_answer, usage_int
from providers.http_errors import (
    UpstreamBusy,
    UpstreamRejected,
    UpstreamTransient,
    retry_after,
    status_error,
    upstream_errors,
    upstream_message,
)
from providers.http_limits import CallLimits, plan_batches
from providers.http_transport import UpstreamPool

__all__ = [
    "TEXT_AND_IMAGE",
    "TEXT_ONLY",
    "Answer",
    "CallLimits",
    "HttpOptions",
    "HttpProvider",
    "ModelSpec",
    "Probe",
    "UpstreamBusy",
    "UpstreamRejected",
    "UpstreamTransient",
    "Wire",
    "apportion",
    "info_from_table",
    "parse_embeddings",
    "plan_batches",
    "read_answer",
    "retry_after",
    "upstream_errors",
    "upstream_message",
    "usage_int",
]

logger = logging.getLogger(__name__)

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


# --- the provider -------------------------------------------------------------------------------


class HttpProvider:
    """An embeddings API over HTTP: `wire` speaks its dialect, this class does the rest."""

    def __init__(self, wire: Wire, options: HttpOptions, *, name: str) -> None:
        self.wire = wire
        self.options = options
        self.name = name
        self._key: SecretStr | None = None
        self._info: ProviderInfo | None = None
        self._pool: UpstreamPool | None = None
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
        options = self.options
        self._pool = UpstreamPool(self.url, self._headers(), max_connections=options.max_concurrent_requests)
        self._limits = CallLimits(
            self.name,
            requests_per_minute=options.requests_per_minute,
            tokens_per_minute=options.tokens_per_minute,
            max_concurrent_requests=options.max_concurrent_requests,
            max_queued=options.max_queued,
        )

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.aclose()
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
        """Each item's element of the request body, and its size in the body (JSON bytes; measured
        only when `max_request_bytes` caps it)."""
        fragments = [self.wire.fragment(item, i, options) for i, item in enumerate(items)]
        if self.options.max_request_bytes is None:
            return fragments, [0] * len(fragments)
        return fragments, [len(msgspec.json.encode(f)) for f in fragments]

    async def embed(self, items: Sequence[Item], options: EmbedOptions) -> EmbedResult:
        if self._pool is None or self._limits is None:
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
        if len(batches) == 1:  # the common case needs no task group
            answer = await run(batches[0], held=True)
            return EmbedResult(answer.vectors, answer.item_tokens, answer.usage)
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
        deadline = time.monotonic() + self.options.retry_deadline_s
        try:
            try:
                return await self._attempt(content, deadline)
            except UpstreamTransient as first:
                return await self._retry(content, deadline, first)
        except UpstreamTransient as exc:
            beyond = exc.retry_after is not None and time.monotonic() + exc.retry_after >= deadline
            if isinstance(exc, UpstreamBusy) or beyond:
                hint = exc.retry_after if exc.retry_after is not None else self.options.backoff_max_s
                raise Overloaded(str(exc), retry_after=hint) from None
            raise ProviderError(str(exc)) from None

    async def _retry(self, content: bytes, deadline: float, first: UpstreamTransient) -> bytes:
        """The attempts after a failed first one, under tenacity: the first failure is replayed as its
        attempt 1, so waits, stops and the retry log are what they would be had tenacity made it."""
        options = self.options
        backoff = wait_random_exponential(multiplier=options.backoff_initial_s, max=options.backoff_max_s)

        def wait(state: RetryCallState) -> float:
            error = state.outcome.exception() if state.outcome else None
            hint = error.retry_after if isinstance(error, UpstreamTransient) else None
            return hint if hint is not None else backoff(state)

        retrying = AsyncRetrying(
            retry=retry_if_exception_type(UpstreamTransient),
            wait=wait,
            stop=stop_after_attempt(options.max_attempts) | _StopBeforeDeadline(deadline),
            before_sleep=self._note_retry,
            reraise=True,
        )
        replay: UpstreamTransient | None = first
        async for attempt in retrying:
            with attempt:
                if replay is not None:
                    error, replay = replay, None
                    raise error
                return await self._attempt(content, deadline)
        raise AssertionError("unreachable: tenacity re-raises the last error")

    def _note_retry(self, state: RetryCallState) -> None:
        self.counters["upstream_retries_total"] += 1
        error = state.outcome.exception() if state.outcome else None
        logger.info("%s; retry %d in %.2f s", error, state.attempt_number, state.upcoming_sleep)

    async def _attempt(self, content: bytes, deadline: float) -> bytes:
        assert self._pool is not None
        options = self.options
        budget = max(min(options.timeout_s, deadline - time.monotonic()), 0.001)
        self.counters["upstream_calls_total"] += 1
        try:
            with upstream_errors(self.name, self._secret):
                async with asyncio.timeout(budget):
                    reply = await self._pool.post(
                        content, timeout_s=budget, connect_timeout_s=min(options.connect_timeout_s, budget)
                    )
            if not 200 <= reply.status < 300:
                raise status_error(self.name, reply.as_httpx(), self._secret)
        except ProviderError as exc:
            self.counters["upstream_errors_total"] += 1
            self.counters["upstream_rate_limited_total"] += isinstance(exc, UpstreamBusy)
            raise
        return reply.content


class _StopBeforeDeadline(stop_base):
    """Stop when the coming sleep would end at or past `deadline` (tenacity's `stop_before_delay`,
    measured from the first attempt rather than from the loop's start)."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline

    def __call__(self, retry_state: RetryCallState) -> bool:
        return time.monotonic() + (retry_state.upcoming_sleep or 0.0) >= self.deadline


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
