"""`python -m gateway embed` end to end: a folder with good and bad files, JSONL and CSV, against a real
gateway process (through a proxy that can slow it down), interrupted by SIGINT and SIGKILL, resumed."""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest
import yaml
from PIL import Image

from gateway.bulk_sinks import read_output
from tests.servers import ROOT, gateway_process
from tests.tiny_models import build_siglip

pytestmark = pytest.mark.slow
MODEL = "siglip-tiny"


class Proxy:
    """Forwards POSTs to a gateway after `delay_s`; counts them; can answer 503 first."""

    def __init__(self, upstream: str) -> None:
        self.delay_s = 0.0
        self.busy_first = 0
        self.requests = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                proxy.requests += 1
                time.sleep(proxy.delay_s)
                if proxy.busy_first > 0:
                    proxy.busy_first -= 1
                    status, content, headers = 503, b'{"error":{"message":"busy"}}', {"Retry-After": "0"}
                else:
                    answer = httpx.post(
                        upstream + self.path, content=body, headers={"Content-Type": "application/json"}, timeout=60
                    )
                    status, content, headers = answer.status_code, answer.content, {}
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def image(color: tuple[int, int, int], fmt: str, size: int = 16) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (size, size), color).save(out, format=fmt)
    return out.getvalue()


def noise_png(side: int) -> bytes:
    rng = np.random.default_rng(0)
    out = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(out, format="PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    siglip = build_siglip(tmp_path_factory.mktemp("bulk-model") / "siglip")
    return {
        "models": [{"name": MODEL, "provider": "siglip", "model": str(siglip)}],
        "limits": {"max_image_bytes": 200_000},
        "cache": {"expose_headers": True},
        "log_level": "warning",
    }


@pytest.fixture(scope="module")
def gateway(config: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with gateway_process(config, tmp_path_factory.mktemp("bulk-gateway")) as url:
        yield url


@pytest.fixture(scope="module")
def proxy(gateway: str) -> Iterator[Proxy]:
    server = Proxy(gateway)
    yield server
    server.close()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], dict[str, Any], dict[str, str]]:
    """The sources, each good item's `input` element by id, and each bad item's expected reason by origin."""
    root = tmp_path_factory.mktemp("corpus")
    folder = root / "files"
    (folder / "nested").mkdir(parents=True)
    good: dict[str, Any] = {}
    for i in range(6):
        fmt, suffix = ("PNG", "png") if i % 2 == 0 else ("JPEG", "jpg")
        data = image((40 * i, 255 - 30 * i, 90), fmt)
        path = folder / ("nested" if i > 3 else "") / f"img{i}.{suffix}"
        path.write_bytes(data)
        mime = "image/png" if fmt == "PNG" else "image/jpeg"
        good[str(path)] = {"image": f"data:{mime};base64,{base64.b64encode(data).decode()}"}
    for i in range(4):
        text = f"a text file number {i} about cats and dogs"
        path = folder / f"note{i}.txt"
        path.write_text(text)
        good[str(path)] = text
    bad: dict[str, str] = {}
    whole = image((1, 2, 3), "PNG", size=64)
    (folder / "truncated.png").write_bytes(whole[: len(whole) // 2])
    bad[str(folder / "truncated.png")] = "could not be decoded"  # the header reads; the gateway's decode fails
    (folder / "fake.png").write_bytes(b"GIF? no: plain text in a .png")
    bad[str(folder / "fake.png")] = "not an image"
    (folder / "huge.png").write_bytes(noise_png(300))
    bad[str(folder / "huge.png")] = "over the limit of 200000 bytes"  # the gateway's limits.max_image_bytes
    (folder / "gone.jpg").symlink_to(root / "nowhere.jpg")
    bad[str(folder / "gone.jpg")] = "unreadable"
    jsonl = root / "items.jsonl"
    lines = [
        {"id": "j-text", "text": "retrieval with images"},
        {"id": "j-fused", "content": [{"text": "a red square"}, good[str(folder / "img0.png")]]},
        {"id": "j-bad", "image": "data:image/png;base64,bm90IGFuIGltYWdl"},
    ]
    jsonl.write_text("".join(json.dumps(line) + "\n" for line in lines))
    good["j-text"] = {"text": "retrieval with images"}
    good["j-fused"] = {"content": lines[1]["content"]}
    bad[f"{jsonl}#3"] = "not an image"
    table = root / "rows.csv"
    table.write_text("id,text\nc1,first row of the table\nc2,second row\n")
    good |= {"c1": "first row of the table", "c2": "second row"}
    return [folder, jsonl, table], good, bad


def embed_command(sources: list[Path], out: Path, *args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "gateway",
        "embed",
        *map(str, sources),
        "--model",
        MODEL,
        "--out",
        str(out),
        "--no-progress",
        *args,
    ]


def wait_for_parts(out: Path, at_least: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while len(list(out.glob("part-*.parquet"))) < at_least:
        assert process.poll() is None, "the run ended before it could be interrupted"
        assert time.monotonic() < deadline
        time.sleep(0.02)


def gateway_vectors(url: str, elements: list[Any]) -> np.ndarray:
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="x")
    response = client.embeddings.create(model=MODEL, input=elements, encoding_format="float")
    return np.asarray([row.embedding for row in response.data], dtype=np.float32)


def test_interrupted_and_resumed_run_ends_with_every_good_item_once(
    gateway: str, proxy: Proxy, corpus: tuple[list[Path], dict[str, Any], dict[str, str]], tmp_path: Path
) -> None:
    sources, good, bad = corpus
    out = tmp_path / "vectors"
    errors = tmp_path / "errors.jsonl"
    slow = embed_command(sources, out, "--url", proxy.url, "--batch-size", "2", "--concurrency", "1")
    slow += ["--flush-rows", "1"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proxy.delay_s = 0.3

    first = subprocess.Popen(slow, cwd=ROOT, env=env, stderr=subprocess.PIPE)
    wait_for_parts(out, 1, first)
    first.send_signal(signal.SIGINT)
    _, stderr = first.communicate(timeout=30)
    assert first.returncode == 130, stderr.decode()
    assert "interrupted:" in stderr.decode()
    after_int = read_output(out)  # readable: every part is whole
    assert 0 < len(after_int) < len(good)

    second = subprocess.Popen(slow, cwd=ROOT, env=env, stderr=subprocess.DEVNULL)
    wait_for_parts(out, len(list(out.glob("part-*"))) + 1, second)
    second.kill()
    second.wait(timeout=10)
    after_kill = read_output(out)
    assert len(after_int) < len(after_kill) < len(good)
    assert len({r["id"] for r in after_kill}) == len(after_kill)

    proxy.delay_s = 0.0
    proxy.busy_first = 1  # the resumed run meets one 503 + Retry-After and retries it
    before = proxy.requests
    final = subprocess.run(
        embed_command(sources, out, "--url", proxy.url, "--url", gateway, "--batch-size", "3", "--errors", str(errors)),
        cwd=ROOT,
        env=env,
        capture_output=True,
        timeout=120,
        check=False,
    )
    report = final.stderr.decode()
    assert final.returncode == 1, report  # finished, with failures
    assert proxy.requests - before >= 2  # the 503 and its retry at least: both URLs took batches
    assert f"{len(good) - len(after_kill)} done, {len(after_kill)} skipped" in report

    written = read_output(out)
    counts = Counter(str(r["id"]) for r in written)
    assert counts == Counter(set(good)), "every good item exactly once, nothing else"
    assert {r["model"] for r in written} == {MODEL}
    ids = sorted(good)
    expected = gateway_vectors(gateway, [good[i] for i in ids])
    got = np.asarray([next(r["embedding"] for r in written if r["id"] == i) for i in ids], dtype=np.float32)
    assert got.shape == (len(ids), expected.shape[1])
    assert all(r["dimension"] == expected.shape[1] for r in written)
    np.testing.assert_allclose(got, expected, atol=1e-5)

    failures = {f["origin"]: f["reason"] for f in map(json.loads, errors.read_text().splitlines())}
    assert set(failures) == set(bad)
    for origin, reason in bad.items():
        assert reason in failures[origin], (origin, failures[origin])
        assert f"failed {origin}: " in report

    again = subprocess.run(
        embed_command(sources, out, "--url", gateway), cwd=ROOT, env=env, capture_output=True, timeout=60, check=False
    )
    assert f"0 done, {len(good)} skipped" in again.stderr.decode()
    assert len(read_output(out)) == len(good)


def test_in_process_run_writes_jsonl_equal_to_the_gateway(
    gateway: str, config: dict[str, Any], corpus: tuple[list[Path], dict[str, Any], dict[str, str]], tmp_path: Path
) -> None:
    sources, good, _ = corpus
    config_file = tmp_path / "gateway.yaml"
    config_file.write_text(yaml.safe_dump(config))
    out = tmp_path / "vectors.jsonl"
    done = subprocess.run(
        embed_command(sources[1:], out, "--config", str(config_file), "--batch-size", "2"),
        cwd=ROOT,
        capture_output=True,
        timeout=120,
        check=False,
    )
    report = done.stderr.decode()
    assert done.returncode == 1, report  # j-bad fails
    assert "4 done, 0 skipped (already in the output), 1 failed" in report
    assert "cache hits 0" in report  # counted in process
    written = {r["id"]: r for r in read_output(out)}
    ids = ["j-text", "j-fused", "c1", "c2"]
    assert sorted(written) == sorted(ids)
    expected = gateway_vectors(gateway, [good[i] for i in ids])
    got = np.asarray([written[i]["embedding"] for i in ids], dtype=np.float32)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
