"""Gateway overhead in front of an OpenAI-compatible upstream, side by side with the upstream direct and LiteLLM.

One run on 127.0.0.1: a fake upstream (bench/fake_upstream.py), our gateway with one model whose single
deployment is that upstream, and the LiteLLM proxy (bench/setup_litellm.sh) on the same upstream, both
gateways caching in one private redis-server. Rows: 1 and 16 concurrent keep-alive clients, 1 and 32 items
per request, misses (unique inputs on every request) and hits (one body repeated after a warm-up). Targets
are measured one after another in interleaved rounds (the order reversed every other round), never at once:
the machine has 2 cores. Each cell reports req/s and p50/p99 latency of every request, the upstream calls
per request (1 on a miss; a hit must be 0 or it was no hit) and the CPU time per request of each process
(client, upstream, proxy, Redis), so the cost of the load generator itself is on the table. Exit 1 when a
target is missed: the gateway adds at most 1 ms p50 at 1 client (1 item, misses), and its miss throughput at
16 clients is at least half the upstream's direct. With the default `--latency-ms 0` the fake answers in
~0.04 ms of CPU, so "direct" is tens of thousands of requests a second, out of reach of any proxy that
does work per request in one Python process on 2 cores; `--latency-ms 20` models a real API (a hosted
embeddings API answers in tens of milliseconds) and is the throughput comparison that means something. Usage:

    bash bench/setup_litellm.sh   # once
    .venv/bin/python bench/bench_upstream.py [--seconds 3] [--rounds 2] [--latency-ms 20] [--only misses]
        [--skip-gateway] [--skip-litellm] [--baseline /tmp/base] [--out bench/results/upstream.json]

`--baseline DIR` adds the gateway of another checkout (`git worktree add /tmp/base <commit>`) as one more
target in the same interleaved rounds: this machine's speed drifts by 20-30% within an hour, so a change
is best measured against its base side by side.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.servers import RedisServer, free_port  # noqa: E402

MODEL = "fake-embed"
DIMENSIONS = 256
API_KEY = "sk-bench"
REQUEST_TIMEOUT_S = 60.0
DIRECT, GATEWAY, LITELLM, BASELINE = "direct", "gateway", "litellm", "baseline"
CLOCK_TICK_S = 1 / os.sysconf("SC_CLK_TCK")
T = TypeVar("T")

GATEWAY_CONFIG = """\
host: 127.0.0.1
port: {port}
log_level: warning
access_log: false
redis_url: redis://127.0.0.1:{redis_port}/0
models:
  - name: fake-embed
    deployments:
      - provider: openai_compatible
        base_url: http://127.0.0.1:{upstream_port}/v1
        model: fake-embed
        dimensions: 256
        api_key: sk-bench
        max_concurrent_requests: 64  # its default of 8 calls in flight would cap 16 clients under --latency-ms
"""

LITELLM_CONFIG = """\
model_list:
  - model_name: fake-embed
    litellm_params:
      model: openai/fake-embed
      api_base: http://127.0.0.1:{upstream_port}/v1
      api_key: sk-x
litellm_settings:
  cache: true
  cache_params:
    type: redis
    host: 127.0.0.1
    port: {redis_port}
"""

# No network here and none wanted: the model price map ships in the wheel; no database, no telemetry. No
# master key either (1.108 refuses to start without one unless told): our gateway runs without client keys too.
LITELLM_ENV = {
    "LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY": "true",
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    "LITELLM_TELEMETRY_DISABLED": "true",
    "LITELLM_LOG": "ERROR",
    "DISABLE_SCHEMA_UPDATE": "True",
    "NO_DOCS": "True",
}


# --- processes -------------------------------------------------------------------------------------------


@dataclass
class Target:
    """One thing the clients send to: its address and the processes whose CPU time it costs."""

    name: str
    port: int
    pids: list[int] = field(default_factory=list)
    command: str = ""
    config: str = ""


@contextmanager
def server_process(
    command: list[str],
    ready_url: str,
    log_file: Path,
    env: dict[str, str] | None = None,
    *,
    timeout_s: float = 180,
    cwd: Path = ROOT,
) -> Iterator[subprocess.Popen[bytes]]:
    """Run `command` until the block ends; yield it once `ready_url` answers 200 (or fail with its log)."""
    with log_file.open("wb") as log:
        process = subprocess.Popen(command, cwd=cwd, env={**os.environ, **(env or {})}, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{command[0]} exited with {process.returncode}:\n{log_file.read_text()[-4000:]}")
            try:
                if httpx.get(ready_url, timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{command[0]} not ready after {timeout_s:.0f} s:\n{log_file.read_text()[-4000:]}")
            time.sleep(0.2)
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants (a server may fork workers)."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(parents.get(current, []))
    return tree


def cpu_seconds(pids: list[int]) -> float:
    """User plus system CPU time of `pids` so far (processes that have gone count 0)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total * CLOCK_TICK_S


