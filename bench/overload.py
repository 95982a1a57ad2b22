"""Overload benchmark: what clients see when they send twice what the model can compute.

One gateway process on 127.0.0.1 serves a small SigLIP built here with a short queue
(`max_queue`). First a closed loop (N clients, each sending its next request when the last
one is answered) measures the sustainable rate; then an open loop sends requests on a fixed
schedule at `--factor` times that rate, whether or not earlier ones were answered, as a fleet
of independent callers does. Every text is new, so the cache never answers for the model.

What must hold under overload: refused requests are refused fast with 429 and `Retry-After`
(the SDKs' retry loops depend on it), admitted ones still finish with 200, nothing is a 5xx,
and memory comes back down. The script prints a table and exits 1 if a request got a 5xx or
a transport error, a 429 lacked `Retry-After` or the OpenAI error body, an admitted request
ended other than 200, or the load never reached the queue's bound (no 429 at all). Usage:

    .venv/bin/python bench/overload.py [--seconds 30] [--factor 2] [--max-queue 64]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.servers import gateway_process  # noqa: E402
from tests.tiny_models import build_siglip  # noqa: E402

MODEL = "siglip-overload"
MIB = 1024 * 1024


@dataclass
class Outcome:
    """One request as the client saw it."""

    status: int  # 0: no HTTP answer (transport error)
    latency_ms: float
    retry_after: str | None = None
    error_code: str | None = None
    transport_error: str | None = None


@dataclass
class Gauges:
    """Peaks of the gateway's own gauges, polled from /metrics while a phase runs."""

    rss_peak: float = 0.0
    queued_peak: float = 0.0
    samples: int = 0


@dataclass
class Phase:
    """A load phase: its outcomes, how long it ran and how late the open loop's schedule fell."""

    outcomes: list[Outcome] = field(default_factory=list)
    seconds: float = 0.0
    sent: int = 0
    max_lag_ms: float = 0.0


def percentile(samples: list[float], q: float) -> float:
    """The q-quantile by rank (0.0 for no samples, so a table still prints)."""
    if not samples:
        return 0.0
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Texts:
    """Texts never sent before (a per-run prefix and a counter), so every item misses the cache."""

    def __init__(self) -> None:
        self._prefix = uuid.uuid4().hex[:8]
        self._counter = itertools.count()

    def batch(self, items: int) -> list[str]:
        return [f"overload {self._prefix} text number {next(self._counter)}" for _ in range(items)]


async def read_metrics(client: httpx.AsyncClient) -> dict[str, float]:
    """The gateway's RSS and CPU seconds, the model's queued inputs, and its own timing of 429 answers
    (`429_count`, `429_sum`, `429_le_<bound>`): the time inside the app, without any wait before it."""
    response = await client.get("/metrics")
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            labels = sample.labels
            if sample.name == "process_resident_memory_bytes":
                values["rss"] = sample.value
            elif sample.name == "process_cpu_seconds_total":
                values["cpu"] = sample.value
            elif sample.name == "gateway_model_queued" and labels.get("model") == MODEL:
                values["queued"] = sample.value
            elif sample.name.startswith("gateway_request_duration_seconds") and labels.get("status_code") == "429":
                suffix = sample.name.rpartition("_")[2]
                key = f"429_le_{labels['le']}" if suffix == "bucket" else f"429_{suffix}"
                values[key] = values.get(key, 0.0) + sample.value
    return values


async def watch(client: httpx.AsyncClient, gauges: Gauges, stop: asyncio.Event, every_s: float = 1.0) -> None:
    """Poll /metrics until `stop`, keeping the peaks (its own connection, so it is never queued behind load)."""
    while not stop.is_set():
        values = await read_metrics(client)
        gauges.rss_peak = max(gauges.rss_peak, values.get("rss", 0.0))
        gauges.queued_peak = max(gauges.queued_peak, values.get("queued", 0.0))
        gauges.samples += 1
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every_s)


async def send(client: httpx.AsyncClient, texts: list[str]) -> Outcome:
    """POST one request; a transport error is an outcome too, not an exception."""
    body = {"model": MODEL, "input": texts, "encoding_format": "base64"}
    start = time.perf_counter()
    try:
        response = await client.post("/v1/embeddings", json=body)
    except httpx.HTTPError as exc:
        return Outcome(0, (time.perf_counter() - start) * 1000, transport_error=type(exc).__name__)
    latency_ms = (time.perf_counter() - start) * 1000
    code = None
    if response.status_code != 200:
        try:
            code = response.json()["error"]["code"]
        except (ValueError, KeyError, TypeError):
            code = "<not an OpenAI error body>"
    return Outcome(response.status_code, latency_ms, response.headers.get("retry-after"), code)


def new_client(base: str) -> httpx.AsyncClient:
    """Enough connections that the client never queues requests itself: the server must be the one to refuse.
    Idle connections expire before uvicorn's 5 s keep-alive does, or a reused one can be closed under us."""
    limits = httpx.Limits(max_connections=2048, max_keepalive_connections=512, keepalive_expiry=2.0)
    return httpx.AsyncClient(base_url=base, timeout=120, limits=limits)


