"""The request body: OpenAI's `CreateEmbeddingRequest` plus `input_type` / `task`.

`input` stays untyped here; `gateway.inputs` walks it so that errors can name the exact
element (`input[3].image_url.url`), which a union schema cannot.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError

from gateway.errors import InvalidRequest, UnsupportedMediaType
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
                    f"input_type must be one of {sorted(INPUT_TYPES)}, got {self.input_type!r}",
                    param="input_type",
                    code="invalid_value",
                )
            chosen = INPUT_TYPES[self.input_type]
        if self.task is not None:
            if self.task not in JINA_TASKS:
                raise InvalidRequest(
                    f"task must be one of {sorted(JINA_TASKS)}, got {self.task!r}", param="task", code="invalid_value"
                )
            if chosen is not None and chosen is not JINA_TASKS[self.task]:
                raise InvalidRequest("input_type and task disagree", param="task", code="invalid_value")
            chosen = JINA_TASKS[self.task]
        return chosen


def parse_request(body: bytes, content_type: str) -> EmbeddingRequest:
    """Bytes and content type to a validated request, or the matching OpenAI-shaped error."""
    media_type = content_type.split(";", maxsplit=1)[0].strip().lower()
    if media_type != "application/json":
        raise UnsupportedMediaType(
            f"Content-Type must be application/json, got {media_type or 'nothing'!r}", code="unsupported_media_type"
        )
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"The request body is not valid JSON: {exc}", code="invalid_json") from exc
    if not isinstance(payload, dict):
        raise InvalidRequest("The request body must be a JSON object", code="invalid_json")
    try:
        return EmbeddingRequest.model_validate(payload)
    except ValidationError as exc:
        raise _translate(exc) from exc


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
            f"encoding_format must be 'float' or 'base64', got {error.get('input')!r}",
            param=param,
            code="invalid_encoding_format",
        )
    return InvalidRequest(f"Invalid value for '{param}': {error['msg']}", param=param, code="invalid_value")
