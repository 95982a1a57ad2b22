"""The cache through the real server: Redis as the only store, killed and restarted under load."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import redis

from tests.conftest import gateway_config
from tests.images_data import data_uri, png
from tests.servers import ImageHost, RedisServer, gateway_process


@pytest.fixture(scope="module")
def shared_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def cached_gateway_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cached")


@pytest.fixture(scope="module")
def cached_gateway(model_dirs: dict[str, Path], shared_redis: RedisServer, cached_gateway_dir: Path) -> Iterator[str]:
    config = gateway_config(model_dirs)
    config["cache"] = {
        "memory_mb": 0,
        "redis_timeout_s": 0.2,
        "redis_retry_after_s": 0.3,
        "key_prefix": "t:",
        "expose_headers": True,
    }
    env = {"GATEWAY_REDIS_URL": shared_redis.url}
    with gateway_process(config, cached_gateway_dir, env=env) as url:
        yield url


def server_errors(workdir: Path) -> str:
    """The gateway's logged tracebacks, so a failure in CI says what went wrong inside."""
    log = "".join(path.read_text() for path in workdir.glob("gateway-*.log"))
    return log[log.find("Traceback") :] if "Traceback" in log else "(no traceback in the gateway log)"


def embed(base: str, body: dict[str, object], **headers: str) -> httpx.Response:
    sent = {name.replace("_", "-"): value for name, value in headers.items()}
    response = httpx.post(f"{base}/v1/embeddings", json={"model": "siglip-tiny", **body}, headers=sent, timeout=60)
    assert response.status_code == 200, response.text
    return response


def cache_counts(response: httpx.Response) -> tuple[int, int]:
    return int(response.headers["x-cache-hits"]), int(response.headers["x-cache-misses"])


def parts_computed(base: str, model: str = "siglip-tiny") -> float:
    for line in httpx.get(f"{base}/metrics").text.splitlines():
        if line.startswith("gateway_model_parts_total{") and f'model="{model}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def vectors(response: httpx.Response) -> np.ndarray:
    return np.array([row["embedding"] for row in response.json()["data"]], dtype=np.float32)


def test_partial_hits_keep_order_index_and_honest_usage(cached_gateway: str) -> None:
    texts = ["partial zero", "partial one", "partial two"]
    fresh = vectors(embed(cached_gateway, {"input": texts, "encoding_format": "float"}, cache_control="no-store"))
    first = embed(cached_gateway, {"input": [texts[0], texts[2]]})
    assert cache_counts(first) == (0, 2)
    mixed = embed(cached_gateway, {"input": texts, "encoding_format": "float"})
    assert cache_counts(mixed) == (2, 1)
    assert [row["index"] for row in mixed.json()["data"]] == [0, 1, 2]
    np.testing.assert_allclose(vectors(mixed), fresh, atol=1e-6)  # batch shape moves the last float bit
    # usage is what the items cost, cached or not: nothing tells a client what others embedded
    fresh_usage = embed(cached_gateway, {"input": texts}, cache_control="no-cache").json()["usage"]
    assert mixed.json()["usage"] == fresh_usage
    assert fresh_usage["prompt_tokens"] > 0
    cached = embed(cached_gateway, {"input": texts})
    assert cache_counts(cached) == (3, 0)
    assert cached.json()["usage"] == fresh_usage


def test_cached_vector_is_byte_identical_to_fresh(cached_gateway: str) -> None:
    body = {"input": ["byte identical", "another"], "encoding_format": "base64"}
    computed = embed(cached_gateway, body)
    cached = embed(cached_gateway, body)
    fresh = embed(cached_gateway, body, cache_control="no-cache")
    assert cache_counts(cached) == (2, 0)
    assert cache_counts(fresh) == (0, 2)
    assert computed.json()["data"] == cached.json()["data"] == fresh.json()["data"]


def test_options_and_models_never_share_entries(cached_gateway: str, shared_redis: RedisServer) -> None:
    text = "separate entries"
    variants = [
        {"model": "siglip-mrl"},
        {"model": "siglip-mrl", "dimensions": 16},
        {"model": "siglip-mrl", "dimensions": 8},
        {"model": "siglip-mrl", "input_type": "query"},
        {"model": "siglip-mrl", "input_type": "document"},
        {"model": "siglip2-tiny"},
    ]
    for variant in variants:
        assert cache_counts(embed(cached_gateway, {"input": text, **variant})) == (0, 1), variant
    for variant in variants:
        assert cache_counts(embed(cached_gateway, {"input": text, **variant})) == (1, 0), variant
    assert len(redis.Redis.from_url(shared_redis.url).keys("t:*")) >= len(variants)


def test_same_image_by_url_and_data_uri_share_one_entry(cached_gateway: str, image_host: ImageHost) -> None:
    image = png(seed=42)
    url = image_host.add("/shared-entry.png", image)
    by_url = embed(cached_gateway, {"input": [{"image": url}], "encoding_format": "float"})
    by_data = embed(
        cached_gateway,
        {"input": [{"type": "image_url", "image_url": {"url": data_uri(image)}}], "encoding_format": "float"},
        authorization="Bearer someone-else",
    )
    assert cache_counts(by_url) == (0, 1)
    assert cache_counts(by_data) == (1, 0)
    np.testing.assert_array_equal(vectors(by_url), vectors(by_data))


