"""Where bulk items come from: folders, JSONL, CSV and Parquet, as entries with ids.

An `Entry` is cheap to list (an id, where it came from, a loader); its content is read only when
its batch is about to be sent, on a worker thread, so a run over 200,000 files holds a few batches
in memory. A loader raises `BadInput(reason)` for anything that must be skipped and reported (an
unreadable file, a non-image, a file over the size limit, a malformed JSONL line); listing never
fails on one bad file.

The content hash is the content block of the cache key (`gateway/cache.py: item_key`): sha256 over,
per part in order, `t` + sha256(UTF-8 text) or `i` + sha256(image bytes). It is None when the client
cannot know the content: an image the gateway fetches from a URL, or token ids it decodes.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import json
import os
import stat
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.config import LimitSettings
from gateway.content import content_hash, image_digest, text_digest
from gateway.errors import InvalidRequest
from gateway.images import decode_inline, probe_image
from gateway.inputs import parse_input
from providers.base import Modality

IMAGE_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".webp": "image/webp",
    ".gif": "image/gif",
    ".bmp": "image/bmp",
}
TEXT_SUFFIXES = {".txt", ".md", ".text"}
JSONL_SUFFIXES = {".jsonl", ".ndjson"}
DEFAULT_MAX_FILE_BYTES = 20 * 1024 * 1024  # the gateway's default `limits.max_image_bytes`
# Shape checks only: the gateway's own limits are the ones that count, and it names them.
SHAPE_ONLY = LimitSettings(
    max_text_chars=2**62,
    max_request_text_chars=2**62,
    max_token_ids=2**62,
    max_request_token_ids=2**62,
    max_images=2**62,
    max_parts_per_item=2**62,
)


class BadInput(Exception):
    """An item that cannot be sent; `reason` says why, for the report."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Prepared:
    """One element of a request's `input` (JSON-ready) and its content hash."""

    element: Any
    content_hash: str | None


@dataclass(frozen=True, slots=True)
class Entry:
    """An item to embed: its output id, where it came from (for reports), and how to read it."""

    id: str
    origin: str
    load: Callable[[], Prepared]


@dataclass(frozen=True, slots=True)
class SourceOptions:
    """How tabular sources name their column and ids, and the largest file a folder item may be."""

    column: str = "text"
    id_column: str = "id"
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES


def read_file(path: Path, max_bytes: int) -> bytes:
    """A regular file's bytes, at most `max_bytes`; anything else is a `BadInput` naming why."""
    try:
        info = path.stat()  # before open: opening a FIFO would block
        if not stat.S_ISREG(info.st_mode):
            raise BadInput("not a regular file")
        if info.st_size > max_bytes:
            raise BadInput(f"too large: {info.st_size} bytes, over the limit of {max_bytes} (--max-file-bytes)")
        with path.open("rb") as file:
            data = file.read(max_bytes + 1)
    except OSError as exc:
        raise BadInput(f"unreadable: {exc.strerror or exc}") from exc
    if len(data) > max_bytes:
        raise BadInput(f"too large: over the limit of {max_bytes} bytes (--max-file-bytes)")
    if not data:
        raise BadInput("empty file")
    return data


def load_image_file(path: Path, max_bytes: int) -> Prepared:
    """An image file as a data URI of its exact bytes (so the gateway hashes those), header checked."""
    data = read_file(path, max_bytes)
    try:
        probe_image(data, param="file")
    except InvalidRequest as exc:
        raise BadInput(f"not an image: {exc.message.removeprefix('file ')}") from exc
    uri = f"data:{IMAGE_TYPES[path.suffix.lower()]};base64,{base64.b64encode(data).decode()}"
    return Prepared({"image": uri}, content_hash([image_digest(hashlib.sha256(data).hexdigest())]))


def load_text_file(path: Path, max_bytes: int) -> Prepared:
    data = read_file(path, max_bytes)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadInput(f"not UTF-8 text: {exc.reason} at byte {exc.start}") from exc
    if not text.strip():
        raise BadInput("empty text")
    return Prepared(text, content_hash([text_digest(text)]))


def element_hash(element: Any) -> str | None:
    """Check one `input` element's shape as the gateway would, and hash its content."""
    try:
        (spec,) = parse_input([element], limits=SHAPE_ONLY)
    except InvalidRequest as exc:
        raise BadInput(exc.message.replace("input[0]", "the item")) from exc
    digests: list[bytes] = []
    for part in spec.parts:
        if isinstance(part.value, list):
            return None  # token ids: the gateway decodes them
        if part.modality is Modality.TEXT:
            digests.append(text_digest(part.value))
        elif part.value.startswith(("http://", "https://")):
            return None  # fetched by the gateway: its bytes are unknown here
        else:
            try:
                digests.append(image_digest(hashlib.sha256(decode_inline(part.value, param="image")).hexdigest()))
            except InvalidRequest as exc:
                raise BadInput(exc.message) from exc
    return content_hash(digests)


def _element(element: Any) -> Callable[[], Prepared]:
    return lambda: Prepared(element, element_hash(element))


def _bad(reason: str) -> Callable[[], Prepared]:
    def load() -> Prepared:
        raise BadInput(reason)

    return load


