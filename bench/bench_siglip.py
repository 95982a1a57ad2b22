"""SigLIP throughput: the gateway vs the raw model call vs Infinity, in one run.

Usage (from the repository root, main venv active)::

    python bench/bench_siglip.py                      # full run, ~15-20 min on 2 CPU cores
    python bench/bench_siglip.py --rounds 1 --duration 8 --sides raw,gateway   # quick look
    python bench/bench_siglip.py --gateway-engine "" --gateway-engine max_batch_size=8

What is measured, per round (the order of the sides rotates from round to round, and only one
server process runs at a time; the raw side runs while no server is up):

* ``raw``: the computation the gateway does, in this process, batched (8 and 32): SigLIP
  tokenizer with ``padding="max_length"``, ``max_length=64``, truncation / the image processor on
  decoded RGB images, ``get_text_features`` / ``get_image_features(...).pooler_output``, L2
  normalisation. This is the limit a server can approach.
* ``gateway``: ``python -m gateway serve`` as a subprocess; 8 and 16 concurrent httpx clients,
  1 and 8 items per request; images sent as JPEG data URIs (640x480), texts as strings;
  ``encoding_format="base64"`` for the throughput runs (``float`` for the vector checks).
* ``infinity``: ``infinity_emb v2`` (from ``.venv-infinity``, ``bash bench/setup_infinity.sh``) on a
  copy of the same model folder converted with ``bench/infinity_compat.py`` (its default flags).

Each load run is closed-loop on a warm, idle server: every client sends its next request when
the previous answer arrives; clients stop sending ~`--duration` seconds in and the queue drains.
items/s = items answered / (last answer - first send), so the count starts and ends with an
empty queue and how a server orders work cannot bias it. Every input is new (the gateway's
vector cache can only miss; its X-Cache-Hits header is checked). The CPU time used by other
processes during each measurement is recorded ("foreign load"); a measurement disturbed by more
than `--max-foreign-load` cores is repeated (`--retries`) and the less disturbed one kept.

The model is a base-size SigLIP with random weights and the config of
google/siglip-base-patch16-224 (203M parameters), built once under bench/models/.
Results: a markdown table on stdout and JSON in bench/results/siglip.json.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import io
import itertools
import json
import os
import platform
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch
import yaml
from PIL import Image, ImageDraw, ImageFilter

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.machine_load import machine_busy_s, tree_cpu_s  # noqa: E402

BENCH = ROOT / "bench"
MODELS_DIR = BENCH / "models"
RESULTS_DIR = BENCH / "results"
MODEL_DIR = MODELS_DIR / "siglip-base-patch16-224-random"
INFINITY_MODEL_DIR = MODELS_DIR / "siglip-base-patch16-224-random-infinity"
INFINITY_NO_PAD_FIX_DIR = MODELS_DIR / "siglip-base-patch16-224-random-infinity-no-pad-fix"
INFINITY_VENV = ROOT / ".venv-infinity"
BUILD_MARKER = "bench_build.json"
BUILD_VERSION = 2  # bump when build_base_siglip changes, so cached folders are rebuilt

TEXT_MAX_LENGTH = 64
GATEWAY_MODEL = "siglip-base"
INFINITY_MODEL = "siglip"

SERVER_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "DO_NOT_TRACK": "1",
    "INFINITY_ANONYMOUS_USAGE_STATS": "0",
    "INFINITY_MEDIA_URL_BLACKLIST": "",
}

# ---------------------------------------------------------------------------------------------
# The model: base-size SigLIP, random weights
# ---------------------------------------------------------------------------------------------


# The tokenizer corpus of tests/tiny_models.py (the tokenizer only has to be a real SentencePiece
# model; the text tower always runs on 64 positions, so its vocabulary does not change the cost).
def build_base_siglip(directory: Path, *, seed: int = 0) -> Path:
    """`tests/tiny_models.build_siglip(base=True)`: google/siglip-base-patch16-224's config, random weights."""
    from safetensors import safe_open

    from tests.tiny_models import build_siglip

    if directory.exists():
        shutil.rmtree(directory)
    build_siglip(directory, seed=seed, base=True)
    params = 0
    for weights in directory.glob("*.safetensors"):
        with safe_open(str(weights), framework="pt") as handle:
            params += sum(int(np.prod(handle.get_slice(name).get_shape())) for name in handle.keys())  # noqa: SIM118
    marker = {"version": BUILD_VERSION, "parameters": params, "seed": seed}
    (directory / BUILD_MARKER).write_text(json.dumps(marker))
    return directory


def convert_for_infinity(destination: Path, *flags: str) -> None:
    log(f"converting for Infinity -> {destination.relative_to(ROOT)} (infinity_compat {' '.join(flags) or 'defaults'})")
    subprocess.run(
        [sys.executable, str(BENCH / "infinity_compat.py"), *flags, str(MODEL_DIR), str(destination)],
        check=True,
        stdout=subprocess.DEVNULL,
    )


