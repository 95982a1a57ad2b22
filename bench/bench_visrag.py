"""VisRAG-Ret throughput: the gateway vs the raw model call, on pages and on queries, in one run.

Usage (from the repository root)::

    .venv/bin/python bench/bench_visrag.py                  # ~7 min on 2 quiet CPU cores (+30 s the first time)
    .venv/bin/python bench/bench_visrag.py --rounds 1 --raw-page-batches 1     # quick look (~3 min)
    .venv/bin/python bench/bench_visrag.py --lm-layers 4 --vision-layers 4     # deeper (slower)

The model: VisRAG-Ret with random weights and the REAL widths (LM hidden 2304, 36 heads, MLP
5760, vocab 122753; SigLIP-so400m tower 1152 wide, 16 heads, MLP 4304, patch 14; 64 resampler
queries; the real slicing parameters) at a reduced depth (default 2 decoder layers and 2 vision
blocks), saved in the published checkpoint's format under bench/models/ (bench/visrag_model_dir.py).
The full depth (40 + 26 layers: 3.15B parameters, 12.6 GB in fp32; 3.43B with the LM head the
checkpoint carries) would take ~100 s a page on these 2 cores and, with the raw side and the
gateway each holding a copy, not fit in 24 GB; each layer's cost is profiled instead and the
full-depth numbers extrapolated (see "extrapolation" below).

What is measured, per round (each workload on both sides back to back, the side that goes first
alternating by round; one gateway process serves the whole run, idle while the raw side runs):

* ``raw``: the gateway's own `VisragEncoder` in this process (fp32, CPU): prepare (slicing,
  prompt, tokenisation) + collate + forward + pooling, in batches (pages 1 and 2: the engine's CPU
  page batch is 2; queries 16: its text batch). Pages come in decoded; queries carry the instruction.
* ``gateway``: ``python -m gateway serve`` as a subprocess (engine defaults), driven by httpx
  clients on pre-built bodies: pages as 1240x1754 PNG data URIs (120-230 KB), one per request, 2
  concurrent clients (the engine's CPU page batch); queries one per request with
  ``input_type: query``, 32 concurrent clients (two text batches); ``encoding_format: base64``.
  items/s = items answered / (last answer - first send): a measurement starts and ends with an
  empty queue, so the first page's upload, decode and slicing, which nothing overlaps, count.

Measurements are short (2 pages, 64 queries) and many (4 rounds), so that what other sessions
do to this shared machine falls on both sides alike.

The headline ratio is the median over rounds of gateway / (best raw batch of the same round).
Every page and query is new (the vector cache can only miss; X-Cache-Hits is checked). Other
sessions share this machine: before each measurement the bench waits (``--quiet-wait``) until other
processes use at most ``--max-foreign-load`` cores, records the CPU they took during it ("foreign
load", cores) and the load average, and lists the disturbed measurements at the end (rerun then).
Before the rounds, the gateway's vectors (openai SDK) for a query, the same text as a document, a
page and a text+page item are compared with the raw call's (and their token counts).

Extrapolation: one page (batch 1) and one query batch are timed with hooks on every layer; a
full-depth item costs (rest) + 26 x (vision block) + 40 x (decoder layer). The gateway's cost per
item over the raw call (HTTP, PNG decode, queueing, preprocessing contending with the forward)
does not grow with depth, so its full-depth ratio is raw_full / (raw_full + that cost).

Results: a markdown table on stdout, JSON in bench/results/visrag.json; exit status 1 when the
gateway is under ``--target`` x raw on pages, a vector check fails or the cache hit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import itertools
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import httpx
import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.machine_load import CpuMeter, engine_counters, engine_view, load_average  # noqa: E402
from bench.visrag_inputs import PAGE_SIZE, data_uri, decoded, page_png, query_text  # noqa: E402
from bench.visrag_model_dir import REAL_LM_LAYERS, REAL_VISION_LAYERS, ensure, full_depth_parameters  # noqa: E402
from bench.visrag_raw import (  # noqa: E402
    RawVisrag,
    full_depth_seconds,
    measure,
    page_unit,
    profile,
    query_unit,
    token_counts,
)
from providers.visrag_prompt import VisragInput  # noqa: E402

BENCH = ROOT / "bench"
RESULTS_DIR = BENCH / "results"
GATEWAY_MODEL = "visrag-bench"
SERVER_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
CHECK_TOLERANCE = 1e-4  # the fp32 tolerance against the published code
WORKLOADS = ("pages", "queries")
QUIET_WINDOW_S = 2.0  # how long the machine is watched before a measurement

Result = dict[str, Any]


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def model_dir(lm_layers: int, vision_layers: int) -> Path:
    return BENCH / "models" / f"visrag-ret-random-lm{lm_layers}-vision{vision_layers}"


# ---------------------------------------------------------------------------------------------
# Plan
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """What one run measures (see `main` for the options)."""

    directory: Path
    rounds: int
    pages: int
    queries: int
    page_concurrency: int
    query_concurrency: int
    raw_page_batches: tuple[int, ...]
    raw_query_batches: tuple[int, ...]
    max_foreign: float
    quiet_wait_s: float
    retries: int
    engine: dict[str, Any]
    target: float
    page_size: tuple[int, int] = PAGE_SIZE

    def page(self, number: int) -> bytes:
        return page_png(number, self.page_size)


@dataclass
class Numbers:
    """Page and query numbers never used before in this run (every input is new)."""

    counter: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def take(self, count: int) -> list[int]:
        return [next(self.counter) for _ in range(count)]


# ---------------------------------------------------------------------------------------------
# The gateway
# ---------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def gateway_config(plan: Plan) -> dict[str, Any]:
    entry = {
        "name": GATEWAY_MODEL,
        "provider": "visrag",
        "model": str(plan.directory),
        "device": "cpu",
        "dtype": "float32",
        **plan.engine,
    }
    return {"models": [entry], "cache": {"expose_headers": True}}


@contextlib.asynccontextmanager
async def running_gateway(plan: Plan, tag: str) -> AsyncIterator[tuple[str, float]]:
    """`python -m gateway serve` on a free port; yields its base URL and seconds to ready; stops it."""
    logs = RESULTS_DIR / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    config_file, log_path = logs / f"visrag-{tag}.yaml", logs / f"visrag-{tag}.log"
    config_file.write_text(yaml.safe_dump(gateway_config(plan)))
    port = free_port()
    command = [sys.executable, "-m", "gateway", "serve", "--config", str(config_file), "--port", str(port)]
    started = time.monotonic()
    with log_path.open("wb") as log_file:
        process = await asyncio.create_subprocess_exec(
            *command, cwd=ROOT, env={**os.environ, **SERVER_ENV}, stdout=log_file, stderr=subprocess.STDOUT
        )
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(trust_env=False, timeout=2) as client:
            while True:
                if process.returncode is not None:
                    tail = log_path.read_text(errors="replace")[-3000:]
                    raise RuntimeError(f"the gateway exited early, see {log_path}:\n{tail}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(base + "/ready")).status_code == 200:
                        break
                if time.monotonic() - started > 300:
                    raise RuntimeError(f"the gateway was not ready in 300 s, see {log_path}")
                await asyncio.sleep(0.2)
        ready = time.monotonic() - started
        log(f"gateway ready on :{port} after {ready:.1f} s")
        yield base, ready
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 30)
            except TimeoutError:
                process.kill()
                await process.wait()


def page_body(png: bytes) -> bytes:
    item = {"type": "image_url", "image_url": {"url": data_uri(png)}}
    body = {"model": GATEWAY_MODEL, "input": [item], "input_type": "document", "encoding_format": "base64"}
    return json.dumps(body).encode()


def query_body(text: str) -> bytes:
    body = {"model": GATEWAY_MODEL, "input": [text], "input_type": "query", "encoding_format": "base64"}
    return json.dumps(body).encode()


class BenchError(RuntimeError):
    pass


async def drive(client: httpx.AsyncClient, url: str, bodies: Sequence[bytes], concurrency: int) -> Result:
    """Send every body (one input each) from `concurrency` closed-loop clients; the span runs from
    the first send to the last answer, so it starts and ends with an empty queue."""
    pending = iter(bodies)
    latencies: list[float] = []
    totals = {"cache_hits": 0, "tokens": 0}
    last_answer = 0.0
    headers = {"content-type": "application/json"}

    async def client_loop() -> None:
        nonlocal last_answer
        for body in pending:  # one iterator shared by all clients: each body is sent once
            sent = time.monotonic()
            response = await client.post(url, content=body, headers=headers)
            answered = time.monotonic()
            if response.status_code != 200:
                raise BenchError(f"HTTP {response.status_code}: {response.text[:500]}")
            data = response.json()
            if len(data["data"]) != 1:
                raise BenchError(f"{len(data['data'])} vectors for one input")
            totals["cache_hits"] += int(response.headers.get("x-cache-hits", "0"))
            totals["tokens"] += int(data["usage"]["prompt_tokens"])
            latencies.append(answered - sent)
            last_answer = max(last_answer, answered)

    began = time.monotonic()
    await asyncio.gather(*(client_loop() for _ in range(concurrency)))
    span = last_answer - began
    return {
        "rate": len(bodies) / span,
        "items": len(bodies),
        "span_s": span,
        "s_per_item": span / len(bodies),
        "latency_p50_s": float(np.percentile(latencies, 50)),
        "latency_p95_s": float(np.percentile(latencies, 95)),
        "tokens_per_item": totals["tokens"] / len(bodies),
        **totals,
    }


# ---------------------------------------------------------------------------------------------
# Vector checks (openai SDK against the raw call)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckInputs:
    """One query text, one page and the raw call's vectors and token counts for the four checks."""

    text: str
    png: bytes
    expected: dict[str, np.ndarray]
    tokens: dict[str, int]


