"""The machinery every HTTP provider shares (`providers/http.py`): error mapping, retries and
Retry-After, deadlines, client-side limits, answer checking and key hygiene. Driven through the
OpenAI-compatible provider against a real fake server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
import email.utils
import logging
import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest

from providers.base import (
    EmbedOptions,
    InputRejected,
    ModelLoadError,
    Overloaded,
    ProviderError,
    UpstreamRefused,
)
from providers.http import (
    UpstreamBusy,
    UpstreamRejected,
    UpstreamTransient,
    apportion,
    plan_batches,
    retry_after,
    upstream_errors,
    upstream_message,
)
from providers.openai_compat import from_options
from tests.fake_upstreams import (
    Canned,
    OpenAIFake,
    drop_last_vector,
    expected,
    fake_vector,
    nan_as_base64_in_first,
    nan_in_first,
    running,
    shorten_vectors,
    texts,
    zero_first,
)
from tests.servers import free_port

KEY = "sk-DISTINCTIVE-7f3a9c0e5b1d"
NAME = "text-3-small/fake"
FAST = {"timeout_s": 1.0, "retry_deadline_s": 3.0, "backoff_initial_s": 0.01, "backoff_max_s": 0.05}


@pytest.fixture
def fake() -> Iterator[OpenAIFake]:
    with OpenAIFake(api_key=KEY) as server:
        yield server


def provider(fake: OpenAIFake, **options: Any) -> Any:
    settings = {"base_url": f"{fake.url}/v1", "model": fake.model, "dimensions": fake.dimension, "api_key": KEY}
    return from_options({**settings, **FAST, **options}, name=NAME)


async def embed(fake: OpenAIFake, *strings: str, **options: Any) -> Any:
    async with running(provider(fake, **options)) as p:
        return await p.embed(texts(*strings), EmbedOptions())


# --- pure units: messages, Retry-After, shares, batches, status mapping ---


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"detail": "Invalid API key"}, "Invalid API key"),  # Jina, Voyage
        ({"detail": [{"loc": ["body", "input", 0], "msg": "too long", "type": "x"}]}, "input.0: too long"),  # FastAPI
        ({"error": {"message": "Rate limit reached", "type": "tokens"}}, "Rate limit reached"),  # OpenAI, new vLLM
        ({"object": "error", "message": "bad input", "code": 400}, "bad input"),  # vLLM before 0.9
        ({"error": "batch size 40 > 32", "error_type": "Validation"}, "batch size 40 > 32"),  # TEI
    ],
)
def test_upstream_message_reads_every_error_body(body: Any, message: str) -> None:
    assert upstream_message(httpx.Response(400, json=body)) == message


def test_upstream_message_falls_back_to_text_then_reason() -> None:
    assert upstream_message(httpx.Response(502, text="<html>Bad gateway</html>")) == "<html>Bad gateway</html>"
    assert upstream_message(httpx.Response(503, content=b"")) == "Service Unavailable"


def test_retry_after_reads_milliseconds_seconds_and_dates() -> None:
    assert retry_after(httpx.Headers({"retry-after-ms": "250", "retry-after": "9"})) == 0.25
    assert retry_after(httpx.Headers({"retry-after": "2.5"})) == 2.5
    now = time.time()
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert 28 <= (retry_after(httpx.Headers({"retry-after": date}), now=now) or 0) <= 30
    assert retry_after(httpx.Headers({"retry-after": "soon"})) is None
    assert retry_after(httpx.Headers({})) is None


def test_apportion_is_proportional_and_exact() -> None:
    assert apportion(10, [1, 1, 2]) == (3, 2, 5)
    shares = apportion(1001, [3.0, 1.0, 1.0, 5.0])
    assert sum(shares) == 1001
    assert shares[3] > shares[0] > shares[1]
    assert apportion(5, [0.0, 0.0]) in ((3, 2), (2, 3))
    assert apportion(0, [1.0]) == (0,)


def test_plan_batches_respects_every_cap_and_keeps_oversize_items_alone() -> None:
    assert plan_batches([1] * 5, [10] * 5, max_items=2, max_tokens=None, max_bytes=None) == [
        range(2),
        range(2, 4),
        range(4, 5),
    ]
    assert plan_batches([6, 6, 50, 1], [1] * 4, max_items=100, max_tokens=12, max_bytes=None) == [
        range(2),
        range(2, 3),
        range(3, 4),
    ]
    assert plan_batches([1] * 3, [600, 600, 10], max_items=100, max_tokens=None, max_bytes=1024) == [
        range(1),
        range(1, 3),
    ]


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (400, UpstreamRejected),
        (413, UpstreamRejected),
        (422, UpstreamRejected),
        (401, UpstreamRefused),
        (402, UpstreamRefused),
        (403, UpstreamRefused),
        (429, UpstreamBusy),
        (500, UpstreamTransient),
        (529, UpstreamTransient),
        (404, ProviderError),
        (418, ProviderError),
    ],
)
def test_status_mapping(status: int, error: type[Exception]) -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(status, json={"detail": f"said {KEY}"}))
    with (
        pytest.raises(ProviderError) as raised,
        httpx.Client(transport=transport) as client,
        upstream_errors("dep", KEY),
    ):
        client.post("http://upstream/v1/embeddings").raise_for_status()
    assert type(raised.value) is error
    assert "dep" in str(raised.value)
    assert KEY not in str(raised.value)


def test_transport_errors_map_to_transient() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused")

    with (
        pytest.raises(UpstreamTransient, match="cannot reach"),
        httpx.Client(transport=httpx.MockTransport(refuse)) as c,
        upstream_errors("dep", None),
    ):
        c.get("http://upstream/")


# --- retries and deadlines ---


async def test_429_retry_after_is_honoured(fake: OpenAIFake) -> None:
    fake.script(Canned(429, {"error": {"message": "slow down"}}, {"Retry-After": "1"}))
    result = await embed(fake, "a")
    assert len(fake.requests) == 2
    assert fake.requests[1].at - fake.requests[0].at >= 0.95
    np.testing.assert_allclose(result.vectors[0], expected([("text", "a")], None, fake.dimension), atol=1e-6)


async def test_retry_after_ms_wins_over_backoff(fake: OpenAIFake) -> None:
    fake.script(Canned(503, {"error": {"message": "busy"}}, {"retry-after-ms": "300"}))
    async with running(provider(fake)) as p:
        await p.embed(texts("a"), EmbedOptions())
        assert p.stats()["upstream_retries_total"] == 1
        assert p.stats()["upstream_errors_total"] == 1
    assert fake.requests[1].at - fake.requests[0].at >= 0.29


async def test_5xx_is_retried_then_provider_error(fake: OpenAIFake) -> None:
    fake.script(*[Canned(502, {"error": {"message": "bad gateway"}})] * 5)
    with pytest.raises(ProviderError, match="502: bad gateway") as raised:
        await embed(fake, "a", max_attempts=3)
    assert type(raised.value) is ProviderError
    assert len(fake.requests) == 3


async def test_429_still_failing_is_overloaded(fake: OpenAIFake) -> None:
    fake.script(*[Canned(429, {"error": {"message": "quota per minute"}})] * 3)
    with pytest.raises(Overloaded, match="quota per minute"):
        await embed(fake, "a", max_attempts=3)
    assert len(fake.requests) == 3


@pytest.mark.parametrize("status", [429, 503])
async def test_retry_after_beyond_the_deadline_gives_up_at_once(fake: OpenAIFake, status: int) -> None:
    fake.script(Canned(status, {"error": {"message": "come back later"}}, {"Retry-After": "30"}))
    started = time.monotonic()
    with pytest.raises(Overloaded) as raised:
        await embed(fake, "a")
    assert time.monotonic() - started < 1.0
    assert 29 <= raised.value.retry_after <= 30
    assert len(fake.requests) == 1


async def test_slow_upstream_times_out_within_the_deadline(fake: OpenAIFake) -> None:
    fake.script(*[Canned(delay_s=3)] * 5)
    started = time.monotonic()
    with pytest.raises(ProviderError, match="did not answer in time"):
        await embed(fake, "a", timeout_s=0.3, retry_deadline_s=1.0)
    assert time.monotonic() - started < 1.6
    assert len(fake.requests) >= 2  # timeouts are retried


async def test_unreachable_upstream_is_a_provider_error() -> None:
    options = {"base_url": f"http://127.0.0.1:{free_port()}/v1", "model": "m", "dimensions": 4, **FAST}
    async with running(from_options({**options, "retry_deadline_s": 0.5}, name=NAME)) as p:
        with pytest.raises(ProviderError, match="cannot reach the upstream"):
            await p.embed(texts("a"), EmbedOptions())
        assert p.stats()["upstream_retries_total"] >= 1


# --- answers that must never become vectors ---


@pytest.mark.parametrize(
    ("value", "message"),
    [(np.nan, "NaN or infinite"), (np.inf, "NaN or infinite"), (0.0, "zero vector"), (1e30, None), (1e-30, None)],
)
async def test_a_one_vector_answer_gets_the_same_checks(fake: OpenAIFake, value: float, message: str | None) -> None:
    """A single base64 vector takes a shorter path; out-of-range sums of squares still get the full checks."""
    row = np.full(fake.dimension, value, np.float32)
    row[0] = value * 2  # not all equal: the scaled result is checked, not just its norm
    answer = {
        "data": [{"index": 0, "embedding": base64.b64encode(row.tobytes()).decode()}],
        "usage": {"total_tokens": 1},
    }
    fake.script(Canned(body=answer))
    async with running(provider(fake)) as p:
        if message is not None:
            with pytest.raises(ProviderError, match=message):
                await p.embed(texts("a"), EmbedOptions())
            return
        result = await p.embed(texts("a"), EmbedOptions())
    want = row.astype(np.float64) / np.linalg.norm(row.astype(np.float64))
    assert result.vectors.dtype == np.float32 and result.vectors.shape == (1, fake.dimension)
    np.testing.assert_allclose(result.vectors[0], want, rtol=1e-6)


@pytest.mark.parametrize(
    ("canned", "message"),
    [
        (Canned(body=b"<html>upstream proxy error</html>"), "not JSON"),
        (Canned(body={"object": "list", "model": "m"}), "no `data` list"),
        (Canned(mutate=drop_last_vector), "returned 1 vectors for 2 inputs"),
        (Canned(mutate=shorten_vectors), "returned 63 dimensions, expected 64"),
        (Canned(mutate=nan_in_first), "not JSON"),  # a bare NaN is not JSON
        (Canned(mutate=nan_as_base64_in_first), "NaN or infinite"),
        (Canned(mutate=zero_first), "zero vector"),
        (Canned(body={"data": [{"index": 0, "embedding": [1.0]}, {"index": 0, "embedding": [1.0]}]}), "index"),
        (Canned(body={"data": [{"index": 0, "embedding": "x"}, {"index": 1, "embedding": ["a"]}]}), "numbers"),
        (Canned(body={"data": [{"index": i, "embedding": "AAAAAAA="} for i in range(2)]}), "numbers"),  # 5 bytes
        (Canned(body={"data": [{"index": 0, "embedding": "AACAPw=="}, {"embedding": "AACAPw=="}]}), "64"),
    ],
)
async def test_bad_answers_are_provider_errors(fake: OpenAIFake, canned: Canned, message: str) -> None:
    fake.script(canned)
    async with running(provider(fake)) as p:
        with pytest.raises(ProviderError, match=message) as raised:
            await p.embed(texts("a", "b"), EmbedOptions())
        assert p.stats()["upstream_errors_total"] == 1
    assert type(raised.value) is ProviderError
    assert NAME in str(raised.value)
    assert len(fake.requests) == 1  # not retried


async def test_vectors_are_renormalised_and_sorted_by_index() -> None:
    with OpenAIFake(vector_fn=lambda key, dim: 5.0 * fake_vector(key, dim), reverse_data=True) as fake:
        result = await embed(fake, "a", "b", "c")
    assert fake.requests[0].body["input"] == ["a", "b", "c"]
    for row, text in zip(result.vectors, "abc", strict=True):
        np.testing.assert_allclose(row, expected([("text", text)], None, fake.dimension), atol=1e-6)


# --- credentials ---


@pytest.mark.parametrize("status", [401, 402, 403])
async def test_refused_credentials_never_show_the_key(
    fake: OpenAIFake, status: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    sent = KEY if status != 401 else "sk-WRONG-0d9e8f7a6b5c"  # 401: the fake's own check of a wrong key
    fake.script(Canned(503, {"error": {"message": f"overloaded for {sent}"}}))  # a retried error is logged
    if status != 401:
        fake.script(Canned(status, {"error": {"message": f"no balance left on {sent}"}}))
    p = provider(fake, api_key=sent)
    async with running(p):
        with pytest.raises(UpstreamRefused, match=f"\\({status}\\)") as raised:
            await p.embed(texts("a"), EmbedOptions())
        stats = repr(p.stats())
    assert fake.requests[-1].headers["authorization"] == f"Bearer {sent}"
    assert "***" in str(raised.value)  # the upstream echoed the key; we did not
    assert "overloaded for ***" in caplog.text
    for text in (str(raised.value), caplog.text, repr(p.options), repr(p), stats):
        assert sent not in text


def test_missing_key_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    p = from_options({"model": "text-embedding-3-small"}, name="openai/main")  # api.openai.com: a key is required
    with pytest.raises(ModelLoadError, match="OPENAI_API_KEY"):
        p.load()
    monkeypatch.setenv("MY_GPU_KEY", "")
    elsewhere = from_options({"base_url": "http://gpu:8000/v1", "model": "m", "api_key_env": "MY_GPU_KEY"}, name="x")
    with pytest.raises(ModelLoadError, match="MY_GPU_KEY"):
        elsewhere.load()


async def test_key_from_the_environment(fake: OpenAIFake, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_UPSTREAM_KEY", KEY)
    options = {"base_url": f"{fake.url}/v1", "model": fake.model, "dimensions": 64, "api_key_env": "FAKE_UPSTREAM_KEY"}
    async with running(from_options(options, name=NAME)) as p:
        await p.embed(texts("a"), EmbedOptions())
    assert fake.requests[0].headers["authorization"] == f"Bearer {KEY}"


# --- client-side limits ---


async def test_requests_per_minute_refuse_with_the_time_until_the_window_frees(fake: OpenAIFake) -> None:
    async with running(provider(fake, requests_per_minute=2)) as p:
        await p.embed(texts("a"), EmbedOptions())
        await p.embed(texts("b"), EmbedOptions())
        with pytest.raises(Overloaded, match="requests_per_minute") as raised:
            await p.embed(texts("c"), EmbedOptions())
        assert p.stats()["refused_total"] == 1
    assert 50 < raised.value.retry_after <= 60
    assert len(fake.requests) == 2


async def test_tokens_per_minute_count_estimated_tokens(fake: OpenAIFake) -> None:
    async with running(provider(fake, tokens_per_minute=100)) as p:
        await p.embed(texts("x" * 60), EmbedOptions())
        with pytest.raises(Overloaded, match="tokens_per_minute"):
            await p.embed(texts("y" * 60), EmbedOptions())
        await p.embed(texts("z" * 30), EmbedOptions())  # still fits the window
    assert len(fake.requests) == 2


async def test_concurrency_cap_holds_calls_in_flight(fake: OpenAIFake) -> None:
    fake.script(*[Canned(delay_s=0.2)] * 6)
    async with running(provider(fake, max_concurrent_requests=2)) as p:
        results = await asyncio.gather(*(p.embed(texts(f"t{i}"), EmbedOptions()) for i in range(6)))
    assert fake.peak_active == 2
    for i, result in enumerate(results):
        np.testing.assert_allclose(result.vectors[0], expected([("text", f"t{i}")], None, 64), atol=1e-6)


async def test_full_queue_is_refused_at_once(fake: OpenAIFake) -> None:
    fake.script(*[Canned(delay_s=0.3)] * 2)
    async with running(provider(fake, max_concurrent_requests=1, max_queued=1)) as p:
        calls = [asyncio.create_task(p.embed(texts(f"t{i}"), EmbedOptions())) for i in range(3)]
        started = time.monotonic()
        with pytest.raises(Overloaded, match="1 calls in flight and 1 waiting"):
            await calls[2]
        assert time.monotonic() - started < 0.1
        assert p.stats()["in_flight"] == 1
        assert p.stats()["queued"] == 1
        await asyncio.gather(*calls[:2])
    assert len(fake.requests) == 2


async def test_a_split_embed_never_refuses_itself(fake: OpenAIFake) -> None:
    async with running(provider(fake, max_concurrent_requests=1, max_queued=0, max_batch_size=1)) as p:
        result = await p.embed(texts("a", "b", "c"), EmbedOptions())
        assert result.usage is not None
        assert result.usage.calls == 3
    assert [r.body["input"] for r in fake.requests] == [["a"], ["b"], ["c"]]
    assert fake.peak_active == 1


async def test_one_bad_batch_cancels_the_others_and_names_its_item(fake: OpenAIFake) -> None:
    async with running(provider(fake, max_batch_size=2)) as p:
        with pytest.raises(InputRejected) as raised:
            await p.embed(texts("a", "b", "c", "", "e", "f"), EmbedOptions())
    assert raised.value.index == 3
    assert "input[0]: input cannot be an empty string" in str(raised.value)


async def test_usage_counts_calls_and_item_tokens_sum_to_the_upstream_total(fake: OpenAIFake) -> None:
    async with running(provider(fake, max_batch_size=2)) as p:
        result = await p.embed(texts("a" * 40, "b", "c" * 400), EmbedOptions())
        stats = p.stats()
    totals = [r.body for r in fake.requests]
    assert len(totals) == 2
    assert result.usage is not None
    assert result.usage.calls == 2
    assert result.usage.billed_tokens == (40 // 4 + 1) + (1 // 4 + 1) + (400 // 4 + 1)
    assert sum(result.item_tokens) == result.usage.billed_tokens
    assert result.item_tokens[2] > result.item_tokens[0] > result.item_tokens[1]
    assert stats["upstream_calls_total"] == 2
    assert stats["upstream_errors_total"] == 0


async def test_nothing_to_embed_makes_no_call(fake: OpenAIFake) -> None:
    async with running(provider(fake)) as p:
        result = await p.embed([], EmbedOptions())
    assert result.vectors.shape == (0, 64)
    assert fake.requests == []