def ensure_models(rebuild: bool) -> dict[str, Any]:
    """Build (or reuse) the model folder and its Infinity copy; returns the build marker."""
    marker_path = MODEL_DIR / BUILD_MARKER
    marker: dict[str, Any] = {}
    if marker_path.is_file():
        marker = json.loads(marker_path.read_text())
    if rebuild or marker.get("version") != BUILD_VERSION:
        log(f"building {MODEL_DIR.relative_to(ROOT)} (random weights) ...")
        build_base_siglip(MODEL_DIR)
        marker = json.loads(marker_path.read_text())
        for stale in (INFINITY_MODEL_DIR, INFINITY_NO_PAD_FIX_DIR):
            if stale.exists():
                shutil.rmtree(stale)
    if not (INFINITY_MODEL_DIR / "config.json").is_file():
        convert_for_infinity(INFINITY_MODEL_DIR)
    return marker


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------

WORDS = [
    "photo",
    "cat",
    "dog",
    "sea",
    "sunset",
    "red",
    "blue",
    "green",
    "mountain",
    "city",
    "street",
    "night",
    "car",
    "bicycle",
    "table",
    "invoice",
    "numbers",
    "chart",
    "diagram",
    "person",
    "smiling",
    "child",
    "playing",
    "beach",
    "forest",
    "river",
    "bridge",
    "building",
    "window",
    "kitchen",
    "food",
    "plate",
    "coffee",
    "cup",
    "book",
    "laptop",
    "screen",
    "phone",
    "garden",
    "flower",
    "tree",
    "snow",
    "winter",
    "summer",
]


def make_texts(count: int, seed: int = 1) -> list[str]:
    rng = random.Random(seed)
    texts = []
    for i in range(count):
        words = rng.choices(WORDS, k=rng.randint(6, 16))
        texts.append(f"a {' '.join(words)} number {i}")
    return texts


def make_image(rng: np.random.Generator, width: int = 640, height: int = 480) -> bytes:
    """A photo-like JPEG: gradient, shapes, blur and noise (about 50-100 KB)."""
    x = np.linspace(0, 1, width, dtype=np.float32)[None, :, None]
    y = np.linspace(0, 1, height, dtype=np.float32)[:, None, None]
    start, end = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    base = start * (1 - x) * (1 - y) + end * x * y + rng.uniform(0, 255, 3) * (1 - x) * y
    picture = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(picture)
    for _ in range(12):
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        x1, y1 = x0 + int(rng.integers(20, 260)), y0 + int(rng.integers(20, 200))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=colour)
    picture = picture.filter(ImageFilter.GaussianBlur(1.5))
    noisy = np.asarray(picture, dtype=np.int16) + rng.normal(0, 6, (height, width, 3)).astype(np.int16)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8), "RGB").save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


@dataclass
class Inputs:
    """Texts and images; `text(k)` / `image_uri(k)` give a distinct input for every k.

    Every request of a load run carries inputs never sent before, so the gateway's vector cache
    (on by default) can only miss: images get a unique trailer after the JPEG's end marker
    (decoders ignore it; the bytes, and so the content hash, differ), texts a unique suffix.
    """

    texts: list[str]
    jpegs: list[bytes]  # padded with zeros to a multiple of 3 bytes, so base64 strings concatenate
    pictures: list[Image.Image]  # decoded RGB, for the raw side
    data_uris: list[str]
    nonce: int = field(default_factory=lambda: random.getrandbits(32))

    def text(self, k: int) -> str:
        return f"{self.texts[k % len(self.texts)]} request {k}"

    def image_uri(self, k: int) -> str:
        trailer = base64.b64encode(self.nonce.to_bytes(4, "big") + k.to_bytes(8, "big")).decode("ascii")
        return self.data_uris[k % len(self.data_uris)] + trailer

    def item(self, modality: str, k: int) -> str:
        return self.image_uri(k) if modality == "image" else self.text(k)


def make_inputs(n_texts: int = 512, n_images: int = 48) -> Inputs:
    rng = np.random.default_rng(7)
    jpegs = []
    for _ in range(n_images):
        data = make_image(rng)
        jpegs.append(data + b"\x00" * (-len(data) % 3))
    pictures = [Image.open(io.BytesIO(data)).convert("RGB") for data in jpegs]
    uris = ["data:image/jpeg;base64," + base64.b64encode(data).decode("ascii") for data in jpegs]
    return Inputs(make_texts(n_texts), jpegs, pictures, uris)


# ---------------------------------------------------------------------------------------------
# Raw model call
# ---------------------------------------------------------------------------------------------