async def closed_loop(base: str, texts: Texts, clients: int, items: int, seconds: float) -> Phase:
    """`clients` callers, each sending its next request as soon as the previous one is answered."""
    phase = Phase()
    deadline = time.perf_counter() + seconds
    async with new_client(base) as client:

        async def caller() -> None:
            while time.perf_counter() < deadline:
                phase.outcomes.append(await send(client, texts.batch(items)))

        start = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(clients)))
        phase.seconds = time.perf_counter() - start
    phase.sent = len(phase.outcomes)
    return phase


async def open_loop(base: str, texts: Texts, rate: float, items: int, seconds: float) -> Phase:
    """Send a request every 1/rate s for `seconds`, whatever became of the earlier ones."""
    phase = Phase()
    tasks: list[asyncio.Task[Outcome]] = []
    async with new_client(base) as client:
        start = time.perf_counter()
        for n in itertools.count():
            due = start + n / rate
            if due - start >= seconds:
                break
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                phase.max_lag_ms = max(phase.max_lag_ms, -delay * 1000)
            tasks.append(asyncio.create_task(send(client, texts.batch(items))))
        phase.sent = len(tasks)
        phase.outcomes = list(await asyncio.gather(*tasks))
        phase.seconds = time.perf_counter() - start
    return phase


async def run(base: str, args: argparse.Namespace) -> dict[str, Any]:
    """Calibrate with the closed loop, then overload with the open loop; gauges polled throughout."""
    texts = Texts()
    async with httpx.AsyncClient(base_url=base, timeout=30) as probe:
        await closed_loop(base, texts, args.clients, args.items, 2.0)  # warm-up: threads, allocator, JIT paths
        calibration = await closed_loop(base, texts, args.clients, args.items, args.calibrate_seconds)
        ok = [o for o in calibration.outcomes if o.status == 200]
        request_rate = len(ok) / calibration.seconds
        target = args.factor * request_rate
        await asyncio.sleep(2.0)
        before = await read_metrics(probe)
        gauges, stop = Gauges(rss_peak=before["rss"]), asyncio.Event()
        watcher = asyncio.create_task(watch(probe, gauges, stop))
        client_cpu = time.process_time()
        overload = await open_loop(base, texts, target, args.items, args.seconds)
        client_cpu = time.process_time() - client_cpu
        stop.set()
        await watcher
        during = await read_metrics(probe)
        await asyncio.sleep(args.settle_seconds)
        after = await read_metrics(probe)
        recovered = await send(probe, texts.batch(args.items))
    return {
        "calibration": calibration,
        "request_rate": request_rate,
        "target_rate": target,
        "overload": overload,
        "rss_before": before["rss"],
        "server_429": {k: during.get(k, 0.0) - before.get(k, 0.0) for k in during if k.startswith("429_")},
        "gateway_cpu": during["cpu"] - before["cpu"],
        "client_cpu": client_cpu,
        "load": os.getloadavg(),
        "gauges": gauges,
        "rss_after": after["rss"],
        "queued_after": after.get("queued", 0.0),
        "recovered": recovered,
    }