def start_upstream(stack: ExitStack, workdir: Path, latency_ms: float) -> Target:
    port = free_port()
    command = [sys.executable, "bench/fake_upstream.py", "--port", str(port), "--latency-ms", str(latency_ms)]
    process = stack.enter_context(server_process(command, f"http://127.0.0.1:{port}/health", workdir / "up.log"))
    return Target(DIRECT, port, [process.pid], " ".join(command))


def start_gateway(
    stack: ExitStack, workdir: Path, upstream: Target, redis_port: int, *, tree: Path = ROOT, name: str = GATEWAY
) -> Target:
    """This gateway, or (`tree`) the one in another checkout, run with this interpreter and venv."""
    port = free_port()
    config = workdir / f"{name}.yaml"
    text = GATEWAY_CONFIG.format(port=port, redis_port=redis_port, upstream_port=upstream.port)
    config.write_text(text)
    command = [sys.executable, "-m", "gateway", "serve", "--config", str(config)]
    env = {
        "TIKTOKEN_CACHE_DIR": os.environ.get("TIKTOKEN_CACHE_DIR", str(ROOT / ".cache" / "tiktoken")),
        "PYTHONPATH": str(tree),  # before the venv's editable install of this tree
    }
    process = stack.enter_context(
        server_process(command, f"http://127.0.0.1:{port}/ready", workdir / f"{name}.log", env, cwd=tree)
    )
    return Target(name, port, process_tree(process.pid), f"(in {tree}) {' '.join(command)}", text)


def start_litellm(stack: ExitStack, workdir: Path, upstream: Target, redis_port: int, venv: Path) -> Target:
    executable = venv / "bin" / "litellm"
    if not executable.exists():
        raise SystemExit(f"{executable} not found: run `bash bench/setup_litellm.sh` first, or pass --skip-litellm")
    port = free_port()
    config = workdir / "litellm.yaml"
    text = LITELLM_CONFIG.format(upstream_port=upstream.port, redis_port=redis_port)
    config.write_text(text)
    command = [str(executable), "--config", str(config), "--host", "127.0.0.1", "--port", str(port)]
    process = stack.enter_context(
        server_process(command, f"http://127.0.0.1:{port}/health/readiness", workdir / "litellm.log", LITELLM_ENV)
    )
    environment = " ".join(f"{k}={v}" for k, v in LITELLM_ENV.items())
    return Target(LITELLM, port, process_tree(process.pid), f"{environment} {' '.join(command)}", text)


# --- the load generator ----------------------------------------------------------------------------------