def file_entry(path: Path, options: SourceOptions) -> Entry:
    suffix = path.suffix.lower()
    if suffix in IMAGE_TYPES:
        return Entry(str(path), str(path), lambda: load_image_file(path, options.max_file_bytes))
    return Entry(str(path), str(path), lambda: load_text_file(path, options.max_file_bytes))


def folder_files(root: Path) -> Iterator[Path]:
    """Image and text files under `root`, recursively, in a stable order; symlinked folders not followed."""
    for directory, folders, files in os.walk(root):
        folders.sort()
        for name in sorted(files):
            suffix = Path(name).suffix.lower()
            if suffix in IMAGE_TYPES or suffix in TEXT_SUFFIXES:
                yield Path(directory) / name


def jsonl_entries(path: Path) -> Iterator[Entry]:
    """One item per line: `{"id": ..., "input": <element>}` or the element itself with an `id` field
    (`{"id": "a", "text": ...}`, `{"id": "b", "image": ...}`, `{"id": "c", "content": [...]}`).
    A line without an id is named `path#line`."""
    with path.open(encoding="utf-8", errors="replace") as file:
        for number, line in enumerate(file, 1):
            if not line.strip():
                continue
            origin = f"{path}#{number}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                yield Entry(origin, origin, _bad(f"not JSON: {exc.msg} at column {exc.colno}"))
                continue
            if not isinstance(obj, dict):
                yield Entry(origin, origin, _bad("a line must be a JSON object with an `id`"))
                continue
            item_id = str(obj.pop("id", origin))
            element = obj["input"] if set(obj) == {"input"} else obj
            yield Entry(item_id, origin, _element(element))


def _text_entry(path: Path, row: int, item_id: Any, text: Any) -> Entry:
    origin = f"{path}#{row}"
    item_id = origin if item_id is None or item_id == "" else str(item_id)
    if not isinstance(text, str):
        return Entry(item_id, origin, _bad("the text column is empty" if text is None else "not text"))
    return Entry(item_id, origin, _element(text))


def csv_entries(path: Path, options: SourceOptions) -> Iterator[Entry]:
    with path.open(newline="", encoding="utf-8") as file:
        reader = csv.DictReader(file)
        if reader.fieldnames is None or options.column not in reader.fieldnames:
            raise ValueError(f"{path} has no column {options.column!r} (--column); it has {reader.fieldnames}")
        for row, record in enumerate(reader, 1):
            yield _text_entry(path, row, record.get(options.id_column), record[options.column])


def parquet_entries(path: Path, options: SourceOptions) -> Iterator[Entry]:
    import pyarrow.parquet as pq

    file = pq.ParquetFile(path)
    names = file.schema_arrow.names
    if options.column not in names:
        raise ValueError(f"{path} has no column {options.column!r} (--column); it has {names}")
    columns = [options.column] + ([options.id_column] if options.id_column in names else [])
    row = 0
    for batch in file.iter_batches(columns=columns, batch_size=4096):
        texts = batch.column(options.column).to_pylist()
        ids = batch.column(options.id_column).to_pylist() if len(columns) == 2 else [None] * len(texts)
        for item_id, text in zip(ids, texts, strict=True):
            row += 1
            yield _text_entry(path, row, item_id, text)


def entries(paths: Sequence[Path], options: SourceOptions) -> Iterator[Entry]:
    """Every entry of every path, in order. Raises ValueError up front for a path of no known kind."""
    for path in paths:
        suffix = path.suffix.lower()
        if path.is_dir():
            yield from (file_entry(p, options) for p in folder_files(path))
        elif suffix in JSONL_SUFFIXES:
            yield from jsonl_entries(path)
        elif suffix == ".csv":
            yield from csv_entries(path, options)
        elif suffix == ".parquet":
            yield from parquet_entries(path, options)
        else:
            yield file_entry(path, options)


def check_paths(paths: Sequence[Path]) -> None:
    """Refuse, before any work, a path that does not exist or whose kind is unknown."""
    known = {*IMAGE_TYPES, *TEXT_SUFFIXES, *JSONL_SUFFIXES, ".csv", ".parquet"}
    for path in paths:
        if not path.exists():
            raise ValueError(f"{path} does not exist")
        if not path.is_dir() and path.suffix.lower() not in known:
            raise ValueError(f"{path}: unknown kind; give a folder or a {', '.join(sorted(known))} file")


def count(paths: Sequence[Path]) -> int:
    """How many entries `entries` will list (for the progress bar's total and ETA); cheap: no content read."""
    total = 0
    for path in paths:
        suffix = path.suffix.lower()
        if path.is_dir():
            total += sum(1 for _ in folder_files(path))
        elif suffix in JSONL_SUFFIXES:
            with path.open("rb") as file:
                total += sum(1 for line in file if line.strip())
        elif suffix == ".csv":
            with path.open(newline="", encoding="utf-8") as file:
                total += max(sum(1 for _ in csv.reader(file)) - 1, 0)
        elif suffix == ".parquet":
            import pyarrow.parquet as pq

            total += pq.ParquetFile(path).metadata.num_rows
        else:
            total += 1
    return total