def check_inputs(plan: Plan, raw: RawVisrag, numbers: Numbers) -> CheckInputs:
    """Also the raw side's warm-up: one forward of each shape the bench runs."""
    number = numbers.take(1)[0]
    text, png = query_text(number), plan.page(number)
    picture = decoded(png)
    units = {
        "query": query_unit(text),
        "document": VisragInput(text),
        "page": page_unit(picture),
        "text+page": VisragInput(text, picture),
    }
    expected = {name: raw.embed([unit])[0] for name, unit in units.items()}
    tokens = dict(zip(units, token_counts(raw, list(units.values())), strict=True))
    return CheckInputs(text, png, expected, tokens)


async def check_vectors(base: str, inputs: CheckInputs) -> Result:
    """The gateway's vectors (float, through the openai SDK) vs the raw call's: max |difference|."""
    import openai

    client = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=600)
    uri = data_uri(inputs.png)
    requests: dict[str, tuple[Any, str]] = {
        "query": (inputs.text, "query"),
        "document": (inputs.text, "document"),
        "page": ({"type": "image_url", "image_url": {"url": uri}}, "document"),
        "text+page": (
            {"content": [{"type": "text", "text": inputs.text}, {"type": "image_url", "image_url": {"url": uri}}]},
            "document",
        ),
    }
    result: Result = {}
    got: dict[str, np.ndarray] = {}
    for name, (item, input_type) in requests.items():
        response = await client.embeddings.create(
            model=GATEWAY_MODEL, input=cast(Any, [item]), encoding_format="float", extra_body={"input_type": input_type}
        )
        got[name] = np.asarray(response.data[0].embedding, dtype=np.float32)
        result[name] = {
            "max_abs_diff": float(np.abs(got[name] - inputs.expected[name]).max()),
            "tokens": response.usage.prompt_tokens,
            "raw_tokens": inputs.tokens[name],
        }
    await client.close()
    result["query_vs_document_cosine"] = float(got["query"] @ got["document"])
    result["ok"] = (
        all(
            result[n]["max_abs_diff"] <= CHECK_TOLERANCE and result[n]["tokens"] == result[n]["raw_tokens"]
            for n in requests
        )
        and result["query_vs_document_cosine"] < 0.9999  # the instruction changes a query's vector
    )
    return result