class Connection:
    """One keep-alive HTTP/1.1 connection on raw asyncio streams: ~0.05 ms of client CPU per request, where
    an httpx.AsyncClient costs ~1 ms and would be the bottleneck on 2 cores (`--client httpx` shows it)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.head = f"POST /v1/embeddings HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\ncontent-type: application/json\r\n"
        self.head += f"authorization: Bearer {API_KEY}\r\n"
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, body: bytes) -> tuple[int, bytes]:
        if self.writer is None or self.reader is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.writer.write(f"{self.head}content-length: {len(body)}\r\n\r\n".encode() + body)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip().lower()
        if b"chunked" in headers.get(b"transfer-encoding", b""):
            payload = await self.read_chunked()
        else:
            payload = await self.reader.readexactly(int(headers.get(b"content-length", b"0")))
        if headers.get(b"connection") == b"close":
            await self.close()
        return status, payload

    async def read_chunked(self) -> bytes:
        assert self.reader is not None
        parts = []
        while size := int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16):
            parts.append(await self.reader.readexactly(size + 2))
        await self.reader.readuntil(b"\r\n")
        return b"".join(part[:-2] for part in parts)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer, self.reader = None, None


class HttpxConnection:
    """The same through an httpx.AsyncClient (one per client, so one connection each): to see what it costs."""

    def __init__(self, port: int) -> None:
        self.client = httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}",
            headers={"authorization": f"Bearer {API_KEY}", "content-type": "application/json"},
            timeout=REQUEST_TIMEOUT_S,
        )

    async def post(self, body: bytes) -> tuple[int, bytes]:
        response = await self.client.post("/v1/embeddings", content=body)
        return response.status_code, response.content

    async def close(self) -> None:
        await self.client.aclose()


AnyConnection = Connection | HttpxConnection


class Bodies:
    """Request bodies: a fresh set of inputs on every call for misses, one fixed body for hits."""

    def __init__(self, items: int, *, hits: bool) -> None:
        self.items = items
        self.hit_body = self.encode([f"hit text {items} {i}" for i in range(items)]) if hits else b""
        self.nonce = uuid.uuid4().hex[:12]  # a fresh Redis has no misses' keys, and neither has a rerun
        self.counter = itertools.count()

    @staticmethod
    def encode(texts: list[str]) -> bytes:
        return json.dumps({"model": MODEL, "input": texts, "encoding_format": "float"}).encode()

    def next(self) -> bytes:
        if self.hit_body:
            return self.hit_body
        n = next(self.counter)
        return self.encode([f"miss {self.nonce} {n} {i}" for i in range(self.items)])


@dataclass
class Sample:
    """What one cell of the table measured."""

    latencies_ms: list[float]
    seconds: float
    errors: list[str]
    client_cpu_s: float


async def drive(connections: list[AnyConnection], bodies: Bodies, seconds: float) -> Sample:
    """Every connection sends back to back for `seconds`; every request's latency is kept."""
    latencies: list[float] = []
    errors: list[str] = []
    marker = b'"embedding":'
    deadline = time.perf_counter() + seconds

    async def worker(connection: AnyConnection) -> None:
        while time.perf_counter() < deadline:
            body = bodies.next()
            start = time.perf_counter()
            status, payload = await connection.post(body)
            elapsed = (time.perf_counter() - start) * 1000
            if status == 200 and payload.count(marker) == bodies.items:
                latencies.append(elapsed)
            else:
                errors.append(f"{status}: {payload[:300]!r}")

    cpu = time.process_time()
    start = time.perf_counter()
    await asyncio.gather(*(worker(connection) for connection in connections))
    return Sample(latencies, time.perf_counter() - start, errors, time.process_time() - cpu)


@dataclass
class Counters:
    """What the servers had spent when a cell started: upstream calls and CPU seconds per process group."""

    upstream_calls: float
    cpu_s: dict[str, float]


async def run_cell(
    target: Target,
    make: Callable[[int], AnyConnection],
    bodies: Bodies,
    *,
    clients: int,
    seconds: float,
    counters: Callable[[], Counters],
) -> tuple[Sample, Counters]:
    """Open `clients` connections, send each one untimed request of the cell's kind, then drive them.

    Returns the sample and what the servers spent while it ran (the counters read after the warm-up)."""
    connections = [make(target.port) for _ in range(clients)]
    try:
        await asyncio.gather(*(connection.post(bodies.next()) for connection in connections))
        before = counters()
        # One bound on the whole cell, not one per request (asyncio.wait_for makes a task per call).
        sample = await asyncio.wait_for(drive(connections, bodies, seconds), seconds + REQUEST_TIMEOUT_S)
        after = counters()
    finally:
        await asyncio.gather(*(connection.close() for connection in connections))
    spent = {name: after.cpu_s[name] - before.cpu_s[name] for name in before.cpu_s}
    return sample, Counters(after.upstream_calls - before.upstream_calls, {**spent, "client": sample.client_cpu_s})


