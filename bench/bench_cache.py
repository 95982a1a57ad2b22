"""Cache benchmark: requests/s and p50/p99 latency, fully cached (memory, Redis) vs uncached.

One run, sides interleaved, against gateway processes on 127.0.0.1 (one with the in-process
cache, one with Redis only) serving a tiny SigLIP. The floor is `GET /health`: a request
answered without cache or model. The classic rows take latency from one sequential client
and req/s from 8 concurrent clients. The `N clients` rows take both under concurrency:
`--clients` keep-alive clients send cached 32-item requests back to back and every request's
latency is kept, so the p99 shows the tails that only appear when requests share the gateway
(a stop-the-world pause delays every request in flight). `--baseline DIR` adds a memory and a
Redis-only gateway imported from another checkout (the code before a change) to those rows,
so before and after are measured side by side in one run. Usage:

    .venv/bin/python bench/bench_cache.py [--seconds 3] [--rounds 3] [--clients 16] [--baseline DIR] [--only TEXT]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.servers import RedisServer, gateway_process  # noqa: E402
from tests.tiny_models import build_siglip  # noqa: E402

MODEL = "siglip-tiny"
FLOOR = "floor: GET /health"


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


async def concurrent(
    base: str, request: dict[str, Any], seconds: float, clients: int, *, cached: bool
) -> tuple[list[float], float]:
    """`clients` keep-alive clients back to back for `seconds`: every request's latency in ms, and req/s.

    `cached`: every request must be served from the cache (a Redis that timed out would compute instead)."""
    samples: list[float] = []
    # One client (one connection) per worker, made and warmed before the clock starts: a single shared
    # httpx pool serves 16 tasks unfairly (p99 ~150 ms on a server whose own p99 is ~25 ms), and each
    # AsyncClient builds an SSL context (~20 ms) when created.
    clients_ = [httpx.AsyncClient(base_url=base, timeout=60) for _ in range(clients)]
    try:
        await asyncio.gather(*(client.get("/health") for client in clients_))
        deadline = time.perf_counter() + seconds

        async def worker(client: httpx.AsyncClient) -> None:
            while time.perf_counter() < deadline:
                start = time.perf_counter()
                response = await client.request(**request)
                samples.append((time.perf_counter() - start) * 1000)
                assert response.status_code == 200, response.text
                assert not cached or response.headers.get("x-cache-misses") in (None, "0"), "a cached request computed"

        start = time.perf_counter()
        await asyncio.gather(*(worker(client) for client in clients_))
        return samples, len(samples) / (time.perf_counter() - start)
    finally:
        await asyncio.gather(*(client.aclose() for client in clients_))


def scenarios(items: int) -> dict[str, tuple[str, dict[str, Any]]]:
    texts = [f"cached benchmark text {i}" for i in range(items)]
    body = {"model": MODEL, "input": texts, "encoding_format": "base64"}
    post = {"method": "POST", "url": "/v1/embeddings", "json": body}
    return {
        f"cached, memory, {items} item(s)": ("memory", post),
        f"cached, redis, {items} item(s)": ("redis", post),
        f"uncached, {items} item(s)": ("memory", {**post, "headers": {"cache-control": "no-cache"}}),
    }


def concurrent_scenarios(clients: int, sides: list[str]) -> dict[str, tuple[str, dict[str, Any]]]:
    """Cached 32-item requests from `clients` clients at once, on each side."""
    request = scenarios(32)["cached, memory, 32 item(s)"][1]
    return {f"{clients} clients, cached, {side}, 32 items": (side, request) for side in sides}


def side_configs(
    redis_url: str, baseline: Path | None, models: list[dict[str, Any]]
) -> dict[str, tuple[dict[str, Any], dict[str, str]]]:
    """Config and environment of each gateway: memory, Redis only, and both again from `baseline`."""
    # expose_headers: the bench checks X-Cache-Misses is 0 on cached rows (older trees always send it).
    memory: dict[str, Any] = {"models": models, "log_level": "warning", "cache": {"expose_headers": True}}
    redis_only: dict[str, Any] = {**memory, "cache": {"memory_mb": 0, "expose_headers": True}}
    sides = {"memory": (memory, {}), "redis": (redis_only, {"GATEWAY_REDIS_URL": redis_url})}
    if baseline is not None:
        # PYTHONSAFEPATH keeps the working directory (this checkout) off sys.path, so PYTHONPATH decides.
        imported_from = {"PYTHONSAFEPATH": "1", "PYTHONPATH": str(baseline.resolve())}
        sides["memory, baseline"] = (memory, imported_from)
        sides["redis, baseline"] = (redis_only, {**imported_from, "GATEWAY_REDIS_URL": redis_url})
    return sides


def measure(
    plan: dict[str, tuple[str, dict[str, Any]]], bases: dict[str, str], args: argparse.Namespace
) -> dict[str, dict[str, list[float]]]:
    """Every scenario once per round, sides interleaved; per round its p50, p99 and req/s."""
    results: dict[str, dict[str, list[float]]] = {}
    for _ in range(args.rounds):
        for name, (side, request) in plan.items():
            base, cached = bases[side], not name.startswith("uncached")
            if " clients, " in name:
                samples, rate = asyncio.run(concurrent(base, request, args.seconds, args.clients, cached=cached))
            else:
                with httpx.Client(base_url=base, timeout=60) as client:
                    samples = latency(client, lambda c, r=request: c.request(**r), args.seconds)  # type: ignore[misc]
                rate = asyncio.run(concurrent(base, request, args.seconds, 8, cached=cached))[1]
            entry = results.setdefault(name, {"p50": [], "p99": [], "rps": []})
            entry["p50"].append(statistics.median(samples))
            entry["p99"].append(percentile(samples, 0.99))
            entry["rps"].append(rate)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients of the concurrent-latency rows")
    parser.add_argument(
        "--baseline", type=Path, default=None, help="another checkout: also run its gateways in the concurrent rows"
    )
    parser.add_argument("--only", default="", help="run only the scenarios whose name contains this")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "cache.json")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-cache-"))
    model_dir = build_siglip(workdir / "model")
    redis = RedisServer(workdir)
    redis.start()
    models = [{"name": MODEL, "provider": "siglip", "model": str(model_dir)}]
    try:
        with ExitStack() as stack:
            bases = {
                side: stack.enter_context(gateway_process(config, workdir, env=env))
                for side, (config, env) in side_configs(redis.url, args.baseline, models).items()
            }
            plan: dict[str, tuple[str, dict[str, Any]]] = {FLOOR: ("memory", {"method": "GET", "url": "/health"})}
            for items in (1, 32):
                plan.update(scenarios(items))
            plan.update(concurrent_scenarios(args.clients, list(bases)))
            plan = {name: step for name, step in plan.items() if args.only in name or name == FLOOR}
            for base_url in bases.values():  # fill every cache
                for _, request in plan.values():
                    if request["method"] == "POST":
                        httpx.post(f"{base_url}/v1/embeddings", json=request["json"], timeout=60)
            # This process imported torch to build the model: a full collection here would stall the
            # clients for ~200 ms and be measured as the gateway's tail.
            gc.collect()
            gc.freeze()
            results = measure(plan, bases, args)
    finally:
        redis.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    summary = {name: {k: statistics.median(v) for k, v in entry.items()} for name, entry in results.items()}
    for name, entry in results.items():
        summary[name]["p99_worst_round"] = max(entry["p99"])
    floor = summary[FLOOR]["p50"]
    print(f"req/s from 8 clients and latency from 1, except the `{args.clients} clients` rows (both from those)")
    print("| scenario | req/s | p50 ms | p99 ms | p99 / p50 | worst round p99 ms | p50 over floor ms |")
    print("|---|---|---|---|---|---|---|")
    for name, row in summary.items():
        print(
            f"| {name} | {row['rps']:.0f} | {row['p50']:.2f} | {row['p99']:.2f} | {row['p99'] / row['p50']:.1f} "
            f"| {row['p99_worst_round']:.2f} | {row['p50'] - floor:+.2f} |"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rounds": args.rounds, "seconds": args.seconds, "summary": summary}, indent=2))


if __name__ == "__main__":
    main()