# ---------------------------------------------------------------------------------------------
# Rounds
# ---------------------------------------------------------------------------------------------


@dataclass
class Measurements:
    """Every kept measurement, by side ("raw", "gateway") and configuration key, in round order."""

    runs: dict[str, dict[str, list[Result]]] = field(default_factory=lambda: {"raw": {}, "gateway": {}})
    gateway_ready_s: float = 0.0
    checks: Result = field(default_factory=dict)


Runner = Callable[[], Awaitable[Result]]


async def until_quiet(plan: Plan, window_s: float = QUIET_WINDOW_S) -> float:
    """Wait (at most `quiet_wait_s`) until other processes use at most `max_foreign` cores over a
    short window: other sessions' test runs come in bursts. Returns the seconds waited."""
    started = time.monotonic()
    while True:
        meter = CpuMeter()
        await asyncio.sleep(window_s)
        foreign = meter.read()["foreign_cores"]
        waited = time.monotonic() - started
        if foreign <= plan.max_foreign:
            return waited
        if waited >= plan.quiet_wait_s:
            log(f"  still {foreign:.2f} foreign cores after {waited:.0f} s: measuring anyway")
            return waited


async def least_disturbed(label: str, plan: Plan, make: Callable[[], Runner]) -> Result:
    """Run a measurement (inputs built by `make` before the meter starts), again when other
    processes took more than `max_foreign` cores meanwhile; keep the least disturbed run."""
    best: Result | None = None
    for attempt in range(plan.retries + 1):
        run = make()
        waited = await until_quiet(plan)
        meter = CpuMeter()
        result = await run()
        result.update(meter.read(), attempt=attempt + 1, waited_for_quiet_s=waited)
        # CPU seconds per item of this process and its children (the gateway, or the raw model with an
        # idle gateway beside it): unlike items/s, barely moved by other processes taking cores.
        result["cpu_s_per_item"] = result["own_cpu_s"] / result["items"]
        result["bench_process_cpu_s_per_item"] = result["bench_process_cpu_s"] / result["items"]
        extra = "".join(
            f", {key.replace('_', ' ')} {result[key]:.2f}" for key in ("mean_batch", "forward_busy") if key in result
        )
        if result.get("cache_hits"):
            extra += f", {result['cache_hits']} CACHE HITS"
        if waited > QUIET_WINDOW_S * 1.5:
            extra += f", waited {waited:.0f} s for quiet"
        log(
            f"  {label:<26} {result['rate']:7.3f} items/s ({result['s_per_item']:.3f} s/item{extra}; "
            f"foreign load {result['foreign_cores']:.2f} cores, load avg {result['load_after']:.2f})"
        )
        if best is None or result["foreign_cores"] < best["foreign_cores"]:
            best = result
        if result["foreign_cores"] <= plan.max_foreign:
            break
        if attempt < plan.retries:
            log(f"  foreign load over {plan.max_foreign} cores: measuring {label} again")
    assert best is not None
    return best


