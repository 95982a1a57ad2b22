"""The request body: OpenAI's `CreateEmbeddingRequest` plus `input_type` / `task`.

`input` stays untyped here; `gateway.inputs` walks it so that errors can name the exact
element (`input[3].image_url.url`), which a union schema cannot.
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal

import msgspec
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError

from gateway.errors import InvalidRequest, UnsupportedMediaType, clip
from providers.base import InputType

INPUT_TYPES = {"query": InputType.QUERY, "document": InputType.DOCUMENT}
JINA_TASKS = {"retrieval.query": InputType.QUERY, "retrieval.passage": InputType.DOCUMENT}


class EmbeddingRequest(BaseModel):
    """`POST /v1/embeddings`. Unknown fields are refused, as OpenAI does."""

    model_config = ConfigDict(extra="forbid")

    input: Any = Field(description="string, string[], int[], int[][], or image / interleaved items")
    model: StrictStr
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: StrictInt | None = None
    user: StrictStr | None = None
    input_type: StrictStr | None = None
    task: StrictStr | None = None

    def resolved_input_type(self) -> InputType | None:
        """`input_type` (query/document) or Jina's `task` (retrieval.query/passage)."""
        chosen: InputType | None = None
        if self.input_type is not None:
            if self.input_type not in INPUT_TYPES:
                raise InvalidRequest(
                    f"input_type must be one of {sorted(INPUT_TYPES)}, got {clip(self.input_type)}",
                    param="input_type",
                    code="invalid_value",
                )
            chosen = INPUT_TYPES[self.input_type]
        if self.task is not None:
            if self.task not in JINA_TASKS:
                raise InvalidRequest(
                    f"task must be one of {sorted(JINA_TASKS)}, got {clip(self.task)}",
                    param="task",
                    code="invalid_value",
                )
            if chosen is not None and chosen is not JINA_TASKS[self.task]:
                raise InvalidRequest("input_type and task disagree", param="task", code="invalid_value")
            chosen = JINA_TASKS[self.task]
        return chosen


IDENTITY_ENCODINGS = {"", "identity"}
SURROGATE = re.compile("[\ud800-\udfff]")


def parse_request(body: bytes, content_type: str, content_encoding: str = "") -> EmbeddingRequest:
    """Bytes and headers to a validated request, or the matching OpenAI-shaped error.

    msgspec decodes (no recursion into Python for deep nesting, a clean error instead); a body
    msgspec refuses but `json` accepts holds a lone surrogate, whose element is then named.
    """
    media_type = content_type.split(";", maxsplit=1)[0].strip().lower()
    if media_type != "application/json":
        raise UnsupportedMediaType(
            f"Content-Type must be application/json, got {clip(media_type) if media_type else 'nothing'}",
            code="unsupported_media_type",
        )
    if content_encoding.strip().lower() not in IDENTITY_ENCODINGS:
        raise UnsupportedMediaType(
            f"Content-Encoding {clip(content_encoding)} is not supported; send the body uncompressed",
            code="unsupported_content_encoding",
        )
    payload = decode_json(body)
    if not isinstance(payload, dict):
        raise InvalidRequest("The request body must be a JSON object", code="invalid_json")
    try:
        return EmbeddingRequest.model_validate(payload)
    except ValidationError as exc:
        raise _translate(exc) from exc


def decode_json(body: bytes) -> Any:
    """JSON bytes to Python objects; too deep, malformed or non-UTF-8 bodies are the client's 400."""
    try:
        return msgspec.json.decode(body)
    except RecursionError:
        raise InvalidRequest("The request body is nested too deeply", code="invalid_json") from None
    except msgspec.DecodeError as exc:
        param = _lone_surrogate(body)
        if param is not None:
            raise InvalidRequest(
                f"{param} holds a lone UTF-16 surrogate, which is not text", param=param, code="invalid_input"
            ) from None
        raise InvalidRequest(f"The request body is not valid JSON: {exc}", code="invalid_json") from None


def _lone_surrogate(body: bytes) -> str | None:
    """The path of the first string holding a lone surrogate, if the body is otherwise valid JSON."""
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError):
        return None
    stack: list[tuple[str, Any]] = [("", payload)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, str) and SURROGATE.search(value):
            return path or None
        if isinstance(value, dict):
            for key, child in reversed(list(value.items())):
                stack.append((f"{path}.{key}" if path else str(key), child))
        elif isinstance(value, list):
            stack.extend((f"{path}[{i}]", child) for i, child in reversed(list(enumerate(value))))
    return None


def _translate(exc: ValidationError) -> InvalidRequest:
    error = exc.errors()[0]
    param = ".".join(str(p) for p in error["loc"]) or None
    if error["type"] == "extra_forbidden":
        return InvalidRequest(f"Unrecognized request argument supplied: {param}", param=param, code="unknown_parameter")
    if error["type"] == "missing":
        return InvalidRequest(
            f"You must provide the '{param}' parameter", param=param, code="missing_required_parameter"
        )
    if param == "encoding_format":
        return InvalidRequest(
            f"encoding_format must be 'float' or 'base64', got {clip(error.get('input'))}",
            param=param,
            code="invalid_encoding_format",
        )
    return InvalidRequest(f"Invalid value for '{param}': {error['msg']}", param=param, code="invalid_value")