async def test_fifty_concurrent_identical_requests_one_model_call(cached_gateway: str) -> None:
    before = parts_computed(cached_gateway)
    async with httpx.AsyncClient(base_url=cached_gateway, timeout=60) as client:
        responses = await asyncio.gather(
            *(client.post("/v1/embeddings", json={"model": "siglip-tiny", "input": "fifty of me"}) for _ in range(50))
        )
    assert {r.status_code for r in responses} == {200}
    assert parts_computed(cached_gateway) == before + 1
    assert len({tuple(r.json()["data"][0]["embedding"]) for r in responses}) == 1
    assert sum(cache_counts(r)[1] for r in responses) == 1


async def load_while_killing(
    base: str, texts: list[str], reference: np.ndarray, redis_server: RedisServer, failures: list[str]
) -> list[int]:
    """8 clients send one-text requests; Redis is killed after 60 answers. Returns statuses (wrong vector: -1)."""
    statuses: list[int] = []
    enough = asyncio.Event()
    async with httpx.AsyncClient(base_url=base, timeout=60) as client:

        async def worker(offset: int) -> None:
            for i in range(offset, len(texts), 8):
                body = {"model": "siglip-tiny", "input": [texts[i]], "encoding_format": "float"}
                response = await client.post("/v1/embeddings", json=body)
                ok = response.status_code != 200 or np.allclose(vectors(response)[0], reference[i % 40], atol=1e-6)
                statuses.append(response.status_code if ok else -1)
                if response.status_code != 200:
                    failures.append(f"{texts[i]!r}: {response.status_code} {response.text}")
                if len(statuses) >= 60:
                    enough.set()

        async def killer() -> None:
            await enough.wait()
            redis_server.stop()

        await asyncio.gather(killer(), *(worker(k) for k in range(8)))
    return statuses


def test_redis_killed_under_load_then_restarted(
    cached_gateway: str, shared_redis: RedisServer, cached_gateway_dir: Path
) -> None:
    """Zero failed requests while Redis dies; caching resumes once it is back."""
    texts = [f"load text {i % 40}" for i in range(240)]
    body = {"input": texts[:40], "encoding_format": "float"}
    reference = vectors(embed(cached_gateway, body, cache_control="no-store"))
    failures: list[str] = []
    try:
        statuses = asyncio.run(load_while_killing(cached_gateway, texts, reference, shared_redis, failures))
    finally:
        if shared_redis.process is None:
            shared_redis.start()  # same port, empty (no persistence): the gateway reconnects by itself
    assert len(statuses) == len(texts)
    assert set(statuses) == {200}, f"{failures[:3]}\n{server_errors(cached_gateway_dir)}"
    assert "gateway_redis_errors" in httpx.get(f"{cached_gateway}/metrics").text

    client = redis.Redis.from_url(shared_redis.url)
    deadline = time.monotonic() + 10
    while client.dbsize() == 0 and time.monotonic() < deadline:
        embed(cached_gateway, {"input": f"after restart {time.monotonic()}"})
        time.sleep(0.2)
    assert client.dbsize() > 0
    again = embed(cached_gateway, {"input": "resumed caching"})
    assert cache_counts(again) == (0, 1)
    assert cache_counts(embed(cached_gateway, {"input": "resumed caching"})) == (1, 0)


def wait_for_keys(client: redis.Redis, count: int, timeout_s: float = 5.0) -> None:
    """Vectors are written after the answer (within `cache.write_delay_ms`): wait until they are."""
    deadline = time.monotonic() + timeout_s
    while len(client.keys("t:*")) < count:
        assert time.monotonic() < deadline, f"fewer than {count} keys written in {timeout_s} s"
        time.sleep(0.01)


def test_flushed_redis_and_corrupt_values_are_misses(cached_gateway: str, shared_redis: RedisServer) -> None:
    body = {"input": ["flush me", "corrupt me"], "encoding_format": "float"}
    client = redis.Redis.from_url(shared_redis.url)
    client.flushall()
    time.sleep(0.1)  # an earlier test's write still waiting lands now (`write_delay_ms`: 5), not below
    client.flushall()
    original = vectors(embed(cached_gateway, body))
    wait_for_keys(client, 2)
    client.flushall()
    after_flush = embed(cached_gateway, body)
    assert cache_counts(after_flush) == (0, 2)
    np.testing.assert_array_equal(vectors(after_flush), original)
    wait_for_keys(client, 2)
    for key in client.keys("t:*"):
        client.set(key, b"garbage")
    repaired = embed(cached_gateway, body)
    assert cache_counts(repaired) == (0, 2)
    np.testing.assert_array_equal(vectors(repaired), original)
    assert cache_counts(embed(cached_gateway, body)) == (2, 0)