# --- checks before measuring -----------------------------------------------------------------------------


def upstream_stats(upstream: Target) -> dict[str, float]:
    stats: dict[str, float] = httpx.get(f"http://127.0.0.1:{upstream.port}/stats", timeout=5).json()
    return stats


def embed(target: Target, texts: list[str]) -> list[list[float]]:
    response = httpx.post(
        f"http://127.0.0.1:{target.port}/v1/embeddings",
        json={"model": MODEL, "input": texts, "encoding_format": "float"},
        headers={"authorization": f"Bearer {API_KEY}"},
        timeout=30,
    )
    if response.status_code != 200:
        raise SystemExit(f"{target.name}: {response.status_code} {response.text[:500]}")
    return [row["embedding"] for row in sorted(response.json()["data"], key=lambda row: row["index"])]


def check_vectors(targets: list[Target]) -> None:
    """Every target answers the upstream's own vectors, in order: a proxy that changed them measures nothing."""
    texts = [f"vector check {i}" for i in range(5)]
    expected = embed(targets[0], texts)
    for target in targets[1:]:
        got = embed(target, texts)
        if [len(row) for row in got] != [DIMENSIONS] * len(texts):
            raise SystemExit(f"{target.name} answered {len(got)} vectors of {[len(row) for row in got]} dimensions")
        worst = max(abs(a - b) for want, row in zip(expected, got, strict=True) for a, b in zip(want, row, strict=True))
        if worst > 1e-6:
            raise SystemExit(f"{target.name} answered other vectors than the upstream (max difference {worst})")


def warm_hits(target: Target, upstream: Target, bodies: Bodies, tries: int = 40) -> bool:
    """Send the hit body until one answer comes without an upstream call (a cache may write after answering)."""
    url = f"http://127.0.0.1:{target.port}/v1/embeddings"
    headers = {"authorization": f"Bearer {API_KEY}", "content-type": "application/json"}
    for _ in range(tries):
        before = upstream_stats(upstream)["requests"]
        httpx.post(url, content=bodies.hit_body, headers=headers, timeout=30).raise_for_status()
        if upstream_stats(upstream)["requests"] == before:
            return True
        time.sleep(0.05)
    return False


# --- the plan and the report -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    hits: bool
    items: int
    clients: int

    @property
    def name(self) -> str:
        items = f"{self.items} item{'s' * (self.items > 1)}"
        return f"{'hits' if self.hits else 'misses'}, {items}, {self.clients} client{'s' * (self.clients > 1)}"


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


@dataclass
class Cell:
    """One scenario on one target, pooled over the rounds."""

    latencies_ms: list[float] = field(default_factory=list)
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)
    upstream_calls: float = 0.0
    cpu_s: dict[str, float] = field(default_factory=dict)

    def add(self, sample: Sample, spent: Counters) -> None:
        self.latencies_ms += sample.latencies_ms
        self.seconds += sample.seconds
        self.errors += sample.errors
        self.upstream_calls += spent.upstream_calls
        for name, seconds in spent.cpu_s.items():
            self.cpu_s[name] = self.cpu_s.get(name, 0.0) + seconds

    def summary(self) -> dict[str, Any]:
        requests = max(1, len(self.latencies_ms))
        return {
            "requests": len(self.latencies_ms),
            "rps": len(self.latencies_ms) / self.seconds if self.seconds else 0.0,
            "p50_ms": statistics.median(self.latencies_ms) if self.latencies_ms else float("nan"),
            "p99_ms": percentile(self.latencies_ms, 0.99),
            "upstream_calls_per_request": self.upstream_calls / requests,
            "cpu_ms_per_request": {name: seconds * 1000 / requests for name, seconds in self.cpu_s.items()},
            "errors": len(self.errors),
            "first_error": self.errors[0] if self.errors else None,
        }


