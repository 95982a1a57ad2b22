"""Per-family throughput: the gateway vs the raw model call for jina_clip, qwen2_vl (GME) and e5v.

Usage (from the repository root)::

    .venv/bin/python bench/bench_families.py            # ~8 min on 2 quiet CPU cores (+1 min to build)
    .venv/bin/python bench/bench_families.py --quick    # the tests' tiny checkpoints: checks the harness (~1 min)
    .venv/bin/python bench/bench_families.py --families e5v --rounds 3

The models (bench/family_models.py): random weights at the released models' WIDTHS (vocabulary,
hidden sizes, heads, MLP, image size, patching, tiling) and a reduced DEPTH (default 2 text/LM
layers and 2 vision layers, ``--text-layers`` / ``--vision-layers``); E5-V's Llama is Llama-3.2-1B
wide, not Llama-3-8B. A shallow model makes the gateway's fixed cost per item (HTTP, JSON, base64,
image decoding, queueing) a LARGER share than at full depth, so the ratios are lower bounds.

Per family, per round, per workload (texts; images; text+image items), both sides back to back,
the side that goes first alternating by round:

* ``raw``: the provider's own encoder in this process, no gateway: `units` -> `prepare` -> the
  family's `collate` -> `forward` -> `assemble`, in chunks of the engine's batch size for that
  modality (texts: ``max_batch_size``; anything with an image: the family's CPU image batch).
  Images come in decoded (decoding a JPEG is the gateway's work, counted on its side).
* ``gateway``: ``python -m gateway serve`` as a subprocess (engine defaults, float32, CPU), driven by
  httpx closed-loop clients on pre-built bodies, one input per request, ``--clients-per-batch`` x
  the batch size clients at once (default 2: a batch is queued while one runs, as under load);
  images are 640x480 photo-like JPEGs sent as data URIs; ``encoding_format: base64``.

A measurement is whole batches, as many as the raw side runs in about ``--text-seconds`` (3) or
``--image-seconds`` (6), judged from the raw call's time on the checks below: the same inputs for
both sides of a family. Texts are 12 words of the tests' corpus and a number (~20 tokens).

Every input is new (texts numbered, images with a unique trailer after the JPEG end marker), and the
``X-Cache-Hits`` header is checked: the vector cache can only miss. items/s = items / (last answer -
first send), so a gateway measurement starts and ends with an empty queue. The ratio is the median
over rounds of gateway / raw measured side by side. Before the rounds, the gateway's vectors for a
text, an image and a text+image item are compared with the raw call's.

The last column estimates the released depth: each raw run's time in the repeated layers (timed by
forward hooks) scaled by released / kept layers, the rest as measured; the gateway's own cost per
item (1/gateway - 1/raw, at least 0) added unchanged.

Results: a markdown table on stdout, JSON in bench/results/families.json; exit status 1 when a
vector check fails, the cache hit, or the ratio of text lists, images or text+image items is under
``--target`` (one text per request is reported, not judged: see `TARGETED`).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import io
import json
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch
from PIL import Image as PILImage

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.bench_siglip import make_image  # noqa: E402
from bench.family_models import FAMILIES, Depth, ensure, ensure_tiny  # noqa: E402
from bench.machine_load import CpuMeter, engine_counters, engine_view, load_average  # noqa: E402
from providers.base import EmbedOptions, Image, Item, Modality, Text  # noqa: E402
from providers.local import LocalProvider  # noqa: E402
from providers.registry import create_provider  # noqa: E402
from tests.servers import gateway_process  # noqa: E402
from tests.tiny_models import CORPUS  # noqa: E402

RESULTS_DIR = ROOT / "bench" / "results"
GATEWAY_MODEL = "bench"
KINDS = ("texts", "images", "text+image")
"""What an item is: one text, one image, or a text and an image (one vector)."""
WORKLOADS = ("texts", "text lists", "images", "text+image")
"""`text lists`: texts again, a whole engine batch of them per request (as clients send documents)."""
TARGETED = ("text lists", "images", "text+image")
"""Workloads `--target` applies to. One short text per request is reported, not judged: at the reduced
depth its forward costs ~3 ms, less than the HTTP round trip and the load client on the same 2 cores."""


def kind_of(workload: str) -> str:
    return "texts" if workload == "text lists" else workload


def per_request(workload: str, batch: int) -> int:
    return batch if workload == "text lists" else 1


CHECK_TOLERANCE = 1e-4
Result = dict[str, Any]
WORDS = sorted({word for sentence in CORPUS for word in sentence.split()})


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Inputs: every one new
# ---------------------------------------------------------------------------------------------


class Inputs:
    """Distinct texts and images: a pool of photo-like JPEGs made unique by a trailer."""

    def __init__(self, pool: int = 8, seed: int = 7, words: int = 12) -> None:
        self.words = words
        rng = np.random.default_rng(seed)
        self.jpegs = [make_image(rng) for _ in range(pool)]
        self.pictures = [PILImage.open(io.BytesIO(data)).convert("RGB") for data in self.jpegs]
        self.count = 0

    def take(self) -> int:
        self.count += 1
        return self.count

    def text(self, number: int) -> str:
        words = random.Random(number).choices(WORDS, k=self.words)
        return f"{' '.join(words)} {number}"

    def jpeg(self, number: int) -> bytes:
        return self.jpegs[number % len(self.jpegs)] + number.to_bytes(8, "big")

    def item(self, kind: str, number: int) -> Item:
        """The raw side's item of a kind (`KINDS`), its picture decoded."""
        text = Text(self.text(number))
        if kind == "texts":
            return Item((text,))
        data = self.jpeg(number)
        picture = self.pictures[number % len(self.pictures)]
        image = Image(data, "image/jpeg", f"{number:064x}", picture)
        return Item((image,) if kind == "images" else (text, image))

    def wire(self, kind: str, number: int) -> Any:
        """The same item as a client sends it."""
        if kind == "texts":
            return self.text(number)
        uri = "data:image/jpeg;base64," + base64.b64encode(self.jpeg(number)).decode("ascii")
        if kind == "images":
            return {"image": uri}
        return {
            "content": [{"type": "text", "text": self.text(number)}, {"type": "image_url", "image_url": {"url": uri}}]
        }