class RawSiglip:
    """Exactly the gateway's computation (providers/siglip.py), batched, in this process."""

    def __init__(self, directory: Path) -> None:
        from transformers import AutoModel, AutoProcessor

        processor = AutoProcessor.from_pretrained(directory)
        self.tokenizer = processor.tokenizer
        self.image_processor = processor.image_processor
        self.model = AutoModel.from_pretrained(directory).eval()
        self.parameters = sum(p.numel() for p in self.model.parameters())

    @staticmethod
    def _finish(output: Any) -> np.ndarray:
        pooled = output if isinstance(output, torch.Tensor) else output.pooler_output
        vectors: np.ndarray = torch.nn.functional.normalize(pooled.float(), dim=-1).numpy()
        return vectors

    @torch.inference_mode()
    def texts(self, texts: Sequence[str]) -> np.ndarray:
        encoded = self.tokenizer(
            list(texts), padding="max_length", max_length=TEXT_MAX_LENGTH, truncation=True, return_tensors="pt"
        )
        return self._finish(self.model.get_text_features(**encoded))

    @torch.inference_mode()
    def images(self, pictures: Sequence[Image.Image]) -> np.ndarray:
        processed = self.image_processor(images=list(pictures), return_tensors="pt")
        return self._finish(self.model.get_image_features(**processed))


def measure_raw(raw: RawSiglip, inputs: Inputs, modality: str, batch: int, duration: float) -> dict[str, Any]:
    pool: Sequence[Any] = inputs.pictures if modality == "image" else inputs.texts
    run: Callable[[Sequence[Any]], np.ndarray] = raw.images if modality == "image" else raw.texts
    cursor = itertools.count(0, batch)

    def next_batch() -> list[Any]:
        start = next(cursor)
        return [pool[(start + k) % len(pool)] for k in range(batch)]

    run(next_batch())  # warm-up
    items = 0
    started = time.perf_counter()
    per_batch = 0.0
    while True:
        t0 = time.perf_counter()
        run(next_batch())
        per_batch = time.perf_counter() - t0
        items += batch
        elapsed = time.perf_counter() - started
        if elapsed + per_batch / 2 >= duration:
            break
    return {"rate": items / elapsed, "items": items, "span_s": elapsed, "batch_s": per_batch}


# ---------------------------------------------------------------------------------------------
# Servers
# ---------------------------------------------------------------------------------------------


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class ServerSpec:
    """How to start one side's server and talk to it."""

    side: str  # "gateway", "gateway[max_batch_size=8]", "infinity"
    kind: str  # "gateway" | "infinity"
    engine: dict[str, Any] = field(default_factory=dict)
    model_dir: Path | None = None  # Infinity: the converted folder (default INFINITY_MODEL_DIR)

    @property
    def model(self) -> str:
        return GATEWAY_MODEL if self.kind == "gateway" else INFINITY_MODEL

    @property
    def ready_path(self) -> str:
        return "/ready" if self.kind == "gateway" else "/health"

    @property
    def embeddings_path(self) -> str:
        return "/v1/embeddings" if self.kind == "gateway" else "/embeddings"

    def body(self, modality: str, items: Sequence[str], encoding_format: str = "base64") -> dict[str, Any]:
        if self.kind == "gateway":
            payload: list[Any] = (
                [{"type": "image_url", "image_url": {"url": uri}} for uri in items]
                if modality == "image"
                else list(items)
            )
            return {"model": self.model, "input": payload, "encoding_format": encoding_format}
        body: dict[str, Any] = {"model": self.model, "input": list(items), "encoding_format": encoding_format}
        if modality == "image":
            body["modality"] = "image"
        return body

    def command(self, port: int, workdir: Path) -> list[str]:
        if self.kind == "gateway":
            entry = {"name": GATEWAY_MODEL, "provider": "siglip", "model": str(MODEL_DIR), **self.engine}
            config = {"models": [entry], "images": {"allowed_private_networks": ["127.0.0.1/32"]}}
            config_file = workdir / f"gateway-{port}.yaml"
            config_file.write_text(yaml.safe_dump(config))
            return [sys.executable, "-m", "gateway", "serve", "--config", str(config_file), "--port", str(port)]
        return [
            str(INFINITY_VENV / "bin" / "infinity_emb"),
            "v2",
            "--model-id",
            str(self.model_dir or INFINITY_MODEL_DIR),
            "--served-model-name",
            INFINITY_MODEL,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--engine",
            "torch",
            "--device",
            "cpu",
        ]


@contextlib.asynccontextmanager
async def running_server(spec: ServerSpec, workdir: Path, tag: str) -> AsyncIterator[tuple[str, int]]:
    """Start the server, wait until it is ready, yield its base URL and pid, stop it."""
    port = free_port()
    log_path = workdir / f"{tag}.log"
    env = {**os.environ, **SERVER_ENV}
    started = time.monotonic()
    with log_path.open("wb") as log_file:
        process = await asyncio.create_subprocess_exec(
            *spec.command(port, workdir), cwd=ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT
        )
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(trust_env=False, timeout=2) as client:
            while True:
                if process.returncode is not None:
                    tail = log_path.read_text(errors="replace")[-3000:]
                    raise RuntimeError(f"{spec.side} exited early, see {log_path}:\n{tail}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(base + spec.ready_path)).status_code == 200:
                        break
                if time.monotonic() - started > 300:
                    raise RuntimeError(f"{spec.side} did not become ready in 300 s, see {log_path}")
                await asyncio.sleep(0.25)
        log(f"{spec.side} ready on :{port} after {time.monotonic() - started:.1f} s")
        yield base, process.pid
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 30)
            except TimeoutError:
                process.kill()
                await process.wait()


