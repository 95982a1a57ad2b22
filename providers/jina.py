"""Jina's embeddings API (`POST /v1/embeddings`): jina-clip-v2, jina-embeddings-v3 / v4.

Texts go as `{"text": ...}`, images as `{"image": <bare base64 of the exact bytes the gateway
hashed>}`, never a URL. Jina embeds one text or one image per input (no fused items). Query or
document becomes `task` (`retrieval.query` / `retrieval.passage`).
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import Field

from providers.base import EmbedOptions, InputType, Item, ProviderInfo, Text, Usage
from providers.http import (
    TEXT_AND_IMAGE,
    TEXT_ONLY,
    HttpOptions,
    HttpProvider,
    ModelSpec,
    Probe,
    info_from_table,
    usage_int,
)

MODELS = {
    "jina-clip-v1": ModelSpec(768, TEXT_AND_IMAGE),
    "jina-clip-v2": ModelSpec(1024, TEXT_AND_IMAGE, flexible=True),
    "jina-embeddings-v2-base-en": ModelSpec(768),
    "jina-embeddings-v3": ModelSpec(1024, TEXT_ONLY, flexible=True),
    "jina-embeddings-v4": ModelSpec(2048, TEXT_AND_IMAGE, flexible=True),
}
TASKS = {InputType.QUERY: "retrieval.query", InputType.DOCUMENT: "retrieval.passage"}


class JinaOptions(HttpOptions):
    """A Jina deployment (`provider: jina`)."""

    base_url: str = "https://api.jina.ai"
    max_batch_size: int = Field(default=2048, ge=1, le=2048, description="Jina takes 2048 inputs per call.")
    image_pixels_per_token: float = Field(
        default=512 * 512 / 4000, gt=0, description="jina-clip-v2 bills 4000 tokens per 512x512 tile."
    )
    default_task: str | None = Field(default=None, description="`task` when a request names no input_type.")
    truncate: bool = Field(default=False, description="Let Jina cut over-long texts instead of refusing them.")


class JinaWire:
    """Jina's request body and usage."""

    path = "/v1/embeddings"
    key_env: str | None = "JINA_API_KEY"

    def __init__(self, options: JinaOptions, name: str) -> None:
        self.options = options
        self.name = name
        self.spec = MODELS.get(options.model)
        self.dimension = 0

    def describe(self, probe: Probe) -> ProviderInfo:
        info = info_from_table("jina", self.spec, self.options, self.name)
        self.dimension = info.dimension
        return info

    def fragment(self, item: Item, index: int, options: EmbedOptions) -> Any:
        part = item.parts[0]
        if isinstance(part, Text):
            return {"text": part.text}
        return {"image": base64.b64encode(part.data).decode("ascii")}

    def body(self, fragments: Sequence[Any], options: EmbedOptions) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.options.model,
            "input": list(fragments),
            "normalized": True,
            "embedding_type": "float",
            "truncate": self.options.truncate,
        }
        if self.spec is None or self.spec.flexible:
            body["dimensions"] = self.dimension
        task = TASKS[options.input_type] if options.input_type else self.options.default_task
        if task is not None:
            body["task"] = task
        return body

    def usage(self, payload: Mapping[str, Any]) -> tuple[Usage, int]:
        """Jina bills `usage.total_tokens`, image tokens included."""
        total = usage_int(payload.get("usage"), "total_tokens", self.name)
        return Usage(billed_tokens=total), total


def from_options(options: dict[str, Any], *, name: str) -> HttpProvider:
    """The `jina` provider kind."""
    parsed = JinaOptions.model_validate(options)
    return HttpProvider(JinaWire(parsed, name), parsed, name=name)