@dataclass
class Sides:
    """The two sides of one run: the raw model in this process and the gateway it talks to."""

    plan: Plan
    raw: RawVisrag
    numbers: Numbers
    client: httpx.AsyncClient
    base: str

    def units(self, workload: str) -> list[VisragInput]:
        if workload == "pages":
            return [page_unit(decoded(self.plan.page(n))) for n in self.numbers.take(self.plan.pages)]
        return [query_unit(query_text(n)) for n in self.numbers.take(self.plan.queries)]

    def raw_runner(self, workload: str, batch: int) -> Runner:
        units = self.units(workload)

        async def run() -> Result:
            return measure(self.raw, units, batch)

        return run

    def gateway_runner(self, workload: str) -> Runner:
        if workload == "pages":
            bodies = [page_body(self.plan.page(n)) for n in self.numbers.take(self.plan.pages)]
            concurrency = self.plan.page_concurrency
        else:
            bodies = [query_body(query_text(n)) for n in self.numbers.take(self.plan.queries)]
            concurrency = self.plan.query_concurrency

        async def run() -> Result:
            before = await engine_counters(self.client, self.base)
            result = await drive(self.client, self.base + "/v1/embeddings", bodies, concurrency)
            result.update(engine_view(before, await engine_counters(self.client, self.base), result["span_s"]))
            return result

        return run

    async def measure(self, side: str, workload: str, into: Measurements) -> None:
        """One side's measurements of one workload (the raw side: each of its batch sizes)."""
        if side == "gateway":
            concurrency = self.plan.page_concurrency if workload == "pages" else self.plan.query_concurrency
            key = f"{workload}/c{concurrency}"
            make = functools.partial(self.gateway_runner, workload)
            into.runs["gateway"].setdefault(key, []).append(await least_disturbed(f"gateway {key}", self.plan, make))
            return
        batches = self.plan.raw_page_batches if workload == "pages" else self.plan.raw_query_batches
        for batch in batches:
            key = f"{workload}/b{batch}"
            make = functools.partial(self.raw_runner, workload, batch)
            into.runs["raw"].setdefault(key, []).append(await least_disturbed(f"raw {key}", self.plan, make))