# ---------------------------------------------------------------------------------------------
# Load generation
# ---------------------------------------------------------------------------------------------


class BenchError(RuntimeError):
    pass


def check_answer(response: httpx.Response, expected: int, side: str) -> None:
    if response.status_code != 200:
        raise BenchError(f"{side}: HTTP {response.status_code}: {response.text[:500]}")
    data = response.json()["data"]
    if len(data) != expected:
        raise BenchError(f"{side}: {len(data)} vectors for {expected} inputs")


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


class CpuMeter:
    """How much CPU processes other than ours (this one and its children: the server) took."""

    def __init__(self) -> None:
        self.start = self._sample()

    @staticmethod
    def _sample() -> tuple[float, float, float]:
        return time.monotonic(), machine_busy_s(), tree_cpu_s(os.getpid())

    def foreign_cores(self) -> float:
        """Average number of cores busy with foreign work (other sessions' tests, the host)."""
        end = self._sample()
        wall = end[0] - self.start[0]
        return max(0.0, ((end[1] - self.start[1]) - (end[2] - self.start[2])) / max(wall, 1e-6))


async def drive_load(
    client: httpx.AsyncClient,
    url: str,
    *,
    make_body: Callable[[], bytes],
    items_per_request: int,
    concurrency: int,
    duration: float,
    side: str,
) -> dict[str, Any]:
    """Closed-loop load on an idle (warm) server; items/s = items answered / (last answer - first send).

    Every client sends its next request as soon as its previous answer arrives. Clients stop
    sending once what is in flight should drain by about `duration` seconds (never before half
    of it), then the queue drains: the count starts from an empty queue and ends with an empty
    one, so how a server orders or splits work (by request, by length...) cannot bias it.
    """
    latencies: list[float] = []
    stop = asyncio.Event()
    in_flight = concurrency * items_per_request
    headers = {"content-type": "application/json"}
    first_bodies = [make_body() for _ in range(concurrency)]
    answered = 0
    cache_hits = 0
    last_answer = 0.0
    began = time.monotonic()

    def maybe_stop(now: float) -> None:
        elapsed = now - began
        drains_in = in_flight / (answered / elapsed)  # at the rate so far (fill included: a bit early)
        if elapsed >= duration or (elapsed >= duration / 2 and elapsed + drains_in >= duration):
            stop.set()

    async def worker(body: bytes) -> None:
        nonlocal answered, cache_hits, last_answer
        while True:
            t0 = time.monotonic()
            response = await client.post(url, content=body, headers=headers)
            t1 = time.monotonic()
            check_answer(response, items_per_request, side)
            cache_hits += int(response.headers.get("x-cache-hits", "0"))
            latencies.append(t1 - t0)
            answered += items_per_request
            last_answer = max(last_answer, t1)
            maybe_stop(t1)
            if stop.is_set():
                return
            body = make_body()

    await asyncio.gather(*(worker(body) for body in first_bodies))
    span = last_answer - began
    return {
        "rate": answered / span,
        "items": answered,
        "span_s": span,
        "requests": len(latencies),
        "latency_p50_ms": 1000 * percentile(latencies, 50),
        "latency_p95_ms": 1000 * percentile(latencies, 95),
        "cache_hits": cache_hits,
    }


async def gateway_counters(client: httpx.AsyncClient, base: str) -> tuple[float, float, float] | None:
    """(parts, batches, forward seconds) so far, from the gateway's /metrics."""
    try:
        text = (await client.get(base + "/metrics")).text
    except httpx.HTTPError:
        return None
    values: dict[str, float] = {}
    names = ("gateway_model_parts_total", "gateway_model_batches_total", "gateway_model_forward_seconds_total")
    for name in names:
        match = re.search(rf"^{name}\{{[^}}]*\}} ([0-9.e+]+)$", text, re.MULTILINE)
        if match is None:
            return None
        values[name] = float(match.group(1))
    parts, batches, busy = (values[name] for name in names)
    return parts, batches, busy


@dataclass(frozen=True)
class LoadConfig:
    modality: str
    concurrency: int
    items: int

    @property
    def key(self) -> str:
        return f"{self.modality}/c{self.concurrency}/n{self.items}"


def body_factory(spec: ServerSpec, inputs: Inputs, config: LoadConfig, counter: Iterator[int]) -> Callable[[], bytes]:
    """Request bodies with inputs never sent before (`counter` is shared by the whole run)."""

    def make() -> bytes:
        items = [inputs.item(config.modality, next(counter)) for _ in range(config.items)]
        return json.dumps(spec.body(config.modality, items)).encode()

    return make


