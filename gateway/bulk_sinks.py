"""Where bulk vectors go: JSONL or a Parquet dataset, both readable after a kill, both resumable.

- JSONL: one object per line, appended and fsynced per batch. On resume a torn last line (a kill
  mid-write) is cut off before appending, so the file stays one object per line.
- Parquet: a file cannot be appended to, and a killed `ParquetWriter` leaves no footer (unreadable).
  So the output is a dataset directory of part files, each written under a temporary name, fsynced
  and renamed: a part is whole or absent. `pyarrow.dataset.dataset(dir)` or `pandas.read_parquet(dir)`
  reads them as one table. Rows are buffered up to `flush_rows` (or `flush_s`) per part, so a kill
  loses at most that many; a clean stop (end, Ctrl-C) writes the buffer.

Both carry the columns id, content_hash, model, dimension, embedding (float32).
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt

PART = re.compile(r"^part-(\d{6})\.parquet$")


@dataclass(frozen=True, slots=True)
class Row:
    """One output row."""

    id: str
    content_hash: str | None
    model: str
    embedding: npt.NDArray[np.float32]


@dataclass(slots=True)
class Existing:
    """What an output already holds: the ids to skip and the models they were embedded with."""

    ids: set[str] = field(default_factory=set)
    models: set[str] = field(default_factory=set)


class Sink(Protocol):
    """An output that can say what it holds, take rows, make them durable and close."""

    def existing(self) -> Existing: ...
    def write(self, rows: Sequence[Row]) -> None: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class JsonlSink:
    """Appends one JSON object per row; every `write` is flushed and fsynced before it returns."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def existing(self) -> Existing:
        """The rows already written; cuts a torn last line off the file."""
        found = Existing()
        if not self.path.exists():
            return found
        good = 0
        with self.path.open("rb") as file:
            for line in file:
                if not line.endswith(b"\n"):
                    break
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError:
                    break
                found.ids.add(str(obj["id"]))
                found.models.add(str(obj["model"]))
                good += len(line)
        if good < self.path.stat().st_size:
            os.truncate(self.path, good)
        return found

    def write(self, rows: Sequence[Row]) -> None:
        lines = "".join(
            json.dumps(
                {
                    "id": row.id,
                    "content_hash": row.content_hash,
                    "model": row.model,
                    "dimension": len(row.embedding),
                    "embedding": row.embedding.tolist(),
                },
                separators=(",", ":"),
            )
            + "\n"
            for row in rows
        ).encode()
        with self._lock, self.path.open("ab") as file:
            file.write(lines)
            file.flush()
            os.fsync(file.fileno())

    def flush(self) -> None:
        """Every write is already durable."""

    def close(self) -> None:
        """Nothing is held open between writes."""


class ParquetSink:
    """A dataset directory of atomically renamed part files."""

    def __init__(self, path: Path, *, flush_rows: int = 2048, flush_s: float = 10.0) -> None:
        self.path = path
        self.flush_rows = flush_rows
        self.flush_s = flush_s
        self._buffer: list[Row] = []
        self._lock = threading.Lock()
        self._next = 0
        self._last_flush = time.monotonic()

    def existing(self) -> Existing:
        """The ids and models of every whole part; leftovers of a killed write are removed."""
        import pyarrow.parquet as pq

        found = Existing()
        if self.path.exists() and not self.path.is_dir():
            raise ValueError(f"{self.path} is a file; a Parquet output is a dataset directory")
        self.path.mkdir(parents=True, exist_ok=True)
        for leftover in self.path.glob(".part-*.tmp"):
            leftover.unlink()
        for part in sorted(self.path.iterdir()):
            match = PART.match(part.name)
            if match is None:
                continue
            self._next = max(self._next, int(match.group(1)) + 1)
            table = pq.read_table(part, columns=["id", "model"])
            found.ids.update(str(i) for i in table.column("id").to_pylist())
            found.models.update(str(m) for m in table.column("model").unique().to_pylist())
        return found

    def write(self, rows: Sequence[Row]) -> None:
        with self._lock:
            self._buffer.extend(rows)
            due = time.monotonic() - self._last_flush >= self.flush_s
            if len(self._buffer) >= self.flush_rows or due:
                self._write_part()

    def flush(self) -> None:
        with self._lock:
            self._write_part()

    def close(self) -> None:
        self.flush()

    def _write_part(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self._last_flush = time.monotonic()
        if not self._buffer:
            return
        rows, self._buffer = self._buffer, []
        flat = np.concatenate([row.embedding for row in rows]).astype(np.float32, copy=False)
        offsets = np.zeros(len(rows) + 1, dtype=np.int32)
        np.cumsum([len(row.embedding) for row in rows], out=offsets[1:])
        table = pa.table(
            {
                "id": pa.array([row.id for row in rows], pa.string()),
                "content_hash": pa.array([row.content_hash for row in rows], pa.string()),
                "model": pa.array([row.model for row in rows], pa.string()),
                "dimension": pa.array([len(row.embedding) for row in rows], pa.int32()),
                "embedding": pa.ListArray.from_arrays(offsets.tolist(), pa.array(flat, type=pa.float32())),
            }
        )
        name = f"part-{self._next:06d}.parquet"
        self._next += 1
        temporary = self.path / f".{name}.tmp"
        with temporary.open("wb") as file:
            pq.write_table(table, file)
            file.flush()
            os.fsync(file.fileno())
        temporary.replace(self.path / name)
        _fsync_dir(self.path)


def open_sink(path: Path, kind: str | None, *, flush_rows: int = 2048, flush_s: float = 10.0) -> Sink:
    """JSONL for `.jsonl`/`.ndjson` (or kind 'jsonl'), else a Parquet dataset directory."""
    chosen = kind or ("jsonl" if path.suffix.lower() in {".jsonl", ".ndjson"} else "parquet")
    if chosen == "jsonl":
        return JsonlSink(path)
    return ParquetSink(path, flush_rows=flush_rows, flush_s=flush_s)


def read_output(path: Path) -> list[dict[str, object]]:
    """Every row of an output (JSONL or a Parquet dataset), for checks and tests."""
    if path.is_dir():
        import pyarrow.dataset as ds

        return list(ds.dataset(path, format="parquet").to_table().to_pylist())
    with path.open("rb") as file:
        return [json.loads(line) for line in file if line.endswith(b"\n")]
