"""Voyage AI: multimodal models on `POST /v1/multimodalembeddings`, text models on `/v1/embeddings`.

An interleaved item is one multimodal input with several content parts, which Voyage fuses
into one vector. Images always go as `image_base64` data URLs (a request must not mix them with
`image_url`). Voyage takes png, jpeg, webp and gif: those go as the exact bytes the gateway
hashed; any other type (bmp, tiff, ...) goes as a lossless PNG of the decoded pixels.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import Field, model_validator

from providers.base import EmbedOptions, Image, InputRejected, Item, ProviderInfo, Text, Usage
from providers.http import (
    TEXT_AND_IMAGE,
    HttpOptions,
    HttpProvider,
    ModelSpec,
    Probe,
    info_from_table,
    usage_int,
)

MAX_IMAGE_PIXELS = 16_000_000
MAX_IMAGE_BYTES = 20 * 1024 * 1024
SENT_AS_IS = frozenset({"image/png", "image/jpeg", "image/webp", "image/gif"})
MULTIMODAL = "voyage-multimodal-"

MODELS = {
    "voyage-multimodal-3": ModelSpec(1024, TEXT_AND_IMAGE, fuses_parts=True, max_request_tokens=320_000),
    "voyage-multimodal-3.5": ModelSpec(
        1024, TEXT_AND_IMAGE, fuses_parts=True, flexible=True, max_request_tokens=320_000
    ),
    "voyage-4-large": ModelSpec(1024, flexible=True, max_request_tokens=120_000),
    "voyage-4": ModelSpec(1024, flexible=True, max_request_tokens=320_000),
    "voyage-4-lite": ModelSpec(1024, flexible=True, max_request_tokens=1_000_000),
    "voyage-3-large": ModelSpec(1024, flexible=True, max_request_tokens=120_000),
    "voyage-3.5": ModelSpec(1024, flexible=True, max_request_tokens=320_000),
    "voyage-3.5-lite": ModelSpec(1024, flexible=True, max_request_tokens=1_000_000),
    "voyage-code-3": ModelSpec(1024, flexible=True, max_request_tokens=120_000),
    "voyage-3": ModelSpec(1024, max_request_tokens=320_000),
    "voyage-3-lite": ModelSpec(512, max_request_tokens=1_000_000),
    "voyage-finance-2": ModelSpec(1024, max_request_tokens=120_000),
    "voyage-law-2": ModelSpec(1024, max_request_tokens=120_000),
    "voyage-multilingual-2": ModelSpec(1024, max_request_tokens=120_000),
    "voyage-code-2": ModelSpec(1536, max_request_tokens=120_000),
}


class VoyageOptions(HttpOptions):
    """A Voyage deployment (`provider: voyage`)."""

    base_url: str = "https://api.voyageai.com"
    max_batch_size: int = Field(default=1000, ge=1, le=1000, description="Voyage takes 1000 inputs per call.")
    truncation: bool = Field(default=False, description="Let Voyage cut over-long inputs instead of refusing them.")

    @model_validator(mode="after")
    def _model_token_cap(self) -> VoyageOptions:
        """The model's documented tokens per request, unless set (unknown models: 120k, the lowest)."""
        if self.max_request_tokens is None:
            spec = MODELS.get(self.model)
            self.max_request_tokens = spec.max_request_tokens if spec else 120_000
        return self


def image_part(image: Image, index: int, position: int, name: str) -> dict[str, str]:
    """An `image_base64` content part, or InputRejected for an image over Voyage's limits."""
    width, height = image.pixels.size
    if width * height > MAX_IMAGE_PIXELS:
        raise InputRejected(
            f"{name}: a {width}x{height} image is over Voyage's {MAX_IMAGE_PIXELS} pixels", index, position
        )
    mime, data = image.mime, image.data
    if mime not in SENT_AS_IS:
        buffer = io.BytesIO()
        image.pixels.save(buffer, format="PNG")
        mime, data = "image/png", buffer.getvalue()
    if len(data) > MAX_IMAGE_BYTES:
        raise InputRejected(f"{name}: a {len(data)}-byte image is over Voyage's 20 MB", index, position)
    return {"type": "image_base64", "image_base64": f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"}


class VoyageWire:
    """Voyage's two request bodies and their usage."""

    key_env: str | None = "VOYAGE_API_KEY"

    def __init__(self, options: VoyageOptions, name: str) -> None:
        self.options = options
        self.name = name
        self.spec = MODELS.get(options.model)
        self.multimodal = options.model.startswith(MULTIMODAL)
        self.path = "/v1/multimodalembeddings" if self.multimodal else "/v1/embeddings"

    def describe(self, probe: Probe) -> ProviderInfo:
        spec = self.spec
        if spec is None and self.multimodal:  # a newer multimodal model: what the family does
            spec = ModelSpec(1024, TEXT_AND_IMAGE, fuses_parts=True, flexible=True)
        return info_from_table("voyage", spec, self.options, self.name)

    def fragment(self, item: Item, index: int, options: EmbedOptions) -> Any:
        if not self.multimodal:
            part = item.parts[0]
            assert isinstance(part, Text)  # the provider refused images to a text-only model
            return part.text
        content = [
            {"type": "text", "text": part.text}
            if isinstance(part, Text)
            else image_part(part, index, position, self.name)
            for position, part in enumerate(item.parts)
        ]
        return {"content": content}

    def body(self, fragments: Sequence[Any], options: EmbedOptions) -> dict[str, Any]:
        body: dict[str, Any] = {
            "inputs" if self.multimodal else "input": list(fragments),
            "model": self.options.model,
            "input_type": options.input_type.value if options.input_type else None,
            "truncation": self.options.truncation,
        }
        if self.options.dimensions is not None and (self.spec is None or self.spec.flexible):
            body["output_dimension"] = self.options.dimensions
        return body

    def usage(self, payload: Mapping[str, Any]) -> tuple[Usage, int]:
        """Multimodal: `text_tokens` are billed per token, `image_pixels` per pixel; `total_tokens`
        (560 pixels a token) is what the items share. Text models: `total_tokens`."""
        usage = payload.get("usage")
        total = usage_int(usage, "total_tokens", self.name)
        if not self.multimodal:
            return Usage(billed_tokens=total), total
        text = usage_int(usage, "text_tokens", self.name)
        return Usage(billed_tokens=text, image_pixels=usage_int(usage, "image_pixels", self.name)), total


def from_options(options: dict[str, Any], *, name: str) -> HttpProvider:
    """The `voyage` provider kind."""
    parsed = VoyageOptions.model_validate(options)
    return HttpProvider(VoyageWire(parsed, name), parsed, name=name)