async def measure_server(
    spec: ServerSpec,
    base: str,
    inputs: Inputs,
    configs: Sequence[LoadConfig],
    *,
    counter: Iterator[int],
    duration: float,
    max_foreign: float,
    retries: int,
) -> dict[str, dict[str, Any]]:
    results: dict[str, dict[str, Any]] = {}
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(trust_env=False, timeout=httpx.Timeout(300.0), limits=limits) as client:
        url = base + spec.embeddings_path
        for modality, count in (("image", 16), ("text", 32)):  # warm-up: one large batch per tower
            items = [inputs.item(modality, next(counter)) for _ in range(count)]
            response = await client.post(url, json=spec.body(modality, items))
            check_answer(response, count, spec.side)
        for config in configs:
            for attempt in range(retries + 1):
                before = await gateway_counters(client, base) if spec.kind == "gateway" else None
                meter = CpuMeter()
                result = await drive_load(
                    client,
                    url,
                    make_body=body_factory(spec, inputs, config, counter),
                    items_per_request=config.items,
                    concurrency=config.concurrency,
                    duration=duration,
                    side=f"{spec.side} {config.key}",
                )
                result["foreign_cores"] = meter.foreign_cores()
                result["attempt"] = attempt + 1
                after = await gateway_counters(client, base) if spec.kind == "gateway" else None
                if before is not None and after is not None and after[1] > before[1]:
                    result["mean_batch"] = (after[0] - before[0]) / (after[1] - before[1])
                    result["forward_busy"] = (after[2] - before[2]) / result["span_s"]
                    result["forward_ms_per_item"] = 1000 * (after[2] - before[2]) / (after[0] - before[0])
                extra = f", mean batch {result['mean_batch']:.1f}" if "mean_batch" in result else ""
                if "forward_busy" in result:
                    busy, per_item = result["forward_busy"], result["forward_ms_per_item"]
                    extra += f", forward busy {busy:.0%} at {per_item:.1f} ms/item"
                extra += f", foreign load {result['foreign_cores']:.2f} cores"
                if result["cache_hits"]:
                    extra += f", {result['cache_hits']} CACHE HITS"
                log(
                    f"  {spec.side:<10} {config.key:<14} {result['rate']:7.2f} items/s "
                    f"(p50 {result['latency_p50_ms']:.0f} ms over {result['span_s']:.1f} s{extra})"
                )
                previous = results.get(config.key)
                if previous is None or result["foreign_cores"] < previous["foreign_cores"]:
                    results[config.key] = result
                if result["foreign_cores"] <= max_foreign:
                    break
                if attempt < retries:
                    log(f"  foreign load over {max_foreign} cores: measuring {config.key} again")
    return results


async def idle_latency(spec: ServerSpec, base: str, text: Callable[[], str], count: int) -> list[float]:
    """Milliseconds per single-text request, sequential, on an idle server."""
    samples: list[float] = []
    async with httpx.AsyncClient(trust_env=False, timeout=60) as client:
        url = base + spec.embeddings_path
        for i in range(count + 5):
            body = json.dumps(spec.body("text", [text()])).encode()
            t0 = time.perf_counter()
            response = await client.post(url, content=body, headers={"content-type": "application/json"})
            elapsed = time.perf_counter() - t0
            check_answer(response, 1, spec.side)
            if i >= 5:
                samples.append(1000 * elapsed)
    return samples


# ---------------------------------------------------------------------------------------------
# Vector checks
# ---------------------------------------------------------------------------------------------

CHECK_TEXTS = [
    "a photo of a cat",
    "red sunset over the sea with a small boat and birds flying above the waves",
    "hello",
    " ".join(["the quick brown fox jumps over the lazy dog"] * 8),  # > 64 tokens: truncated
]


async def check_vectors(spec: ServerSpec, base: str, raw: RawSiglip, inputs: Inputs) -> dict[str, Any]:
    """Cosine of the server's vectors against the raw computation (float format)."""
    url = base + spec.embeddings_path
    expected_text = raw.texts(CHECK_TEXTS)
    expected_image = raw.images(inputs.pictures[:2])
    result: dict[str, Any] = {}
    async with httpx.AsyncClient(trust_env=False, timeout=120) as client:

        async def vectors(modality: str, items: Sequence[str]) -> np.ndarray:
            response = await client.post(url, json=spec.body(modality, items, encoding_format="float"))
            check_answer(response, len(items), spec.side)
            rows = sorted(response.json()["data"], key=lambda row: row["index"])
            return np.asarray([row["embedding"] for row in rows], dtype=np.float64)

        def cosines(got: np.ndarray, want: np.ndarray) -> list[float]:
            got = got / np.linalg.norm(got, axis=1, keepdims=True)
            return [round(float(c), 6) for c in (got * want).sum(axis=1)]

        single_text = await vectors("text", CHECK_TEXTS[:1])
        batch_text = await vectors("text", CHECK_TEXTS)
        single_image = await vectors("image", inputs.data_uris[:1])
        batch_image = await vectors("image", inputs.data_uris[:2])
    result["text_single"] = cosines(single_text, expected_text[:1])[0]
    result["text_batch"] = cosines(batch_text, expected_text)  # mixed lengths, one request
    result["image_single"] = cosines(single_image, expected_image[:1])[0]
    result["image_batch"] = cosines(batch_image, expected_image)
    result["text_ok"] = min([result["text_single"], *result["text_batch"]]) > 0.9999
    result["image_ok"] = min([result["image_single"], *result["image_batch"]]) > 0.9999
    return result


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def engine_medians(results: Sequence[dict[str, Any]]) -> dict[str, float]:
    """The gateway's own view of a load run (mean batch, forward busy share, forward ms per item)."""
    keys = ("mean_batch", "forward_busy", "forward_ms_per_item")
    return {key: median([r[key] for r in results]) for key in keys if all(key in r for r in results)}


