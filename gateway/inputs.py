"""Every accepted spelling of `input`, turned into `Item`s.

Accepted elements of `input` (each gives one vector):
- a string, or a list of token ids (decoded with tiktoken);
- Jina: `{"text": ...}`, `{"image": <URL | data URI | base64>}`;
- OpenAI content parts: `{"type": "text", "text": ...}`, `{"type": "image_url", "image_url": {"url": ...}}`;
- Voyage parts: `{"type": "image_url", "image_url": "..."}`, `{"type": "image_base64", "image_base64": ...}`;
- an interleaved item `{"content": [part, ...]}` whose parts are fused into one vector.
Parsing is two steps: `parse_input` checks shapes without I/O (so a bad item 2000 fails before
item 0's image is fetched); `InputResolver.resolve` decodes tokens and loads images.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gateway.errors import InvalidRequest
from gateway.images import EncodedImage, ImageLoader
from gateway.tokens import TokenDecoder
from providers.base import Image, Item, Modality, Text


@dataclass(frozen=True, slots=True)
class PartSpec:
    """An unresolved part: text, token ids, or an image reference, with the param that names it."""

    modality: Modality
    value: str | list[int]
    param: str


@dataclass(frozen=True, slots=True)
class ItemSpec:
    """An unresolved item and its parts."""

    param: str
    parts: tuple[PartSpec, ...]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _text(value: Any, param: str) -> PartSpec:
    if not isinstance(value, str):
        raise InvalidRequest(f"{param} must be a string", param=param, code="invalid_input")
    if not value:
        raise InvalidRequest(f"{param} is an empty string", param=param, code="empty_input")
    return PartSpec(Modality.TEXT, value, param)


def _image(value: Any, param: str) -> PartSpec:
    if not isinstance(value, str) or not value.strip():
        raise InvalidRequest(
            f"{param} must be a non-empty string: an http(s) URL, a data URI or base64",
            param=param,
            code="invalid_input",
        )
    return PartSpec(Modality.IMAGE, value.strip(), param)


def _tokens(value: list[Any], param: str) -> PartSpec:
    if not value:
        raise InvalidRequest(f"{param} is an empty list of token ids", param=param, code="empty_input")
    if not all(_is_int(token) for token in value):
        raise InvalidRequest(
            f"{param} must be a string or a list of integer token ids", param=param, code="invalid_input"
        )
    return PartSpec(Modality.TEXT, list(value), param)


def _only(obj: dict[str, Any], allowed: set[str], param: str) -> None:
    extra = sorted(set(obj) - allowed)
    if extra:
        raise InvalidRequest(
            f"{param} has unknown field '{extra[0]}'", param=f"{param}.{extra[0]}", code="invalid_input"
        )


def _part(obj: Any, param: str) -> PartSpec:
    """One part in any of the Jina, OpenAI or Voyage spellings."""
    if isinstance(obj, str):
        return _text(obj, param)
    if not isinstance(obj, dict):
        raise InvalidRequest(f"{param} must be a string or an object", param=param, code="invalid_input")
    kind = obj.get("type")
    if kind is None:
        if "text" in obj and "image" not in obj:
            _only(obj, {"text"}, param)
            return _text(obj["text"], f"{param}.text")
        if "image" in obj and "text" not in obj:
            _only(obj, {"image"}, param)
            return _image(obj["image"], f"{param}.image")
        raise InvalidRequest(
            f"{param} must have exactly one of 'text' or 'image' (use 'content' to combine parts)",
            param=param,
            code="invalid_input",
        )
    if kind == "text":
        _only(obj, {"type", "text"}, param)
        return _text(obj.get("text"), f"{param}.text")
    if kind == "image_url":
        _only(obj, {"type", "image_url"}, param)
        url = obj.get("image_url")
        if isinstance(url, dict):
            _only(url, {"url", "detail"}, f"{param}.image_url")
            return _image(url.get("url"), f"{param}.image_url.url")
        return _image(url, f"{param}.image_url")
    if kind == "image_base64":
        _only(obj, {"type", "image_base64"}, param)
        return _image(obj.get("image_base64"), f"{param}.image_base64")
    raise InvalidRequest(
        f"{param}.type must be 'text', 'image_url' or 'image_base64', got {kind!r}",
        param=f"{param}.type",
        code="invalid_input",
    )


def _item(obj: Any, param: str) -> ItemSpec:
    if isinstance(obj, list):
        return ItemSpec(param, (_tokens(obj, param),))
    if isinstance(obj, dict) and "content" in obj:
        _only(obj, {"content"}, param)
        content = obj["content"]
        if not isinstance(content, list) or not content:
            raise InvalidRequest(
                f"{param}.content must be a non-empty list of parts", param=f"{param}.content", code="invalid_input"
            )
        return ItemSpec(param, tuple(_part(p, f"{param}.content[{i}]") for i, p in enumerate(content)))
    if _is_int(obj):
        raise InvalidRequest(
            f"{param} is a token id; send int[] or int[][] only, not mixed with other items",
            param=param,
            code="invalid_input",
        )
    return ItemSpec(param, (_part(obj, param),))


def parse_input(value: Any, *, max_items: int) -> list[ItemSpec]:
    """Check the shape of `input` and name every element; no I/O."""
    if isinstance(value, str):
        return [ItemSpec("input", (_text(value, "input"),))]
    if isinstance(value, dict):
        return [_item(value, "input")]
    if not isinstance(value, list):
        raise InvalidRequest("input must be a string, an array, or an item object", param="input", code="invalid_input")
    if not value:
        raise InvalidRequest("input must not be empty", param="input", code="empty_input")
    if len(value) > max_items:
        raise InvalidRequest(
            f"input has {len(value)} items; at most {max_items} are allowed per request",
            param="input",
            code="too_many_inputs",
        )
    if all(_is_int(v) for v in value):
        return [ItemSpec("input", (_tokens(value, "input"),))]
    return [_item(v, f"input[{i}]") for i, v in enumerate(value)]


@dataclass(frozen=True, slots=True)
class ResolvedItem:
    """An item whose texts are final and whose images are fetched and hashed, not yet decoded."""

    parts: tuple[Text | EncodedImage, ...]


class InputResolver:
    """Resolves specs: token ids decoded, images fetched once each; decoding waits for `decode`."""

    def __init__(self, images: ImageLoader, tokens: TokenDecoder) -> None:
        self.images = images
        self.tokens = tokens

    async def resolve(self, specs: list[ItemSpec]) -> list[ResolvedItem]:
        parts: dict[int, Text | EncodedImage] = {}
        image_specs: list[PartSpec] = []
        for spec in specs:
            for part in spec.parts:
                if part.modality is Modality.IMAGE:
                    image_specs.append(part)
                elif isinstance(part.value, list):
                    parts[id(part)] = Text(self.tokens.decode(part.value, param=part.param))
                else:
                    parts[id(part)] = Text(part.value)
        loaded = await asyncio.gather(
            *(self.images.load(str(part.value), param=part.param) for part in image_specs), return_exceptions=True
        )
        for part, result in zip(image_specs, loaded, strict=True):
            if isinstance(result, BaseException):  # the first failure in input order names its element
                raise result
            parts[id(part)] = result
        return [ResolvedItem(tuple(parts[id(part)] for part in spec.parts)) for spec in specs]

    async def decode(self, items: Sequence[ResolvedItem]) -> list[Item]:
        """Decode the images of `items` (only those about to be computed) into model-ready parts."""
        encoded = {id(p): p for item in items for p in item.parts if isinstance(p, EncodedImage)}
        decoded = await asyncio.gather(*(self.images.decode(p) for p in encoded.values()), return_exceptions=True)
        for result in decoded:
            if isinstance(result, BaseException):
                raise result
        images: dict[int, Image] = {
            key: image for key, image in zip(encoded, decoded, strict=True) if isinstance(image, Image)
        }
        return [Item(tuple(p if isinstance(p, Text) else images[id(p)] for p in item.parts)) for item in items]
