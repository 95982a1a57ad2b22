"""Soak benchmark: minutes of mixed traffic below overload; nothing may fail and memory must stay flat.

One gateway process on 127.0.0.1 serves a tiny SigLIP with both caches (a private Redis and
the in-process L1, kept small so it is full before the warm-up ends: a cache filling up to its
bound is growth, not a leak). `--clients` callers send, at random, texts and images that are
cached (a fixed pool, repeated) or new: PNG and JPEG data URIs, image URLs served by a local
`ImageHost`, interleaved text+image items, and bad inputs (invalid base64, an unknown field, a
truncated image, a text over `limits.max_text_chars`) that must get a 4xx with the OpenAI error
body. RSS is read from /metrics every `--sample-seconds`.

Targets, each a non-zero exit when missed: no 5xx and no transport error; no answer other than
200 for good inputs, a 4xx for bad ones, or a 429 with `Retry-After` (earned by a full queue);
RSS at the end within `--rss-tolerance` of RSS after the warm-up. Usage:

    .venv/bin/python bench/soak.py [--minutes 10] [--clients 8]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import itertools
import json
import os
import random
import shutil
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.images_data import data_uri, encode, gradient  # noqa: E402
from tests.servers import ImageHost, RedisServer, gateway_process  # noqa: E402
from tests.tiny_models import build_siglip  # noqa: E402

MODEL = "siglip-soak"
MIB = 1024 * 1024
POOL = 32  # cached inputs of each kind
TOO_LONG = 70_000  # characters: over the default limits.max_text_chars (65,536)


@dataclass
class Request:
    """One request to send and what a correct gateway answers: 200 with `items` vectors, or a 4xx."""

    body: dict[str, Any]
    items: int
    bad: bool = False


@dataclass
class Outcome:
    """One answer as the client saw it."""

    kind: str
    status: int  # 0: no HTTP answer
    latency_ms: float
    verdict: str  # "ok", "expected 4xx", "earned 429" or what went wrong
    cache_hits: int = 0
    cache_misses: int = 0
    detail: str = ""


@dataclass
class Sample:
    """The gateway's gauges at one moment of the run."""

    elapsed_s: float
    rss: float
    queued: float
    memory_cache_bytes: float
    redis_errors: float