def body(*items: Any) -> bytes:
    return json.dumps({"model": GATEWAY_MODEL, "input": list(items), "encoding_format": "base64"}).encode()


# ---------------------------------------------------------------------------------------------
# The raw side: the provider's encoder without the gateway
# ---------------------------------------------------------------------------------------------


def raw_embed(provider: LocalProvider[Any, Any, Any], items: Sequence[Item]) -> tuple[np.ndarray, list[int]]:
    """What the engine does for these items, in one thread: prepare, group by modality, forward."""
    encoder = provider.encoder
    collate = provider.collate()
    prepared = [encoder.prepare(unit) for unit in provider.units(items, EmbedOptions())]
    rows: list[np.ndarray | None] = [None] * len(prepared)
    for modality in Modality:
        indices = [i for i, p in enumerate(prepared) if p.modality is modality]
        size = provider.batch_sizes[modality]
        for start in range(0, len(indices), size):
            chunk = indices[start : start + size]
            vectors = encoder.forward(modality, collate([prepared[i].features for i in chunk]))
            for index, row in zip(chunk, vectors, strict=True):
                rows[index] = row
    result = provider.assemble(items, np.stack([r for r in rows if r is not None]), [p.tokens for p in prepared])
    return result.vectors, list(result.item_tokens)