def measure(
    targets: list[Target],
    upstream: Target,
    redis_pids: list[int],
    scenarios: list[Scenario],
    args: argparse.Namespace,
) -> dict[tuple[str, str], Cell]:
    """Every scenario on every target once per round, targets interleaved (reversed every other round)."""
    make: Callable[[int], AnyConnection] = HttpxConnection if args.client == "httpx" else Connection
    bodies = {s: Bodies(s.items, hits=s.hits) for s in scenarios}
    for scenario in scenarios:
        for target in targets:
            if scenario.hits and target.name != DIRECT and not warm_hits(target, upstream, bodies[scenario]):
                print(f"warning: {target.name} still calls the upstream for a repeated body ({scenario.name})")
    cells: dict[tuple[str, str], Cell] = {}
    for round_ in range(args.rounds):
        for scenario in scenarios:
            for target in targets if round_ % 2 == 0 else targets[::-1]:
                processes = {"upstream": upstream.pids, "redis": redis_pids}
                if target.name != DIRECT:
                    processes["proxy"] = target.pids

                def counters(processes: dict[str, list[int]] = processes) -> Counters:
                    calls = upstream_stats(upstream)["requests"]
                    return Counters(calls, {name: cpu_seconds(pids) for name, pids in processes.items()})

                sample, spent = asyncio_run(
                    run_cell(
                        target,
                        make,
                        bodies[scenario],
                        clients=scenario.clients,
                        seconds=args.seconds,
                        counters=counters,
                    )
                )
                cells.setdefault((scenario.name, target.name), Cell()).add(sample, spent)
    return cells


def asyncio_run(coroutine: Coroutine[Any, Any, T]) -> T:
    """uvloop when installed: the client's own cost per request is part of every number."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


def report(summary: dict[str, dict[str, dict[str, Any]]], targets: list[str]) -> None:
    print(
        "| scenario | target | req/s | p50 ms | p99 ms | p50 over direct ms | upstream calls/req "
        "| CPU ms/req: proxy | client | upstream | redis | errors |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for scenario, rows in summary.items():
        direct = rows.get(DIRECT, {}).get("p50_ms", float("nan"))
        for target in targets:
            row = rows[target]
            cpu = {name: f"{ms:.3f}" for name, ms in row["cpu_ms_per_request"].items()}
            print(
                f"| {scenario} | {target} | {row['rps']:.0f} | {row['p50_ms']:.2f} | {row['p99_ms']:.2f} "
                f"| {row['p50_ms'] - direct:+.2f} | {row['upstream_calls_per_request']:.2f} "
                f"| {cpu.get('proxy', '-')} | {cpu['client']} | {cpu['upstream']} | {cpu['redis']} | {row['errors']} |"
            )
    for scenario, rows in summary.items():
        for target in targets:
            if rows[target]["errors"]:
                print(f"first error, {scenario}, {target}: {rows[target]['first_error']}")


def check_targets(summary: dict[str, dict[str, dict[str, Any]]], args: argparse.Namespace) -> list[str]:
    """The gateway's targets whose rows were measured, printed; the ones missed returned."""
    missed = []
    idle = summary.get(Scenario(hits=False, items=1, clients=1).name)
    if idle is not None:
        added = idle[GATEWAY]["p50_ms"] - idle[DIRECT]["p50_ms"]
        verdict = "met" if added <= args.max_added_p50_ms else "MISSED"
        print(
            f"target: gateway adds {added:.2f} ms p50 at 1 client, 1 item, misses "
            f"(<= {args.max_added_p50_ms:g} ms): {verdict}"
        )
        if verdict == "MISSED":
            missed.append("added p50")
    for items in (1, 32):
        busy = summary.get(Scenario(hits=False, items=items, clients=16).name)
        if busy is None:
            continue
        ratio = busy[GATEWAY]["rps"] / busy[DIRECT]["rps"]
        verdict = "met" if ratio >= args.min_throughput_ratio else "MISSED"
        print(
            f"target: gateway serves {busy[GATEWAY]['rps']:.0f} req/s = {ratio:.2f}x direct at 16 clients, "
            f"{items} item(s), misses (>= {args.min_throughput_ratio:g}x): {verdict}"
        )
        if verdict == "MISSED":
            missed.append(f"throughput, {items} item(s)")
    return missed