def summarise(result: dict[str, Any], args: argparse.Namespace) -> tuple[list[tuple[str, str]], list[str]]:
    """The table's rows and the failures (empty when every check holds)."""
    calibration: Phase = result["calibration"]
    overload: Phase = result["overload"]
    gauges: Gauges = result["gauges"]
    cal_ok = [o for o in calibration.outcomes if o.status == 200]
    outcomes = overload.outcomes
    refused = [o for o in outcomes if o.status == 429]
    accepted = [o for o in outcomes if o.status != 429]
    server_errors = [o for o in outcomes if o.status >= 500]
    transport = [o for o in outcomes if o.status == 0]
    no_retry_after = [o for o in refused if not o.retry_after]
    bad_body = [o for o in refused if o.error_code != "server_overloaded"]
    not_ok = [o for o in accepted if o.status != 200]
    by_status = {s: sum(1 for o in outcomes if o.status == s) for s in sorted({o.status for o in outcomes})}
    server_429: dict[str, float] = result["server_429"]
    retry_values = sorted({o.retry_after for o in refused if o.retry_after})
    rows = [
        ("model", f"SigLIP width {args.width}, {args.layers} layers; max_queue {args.max_queue}"),
        ("request", f"{args.items} new texts, encoding_format=base64"),
        (
            f"sustainable (closed loop, {args.clients} clients, {calibration.seconds:.0f} s)",
            f"{result['request_rate']:.1f} req/s, {result['request_rate'] * args.items:.1f} items/s, "
            f"p50 {percentile([o.latency_ms for o in cal_ok], 0.5):.0f} ms "
            f"({len(cal_ok)}/{len(calibration.outcomes)} 200)",
        ),
        (
            f"offered (open loop, {args.factor:g}x, {args.seconds:.0f} s)",
            f"{overload.sent / args.seconds:.1f} req/s ({overload.sent} requests; schedule lag max "
            f"{overload.max_lag_ms:.0f} ms)",
        ),
        ("statuses", ", ".join(f"{s or 'transport error'}: {n}" for s, n in by_status.items())),
        ("429 share", f"{len(refused) / max(1, len(outcomes)):.1%}"),
        (
            "429 latency p50 / p99 / max",
            f"{percentile([o.latency_ms for o in refused], 0.5):.1f} / "
            f"{percentile([o.latency_ms for o in refused], 0.99):.1f} / "
            f"{max((o.latency_ms for o in refused), default=0.0):.1f} ms",
        ),
        (
            "429 inside the gateway: mean / within 5 ms / within 10 ms",
            f"{server_429.get('429_sum', 0.0) * 1000 / max(1.0, server_429.get('429_count', 0.0)):.1f} ms / "
            f"{server_429.get('429_le_0.005', 0.0) / max(1.0, server_429.get('429_count', 0.0)):.1%} / "
            f"{server_429.get('429_le_0.01', 0.0) / max(1.0, server_429.get('429_count', 0.0)):.1%}",
        ),
        (
            "429 with Retry-After / OpenAI body",
            f"{len(refused) - len(no_retry_after)}/{len(refused)} / {len(refused) - len(bad_body)}/{len(refused)}"
            f" (Retry-After values: {', '.join(retry_values) or 'none'})",
        ),
        (
            "admitted: 200 / all, latency p50 / p99",
            f"{len(accepted) - len(not_ok)}/{len(accepted)}, "
            f"{percentile([o.latency_ms for o in accepted], 0.5):.0f} / "
            f"{percentile([o.latency_ms for o in accepted], 0.99):.0f} ms",
        ),
        ("admitted throughput", f"{len(accepted) / overload.seconds:.1f} req/s"),
        ("5xx / transport errors", f"{len(server_errors)} / {len(transport)}"),
        ("queued inputs, peak (polled) / after", f"{gauges.queued_peak:.0f} / {result['queued_after']:.0f}"),
        (
            "RSS before / peak / after",
            f"{result['rss_before'] / MIB:.0f} / {gauges.rss_peak / MIB:.0f} / {result['rss_after'] / MIB:.0f} MiB"
            f" ({gauges.samples} samples)",
        ),
        (
            "CPU during the open loop: gateway / this client / load average",
            f"{result['gateway_cpu'] / overload.seconds:.2f} / {result['client_cpu'] / overload.seconds:.2f} cores / "
            + " ".join(f"{x:.1f}" for x in result["load"]),
        ),
        ("first request after the load", str(result["recovered"].status)),
    ]
    failures = []
    if len(cal_ok) < len(calibration.outcomes):
        failures.append("the closed loop got answers other than 200: its rate is not the sustainable one (--clients)")
    if server_errors:
        failures.append(f"{len(server_errors)} responses were 5xx")
    if transport:
        failures.append(f"{len(transport)} requests got no HTTP answer ({transport[0].transport_error})")
    if no_retry_after:
        failures.append(f"{len(no_retry_after)} 429s had no Retry-After")
    if bad_body:
        failures.append(f"{len(bad_body)} 429s lacked code server_overloaded ({bad_body[0].error_code})")
    if not_ok:
        failures.append(f"{len(not_ok)} admitted requests ended with {sorted({o.status for o in not_ok})}")
    if not refused:
        failures.append("no 429 at all: the load did not reach the queue's bound (raise --factor or lower --max-queue)")
    if result["recovered"].status != 200:
        failures.append(f"the request after the load got {result['recovered'].status}")
    return rows, failures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="length of the open-loop phase")
    parser.add_argument("--calibrate-seconds", type=float, default=10.0, help="length of the closed-loop phase")
    parser.add_argument("--factor", type=float, default=2.0, help="open-loop rate over the sustainable rate")
    parser.add_argument(
        "--clients", type=int, default=0, help="closed-loop callers; 0: as many as fill the queue (max_queue // items)"
    )
    parser.add_argument(
        "--items", type=int, default=16, help="texts per request: the model, not HTTP, must be what runs out"
    )
    parser.add_argument("--max-queue", type=int, default=64, help="the model's max_queue (inputs)")
    parser.add_argument("--width", type=int, default=128, help="model width: slow enough that 2 cores can overload it")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--settle-seconds", type=float, default=5.0, help="idle time before the 'after' RSS")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "overload.json")
    args = parser.parse_args()
    args.clients = args.clients or max(1, args.max_queue // args.items)
    workdir = Path(tempfile.mkdtemp(prefix="bench-overload-"))
    try:
        model_dir = build_siglip(workdir / "model", width=args.width, layers=args.layers)
        model = {"name": MODEL, "provider": "siglip", "model": str(model_dir), "max_queue": args.max_queue}
        config = {"models": [model], "log_level": "warning"}
        with gateway_process(config, workdir) as base:
            result = asyncio.run(run(base, args))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    rows, failures = summarise(result, args)
    print("| measure | value |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"args": vars(args) | {"out": str(args.out)}, "rows": dict(rows)}, indent=2))
    for failure in failures:
        print(f"FAIL: {failure}")
    print("PASS" if not failures else f"{len(failures)} check(s) failed")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
