"""How busy the machine was while a bench measured, and what the gateway says it did.

Other sessions run tests on this 2-core machine, so every measurement records the CPU time that
processes other than the bench and its children (the gateway) took meanwhile ("foreign load", in
cores) and the load average; a disturbed measurement is repeated. The gateway's own counters
(`/metrics`: inputs, batches, forward seconds) tell the mean batch and how busy its forward was.
Shared by the SigLIP, VisRAG-Ret and family benches.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx


def _ticks(fields: list[str]) -> float:
    return sum(int(f) for f in fields) / os.sysconf("SC_CLK_TCK")


def machine_busy_s() -> float:
    """CPU seconds all cores spent busy (user, nice, system, irq, softirq, steal) since boot."""
    with Path("/proc/stat").open() as stat:
        fields = stat.readline().split()[1:]
    return _ticks([fields[0], fields[1], fields[2], fields[5], fields[6], fields[7]])


def tree_cpu_s(root: int) -> float:
    """CPU seconds used by `root` and its live descendants."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry.name)] = int(fields[1])
        times[int(entry.name)] = _ticks(fields[11:13])
    total = 0.0
    for pid, cpu in times.items():
        node = pid
        while node > 1 and node != root:
            node = parents.get(node, 0)
        if node == root:
            total += cpu
    return total


def load_average() -> float:
    """The 1-minute load average."""
    return os.getloadavg()[0]


@dataclass
class CpuMeter:
    """Started at construction; `read()` gives the foreign cores and load averages since then."""

    start: tuple[float, float, float] = field(
        default_factory=lambda: (time.monotonic(), machine_busy_s(), tree_cpu_s(os.getpid()))
    )
    load_before: float = field(default_factory=load_average)
    own_process: float = field(default_factory=time.process_time)

    def read(self) -> dict[str, float]:
        now, busy, ours = time.monotonic(), machine_busy_s(), tree_cpu_s(os.getpid())
        wall = max(now - self.start[0], 1e-6)
        foreign = max(0.0, ((busy - self.start[1]) - (ours - self.start[2])) / wall)
        return {
            "foreign_cores": foreign,
            "own_cores": (ours - self.start[2]) / wall,
            "own_cpu_s": ours - self.start[2],
            "bench_process_cpu_s": time.process_time() - self.own_process,  # the raw model, or the load client
            "load_before": self.load_before,
            "load_after": load_average(),
        }


@dataclass(frozen=True)
class EngineCounters:
    """The gateway's cumulative counters for its model (all models summed)."""

    parts: float
    batches: float
    forward_s: float


_COUNTERS = {
    "gateway_model_parts_total": "parts",
    "gateway_model_batches_total": "batches",
    "gateway_model_forward_seconds_total": "forward_s",
}


async def engine_counters(client: httpx.AsyncClient, base: str) -> EngineCounters | None:
    """The counters from `/metrics`, or None when the gateway does not expose them."""
    try:
        text = (await client.get(base + "/metrics")).text
    except httpx.HTTPError:
        return None
    values = dict.fromkeys(_COUNTERS.values(), 0.0)
    found = set()
    for name, key in _COUNTERS.items():
        for match in re.finditer(rf"^{name}(?:\{{[^}}]*\}})? ([0-9.e+-]+)$", text, re.MULTILINE):
            values[key] += float(match.group(1))
            found.add(key)
    if len(found) != len(_COUNTERS):
        return None
    return EngineCounters(**values)


def engine_view(before: EngineCounters | None, after: EngineCounters | None, span_s: float) -> dict[str, float]:
    """Mean batch, share of the span the forward thread was busy, forward seconds per input."""
    if before is None or after is None or after.batches <= before.batches:
        return {}
    parts, forward = after.parts - before.parts, after.forward_s - before.forward_s
    return {
        "mean_batch": parts / (after.batches - before.batches),
        "forward_busy": forward / span_s,
        "forward_s_per_item": forward / parts,
    }


__all__ = ["CpuMeter", "EngineCounters", "engine_counters", "engine_view", "load_average"]
