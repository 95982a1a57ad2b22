"""Response bodies in the OpenAI shape, float lists or base64 of little-endian float32.

Floats are written by orjson straight from the float32 rows, in float32's shortest form (what
OpenAI's own answers look like: `0.0023064255`, not the 17 digits of the float64 it widens to).
Each number parses back to exactly the stored float32, the body is ~40% smaller, and encoding
skips building 8-byte Python floats: 32 rows of 256 take ~0.13 ms instead of ~0.4 ms.
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
import orjson

from gateway.service import Embeddings


def embedding_body(result: Embeddings, encoding_format: str) -> bytes:
    """`{"object": "list", "data": [...], "model", "usage"}` as JSON bytes."""
    rows: Any
    if encoding_format == "base64":
        little_endian = np.ascontiguousarray(result.vectors, dtype="<f4")
        rows = [base64.b64encode(row.tobytes()).decode("ascii") for row in little_endian]
    else:  # rows of a C-contiguous native float32 matrix: orjson writes each one as it stands
        rows = np.ascontiguousarray(result.vectors, dtype=np.float32)
    body = {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": row} for i, row in enumerate(rows)],
        "model": result.model,
        "usage": {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens},
    }
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
