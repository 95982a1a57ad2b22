"""Items/s of `python -m gateway embed` against the server's own throughput, side by side.

One gateway process (cache off, so neither side gets hits), one folder of images and text files.
First a load generator (httpx, inputs prepared in memory, the same batch size and concurrency)
measures what the server can do; then the command embeds the same folder through it. The ratio
is the command's overhead: listing, reading, hashing, base64, writing Parquet.

    .venv/bin/python bench/bench_bulk.py --items 2000 --batch-size 32 --concurrency 4
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import re
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


def write_corpus(folder: Path, items: int) -> list[Any]:
    """Half images (PNG, 64x64 noise), half texts; returns each item's `input` element, in the command's order."""
    rng = np.random.default_rng(0)
    elements: list[Any] = []
    for i in range(items):
        if i % 2 == 0:
            out = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(out, format="PNG")
            (folder / f"{i:06d}.png").write_bytes(out.getvalue())
            elements.append({"image": "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()})
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


def command_throughput(url: str, folder: Path, out: Path, batch_size: int, concurrency: int) -> tuple[float, float]:
    """Items/s of the command: wall clock of the whole process (start-up included), and its own summary's
    rate (from the first batch's listing to the last row written)."""
    command = [sys.executable, "-m", "gateway", "embed", str(folder), "--model", MODEL, "--out", str(out)]
    command += ["--url", url, "--batch-size", str(batch_size), "--concurrency", str(concurrency), "--no-progress"]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, check=True, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    rate = re.search(r"([0-9.]+) items/s", done.stderr)
    return len(read_output(out)) / elapsed, float(rate.group(1)) if rate else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--width", type=int, default=128, help="SigLIP width (random weights)")
    parser.add_argument("--layers", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        model = build_siglip(work / "model", width=args.width, layers=args.layers, image_size=64)
        folder = work / "corpus"
        folder.mkdir()
        elements = write_corpus(folder, args.items)
        config = {
            "models": [{"name": MODEL, "provider": "siglip", "model": str(model), "max_batch_size": args.batch_size}],
            "cache": {"memory_mb": 0},  # no hits on either side
            "access_log": False,
            "log_level": "warning",
        }
        with gateway_process(config, work) as url:
            asyncio.run(server_throughput(url, elements[: args.batch_size * args.concurrency], args.batch_size, 1))
            server = asyncio.run(server_throughput(url, elements, args.batch_size, args.concurrency))
            wall, run = command_throughput(url, folder, work / "out", args.batch_size, args.concurrency)
        print(
            f"items={args.items} batch_size={args.batch_size} concurrency={args.concurrency} "
            f"model=siglip width={args.width} layers={args.layers} image_size=64"
        )
        print(f"server (load generator): {server:8.1f} items/s")
        print(f"gateway embed, its run:  {run:8.1f} items/s  ({run / server:.2f}x)")
        print(f"gateway embed, process:  {wall:8.1f} items/s  ({wall / server:.2f}x, start-up included)")


if __name__ == "__main__":
    main()