@dataclass
class Inputs:
    """Makes the requests: pools of cached inputs, and new ones on demand."""

    host: ImageHost
    rng: random.Random
    prefix: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    counter: itertools.count[int] = field(default_factory=itertools.count)
    texts: list[str] = field(default_factory=list)
    pngs: list[str] = field(default_factory=list)
    urls: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.texts = [f"soak cached text {i}: a photo of a cat on a mat" for i in range(POOL)]
        self.pngs = [data_uri(self.png(i)) for i in range(POOL)]
        for i in range(POOL):
            self.host.add(f"/pool/{i}.jpg", self.jpeg(seed=1000 + i), Content_Type="image/jpeg")
        self.urls = [self.host.url(f"/pool/{i}.jpg") for i in range(POOL)]

    def fresh_text(self) -> str:
        return f"soak {self.prefix} new text {next(self.counter)} about {self.rng.choice(['cats', 'cars', 'maps'])}"

    def fresh_seed(self) -> int:
        return 10_000 + next(self.counter)

    @staticmethod
    def picture(width: int, height: int, seed: int) -> Image.Image:
        """A gradient with `seed` written into its corner: `gradient` alone repeats every 256 seeds."""
        image = gradient(width, height, seed=seed)
        image.paste((seed % 256, seed // 256 % 256, seed // 65536 % 256), (0, 0, 4, 4))
        return image

    def jpeg(self, seed: int) -> bytes:
        """A JPEG of a random size; the comment keeps its bytes unique where lossy coding merges pixels."""
        size = (self.rng.randint(24, 64), self.rng.randint(24, 64))
        return encode(self.picture(*size, seed=seed), "JPEG", quality=90, comment=f"{self.prefix} {seed}")

    def png(self, seed: int) -> bytes:
        return encode(self.picture(40, 32, seed=seed), "PNG")

    def fresh_url(self) -> str:
        seed = self.fresh_seed()
        return self.host.add(f"/new/{self.prefix}/{seed}.png", self.png(seed))

    def body(self, items: list[Any]) -> dict[str, Any]:
        return {"model": MODEL, "input": items, "encoding_format": self.rng.choice(["float", "base64"])}

    def make(self, kind: str) -> Request:
        """A request of `kind` (a key of KINDS)."""
        rng, n = self.rng, self.rng.randint(1, 4)
        if kind == "text, cached":
            return Request(self.body(rng.sample(self.texts, n)), n)
        if kind == "text, new":
            return Request(self.body([self.fresh_text() for _ in range(n)]), n)
        if kind == "png data URI, cached":
            return Request(self.body([{"image": uri} for uri in rng.sample(self.pngs, n)]), n)
        if kind == "jpeg data URI, new":
            uris = [data_uri(self.jpeg(self.fresh_seed()), "image/jpeg") for _ in range(n)]
            return Request(self.body([{"type": "image_url", "image_url": {"url": u}} for u in uris]), n)
        if kind == "image URL, cached":
            return Request(self.body([{"image": url} for url in rng.sample(self.urls, n)]), n)
        if kind == "image URL, new":
            return Request(self.body([{"type": "image_url", "image_url": self.fresh_url()} for _ in range(n)]), n)
        if kind == "interleaved, half new":
            items = [
                {"content": [rng.choice(self.texts), {"image": rng.choice(self.pngs)}]},
                {"content": [{"type": "text", "text": self.fresh_text()}, {"image": rng.choice(self.urls)}]},
            ]
            return Request(self.body(items), 2)
        return self.make_bad(kind)

    def make_bad(self, kind: str) -> Request:
        """A request the gateway must refuse with a 4xx."""
        if kind == "bad: invalid base64":
            items: list[Any] = [self.fresh_text(), {"image": "data:image/png;base64,@@not*base64@@"}]
            return Request(self.body(items), 0, bad=True)
        if kind == "bad: unknown field":
            return Request({**self.body([self.fresh_text()]), "temperature": 0.2}, 0, bad=True)
        if kind == "bad: truncated image":
            cut = self.png(self.fresh_seed())
            return Request(self.body([{"image": base64.b64encode(cut[: len(cut) // 2]).decode()}]), 0, bad=True)
        if kind == "bad: too-long text":
            return Request(self.body([self.fresh_text() + " x" * (TOO_LONG // 2)]), 0, bad=True)
        raise ValueError(kind)


# Request kinds and their weights: mostly good traffic, a few bad inputs.
KINDS = {
    "text, cached": 4.0,
    "text, new": 4.0,
    "png data URI, cached": 1.5,
    "jpeg data URI, new": 1.5,
    "image URL, cached": 1.5,
    "image URL, new": 1.0,
    "interleaved, half new": 1.0,
    "bad: invalid base64": 0.25,
    "bad: unknown field": 0.25,
    "bad: truncated image": 0.25,
    "bad: too-long text": 0.25,
}


def percentile(samples: list[float], q: float) -> float:
    """The q-quantile by rank (0.0 for no samples, so a table still prints)."""
    if not samples:
        return 0.0
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def error_code(response: httpx.Response) -> str | None:
    """The OpenAI error body's `code`, or None when the body is not that shape."""
    try:
        error = response.json()["error"]
    except (ValueError, KeyError, TypeError):
        return None
    if not isinstance(error, dict) or not {"message", "type", "param", "code"} <= error.keys():
        return None
    return str(error["code"])


def judge(request: Request, response: httpx.Response) -> tuple[str, str]:
    """Whether an answer is what a correct gateway gives, and a short detail for the report."""
    status = response.status_code
    code = error_code(response)
    if status == 429:
        earned = code == "server_overloaded" and response.headers.get("retry-after")
        return ("earned 429" if earned else "429 without Retry-After or body"), str(code)
    if request.bad:
        if 400 <= status < 500 and code is not None:
            return "expected 4xx", code
        return f"bad input answered {status}", str(code)
    if status != 200:
        return f"good input answered {status}", str(code)
    data = response.json().get("data", [])
    if len(data) != request.items or [d["index"] for d in data] != list(range(request.items)):
        return "wrong number of vectors", f"{len(data)} for {request.items}"
    return "ok", ""


async def call(client: httpx.AsyncClient, kind: str, request: Request) -> Outcome:
    """Send one request and judge the answer; a transport error is an outcome, not an exception."""
    start = time.perf_counter()
    try:
        response = await client.post("/v1/embeddings", json=request.body)
    except httpx.HTTPError as exc:
        return Outcome(kind, 0, (time.perf_counter() - start) * 1000, f"transport: {type(exc).__name__}")
    latency_ms = (time.perf_counter() - start) * 1000
    verdict, detail = judge(request, response)
    hits = int(response.headers.get("x-cache-hits", 0))
    misses = int(response.headers.get("x-cache-misses", 0))
    return Outcome(kind, response.status_code, latency_ms, verdict, hits, misses, detail)


async def sample(client: httpx.AsyncClient, started: float) -> Sample:
    """RSS, queue depth, L1 size and Redis errors from /metrics."""
    values: dict[str, float] = {}
    for family in text_string_to_metric_families((await client.get("/metrics")).text):
        for s in family.samples:
            values[s.name] = s.value
    return Sample(
        time.monotonic() - started,
        values.get("process_resident_memory_bytes", 0.0),
        values.get("gateway_model_queued", 0.0),
        values.get("gateway_cache_memory_bytes", 0.0),
        values.get("gateway_redis_errors_total", values.get("gateway_redis_errors", 0.0)),
    )


async def soak(base: str, inputs: Inputs, args: argparse.Namespace) -> tuple[list[Outcome], list[Sample], float]:
    """`args.clients` closed-loop callers for `args.minutes`, sampling the gauges meanwhile."""
    outcomes: list[Outcome] = []
    samples: list[Sample] = []
    kinds, weights = list(KINDS), list(KINDS.values())
    started = time.monotonic()
    deadline = started + args.minutes * 60
    limits = httpx.Limits(max_connections=args.clients + 4)
    async with (
        httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as client,
        httpx.AsyncClient(base_url=base, timeout=30) as probe,
    ):

        async def caller() -> None:
            while time.monotonic() < deadline:
                kind = inputs.rng.choices(kinds, weights)[0]
                outcomes.append(await call(client, kind, inputs.make(kind)))

        async def sampler() -> None:
            while True:
                samples.append(await sample(probe, started))
                last = samples[-1]
                print(
                    f"[{last.elapsed_s:5.0f} s] {len(outcomes)} requests, RSS {last.rss / MIB:.1f} MiB, "
                    f"L1 {last.memory_cache_bytes / MIB:.2f} MiB, queued {last.queued:.0f}",
                    flush=True,
                )
                if time.monotonic() >= deadline:
                    return
                await asyncio.sleep(min(args.sample_seconds, max(0.0, deadline - time.monotonic())))

        watcher = asyncio.create_task(sampler())
        await asyncio.gather(*(caller() for _ in range(args.clients)))
        await watcher
        samples.append(await sample(probe, started))
    return outcomes, samples, time.monotonic() - started


def report(outcomes: list[Outcome], samples: list[Sample], seconds: float, args: argparse.Namespace) -> list[str]:
    """Print the tables; return the missed targets."""
    print(
        "\n| kind | requests | statuses | p50 ms | p99 ms | items from cache | codes |\n|---|---|---|---|---|---|---|"
    )
    for kind in KINDS:
        mine = [o for o in outcomes if o.kind == kind]
        statuses = Counter(o.status for o in mine)
        hits, misses = sum(o.cache_hits for o in mine), sum(o.cache_misses for o in mine)
        cached = f"{hits / (hits + misses):.0%}" if hits + misses else "-"
        codes = ", ".join(sorted({o.detail for o in mine if o.detail}))
        latencies = [o.latency_ms for o in mine]
        print(
            f"| {kind} | {len(mine)} | {', '.join(f'{s}: {n}' for s, n in sorted(statuses.items()))} | "
            f"{percentile(latencies, 0.5):.1f} | {percentile(latencies, 0.99):.1f} | {cached} | {codes} |"
        )
    by_status = Counter(o.status for o in outcomes)
    verdicts = Counter(o.verdict for o in outcomes)
    unexpected = {v: n for v, n in verdicts.items() if v not in {"ok", "expected 4xx", "earned 429"}}
    server_errors = sum(n for s, n in by_status.items() if s >= 500)
    after_warmup = next((s for s in samples if s.elapsed_s >= args.warmup_seconds), samples[-1])
    end = samples[-1]
    growth = (end.rss - after_warmup.rss) / after_warmup.rss
    redis_errors = end.redis_errors - samples[0].redis_errors
    print("\n| minute | RSS MiB | L1 cache MiB |\n|---|---|---|")
    for minute in range(int(end.elapsed_s // 60) + 1):
        at = min(samples, key=lambda s, m=minute: abs(s.elapsed_s - 60 * m))  # type: ignore[misc]
        print(f"| {at.elapsed_s / 60:.1f} | {at.rss / MIB:.1f} | {at.memory_cache_bytes / MIB:.2f} |")
    print("\n| measure | value |\n|---|---|")
    rows = [
        ("duration, clients", f"{seconds:.0f} s, {args.clients}"),
        ("requests, req/s", f"{len(outcomes)}, {len(outcomes) / seconds:.1f}"),
        ("by status", ", ".join(f"{s or 'transport error'}: {n}" for s, n in sorted(by_status.items()))),
        ("verdicts", ", ".join(f"{v}: {n}" for v, n in verdicts.most_common())),
        ("5xx", str(server_errors)),
        ("unexpected answers", str(sum(unexpected.values()))),
        ("Redis errors (gateway_redis_errors_total)", f"{redis_errors:.0f}"),
        (
            f"RSS at {after_warmup.elapsed_s:.0f} s (after warm-up) / end / peak",
            f"{after_warmup.rss / MIB:.1f} / {end.rss / MIB:.1f} / {max(s.rss for s in samples) / MIB:.1f} MiB"
            f" ({growth:+.1%})",
        ),
        ("load average at the end (1/5/15 min)", " / ".join(f"{x:.1f}" for x in os.getloadavg())),
    ]
    for name, value in rows:
        print(f"| {name} | {value} |")
    missed = []
    if server_errors:
        missed.append(f"{server_errors} responses were 5xx")
    if unexpected:
        missed.append(f"unexpected answers: {unexpected}")
    if growth > args.rss_tolerance:
        missed.append(f"RSS grew {growth:+.1%} after the warm-up (tolerance {args.rss_tolerance:.0%})")
    if end.elapsed_s < args.warmup_seconds:
        missed.append("the run ended before the warm-up did: no RSS comparison")
    return missed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--warmup-seconds", type=float, default=60.0, help="RSS is compared from here on")
    parser.add_argument("--sample-seconds", type=float, default=10.0, help="RSS sampling period")
    parser.add_argument("--rss-tolerance", type=float, default=0.10, help="allowed RSS growth after the warm-up")
    parser.add_argument("--memory-mb", type=float, default=1.0, help="in-process (L1) cache bound")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "soak.json")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-soak-"))
    redis, host = RedisServer(workdir), ImageHost()
    # socketserver listens with a backlog of 5: the gateway's concurrent fetches overflow it and the
    # kernel drops SYNs, which cost a 1 s retransmit each (the image host's delay, not the gateway's).
    host.server.socket.listen(128)
    try:
        model_dir = build_siglip(workdir / "model")
        redis.start()
        config = {
            "models": [{"name": MODEL, "provider": "siglip", "model": str(model_dir)}],
            "images": {"allowed_private_networks": ["127.0.0.1/32"]},
            "cache": {"memory_mb": args.memory_mb, "expose_headers": True},  # X-Cache-Hits: did hits hit?
            "log_level": "warning",
        }
        inputs = Inputs(host, random.Random(args.seed))
        with gateway_process(config, workdir, env={"GATEWAY_REDIS_URL": redis.url}) as base:
            outcomes, samples, seconds = asyncio.run(soak(base, inputs, args))
    finally:
        host.close()
        redis.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    missed = report(outcomes, samples, seconds, args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "args": vars(args) | {"out": str(args.out)},
                "rss_mib": [(round(s.elapsed_s), round(s.rss / MIB, 1)) for s in samples],
                "statuses": Counter(str(o.status) for o in outcomes),
                "missed": missed,
            },
            indent=2,
        )
    )
    for target in missed:
        print(f"FAIL: {target}")
    print("PASS" if not missed else f"{len(missed)} target(s) missed")
    sys.exit(1 if missed else 0)


if __name__ == "__main__":
    main()