async def run_rounds(plan: Plan, raw: RawVisrag, numbers: Numbers, check: CheckInputs) -> Measurements:
    """One gateway process for the run; each round measures each workload on both sides back to
    back (so a pair sees the same neighbours), the side that goes first alternating by round."""
    measurements = Measurements()
    async with running_gateway(plan, "run") as (base, ready_s):
        measurements.gateway_ready_s = ready_s
        measurements.checks = await check_vectors(base, check)  # also the page path's warm-up
        log(f"gateway vectors vs raw: {json.dumps(measurements.checks)}")
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
        async with httpx.AsyncClient(trust_env=False, timeout=httpx.Timeout(600.0), limits=limits) as client:
            warm = [query_body(query_text(n)) for n in numbers.take(2 * plan.query_concurrency)]
            await drive(client, base + "/v1/embeddings", warm, plan.query_concurrency)
            sides = Sides(plan, raw, numbers, client, base)
            for round_no in range(plan.rounds):
                order = ["raw", "gateway"] if round_no % 2 == 0 else ["gateway", "raw"]
                log(f"round {round_no + 1}/{plan.rounds}: {' -> '.join(order)}")
                for workload in WORKLOADS:
                    for side in order:
                        await sides.measure(side, workload, measurements)
    return measurements


# ---------------------------------------------------------------------------------------------
# Summary
# ---------------------------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def summarise(runs: dict[str, dict[str, list[Result]]], profiles: dict[str, Result]) -> tuple[list[Result], Result]:
    """A row per (side, config), medians over rounds; per workload: raw limit (best raw batch),
    gateway / raw, seconds per item, and the full-depth extrapolation."""
    rows: list[Result] = []
    for side, configs in runs.items():
        for key, results in configs.items():
            row: Result = {
                "side": side,
                "config": key,
                "workload": key.split("/")[0],
                "items_per_s": median([r["rate"] for r in results]),
                "rounds": [round(r["rate"], 4) for r in results],
                "foreign_cores_max": max(r["foreign_cores"] for r in results),
                "load_avg_max": max(max(r["load_before"], r["load_after"]) for r in results),
            }
            names = (
                "cpu_s_per_item",
                "bench_process_cpu_s_per_item",
                "latency_p50_s",
                "latency_p95_s",
                "mean_batch",
                "forward_busy",
                "forward_s_per_item",
            )
            for name in names:
                if all(name in r for r in results):
                    row[name] = median([r[name] for r in results])
            if side == "gateway":
                row["cache_hits"] = sum(r["cache_hits"] for r in results)
            rows.append(row)
    summary: Result = {}
    for workload in WORKLOADS:
        raw = [r for r in rows if r["side"] == "raw" and r["workload"] == workload]
        gateway = [r for r in rows if r["side"] == "gateway" and r["workload"] == workload]
        if not raw or not gateway:
            continue
        best_raw = max(raw, key=lambda r: r["items_per_s"])
        best_gateway = max(gateway, key=lambda r: r["items_per_s"])
        for row in raw + gateway:
            row["vs_raw"] = row["items_per_s"] / best_raw["items_per_s"]
        # Per round: the gateway against the best raw batch measured right beside it.
        paired = [
            gateway_run["rate"] / max(runs["raw"][r["config"]][i]["rate"] for r in raw)
            for i, gateway_run in enumerate(runs["gateway"][best_gateway["config"]])
        ]
        # The same in CPU seconds per item (the raw batch that used the least): robust to other processes.
        paired_cpu = [
            min(runs["raw"][r["config"]][i]["cpu_s_per_item"] for r in raw) / gateway_run["cpu_s_per_item"]
            for i, gateway_run in enumerate(runs["gateway"][best_gateway["config"]])
        ]
        raw_s, gateway_s = 1 / best_raw["items_per_s"], 1 / best_gateway["items_per_s"]
        timing = profiles[workload]
        scale = full_depth_seconds(timing, REAL_VISION_LAYERS, REAL_LM_LAYERS) / timing["total_s"]
        raw_full_s = raw_s * scale
        overhead_s = raw_s / median(paired) - raw_s  # what the gateway adds per item, from the paired ratio
        summary[workload] = {
            "raw_config": best_raw["config"],
            "raw_items_per_s": best_raw["items_per_s"],
            "gateway_config": best_gateway["config"],
            "gateway_items_per_s": best_gateway["items_per_s"],
            "gateway_vs_raw": median(paired),
            "gateway_vs_raw_by_round": paired,
            "gateway_vs_raw_of_medians": raw_s / gateway_s,
            "cpu_raw_over_gateway": median(paired_cpu),
            "cpu_raw_over_gateway_by_round": paired_cpu,
            "gateway_cpu_s_per_item": best_gateway["cpu_s_per_item"],
            "load_client_cpu_s_per_item": best_gateway["bench_process_cpu_s_per_item"],
            "raw_s_per_item": raw_s,
            "gateway_s_per_item": gateway_s,
            "gateway_overhead_s_per_item": overhead_s,
            "full_depth_estimate": {
                "raw_s_per_item": raw_full_s,
                "raw_items_per_s": 1 / raw_full_s,
                "gateway_vs_raw": raw_full_s / (raw_full_s + max(overhead_s, 0.0)),
                "scale_vs_this_depth": scale,
            },
        }
    return rows, summary