def redis_parser() -> str:
    """The reply parser redis-py picks in this environment, which the gateway shares (same interpreter)."""
    from redis.utils import HIREDIS_AVAILABLE

    return "hiredis" if HIREDIS_AVAILABLE else "Python"


def litellm_version(venv: Path) -> str:
    found = sorted(venv.glob("lib/python*/site-packages/litellm-*.dist-info"))
    return found[0].name.removeprefix("litellm-").removesuffix(".dist-info") if found else "?"


def write_results(path: Path, args: argparse.Namespace, targets: list[Target], results: dict[str, Any]) -> None:
    """Everything needed to read or rerun the numbers: arguments, commands, configs, load, the summary."""
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "args": {key: str(value) for key, value in vars(args).items()},
        "commands": {t.name: t.command for t in targets},
        "configs": {t.name: t.config for t in targets if t.config},
        **results,
    }
    path.write_text(json.dumps(document, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="per cell and round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--skip-gateway", action="store_true", help="measure the upstream direct and LiteLLM only")
    parser.add_argument("--skip-litellm", action="store_true")
    parser.add_argument(
        "--baseline",
        type=Path,
        help="also run the gateway of another checkout (`git worktree add /tmp/base <commit>`), interleaved",
    )
    parser.add_argument("--litellm-venv", type=Path, default=ROOT / ".venv-litellm")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="the fake upstream's delay per answer")
    parser.add_argument("--client", choices=["raw", "httpx"], default="raw", help="the load generator's HTTP client")
    parser.add_argument("--only", default="", help="run only the scenarios whose name contains this")
    parser.add_argument("--max-added-p50-ms", type=float, default=1.0)
    parser.add_argument("--min-throughput-ratio", type=float, default=0.5)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "upstream.json")
    args = parser.parse_args()
    scenarios = [
        Scenario(hits=hits, items=items, clients=clients)
        for hits in (False, True)
        for items in (1, 32)
        for clients in (1, 16)
    ]
    scenarios = [s for s in scenarios if args.only in s.name]
    workdir = Path(tempfile.mkdtemp(prefix="bench-upstream-"))
    redis = RedisServer(workdir)
    redis.start()
    try:
        with ExitStack() as stack:
            upstream = start_upstream(stack, workdir, args.latency_ms)
            targets = [upstream]
            if not args.skip_gateway:
                targets.append(start_gateway(stack, workdir, upstream, redis.port))
            if args.baseline is not None:
                targets.append(start_gateway(stack, workdir, upstream, redis.port, tree=args.baseline, name=BASELINE))
            if not args.skip_litellm:
                targets.append(start_litellm(stack, workdir, upstream, redis.port, args.litellm_venv))
            check_vectors(targets)
            assert redis.process is not None
            gc.collect()
            gc.freeze()
            load_before = os.getloadavg()[0]
            cells = measure(targets, upstream, [redis.process.pid], scenarios, args)
            load_after = os.getloadavg()[0]
    finally:
        redis.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    names = [t.name for t in targets]
    summary = {s.name: {name: cells[(s.name, name)].summary() for name in names} for s in scenarios}
    print(
        f"{args.rounds} rounds x {args.seconds:g} s per cell, {args.client} client, upstream latency "
        f"{args.latency_ms:g} ms, 1-min load average {load_before:.1f} before and {load_after:.1f} after"
        f" on {os.cpu_count()} CPUs (other work on the machine shows in every number)"
    )
    if GATEWAY in names:
        print("gateway hits come from its in-process cache (its default, memory_mb 256), in front of Redis")
        print(f"gateway's redis-py parser: {redis_parser()} (hiredis when installed: the `redis[hiredis]` extra)")
    if LITELLM in names:
        print(f"LiteLLM {litellm_version(args.litellm_venv)}: hits come from Redis")
    report(summary, names)
    missed = check_targets(summary, args) if GATEWAY in names else []
    load = {"before": load_before, "after": load_after}
    results = {"load_average_1min": load, "redis_parser": redis_parser(), "missed": missed, "summary": summary}
    write_results(args.out, args, targets, results)
    if missed:
        sys.exit(1)


if __name__ == "__main__":
    main()
