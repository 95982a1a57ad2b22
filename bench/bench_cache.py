"""Cache benchmark: requests/s and p50/p99 latency, fully cached (memory, Redis) vs uncached.

One run, sides interleaved, against two gateway processes on 127.0.0.1 (one with the
in-process cache, one with Redis only) serving a tiny SigLIP. The floor is `GET /health`:
a request answered without cache or model. Usage:

    .venv/bin/python bench/bench_cache.py [--seconds 3] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.servers import RedisServer, gateway_process  # noqa: E402
from tests.tiny_models import build_siglip  # noqa: E402

MODEL = "siglip-tiny"


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def latency(client: httpx.Client, send: Callable[[httpx.Client], httpx.Response], seconds: float) -> list[float]:
    """Sequential requests for `seconds`: per-request latency in ms."""
    samples = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        response = send(client)
        samples.append((time.perf_counter() - start) * 1000)
        assert response.status_code == 200, response.text
    return samples


async def throughput(base: str, request: dict[str, Any], seconds: float, clients: int = 8) -> float:
    """Requests/s with `clients` concurrent keep-alive clients."""
    done = 0
    deadline = time.perf_counter() + seconds
    async with httpx.AsyncClient(base_url=base, timeout=60) as client:

        async def worker() -> None:
            nonlocal done
            while time.perf_counter() < deadline:
                response = await client.request(**request)
                assert response.status_code == 200, response.text
                done += 1

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        return done / (time.perf_counter() - start)


def scenarios(items: int) -> dict[str, tuple[str, dict[str, Any]]]:
    texts = [f"cached benchmark text {i}" for i in range(items)]
    body = {"model": MODEL, "input": texts, "encoding_format": "base64"}
    post = {"method": "POST", "url": "/v1/embeddings", "json": body}
    return {
        f"cached, memory, {items} item(s)": ("memory", post),
        f"cached, redis, {items} item(s)": ("redis", post),
        f"uncached, {items} item(s)": ("memory", {**post, "headers": {"cache-control": "no-cache"}}),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "cache.json")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-cache-"))
    model_dir = build_siglip(workdir / "model")
    redis = RedisServer(workdir)
    redis.start()
    models = [{"name": MODEL, "provider": "siglip", "model": str(model_dir)}]
    memory_config = {"models": models, "log_level": "warning"}
    redis_config = {"models": models, "log_level": "warning", "cache": {"memory_mb": 0}}
    results: dict[str, dict[str, list[float]]] = {}
    try:
        with (
            gateway_process(memory_config, workdir) as memory_url,
            gateway_process(redis_config, workdir, env={"GATEWAY_REDIS_URL": redis.url}) as redis_url,
        ):
            bases = {"memory": memory_url, "redis": redis_url}
            plan: dict[str, tuple[str, dict[str, Any]]] = {
                "floor: GET /health": ("memory", {"method": "GET", "url": "/health"})
            }
            for items in (1, 32):
                plan.update(scenarios(items))
            for base_url in bases.values():  # fill both caches
                for _, request in plan.values():
                    if request["method"] == "POST":
                        httpx.post(f"{base_url}/v1/embeddings", json=request["json"], timeout=60)
            for _ in range(args.rounds):
                for name, (side, request) in plan.items():
                    base = bases[side]
                    with httpx.Client(base_url=base, timeout=60) as client:
                        samples = latency(client, lambda c, r=request: c.request(**r), args.seconds)  # type: ignore[misc]
                    rate = asyncio.run(throughput(base, request, args.seconds))
                    entry = results.setdefault(name, {"p50": [], "p99": [], "rps": []})
                    entry["p50"].append(statistics.median(samples))
                    entry["p99"].append(percentile(samples, 0.99))
                    entry["rps"].append(rate)
    finally:
        redis.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    summary = {name: {k: statistics.median(v) for k, v in entry.items()} for name, entry in results.items()}
    floor = summary["floor: GET /health"]["p50"]
    print("| scenario | req/s (8 clients) | p50 ms | p99 ms | p50 over floor ms |\n|---|---|---|---|---|")
    for name, row in summary.items():
        print(f"| {name} | {row['rps']:.0f} | {row['p50']:.2f} | {row['p99']:.2f} | {row['p50'] - floor:+.2f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rounds": args.rounds, "seconds": args.seconds, "summary": summary}, indent=2))


if __name__ == "__main__":
    main()
