"""Items/s of `python -m gateway embed` against the server's own throughput, side by side.

One gateway process (cache off, so neither side gets hits), one folder of photo-sized JPEGs and
text files. In each round a load generator (httpx, inputs prepared in memory, the same batch size
and concurrency) measures what the server can do, then the command embeds the same folder through
it into a fresh output; rounds alternate the two, and the medians are compared. The ratio is the
command's overhead on the service it drives: listing, reading, hashing, base64, writing Parquet,
all on the same 2 cores as the model here (a remote gateway would not share them).

    .venv/bin/python bench/bench_bulk.py                       # SigLIP-base size, random weights
    .venv/bin/python bench/bench_bulk.py --tiny --items 2000   # a tiny model: the command's own ceiling
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.bulk_sinks import read_output  # noqa: E402
from tests.servers import gateway_process  # noqa: E402
from tests.tiny_models import build_siglip  # noqa: E402

MODEL = "bench-siglip"


def write_corpus(folder: Path, items: int, side: int) -> list[Any]:
    """Half images (JPEG, smooth gradients plus noise, `side` px), half texts; returns each item's
    `input` element, in the command's order."""
    rng = np.random.default_rng(0)
    elements: list[Any] = []
    grid = np.linspace(0, 255, side, dtype=np.float32)
    for i in range(items):
        if i % 2 == 0:
            out = io.BytesIO()
            base = np.stack(
                [grid[None, :].repeat(side, 0), grid[:, None].repeat(side, 1), np.full((side, side), i % 256)]
            )
            noisy = base.transpose(1, 2, 0) + rng.normal(0, 8, (side, side, 3))
            Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(out, format="JPEG", quality=90)
            (folder / f"{i:06d}.jpg").write_bytes(out.getvalue())
            elements.append({"image": "data:image/jpeg;base64," + base64.b64encode(out.getvalue()).decode()})
        else:
            text = f"document {i}: " + " ".join(f"word{rng.integers(1000)}" for _ in range(30))
            (folder / f"{i:06d}.txt").write_text(text)
            elements.append(text)
    return elements


async def server_throughput(url: str, elements: list[Any], batch_size: int, concurrency: int) -> float:
    """Items/s of the bare server: prepared bodies, `concurrency` requests in flight."""
    batches = [elements[i : i + batch_size] for i in range(0, len(elements), batch_size)]
    queue: asyncio.Queue[list[Any]] = asyncio.Queue()
    for batch in batches:
        queue.put_nowait(batch)

    async def worker(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            batch = queue.get_nowait()
            body = {"model": MODEL, "input": batch, "encoding_format": "base64"}
            response = await client.post(f"{url}/v1/embeddings", json=body)
            response.raise_for_status()

    async with httpx.AsyncClient(timeout=600) as client:
        started = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        return len(elements) / (time.perf_counter() - started)


def command_throughput(
    url: str, folder: Path, out: Path, batch_size: int, concurrency: int
) -> tuple[float, float, float]:
    """Items/s of the command: wall clock of the whole process (start-up included), its own summary's
    rate (from the first batch's listing to the last row written), and its CPU seconds per item."""
    command = [sys.executable, "-m", "gateway", "embed", str(folder), "--model", MODEL, "--out", str(out)]
    command += ["--url", url, "--batch-size", str(batch_size), "--concurrency", str(concurrency), "--no-progress"]
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, check=True, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    rows = len(read_output(out))
    rate = re.search(r"([0-9.]+) items/s", done.stderr)
    return rows / elapsed, float(rate.group(1)) if rate else float("nan"), cpu / rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=192)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--tiny", action="store_true", help="a tiny SigLIP (width 128, 4 layers, 64 px) instead of base"
    )
    parser.add_argument("--image-side", type=int, default=640, help="pixels per side of the corpus's JPEGs")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        if args.tiny:
            model = build_siglip(work / "model", width=128, layers=4, image_size=64)
        else:
            model = build_siglip(work / "model", base=True)  # google/siglip-base-patch16-224's config
        folder = work / "corpus"
        folder.mkdir()
        elements = write_corpus(folder, args.items, args.image_side)
        config = {
            "models": [{"name": MODEL, "provider": "siglip", "model": str(model), "max_batch_size": args.batch_size}],
            "cache": {"memory_mb": 0},  # no hits on either side
            "access_log": False,
            "log_level": "warning",
        }
        servers: list[float] = []
        runs: list[float] = []
        walls: list[float] = []
        cpus: list[float] = []
        with gateway_process(config, work) as url:
            asyncio.run(server_throughput(url, elements[: args.batch_size], args.batch_size, 1))  # warm up
            for round_ in range(args.rounds):
                servers.append(asyncio.run(server_throughput(url, elements, args.batch_size, args.concurrency)))
                out = work / f"out-{round_}"
                wall, run, cpu = command_throughput(url, folder, out, args.batch_size, args.concurrency)
                walls.append(wall)
                runs.append(run)
                cpus.append(cpu)
                print(f"round {round_}: server {servers[-1]:.2f}/s, command {run:.2f}/s ({run / servers[-1]:.3f}x)")
        server, run, wall = statistics.median(servers), statistics.median(runs), statistics.median(walls)
        print(
            f"items={args.items} batch_size={args.batch_size} concurrency={args.concurrency} rounds={args.rounds} "
            f"model=siglip-{'tiny' if args.tiny else 'base'} images={args.image_side}px JPEG"
        )
        print(f"server (load generator): {server:8.2f} items/s (median)")
        print(
            f"gateway embed, its run:  {run:8.2f} items/s  ({run / server:.3f}x; by round "
            f"{', '.join(f'{r / s:.3f}' for r, s in zip(runs, servers, strict=True))})"
        )
        print(f"gateway embed, process:  {wall:8.2f} items/s  ({wall / server:.3f}x, start-up included)")
        print(f"gateway embed CPU: {statistics.median(cpus) * 1000:.1f} ms per item (process, start-up included)")


if __name__ == "__main__":
    main()