def summarise(
    runs: dict[str, dict[str, list[dict[str, Any]]]], raw_keys: dict[str, list[str]]
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One row per (side, config) with the median over rounds, and the headline ratios."""
    rows: list[dict[str, Any]] = []
    raw_limit: dict[str, float] = {}
    for modality, keys in raw_keys.items():
        raw_runs = runs.get("raw", {})
        medians = [median([r["rate"] for r in raw_runs[k]]) for k in keys if raw_runs.get(k)]
        if medians:
            raw_limit[modality] = max(medians)
    for side, configs in runs.items():
        for key, results in configs.items():
            if not results:
                continue
            modality = key.split("/")[0]
            rate = median([r["rate"] for r in results])
            row: dict[str, Any] = {
                "side": side,
                "config": key,
                "modality": modality,
                "items_per_s": rate,
                "rounds": [round(r["rate"], 3) for r in results],
                "vs_raw": rate / raw_limit[modality] if modality in raw_limit else None,
            }
            if side != "raw":
                row["latency_p50_ms"] = median([r["latency_p50_ms"] for r in results])
                row["latency_p95_ms"] = median([r["latency_p95_ms"] for r in results])
            row["foreign_cores_max"] = max(r.get("foreign_cores", 0.0) for r in results)
            if side != "raw":
                row["cache_hits"] = sum(r.get("cache_hits", 0) for r in results)
            row.update(engine_medians(results))
            rows.append(row)
    summary: dict[str, Any] = {"raw_limit_items_per_s": raw_limit}
    for side in runs:
        if side == "raw":
            continue
        for modality in ("image", "text"):
            candidates = [r for r in rows if r["side"] == side and r["modality"] == modality]
            if candidates and modality in raw_limit:
                best = max(candidates, key=lambda r: r["items_per_s"])
                summary[f"{side}/{modality}"] = {
                    "best_config": best["config"],
                    "best_items_per_s": best["items_per_s"],
                    "best_vs_raw": best["items_per_s"] / raw_limit[modality],
                    "vs_raw_by_config": {r["config"]: r["vs_raw"] for r in candidates},
                }
    return rows, summary


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    lines = [
        "| side | modality | clients x items/req | items/s (median) | per round | / raw limit | p50 / p95 ms "
        "| mean batch | forward busy, ms/item | foreign load |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in sorted(rows, key=lambda r: (r["modality"], r["side"] != "raw", r["side"], r["config"])):
        parts = row["config"].split("/")
        if row["side"] == "raw":
            shape = f"batch {parts[1].removeprefix('b')}"
        else:
            shape = f"{parts[1].removeprefix('c')} x {parts[2].removeprefix('n')}"
        latency = f"{row['latency_p50_ms']:.0f} / {row['latency_p95_ms']:.0f}" if "latency_p50_ms" in row else "-"
        ratio = f"{row['vs_raw']:.3f}" if row.get("vs_raw") is not None else "-"
        batch = f"{row['mean_batch']:.1f}" if "mean_batch" in row else "-"
        busy = f"{row['forward_busy']:.0%}, {row['forward_ms_per_item']:.1f}" if "forward_busy" in row else "-"
        per_round = ", ".join(f"{v:.2f}" for v in row["rounds"])
        lines.append(
            f"| {row['side']} | {row['modality']} | {shape} | {row['items_per_s']:.2f} | {per_round} | "
            f"{ratio} | {latency} | {batch} | {busy} | {row['foreign_cores_max']:.2f} |"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------


def parse_engine(spec: str) -> dict[str, Any]:
    """`max_batch_size=16,max_wait_ms=5` -> {"max_batch_size": 16, "max_wait_ms": 5.0}."""
    engine: dict[str, Any] = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        key, _, value = item.partition("=")
        engine[key.strip()] = yaml.safe_load(value)
    return engine


def server_specs(sides: Sequence[str], gateway_engines: Sequence[str]) -> list[ServerSpec]:
    specs: list[ServerSpec] = []
    for side in sides:
        if side == "gateway":
            for engine_spec in gateway_engines:
                engine = parse_engine(engine_spec)
                name = "gateway" if not engine else f"gateway[{engine_spec.replace(' ', '')}]"
                specs.append(ServerSpec(name, "gateway", engine))
        elif side == "infinity":
            specs.append(ServerSpec("infinity", "infinity"))
    return specs


@dataclass
class Plan:
    """What one benchmark run measures."""

    sides: list[str]  # "raw" and the server sides, in their first-round order
    specs: dict[str, ServerSpec]
    configs: list[LoadConfig]
    raw_batches: list[int]
    modalities: list[str]
    rounds: int
    duration: float
    max_foreign: float
    retries: int
    latency_requests: int

    @property
    def raw_keys(self) -> dict[str, list[str]]:
        return {m: [f"{m}/b{b}" for b in self.raw_batches] for m in self.modalities}


@dataclass
class Measurements:
    runs: dict[str, dict[str, list[dict[str, Any]]]]
    latency: dict[str, list[float]] = field(default_factory=dict)
    checks: dict[str, Any] = field(default_factory=dict)
    counter: Iterator[int] = field(default_factory=itertools.count)


def make_plan(args: argparse.Namespace) -> Plan:
    sides = [s.strip() for s in args.sides.split(",") if s.strip()]
    unknown = set(sides) - {"raw", "gateway", "infinity"}
    if unknown:
        raise SystemExit(f"unknown sides: {sorted(unknown)}")
    if "infinity" in sides and not (INFINITY_VENV / "bin" / "infinity_emb").exists():
        raise SystemExit("Infinity is not installed: run `bash bench/setup_infinity.sh` first")
    specs = server_specs(sides, args.gateway_engine or [""])
    modalities = [m.strip() for m in args.modalities.split(",") if m.strip()]
    if set(modalities) - {"image", "text"}:
        raise SystemExit(f"unknown modalities: {modalities}")
    configs = [
        LoadConfig(modality, concurrency, items)
        for modality in modalities
        for concurrency in (int(c) for c in args.concurrency.split(","))
        for items in (int(n) for n in args.items.split(","))
    ]
    return Plan(
        sides=(["raw"] if "raw" in sides else []) + [s.side for s in specs],
        specs={s.side: s for s in specs},
        configs=configs,
        raw_batches=[int(b) for b in args.raw_batches.split(",")],
        modalities=modalities,
        rounds=args.rounds,
        duration=args.duration,
        max_foreign=args.max_foreign_load,
        retries=args.retries,
        latency_requests=args.latency_requests,
    )


def measure_raw_side(raw: RawSiglip, inputs: Inputs, plan: Plan, into: Measurements) -> None:
    for modality, keys in plan.raw_keys.items():
        for key, batch in zip(keys, plan.raw_batches, strict=True):
            best: dict[str, Any] | None = None
            for attempt in range(plan.retries + 1):
                meter = CpuMeter()
                result = measure_raw(raw, inputs, modality, batch, plan.duration)
                result["foreign_cores"] = meter.foreign_cores()
                result["attempt"] = attempt + 1
                log(
                    f"  raw        {key:<14} {result['rate']:7.2f} items/s ({result['batch_s']:.2f} s/batch, "
                    f"foreign load {result['foreign_cores']:.2f} cores)"
                )
                if best is None or result["foreign_cores"] < best["foreign_cores"]:
                    best = result
                if result["foreign_cores"] <= plan.max_foreign:
                    break
                if attempt < plan.retries:
                    log(f"  foreign load over {plan.max_foreign} cores: measuring {key} again")
            assert best is not None
            into.runs["raw"].setdefault(key, []).append(best)


async def measure_server_side(
    spec: ServerSpec, raw: RawSiglip, inputs: Inputs, plan: Plan, into: Measurements, *, tag: str
) -> None:
    counter = into.counter
    async with running_server(spec, RESULTS_DIR / "logs", tag) as (base, _pid):
        if spec.side not in into.checks:
            into.checks[spec.side] = await check_vectors(spec, base, raw, inputs)
            log(f"  {spec.side} vectors vs raw: {into.checks[spec.side]}")
        samples = await idle_latency(spec, base, lambda: inputs.text(next(counter)), plan.latency_requests)
        into.latency.setdefault(spec.side, []).extend(samples)
        log(f"  {spec.side} idle single-text latency p50 {percentile(samples, 50):.1f} ms")
        measured = await measure_server(
            spec,
            base,
            inputs,
            plan.configs,
            counter=counter,
            duration=plan.duration,
            max_foreign=plan.max_foreign,
            retries=plan.retries,
        )
        for key, result in measured.items():
            into.runs[spec.side].setdefault(key, []).append(result)


async def vector_check_only(spec: ServerSpec, raw: RawSiglip, inputs: Inputs) -> dict[str, Any]:
    async with running_server(spec, RESULTS_DIR / "logs", "infinity-no-pad-fix") as (base, _pid):
        return await check_vectors(spec, base, raw, inputs)


async def run_rounds(plan: Plan, raw: RawSiglip, inputs: Inputs) -> Measurements:
    """The interleaved rounds; the order of the sides rotates by one each round."""
    measurements = Measurements(runs={side: {} for side in plan.sides})
    for round_no in range(plan.rounds):
        shift = round_no % len(plan.sides)
        order = plan.sides[shift:] + plan.sides[:shift]
        log(f"round {round_no + 1}/{plan.rounds}: {' -> '.join(order)}")
        for side in order:
            if side == "raw":
                measure_raw_side(raw, inputs, plan, measurements)
            else:
                tag = f"{side}-round{round_no + 1}".replace("[", "_").replace("]", "").replace(",", "_")
                await measure_server_side(plan.specs[side], raw, inputs, plan, measurements, tag=tag)
    return measurements


def print_report(table: str, report: dict[str, Any], out: Path) -> None:
    print(table)
    print()
    for key, value in report["summary"].items():
        if key == "raw_limit_items_per_s":
            print("raw limit (best raw batch): " + ", ".join(f"{m} {v:.2f}/s" for m, v in value.items()))
        else:
            best = f"{value['best_config']} {value['best_items_per_s']:.2f}/s"
            print(f"{key}: best {best} = {value['best_vs_raw']:.3f} x raw")
    for side, stats in report["idle_single_text_latency"].items():
        print(f"{side} idle single-text latency: p50 {stats['p50_ms']:.1f} ms, p95 {stats['p95_ms']:.1f} ms")
    for side, check in report["vector_checks"].items():
        print(f"{side} vectors vs raw (cosine): {check}")
    print(f"\nJSON: {out}  (wall {report['meta']['wall_s'] / 60:.1f} min)")


def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    plan = make_plan(args)
    marker = ensure_models(args.rebuild)
    log(f"model: {marker['parameters'] / 1e6:.1f}M parameters, torch threads {torch.get_num_threads()}")
    inputs = make_inputs()
    raw = RawSiglip(MODEL_DIR)
    (RESULTS_DIR / "logs").mkdir(parents=True, exist_ok=True)
    measurements = asyncio.run(run_rounds(plan, raw, inputs))
    if "infinity" in plan.specs and args.no_pad_fix_check:
        # Only a vector check: shows what the default conversion fixes (pad to 64, not to the longest).
        if not (INFINITY_NO_PAD_FIX_DIR / "config.json").is_file():
            convert_for_infinity(INFINITY_NO_PAD_FIX_DIR, "--no-pad-fix")
        spec = ServerSpec("infinity --no-pad-fix", "infinity", model_dir=INFINITY_NO_PAD_FIX_DIR)
        measurements.checks[spec.side] = asyncio.run(vector_check_only(spec, raw, inputs))
        log(f"  {spec.side} vectors vs raw: {measurements.checks[spec.side]}")

    rows, summary = summarise(measurements.runs, plan.raw_keys)
    latency_summary = {
        side: {"requests": len(samples), "p50_ms": percentile(samples, 50), "p95_ms": percentile(samples, 95)}
        for side, samples in measurements.latency.items()
    }
    report = {
        "meta": {
            "date": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "model": {"dir": str(MODEL_DIR.relative_to(ROOT)), **marker},
            "infinity_model_dir": str(INFINITY_MODEL_DIR.relative_to(ROOT)),
            "encoding_format": "base64 for throughput, float for the vector checks",
            "images": "640x480 JPEG data URIs (raw side: pre-decoded RGB, image processor included)",
            "rounds": plan.rounds,
            "duration_s": plan.duration,
            "max_foreign_load_cores": plan.max_foreign,
            "retries": plan.retries,
            "gateway_engines": {s.side: s.engine for s in plan.specs.values() if s.kind == "gateway"},
            "wall_s": time.monotonic() - started,
        },
        "rows": rows,
        "summary": summary,
        "idle_single_text_latency": latency_summary,
        "vector_checks": measurements.checks,
        "runs": measurements.runs,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print_report(markdown_table(rows), report, out)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds (median over rounds)")
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per measurement after the warm-up")
    parser.add_argument(
        "--max-foreign-load",
        type=float,
        default=0.15,
        help="measure again when other processes used more than this many cores meanwhile",
    )
    parser.add_argument("--retries", type=int, default=1, help="re-measurements allowed per noisy measurement")
    parser.add_argument("--sides", default="raw,gateway,infinity", help="comma list of raw, gateway, infinity")
    parser.add_argument("--modalities", default="image,text", help="comma list of image, text")
    parser.add_argument("--concurrency", default="8,16", help="concurrent clients (comma list)")
    parser.add_argument("--items", default="1,8", help="items per request (comma list)")
    parser.add_argument("--raw-batches", default="8,32", help="raw batch sizes (comma list)")
    parser.add_argument("--latency-requests", type=int, default=50, help="sequential single-text requests per round")
    parser.add_argument(
        "--gateway-engine",
        action="append",
        help="gateway engine options for the YAML model entry, e.g. 'max_batch_size=16,max_wait_ms=5'; "
        "repeat to compare variants ('' = defaults)",
    )
    parser.add_argument(
        "--no-pad-fix-check",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="after the rounds, also check the vectors of an Infinity copy converted with --no-pad-fix",
    )
    parser.add_argument("--rebuild", action="store_true", help="rebuild the cached model folders")
    parser.add_argument("--out", default=str(RESULTS_DIR / "siglip.json"))
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
