"""Any upstream speaking OpenAI's `POST {base_url}/embeddings`: OpenAI itself, vLLM, TEI, Infinity,
or another instance of this gateway (a GPU host serving its local models).

Texts go as plain strings. With images enabled (`modalities`), images go in this gateway's
extended schema, `{"image": "data:<mime>;base64,..."}`, and, with `fuses_parts`, an interleaved
item as `{"content": [{"text": ...}, {"image": ...}]}`. Query / document reaches the upstream as a
body field (`input_type_field`, e.g. `input_type` for this gateway) or as a text prefix
(`query_prefix` / `document_prefix`, e.g. "query: " for e5 models on TEI or vLLM).
Without `dimensions`, `load()` learns the dimension with one probe call. Vectors are asked for as
base64 (`encoding_format`), as the openai SDK does by default; an answer in floats is read as well.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping, Sequence
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, model_validator

from providers.base import (
    EmbedOptions,
    Image,
    InputType,
    Item,
    ModelLoadError,
    ProviderError,
    ProviderInfo,
    Text,
    Usage,
)
from providers.http import TEXT_ONLY, HttpOptions, HttpProvider, Probe, usage_int

OPENAI_HOST = "api.openai.com"


class OpenAICompatOptions(HttpOptions):
    """An OpenAI-compatible deployment (`provider: openai_compatible`, or `openai`)."""

    base_url: str = Field(default="https://api.openai.com/v1", description="Up to and including `/v1`.")
    max_request_tokens: int | None = Field(default=300_000, ge=1, description="OpenAI's cap per request.")
    fuses_parts: bool = Field(default=False, description="The upstream fuses interleaved items (this gateway).")
    send_dimensions: bool = Field(default=False, description="Ask the upstream for `dimensions` (Matryoshka).")
    encoding_format: Literal["base64", "float"] = Field(
        default="base64",
        description="How vectors come back: base64 float32 (the openai SDK's own default, so any server that "
        "works with the SDK takes it) is exact and ~3x cheaper to read than float JSON.",
    )
    input_type_field: str | None = Field(default=None, description="Body field for query/document, e.g. input_type.")
    query_prefix: str | None = Field(default=None, description="Prepended to query texts, e.g. 'query: '.")
    document_prefix: str | None = Field(default=None, description="Prepended to document texts, e.g. 'passage: '.")

    @model_validator(mode="after")
    def _consistent(self) -> OpenAICompatOptions:
        if self.send_dimensions and self.dimensions is None:
            raise ValueError("send_dimensions needs `dimensions`")
        if self.input_type_field and (self.query_prefix or self.document_prefix):
            raise ValueError("use input_type_field or query/document prefixes, not both")
        return self


def data_uri(image: Image) -> str:
    return f"data:{image.mime};base64,{base64.b64encode(image.data).decode('ascii')}"


class OpenAICompatWire:
    """OpenAI's request body, this gateway's image items, and OpenAI's usage."""

    path = "/embeddings"

    def __init__(self, options: OpenAICompatOptions, name: str) -> None:
        self.options = options
        self.name = name
        on_openai = urlsplit(options.base_url).hostname == OPENAI_HOST
        self.key_env: str | None = "OPENAI_API_KEY" if on_openai else None
        self.prefixes = {InputType.QUERY: options.query_prefix, InputType.DOCUMENT: options.document_prefix}

    def describe(self, probe: Probe) -> ProviderInfo:
        options = self.options
        dimension = options.dimensions
        if dimension is None:
            try:
                dimension = int(probe(self.body(["probe"], EmbedOptions()), 1).shape[1])
            except ProviderError as exc:
                raise ModelLoadError(f"{exc}; set `dimensions` to start without asking the upstream") from None
        space = f"openai-compatible:{options.model}"
        if options.send_dimensions:
            space += f"|dimensions={dimension}"
        if options.query_prefix or options.document_prefix:
            prefixes = f"{options.query_prefix or ''}\0{options.document_prefix or ''}".encode()
            space += f"|prefixes={hashlib.sha256(prefixes).hexdigest()[:12]}"
        return ProviderInfo(
            modalities=frozenset(options.modalities) if options.modalities else TEXT_ONLY,
            dimension=dimension,
            max_batch_size=options.max_batch_size,
            space=space,
            fuses_parts=options.fuses_parts,
        )

    def fragment(self, item: Item, index: int, options: EmbedOptions) -> Any:
        """A string, `{"image": uri}`, or `{"content": [...]}`; a prefix goes before the first text."""
        prefix = (self.prefixes[options.input_type] if options.input_type else None) or ""
        parts: list[dict[str, str]] = []
        for part in item.parts:
            if isinstance(part, Text):
                parts.append({"text": prefix + part.text})
                prefix = ""
            else:
                parts.append({"image": data_uri(part)})
        if len(parts) > 1:
            return {"content": parts}
        return parts[0].get("text", parts[0])

    def body(self, fragments: Sequence[Any], options: EmbedOptions) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.options.model,
            "input": list(fragments),
            "encoding_format": self.options.encoding_format,
        }
        if self.options.send_dimensions:
            body["dimensions"] = self.options.dimensions
        if self.options.input_type_field and options.input_type is not None:
            body[self.options.input_type_field] = options.input_type.value
        return body

    def usage(self, payload: Mapping[str, Any]) -> tuple[Usage, int]:
        """`usage.total_tokens` (else `prompt_tokens`); some servers send none, which bills nothing."""
        usage = payload.get("usage")
        total = usage_int(usage, "total_tokens", self.name, required=False) or usage_int(
            usage, "prompt_tokens", self.name, required=False
        )
        return Usage(billed_tokens=total), total


def from_options(options: dict[str, Any], *, name: str) -> HttpProvider:
    """The `openai_compatible` (alias `openai`) provider kind."""
    parsed = OpenAICompatOptions.model_validate(options)
    return HttpProvider(OpenAICompatWire(parsed, name), parsed, name=name)
