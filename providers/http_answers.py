"""Upstream answers: the OpenAI-shaped `data` list checked and turned into unit vectors, the usage
an API reports, and an upstream's token total shared among the items of a call."""

from __future__ import annotations

import base64
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import msgspec
import numpy as np

from providers.base import ProviderError, Usage, Vectors

SQUARES_LOW, SQUARES_HIGH = 1e-150, 1e150
"""Rows whose sum of squares lies between these (float64) are normalised directly, in one pass (the
usual answer); any other (NaN, infinite, zero, overflow, underflow) goes through the careful path."""


class _Entry(msgspec.Struct):
    embedding: bytes | list[float]  # bytes: msgspec decodes a base64 string itself, ~3x faster than binascii
    index: int | msgspec.UnsetType = msgspec.UNSET


class _Answer(msgspec.Struct):
    """The usual answer, decoded in one typed pass; anything else goes through the general reader."""

    data: list[_Entry]
    usage: Any = None


def read_answer(content: bytes, count: int, dimension: int | None, name: str) -> tuple[Any, Vectors]:
    """The answer's `usage` (as `{"usage": ...}`, what `Wire.usage` reads) and its checked vectors
    (blocking: big answers go to a thread)."""
    try:
        answer = msgspec.json.decode(content, type=_Answer)
    except msgspec.ValidationError:  # JSON of another shape: the general reader says what is wrong
        try:
            payload = msgspec.json.decode(content)
        except msgspec.DecodeError as exc:
            raise ProviderError(f"{name}: the upstream's answer is not JSON: {exc}") from None
        return payload, parse_embeddings(payload, count, dimension, name)
    except msgspec.DecodeError as exc:
        raise ProviderError(f"{name}: the upstream's answer is not JSON: {exc}") from None
    entries = [
        (position if entry.index is msgspec.UNSET else entry.index, entry.embedding)
        for position, entry in enumerate(answer.data)
    ]
    return {"usage": answer.usage}, _vectors(entries, count, dimension, name)


def parse_embeddings(payload: Any, count: int, dimension: int | None, name: str) -> Vectors:
    """The `data` of an OpenAI-shaped answer as L2-normalised float32 rows in input order (by
    `index`); anything short of `count` finite, non-zero vectors of `dimension` is a ProviderError."""
    data = payload.get("data") if isinstance(payload, dict) else None
    if not isinstance(data, list):
        raise ProviderError(f"{name}: the upstream's answer has no `data` list")
    entries = [
        (entry.get("index", position), entry.get("embedding")) if isinstance(entry, dict) else (None, None)
        for position, entry in enumerate(data)
    ]
    return _vectors(entries, count, dimension, name)


def _vectors(entries: Sequence[tuple[Any, Any]], count: int, dimension: int | None, name: str) -> Vectors:
    """(index, embedding) pairs, embeddings as number lists, base64 strings or their bytes, checked."""
    if len(entries) != count:
        raise ProviderError(f"{name}: the upstream returned {len(entries)} vectors for {count} inputs")
    rows: list[Any] = [None] * count
    for position, (index, embedding) in enumerate(entries):
        if type(index) is not int or not 0 <= index < count or rows[index] is not None:
            raise ProviderError(f"{name}: the upstream's data[{position}] has a missing, bad or repeated index")
        rows[index] = _row(embedding)
    if count == 1 and isinstance(rows[0], np.ndarray) and rows[0].shape[0] == (dimension or rows[0].shape[0]):
        single = _single(rows[0])  # one base64 vector, the usual single miss: three numpy calls, not ten
        if single is not None:
            return single
    try:
        matrix = np.array(rows, dtype=np.float64)  # float64 first: a float32 cast of a big value would overflow
    except (ValueError, TypeError):
        raise ProviderError(f"{name}: the upstream's embeddings are not lists of numbers of one length") from None
    if matrix.ndim != 2 or matrix.shape[1] == 0:
        raise ProviderError(f"{name}: the upstream's embeddings are not lists of numbers")
    if dimension is not None and matrix.shape[1] != dimension:
        raise ProviderError(f"{name}: the upstream returned {matrix.shape[1]} dimensions, expected {dimension}")
    squares = np.einsum("ij,ij->i", matrix, matrix)
    if squares.min() > SQUARES_LOW and squares.max() < SQUARES_HIGH:  # false for NaN: checked below
        fast: Vectors = (matrix / np.sqrt(squares)[:, None]).astype(np.float32)
        return fast
    return _normalise_carefully(matrix, name)


def _single(row: np.ndarray) -> Vectors | None:
    """One float32 row normalised, or None when its sum of squares is out of range (NaN, zero,
    overflow: the general path explains it)."""
    wide = row.astype(np.float64)  # a float32 sum of squares could overflow
    square = float(wide @ wide)
    if not SQUARES_LOW < square < SQUARES_HIGH or row.shape[0] == 0:
        return None
    return cast(Vectors, (row / np.float32(math.sqrt(square))).reshape(1, -1))  # float32 / float32


def _row(embedding: Any) -> Any:
    """A base64 string (`encoding_format: base64`) or its bytes as little-endian float32; a number
    list as it is; None for base64 that is not whole float32s (the matrix check then refuses it)."""
    try:
        if isinstance(embedding, str):
            embedding = base64.b64decode(embedding, validate=True)
        if isinstance(embedding, bytes):
            return np.frombuffer(embedding, dtype="<f4")
    except ValueError:
        return None
    return embedding


def _normalise_carefully(matrix: np.ndarray, name: str) -> Vectors:
    """Rows whose squares sum out of range: NaN, infinite, zero, or values so large or small that
    their squares overflow or underflow; each row scaled by its peak first."""
    if not np.isfinite(matrix).all():
        raise ProviderError(f"{name}: the upstream returned NaN or infinite values")
    peaks = np.abs(matrix).max(axis=1, keepdims=True)
    if (peaks == 0).any():
        raise ProviderError(f"{name}: the upstream returned a zero vector")
    scaled = matrix / peaks  # no square can overflow now
    normalised: Vectors = (scaled / np.linalg.norm(scaled, axis=1, keepdims=True)).astype(np.float32)
    return normalised


def usage_int(usage: Any, key: str, name: str, *, required: bool = True) -> int:
    """`usage[key]` as a non-negative int; a missing one is 0 unless `required`."""
    value = usage.get(key) if isinstance(usage, dict) else None
    if value is None and not required:
        return 0
    if type(value) is not int or value < 0:
        raise ProviderError(f"{name}: the upstream's answer has no valid `usage.{key}`")
    return value


def apportion(total: int, weights: Sequence[float]) -> tuple[int, ...]:
    """Split `total` over `weights` in proportion, in whole numbers summing to exactly `total`."""
    if len(weights) <= 1:
        return (total,) if weights else ()
    weight_sum = sum(weights)
    shares = [total * w / weight_sum for w in weights] if weight_sum > 0 else [total / len(weights)] * len(weights)
    floors = [math.floor(s) for s in shares]
    by_remainder = sorted(range(len(shares)), key=lambda i: floors[i] - shares[i])
    for i in by_remainder[: total - sum(floors)]:
        floors[i] += 1
    return tuple(floors)


@dataclass(frozen=True, slots=True)
class Answer:
    """The outcome of one batch (one or, after bisection, several calls)."""

    vectors: Vectors
    item_tokens: tuple[int, ...]
    usage: Usage

    def __add__(self, other: Answer) -> Answer:
        return Answer(
            np.concatenate([self.vectors, other.vectors]),
            self.item_tokens + other.item_tokens,
            self.usage + other.usage,
        )