def markdown_table(rows: Sequence[Result]) -> str:
    lines = [
        "| side | workload | config | items/s (median) | per round | / raw | s/item | CPU s/item | p50 / p95 s "
        "| mean batch | forward busy | foreign cores | load avg |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in sorted(rows, key=lambda r: (r["workload"], r["side"] != "raw", r["config"])):
        shape = row["config"].split("/")[1]
        shape = f"batch {shape[1:]}" if shape.startswith("b") else f"{shape[1:]} clients x 1"
        latency = f"{row['latency_p50_s']:.2f} / {row['latency_p95_s']:.2f}" if "latency_p50_s" in row else "-"
        batch = f"{row['mean_batch']:.2f}" if "mean_batch" in row else "-"
        busy = f"{row['forward_busy']:.0%}" if "forward_busy" in row else "-"
        rounds = ", ".join(f"{v:.3f}" for v in row["rounds"])
        lines.append(
            f"| {row['side']} | {row['workload']} | {shape} | {row['items_per_s']:.3f} | {rounds} | "
            f"{row.get('vs_raw', float('nan')):.3f} | {1 / row['items_per_s']:.3f} | {row['cpu_s_per_item']:.3f} | "
            f"{latency} | {batch} | {busy} | "
            f"{row['foreign_cores_max']:.2f} | {row['load_avg_max']:.2f} |"
        )
    return "\n".join(lines)


def print_report(report: Result, out: Path) -> None:
    print(markdown_table(report["rows"]))
    print()
    meta = report["meta"]
    print(
        f"model: real widths, {meta['model']['lm_layers']} decoder layers + {meta['model']['vision_layers']} vision "
        f"blocks ({meta['model']['parameters'] / 1e6:.0f}M parameters; full depth "
        f"{meta['full_depth_parameters']['parameters'] / 1e9:.2f}B)"
    )
    for workload, values in report["summary"].items():
        full = values["full_depth_estimate"]
        print(
            f"{workload}: gateway / raw {values['gateway_vs_raw']:.3f} (median of the rounds' pairs "
            f"{', '.join(f'{v:.3f}' for v in values['gateway_vs_raw_by_round'])}; about "
            f"{values['gateway_overhead_s_per_item'] * 1000:+.0f} ms per item); medians over rounds: gateway "
            f"{values['gateway_items_per_s']:.3f}/s ({values['gateway_s_per_item']:.3f} s/item), raw "
            f"{values['raw_items_per_s']:.3f}/s ({values['raw_s_per_item']:.3f} s/item, {values['raw_config']})"
        )
        print(
            f"  CPU seconds per item, raw / gateway: {values['cpu_raw_over_gateway']:.3f} (median of rounds "
            f"{', '.join(f'{v:.3f}' for v in values['cpu_raw_over_gateway_by_round'])}); of the gateway side's "
            f"{values['gateway_cpu_s_per_item'] * 1000:.0f} ms, the load client took "
            f"{values['load_client_cpu_s_per_item'] * 1000:.1f} ms"
        )
        print(
            f"  full depth (extrapolated): raw {full['raw_s_per_item']:.2f} s/item, "
            f"gateway ~{full['gateway_vs_raw']:.3f} x raw"
        )
    for workload, timing in report["profiles"].items():
        print(
            f"profile {workload} (batch {timing['items']}): {timing['total_s']:.2f} s = vision blocks "
            f"{timing['vision_s']:.2f} s ({timing['vision_layer_s']:.2f}/block) + decoder {timing['lm_s']:.2f} s "
            f"({timing['lm_layer_s']:.3f}/layer) + rest {timing['rest_s']:.2f} s"
        )
    print(f"gateway vectors vs raw: {json.dumps(report['vector_checks'])}")
    print(f"load average: start {meta['load_avg_start']:.2f}, end {meta['load_avg_end']:.2f}")
    print(f"\nJSON: {out}  (wall {meta['wall_s'] / 60:.1f} min)")


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------


def parse_engine(specs: Sequence[str]) -> dict[str, Any]:
    """`max_batch_size=16,max_wait_ms=5` -> {"max_batch_size": 16, "max_wait_ms": 5}."""
    engine: dict[str, Any] = {}
    for spec in specs:
        for item in filter(None, (s.strip() for s in spec.split(","))):
            key, _, value = item.partition("=")
            engine[key.strip()] = yaml.safe_load(value)
    return engine


def page_size(text: str) -> tuple[int, int]:
    """`1240x1754` -> (1240, 1754)."""
    width, _, height = text.lower().partition("x")
    return int(width), int(height)


def integers(text: str) -> tuple[int, ...]:
    return tuple(int(value) for value in text.split(",") if value.strip())


async def profile_all(plan: Plan, raw: RawVisrag, numbers: Numbers, repeats: int = 2) -> dict[str, Result]:
    """Per workload, the layer profile of one page (batch 1) and of one query batch: the fastest of
    `repeats` forwards, each after waiting for a quiet machine (a disturbed one skews the shares)."""
    profiles: dict[str, Result] = {}
    for workload in WORKLOADS:
        for _ in range(repeats):
            if workload == "pages":
                units = [page_unit(decoded(plan.page(n))) for n in numbers.take(1)]
            else:
                units = [query_unit(query_text(n)) for n in numbers.take(max(plan.raw_query_batches))]
            await until_quiet(plan)
            meter = CpuMeter()
            timing: Result = profile(raw, units)
            timing["foreign_cores"] = meter.read()["foreign_cores"]
            if workload not in profiles or timing["total_s"] < profiles[workload]["total_s"]:
                profiles[workload] = timing
        log(f"profile {workload}: {json.dumps({k: round(v, 4) for k, v in profiles[workload].items()})}")
    return profiles


def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    load_start = load_average()
    directory = model_dir(args.lm_layers, args.vision_layers)
    plan = Plan(
        directory=directory,
        rounds=args.rounds,
        pages=args.pages,
        queries=args.queries,
        page_concurrency=args.page_concurrency,
        query_concurrency=args.query_concurrency,
        raw_page_batches=integers(args.raw_page_batches),
        raw_query_batches=integers(args.raw_query_batches),
        max_foreign=args.max_foreign_load,
        quiet_wait_s=args.quiet_wait,
        retries=args.retries,
        engine=parse_engine(args.gateway_engine or []),
        target=args.target,
        page_size=page_size(args.page_size),
    )
    log(
        f"model directory {directory.relative_to(ROOT)} "
        f"({args.lm_layers} decoder layers, {args.vision_layers} vision blocks)"
    )
    marker = ensure(directory, lm_layers=args.lm_layers, vision_layers=args.vision_layers, rebuild=args.rebuild)
    raw = RawVisrag(directory)
    log(f"raw model loaded: {marker['parameters'] / 1e6:.0f}M parameters, torch threads {torch.get_num_threads()}")
    numbers = Numbers()
    check = check_inputs(plan, raw, numbers)
    profiles = asyncio.run(profile_all(plan, raw, numbers))
    tokens = {
        "page": float(np.mean(token_counts(raw, [page_unit(decoded(plan.page(0)))]))),
        "query": float(np.mean(token_counts(raw, [query_unit(query_text(n)) for n in range(64)]))),
    }
    plan_of_page = raw.encoder.prompts.slice_plan(decoded(plan.page(0)))
    slicing = {"overview": list(plan_of_page.source), "grid": plan_of_page.grid, "refined": plan_of_page.refined}
    log(f"a page: {plan.page_size[0]}x{plan.page_size[1]}, slicing {slicing}, {tokens['page']:.0f} tokens")
    measurements = asyncio.run(run_rounds(plan, raw, numbers, check))
    rows, summary = summarise(measurements.runs, profiles)
    report: Result = {
        "meta": {
            "date": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "model": {"dir": str(directory.relative_to(ROOT)), **marker},
            "full_depth_parameters": full_depth_parameters(),
            "tokens_per_item": tokens,
            "page": {"size": list(plan.page_size), "png_bytes": len(plan.page(0)), **slicing},
            "plan": {k: (str(v) if isinstance(v, Path) else v) for k, v in plan.__dict__.items()},
            "gateway_ready_s": measurements.gateway_ready_s,
            "load_avg_start": load_start,
            "load_avg_end": load_average(),
            "wall_s": time.monotonic() - started,
        },
        "rows": rows,
        "summary": summary,
        "profiles": profiles,
        "vector_checks": measurements.checks,
        "runs": measurements.runs,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print_report(report, out)
    return verdict(plan, measurements, rows, summary)


def verdict(plan: Plan, measurements: Measurements, rows: Sequence[Result], summary: Result) -> int:
    """Print what failed (and which measurements other processes disturbed); the exit status."""
    failures = []
    pages = summary.get("pages")
    if pages is not None and pages["gateway_vs_raw"] < plan.target:
        failures.append(f"pages: gateway {pages['gateway_vs_raw']:.3f} x raw, under the {plan.target} target")
    if not measurements.checks.get("ok", False):
        failures.append("the gateway's vectors differ from the raw call's")
    if any(row.get("cache_hits") for row in rows):
        failures.append("the vector cache hit: inputs were not all new")
    disturbed = [
        f"{side} {key} round {i + 1} ({r['foreign_cores']:.2f})"
        for side, configs in measurements.runs.items()
        for key, results in configs.items()
        for i, r in enumerate(results)
        if r["foreign_cores"] > plan.max_foreign
    ]
    if disturbed:
        print(
            f"NOTE: {len(disturbed)} measurements ran while other processes took over {plan.max_foreign} cores "
            f"({'; '.join(disturbed)}): the ratios are noisier than usual; rerun when the machine is quieter."
        )
    for failure in failures:
        print(f"FAIL: {failure}")
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--lm-layers", type=int, default=2, help="decoder layers of the random model (real: 40)")
    parser.add_argument("--vision-layers", type=int, default=2, help="vision blocks kept (real: 26)")
    parser.add_argument("--rounds", type=int, default=4, help="interleaved rounds (median over rounds)")
    parser.add_argument("--pages", type=int, default=2, help="pages per measurement")
    parser.add_argument(
        "--page-size",
        default=f"{PAGE_SIZE[0]}x{PAGE_SIZE[1]}",
        help="page screenshot size WxH (default A4 at 150 dpi: 2x4 slices + overview; 1344x1344: 3x3 + overview)",
    )
    parser.add_argument("--queries", type=int, default=64, help="queries per measurement")
    parser.add_argument("--page-concurrency", type=int, default=2, help="concurrent page clients (1 page each)")
    parser.add_argument("--query-concurrency", type=int, default=32, help="concurrent query clients (1 query each)")
    parser.add_argument("--raw-page-batches", default="1,2", help="raw page batch sizes (comma list)")
    parser.add_argument("--raw-query-batches", default="16", help="raw query batch sizes (comma list)")
    parser.add_argument(
        "--max-foreign-load",
        type=float,
        default=0.3,
        help="a measurement during which other processes used more cores is disturbed (waited for, flagged, retried)",
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=30.0,
        help="before each measurement, wait up to this many seconds for other processes to go under "
        "--max-foreign-load (0: do not wait)",
    )
    parser.add_argument(
        "--retries",
        type=int,
        default=0,
        help="re-measurements allowed per disturbed measurement (each costs ~40 s on pages; "
        "under steady foreign load, rerun the bench instead)",
    )
    parser.add_argument(
        "--gateway-engine",
        action="append",
        help="options for the gateway's model entry, e.g. 'image_max_batch_size=1,max_wait_ms=20' (repeatable)",
    )
    parser.add_argument("--target", type=float, default=0.9, help="least gateway / raw on pages (exit 1 below)")
    parser.add_argument("--rebuild", action="store_true", help="rebuild the cached model directory")
    parser.add_argument("--out", default=str(RESULTS_DIR / "visrag.json"))
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
