"""Response bodies in the OpenAI shape, float lists or base64 of little-endian float32."""

from __future__ import annotations

import base64
from typing import Any

import msgspec
import numpy as np

from gateway.service import Embeddings


def embedding_body(result: Embeddings, encoding_format: str) -> bytes:
    """`{"object": "list", "data": [...], "model", "usage"}` as JSON bytes."""
    rows: list[Any]
    if encoding_format == "base64":
        little_endian = np.ascontiguousarray(result.vectors, dtype="<f4")
        rows = [base64.b64encode(row.tobytes()).decode("ascii") for row in little_endian]
    else:
        rows = result.vectors.astype(np.float32).tolist()
    body = {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": row} for i, row in enumerate(rows)],
        "model": result.model,
        "usage": {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens},
    }
    return msgspec.json.encode(body)