class LayerClock:
    """Seconds spent in the model's repeated layers, text and vision apart (forward hooks on every
    `ModuleList` of layers or blocks): what scales with depth, for the full-depth estimate."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.seconds = {"text": 0.0, "vision": 0.0}
        self.layers = {"text": 0, "vision": 0}
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.ModuleList) and name.rsplit(".", 1)[-1] in {"layer", "layers", "blocks"}:
                tower = "vision" if "vision" in name or "visual" in name else "text"
                self.layers[tower] += len(module)
                for layer in module:
                    self._watch(layer, tower)

    def _watch(self, layer: torch.nn.Module, tower: str) -> None:
        started: list[float] = []

        def before(*_: Any) -> None:
            started.append(time.perf_counter())

        def after(*_: Any) -> None:
            self.seconds[tower] += time.perf_counter() - started.pop()

        layer.register_forward_pre_hook(before)
        layer.register_forward_hook(after)

    def reset(self) -> None:
        self.seconds = dict.fromkeys(self.seconds, 0.0)

    def read(self) -> Result:
        return {"text_layers_s": self.seconds["text"], "vision_layers_s": self.seconds["vision"]}


def measure_raw(provider: LocalProvider[Any, Any, Any], items: Sequence[Item], batch: int) -> Result:
    started = time.perf_counter()
    tokens = 0
    for start in range(0, len(items), batch):
        tokens += sum(raw_embed(provider, items[start : start + batch])[1])
    span = time.perf_counter() - started
    return {"rate": len(items) / span, "items": len(items), "span_s": span, "tokens_per_item": tokens / len(items)}


# ---------------------------------------------------------------------------------------------
# The gateway side
# ---------------------------------------------------------------------------------------------


class BenchError(RuntimeError):
    pass


async def drive(client: httpx.AsyncClient, bodies: Sequence[bytes], concurrency: int, per_body: int = 1) -> Result:
    """Send every body (`per_body` inputs each) from `concurrency` closed-loop clients; span = first
    send to last answer."""
    pending = iter(bodies)
    latencies: list[float] = []
    totals = {"cache_hits": 0, "tokens": 0}
    last = 0.0

    async def client_loop() -> None:
        nonlocal last
        for content in pending:  # shared iterator: each body is sent once
            sent = time.monotonic()
            response = await client.post(
                "/v1/embeddings", content=content, headers={"content-type": "application/json"}
            )
            answered = time.monotonic()
            if response.status_code != 200:
                raise BenchError(f"HTTP {response.status_code}: {response.text[:500]}")
            data = response.json()
            if len(data["data"]) != per_body:
                raise BenchError(f"{len(data['data'])} vectors for {per_body} inputs")
            totals["cache_hits"] += int(response.headers.get("x-cache-hits", "0"))
            totals["tokens"] += int(data["usage"]["prompt_tokens"])
            latencies.append(answered - sent)
            last = max(last, answered)

    began = time.monotonic()
    await asyncio.gather(*(client_loop() for _ in range(concurrency)))
    span, items = last - began, len(bodies) * per_body
    return {
        "rate": items / span,
        "items": items,
        "span_s": span,
        "latency_p50_s": float(np.percentile(latencies, 50)),
        "tokens_per_item": totals["tokens"] / items,
        **totals,
    }


async def check_vectors(
    client: httpx.AsyncClient, provider: LocalProvider[Any, Any, Any], inputs: Inputs, seconds: dict[str, float]
) -> Result:
    """The gateway's float vectors against the raw call's, one input of each workload (the raw
    call's seconds go into `seconds`)."""
    result: Result = {}
    for workload in KINDS:
        number = inputs.take()
        payload = {"model": GATEWAY_MODEL, "input": [inputs.wire(workload, number)], "encoding_format": "float"}
        response = await client.post("/v1/embeddings", json=payload)
        if response.status_code != 200:
            raise BenchError(f"check {workload}: HTTP {response.status_code}: {response.text[:500]}")
        got = np.asarray(response.json()["data"][0]["embedding"], dtype=np.float32)
        started = time.perf_counter()
        expected, _ = raw_embed(provider, [inputs.item(workload, number)])
        seconds[workload] = time.perf_counter() - started
        result[workload] = float(np.abs(got - expected[0]).max())
    result["ok"] = all(result[w] <= CHECK_TOLERANCE for w in KINDS)
    return result


# ---------------------------------------------------------------------------------------------
# One family
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """What a run measures (see `main` for the options)."""

    families: tuple[str, ...]
    depth: Depth | None  # None: the tests' tiny checkpoints (--quick)
    rounds: int
    text_seconds: float
    image_seconds: float
    clients_per_batch: int
    max_foreign: float
    quiet_wait_s: float
    retries: int
    min_image_batches: int
    target: float
    rebuild: bool


def gateway_config(family: str, directory: Path) -> Result:
    entry: Result = {
        "name": GATEWAY_MODEL,
        "provider": family,
        "model": str(directory),
        "device": "cpu",
        "dtype": "float32",
    }
    if family == "jina_clip":
        entry["trust_remote_code"] = True
    return {"models": [entry], "cache": {"expose_headers": True}, "access_log": False, "log_level": "warning"}


async def until_quiet(plan: Plan) -> float:
    """Wait (up to `quiet_wait_s`) until other processes use at most `max_foreign` cores over a
    1 s window; returns the seconds waited."""
    started = time.monotonic()
    while plan.quiet_wait_s > 0:
        meter = CpuMeter()
        await asyncio.sleep(1.0)
        foreign = meter.read()["foreign_cores"]
        waited = time.monotonic() - started
        if foreign <= plan.max_foreign or waited >= plan.quiet_wait_s:
            return waited
    return 0.0


def measurement_items(plan: Plan, workload: str, batch: int, seconds_per_item: float) -> int:
    """Whole batches, as many as the raw side runs in about the planned seconds (at least one;
    with images, at least `min_image_batches`)."""
    if "image" in workload:
        least, target = plan.min_image_batches, plan.image_seconds
    else:
        least, target = 1, plan.text_seconds
    return batch * max(least, round(target / (seconds_per_item * batch)))


def workload_batch(provider: LocalProvider[Any, Any, Any], workload: str) -> int:
    return provider.batch_sizes[Modality.IMAGE if "image" in workload else Modality.TEXT]


async def measure_family(plan: Plan, family: str, directory: Path, url: str) -> Result:
    """Vector check, warm-up, then the rounds; the raw provider lives in this process meanwhile."""
    options: Result = {"model": str(directory), "device": "cpu", "dtype": "float32"}
    if family == "jina_clip":
        options["trust_remote_code"] = True
    provider: Any = create_provider(family, options, name="raw")
    provider.load()
    clock = LayerClock(provider.encoder.model)
    inputs = Inputs(words=6 if plan.depth is None else 12)  # the tests' tiny tokenizers split words
    batches = {w: workload_batch(provider, w) for w in WORKLOADS}
    runs: dict[str, dict[str, list[Result]]] = {w: {"raw": [], "gateway": []} for w in WORKLOADS}
    limits = httpx.Limits(max_connections=128, max_keepalive_connections=128)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits, trust_env=False) as client:
        seconds: dict[str, float] = {}
        checks = await check_vectors(client, provider, inputs, seconds)  # also warms up every path
        log(f"{family}: gateway vs raw vectors, max |diff|: {json.dumps(checks)}")
        texts = [inputs.item("texts", inputs.take()) for _ in range(batches["texts"])]
        started = time.perf_counter()  # and a whole text batch, timed: batching pays off on texts
        raw_embed(provider, texts)
        seconds["texts"] = (time.perf_counter() - started) / len(texts)
        await drive(client, [body(inputs.wire("texts", inputs.take())) for _ in texts], len(texts))
        seconds["text lists"] = seconds["texts"]
        counts = {w: measurement_items(plan, w, batches[w], seconds[w]) for w in WORKLOADS}
        clients = {w: plan.clients_per_batch * batches[w] // per_request(w, batches[w]) for w in WORKLOADS}
        log(f"{family}: raw seconds per item {json.dumps(seconds)} -> items per measurement {json.dumps(counts)}")
        for round_no in range(plan.rounds):
            order = ("raw", "gateway") if round_no % 2 == 0 else ("gateway", "raw")
            for workload in WORKLOADS:
                for side in order:
                    best: Result | None = None
                    for attempt in range(plan.retries + 1):  # again when other processes took cores
                        numbers = [inputs.take() for _ in range(counts[workload])]  # new inputs each time
                        waited = await until_quiet(plan)
                        kind, size = kind_of(workload), per_request(workload, batches[workload])
                        if side == "raw":
                            items = [inputs.item(kind, n) for n in numbers]
                            clock.reset()
                            meter = CpuMeter()
                            result = measure_raw(provider, items, batches[workload])
                            result.update(clock.read())
                        else:
                            wires = [inputs.wire(kind, n) for n in numbers]
                            bodies = [body(*wires[i : i + size]) for i in range(0, len(wires), size)]
                            before = await engine_counters(client, url)
                            meter = CpuMeter()
                            result = await drive(client, bodies, clients[workload], size)
                            after = await engine_counters(client, url)
                            result.update(engine_view(before, after, result["span_s"]))
                        result.update(meter.read(), waited_for_quiet_s=waited, attempt=attempt + 1)
                        log(
                            f"{family} round {round_no + 1} {workload:<10} {side:<7} {result['rate']:8.2f} items/s "
                            f"({result['items']} items, {result['span_s']:.1f} s; foreign load "
                            f"{result['foreign_cores']:.2f} cores, load avg {result['load_after']:.2f})"
                        )
                        if best is None or result["foreign_cores"] < best["foreign_cores"]:
                            best = result
                        if result["foreign_cores"] <= plan.max_foreign:
                            break
                    assert best is not None
                    runs[workload][side].append(best)
    config = {
        "batch": batches,
        "items_per_measurement": counts,
        "raw_seconds_per_item_at_start": seconds,
        "gateway_clients": clients,
        "inputs_per_request": {w: per_request(w, batches[w]) for w in WORKLOADS},
    }
    del provider
    gc.collect()
    return {"checks": checks, "runs": runs, "config": config, "layers": clock.layers}


def run_family(plan: Plan, family: str) -> Result:
    started = time.monotonic()
    if plan.depth is None:
        directory, marker = ensure_tiny(family, rebuild=plan.rebuild)
    else:
        directory, marker = ensure(family, plan.depth, rebuild=plan.rebuild)
    log(f"{family}: {directory.relative_to(ROOT)}: {json.dumps(marker)}")
    logs = RESULTS_DIR / "logs" / f"families-{family}"  # the gateway's config and log, kept
    logs.mkdir(parents=True, exist_ok=True)
    with gateway_process(gateway_config(family, directory), logs) as url:
        log(f"{family}: gateway ready after {time.monotonic() - started:.1f} s")
        measured = asyncio.run(measure_family(plan, family, directory, url))
    measured["model"] = {"dir": str(directory.relative_to(ROOT)), **marker}
    measured["wall_s"] = time.monotonic() - started
    return measured


# ---------------------------------------------------------------------------------------------
# Summary
# ---------------------------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def full_depth(model: Result, raw: Sequence[Result], raw_rate: float, gateway_rate: float) -> Result:
    """The released depth's raw seconds per item (each raw run's layer time scaled by released /
    kept layers, the rest as measured) and the ratio if the gateway's own cost per item (HTTP,
    decoding, queueing: what it adds over the raw call here, at least 0) stays what it is."""
    if "released_depth" not in model:
        return {}
    scale = {tower: model["released_depth"][tower] / model["depth"][tower] for tower in ("text", "vision")}
    per_item = [
        (r["span_s"] + r["text_layers_s"] * (scale["text"] - 1) + r["vision_layers_s"] * (scale["vision"] - 1))
        / r["items"]
        for r in raw
    ]
    raw_s = median(per_item)
    overhead = max(0.0, 1 / gateway_rate - 1 / raw_rate)
    return {"full_depth_raw_items_per_s": 1 / raw_s, "full_depth_ratio": raw_s / (raw_s + overhead)}


def summarise(results: dict[str, Result]) -> list[Result]:
    """A row per (family, workload): medians over rounds and the median of the paired ratios."""
    rows = []
    for family, measured in results.items():
        for workload, sides in measured["runs"].items():
            raw, gateway = sides["raw"], sides["gateway"]
            raw_rate, gateway_rate = median([r["rate"] for r in raw]), median([r["rate"] for r in gateway])
            rows.append(
                {
                    "family": family,
                    "workload": workload,
                    "raw_items_per_s": raw_rate,
                    "gateway_items_per_s": gateway_rate,
                    "ratio": median([g["rate"] / r["rate"] for r, g in zip(raw, gateway, strict=True)]),
                    "ratios": [round(g["rate"] / r["rate"], 3) for r, g in zip(raw, gateway, strict=True)],
                    "batch": measured["config"]["batch"][workload],
                    "clients": measured["config"]["gateway_clients"][workload],
                    "per_request": measured["config"]["inputs_per_request"][workload],
                    "client_cpu_ms_per_item": 1000 * median([g["bench_process_cpu_s"] / g["items"] for g in gateway]),
                    "tokens_per_item": median([g["tokens_per_item"] for g in gateway]),
                    "mean_batch": median([g.get("mean_batch", float("nan")) for g in gateway]),
                    "cache_hits": sum(g["cache_hits"] for g in gateway),
                    "foreign_cores_max": max(r["foreign_cores"] for r in raw + gateway),
                    "load_avg_max": max(max(r["load_before"], r["load_after"]) for r in raw + gateway),
                    **full_depth(measured["model"], raw, raw_rate, gateway_rate),
                }
            )
    return rows


def markdown_table(rows: Sequence[Result]) -> str:
    lines = [
        "| family | workload | raw items/s | gateway items/s | gateway / raw (rounds) | batch; clients x inputs "
        "| tokens/item | mean batch | load client CPU ms/item | foreign cores, load avg "
        "| released depth: raw/s, ratio |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        full = (
            f"{row['full_depth_raw_items_per_s']:.3g}, ~{row['full_depth_ratio']:.2f}"
            if "full_depth_ratio" in row
            else "-"
        )
        lines.append(
            f"| {row['family']} | {row['workload']} | {row['raw_items_per_s']:.3g} | {row['gateway_items_per_s']:.3g} "
            f"| {row['ratio']:.2f} ({', '.join(f'{r:.2f}' for r in row['ratios'])}) "
            f"| {row['batch']}; {row['clients']} x {row['per_request']} | {row['tokens_per_item']:.0f} "
            f"| {row['mean_batch']:.1f} | {row['client_cpu_ms_per_item']:.2f} "
            f"| {row['foreign_cores_max']:.2f}, {row['load_avg_max']:.2f} | {full} |"
        )
    return "\n".join(lines)


def verdict(plan: Plan, rows: Sequence[Result], results: dict[str, Result]) -> int:
    failures = [
        f"{row['family']} {row['workload']}: gateway {row['ratio']:.3f} x raw, under the {plan.target} target"
        for row in rows
        if row["workload"] in TARGETED and row["ratio"] < plan.target
    ]
    failures += [f"{f}: vectors differ from the raw call's" for f, r in results.items() if not r["checks"]["ok"]]
    failures += [f"{r['family']} {r['workload']}: the cache hit" for r in rows if r["cache_hits"]]
    disturbed = [f"{r['family']} {r['workload']}" for r in rows if r["foreign_cores_max"] > plan.max_foreign]
    if disturbed:
        print(
            f"NOTE: other processes took over {plan.max_foreign} cores during {', '.join(disturbed)}: "
            "the ratios are noisier than usual; rerun when the machine is quieter."
        )
    for failure in failures:
        print(f"FAIL: {failure}")
    return 1 if failures else 0


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------


def run(plan: Plan, out: Path, command: Sequence[str]) -> int:
    started, load_start = time.monotonic(), load_average()
    log(f"torch threads {torch.get_num_threads()}, load average {load_start:.2f}")
    results = {family: run_family(plan, family) for family in plan.families}
    rows = summarise(results)
    report: Result = {
        "meta": {
            "date": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": " ".join(command),
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "plan": {k: (v.__dict__ if isinstance(v, Depth) else v) for k, v in plan.__dict__.items()},
            "load_avg_start": load_start,
            "load_avg_end": load_average(),
            "wall_s": time.monotonic() - started,
        },
        "rows": rows,
        "families": results,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(markdown_table(rows))
    print()
    for family, measured in results.items():
        model = measured["model"]
        print(f"{family}: {model.get('released_as', 'tiny test checkpoint')}; {model.get('widths', '')}")
        if "released_depth_parameters" in model:
            print(
                f"  here {model['parameters'] / 1e6:.0f}M parameters at depth {model['depth']}; "
                f"released depth {model['released_depth']}: {model['released_depth_parameters'] / 1e9:.2f}B"
            )
        print(
            f"  vectors vs raw (max |diff|): {json.dumps(measured['checks'])}; layers timed {measured['layers']}; "
            f"wall {measured['wall_s']:.0f} s"
        )
    meta = report["meta"]
    print(f"load average: start {meta['load_avg_start']:.2f}, end {meta['load_avg_end']:.2f}")
    print(f"\nJSON: {out}  (wall {meta['wall_s'] / 60:.1f} min)")
    return verdict(plan, rows, results)


def families_list(text: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in FAMILIES]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown families {unknown}; known: {', '.join(FAMILIES)}")
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--families", type=families_list, default=tuple(FAMILIES), help="comma list")
    parser.add_argument("--text-layers", type=int, default=2, help="text / LM layers kept (released: 24, 28, 32)")
    parser.add_argument("--vision-layers", type=int, default=2, help="vision layers kept (released: 24, 32, 24)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds (median over rounds)")
    parser.add_argument(
        "--text-seconds", type=float, default=3.0, help="raw seconds per text measurement (whole batches, >= 1)"
    )
    parser.add_argument(
        "--image-seconds", type=float, default=6.0, help="raw seconds per image measurement (whole batches, >= 1)"
    )
    parser.add_argument("--clients-per-batch", type=int, default=2, help="gateway clients per engine batch")
    parser.add_argument(
        "--max-foreign-load",
        type=float,
        default=0.3,
        help="a measurement during which other processes used more cores is flagged as disturbed",
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=20.0,
        help="before each measurement, wait up to this many seconds for other processes to go under "
        "--max-foreign-load (0: do not wait)",
    )
    parser.add_argument(
        "--retries", type=int, default=1, help="re-measurements of a measurement other processes disturbed"
    )
    parser.add_argument(
        "--min-image-batches",
        type=int,
        default=2,
        help="image batches per measurement at least (one batch measures latency, not throughput)",
    )
    parser.add_argument("--target", type=float, default=0.8, help="least gateway / raw (exit 1 below)")
    parser.add_argument("--quick", action="store_true", help="the tests' tiny checkpoints, 1 round")
    parser.add_argument("--rebuild", action="store_true", help="rebuild the cached checkpoints")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    plan = Plan(
        families=args.families,
        depth=None if args.quick else Depth(args.text_layers, args.vision_layers),
        rounds=1 if args.quick else args.rounds,
        text_seconds=0.5 if args.quick else args.text_seconds,
        image_seconds=0.5 if args.quick else args.image_seconds,
        clients_per_batch=args.clients_per_batch,
        max_foreign=args.max_foreign_load,
        quiet_wait_s=0.0 if args.quick else args.quiet_wait,
        retries=0 if args.quick else args.retries,
        min_image_batches=1 if args.quick else args.min_image_batches,
        target=0.0 if args.quick else args.target,
        rebuild=args.rebuild,
    )
    out = args.out or RESULTS_DIR / ("families-quick.json" if args.quick else "families.json")
    return run(
        plan, out, [Path(sys.executable).name, *(sys.argv if argv is None else ["bench/bench_families.py", *argv])]
    )


if __name__ == "__main__":
    raise SystemExit(main())
