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

from gateway.config import LimitSettings
from gateway.errors import InvalidRequest, clip
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


def _only(obj: dict[str, Any], allowed: set[str], param: str) -> None:
    extra = sorted(set(obj) - allowed)
    if extra:
        raise InvalidRequest(
            f"{param} has unknown field {clip(extra[0])}", param=f"{param}.{extra[0]}", code="invalid_input"
        )


class InputParser:
    """Walks `input` once, naming every element and charging the request's limits as it goes.

    Every count is checked before the work it bounds: a list's length before its elements are
    looked at, a text's length before any tokeniser sees it.
    """

    def __init__(self, limits: LimitSettings) -> None:
        self.limits = limits
        self.text_chars = 0
        self.token_ids = 0
        self.images = 0

    def parse(self, value: Any) -> list[ItemSpec]:
        """Check the shape of `input` and name every element; no I/O."""
        limits = self.limits
        if isinstance(value, str):
            return [ItemSpec("input", (self._text(value, "input"),))]
        if isinstance(value, dict):
            return [self._item(value, "input")]
        if not isinstance(value, list):
            raise InvalidRequest(
                "input must be a string, an array, or an item object", param="input", code="invalid_input"
            )
        if not value:
            raise InvalidRequest("input must not be empty", param="input", code="empty_input")
        if _is_int(value[0]):  # a flat int[] is one input of token ids, however long
            return [ItemSpec("input", (self._tokens(value, "input"),))]
        if len(value) > limits.max_items:
            raise InvalidRequest(
                f"input has {len(value)} items; at most {limits.max_items} are allowed per request (limits.max_items)",
                param="input",
                code="too_many_inputs",
            )
        return [self._item(v, f"input[{i}]") for i, v in enumerate(value)]

    def _text(self, value: Any, param: str) -> PartSpec:
        if not isinstance(value, str):
            raise InvalidRequest(f"{param} must be a string", param=param, code="invalid_input")
        if not value:
            raise InvalidRequest(f"{param} is an empty string", param=param, code="empty_input")
        limit = self.limits.max_text_chars
        if len(value) > limit:
            raise InvalidRequest(
                f"{param} has {len(value)} characters, over the limit of {limit} (limits.max_text_chars)",
                param=param,
                code="text_too_long",
            )
        self.text_chars += len(value)
        if self.text_chars > self.limits.max_request_text_chars:
            raise InvalidRequest(
                f"the texts up to {param} have {self.text_chars} characters, over the request's limit of "
                f"{self.limits.max_request_text_chars} (limits.max_request_text_chars)",
                param=param,
                code="text_too_long",
            )
        return PartSpec(Modality.TEXT, value, param)

    def _tokens(self, value: list[Any], param: str) -> PartSpec:
        if not value:
            raise InvalidRequest(f"{param} is an empty list of token ids", param=param, code="empty_input")
        limit = self.limits.max_token_ids
        if len(value) > limit:
            raise InvalidRequest(
                f"{param} has {len(value)} token ids, over the limit of {limit} (limits.max_token_ids)",
                param=param,
                code="too_many_tokens",
            )
        self.token_ids += len(value)
        if self.token_ids > self.limits.max_request_token_ids:
            raise InvalidRequest(
                f"the token ids up to {param} number {self.token_ids}, over the request's limit of "
                f"{self.limits.max_request_token_ids} (limits.max_request_token_ids)",
                param=param,
                code="too_many_tokens",
            )
        for position, token in enumerate(value):
            if not _is_int(token):
                raise InvalidRequest(
                    f"{param}[{position}] is not an integer: send a string or a list of integer token ids",
                    param=f"{param}[{position}]",
                    code="invalid_input",
                )
        return PartSpec(Modality.TEXT, value, param)

    def _image(self, value: Any, param: str) -> PartSpec:
        if not isinstance(value, str) or not value.strip():
            raise InvalidRequest(
                f"{param} must be a non-empty string: an http(s) URL, a data URI or base64",
                param=param,
                code="invalid_input",
            )
        self.images += 1
        if self.images > self.limits.max_images:
            raise InvalidRequest(
                f"{param} is image number {self.images}; at most {self.limits.max_images} are allowed per "
                "request (limits.max_images)",
                param=param,
                code="too_many_images",
            )
        return PartSpec(Modality.IMAGE, value.strip(), param)

    def _part(self, obj: Any, param: str) -> PartSpec:
        """One part in any of the Jina, OpenAI or Voyage spellings."""
        if isinstance(obj, str):
            return self._text(obj, param)
        if not isinstance(obj, dict):
            raise InvalidRequest(f"{param} must be a string or an object", param=param, code="invalid_input")
        kind = obj.get("type")
        if kind is None:
            if "text" in obj and "image" not in obj:
                _only(obj, {"text"}, param)
                return self._text(obj["text"], f"{param}.text")
            if "image" in obj and "text" not in obj:
                _only(obj, {"image"}, param)
                return self._image(obj["image"], f"{param}.image")
            raise InvalidRequest(
                f"{param} must have exactly one of 'text' or 'image' (use 'content' to combine parts)",
                param=param,
                code="invalid_input",
            )
        if kind == "text":
            _only(obj, {"type", "text"}, param)
            return self._text(obj.get("text"), f"{param}.text")
        if kind == "image_url":
            _only(obj, {"type", "image_url"}, param)
            url = obj.get("image_url")
            if isinstance(url, dict):
                _only(url, {"url", "detail"}, f"{param}.image_url")
                return self._image(url.get("url"), f"{param}.image_url.url")
            return self._image(url, f"{param}.image_url")
        if kind == "image_base64":
            _only(obj, {"type", "image_base64"}, param)
            return self._image(obj.get("image_base64"), f"{param}.image_base64")
        raise InvalidRequest(
            f"{param}.type must be 'text', 'image_url' or 'image_base64', got {clip(kind)}",
            param=f"{param}.type",
            code="invalid_input",
        )

    def _item(self, obj: Any, param: str) -> ItemSpec:
        if isinstance(obj, list):
            return ItemSpec(param, (self._tokens(obj, param),))
        if isinstance(obj, dict) and "content" in obj:
            _only(obj, {"content"}, param)
            content = obj["content"]
            if not isinstance(content, list) or not content:
                raise InvalidRequest(
                    f"{param}.content must be a non-empty list of parts",
                    param=f"{param}.content",
                    code="invalid_input",
                )
            limit = self.limits.max_parts_per_item
            if len(content) > limit:
                raise InvalidRequest(
                    f"{param}.content has {len(content)} parts, over the limit of {limit} (limits.max_parts_per_item)",
                    param=f"{param}.content",
                    code="too_many_parts",
                )
            return ItemSpec(param, tuple(self._part(p, f"{param}.content[{i}]") for i, p in enumerate(content)))
        if _is_int(obj):
            raise InvalidRequest(
                f"{param} is a token id; send int[] or int[][] only, not mixed with other items",
                param=param,
                code="invalid_input",
            )
        return ItemSpec(param, (self._part(obj, param),))


def parse_input(value: Any, *, limits: LimitSettings) -> list[ItemSpec]:
    """Check the shape of `input` under `limits` and name every element; no I/O."""
    return InputParser(limits).parse(value)


@dataclass(frozen=True, slots=True)
class ResolvedItem:
    """An item whose texts are final and whose images are fetched and hashed, not yet decoded."""

    parts: tuple[Text | EncodedImage, ...]


TOKENS_ON_LOOP = 8192  # more token ids than one input's worth are decoded on a worker thread


class InputResolver:
    """Resolves specs: token ids decoded, each distinct image source loaded once under the request's
    image budget; decoding waits for `decode`, which only the items about to be computed reach."""

    def __init__(self, images: ImageLoader, tokens: TokenDecoder, limits: LimitSettings) -> None:
        self.images = images
        self.tokens = tokens
        self.limits = limits

    async def resolve(self, specs: list[ItemSpec]) -> list[ResolvedItem]:
        parts: dict[int, Text | EncodedImage] = {}
        sources: dict[str, PartSpec] = {}  # the same URL or bytes twice in a request: loaded once
        token_parts: list[PartSpec] = []
        for spec in specs:
            for part in spec.parts:
                if part.modality is Modality.IMAGE:
                    sources.setdefault(str(part.value), part)
                elif isinstance(part.value, list):
                    token_parts.append(part)
                else:
                    parts[id(part)] = Text(part.value)
        if sum(len(part.value) for part in token_parts) > TOKENS_ON_LOOP:
            parts |= await asyncio.to_thread(self._decode_tokens, token_parts)
        else:
            parts |= self._decode_tokens(token_parts)
        if sources:
            parts |= await self._load_images(specs, sources)
        return [ResolvedItem(tuple(parts[id(part)] for part in spec.parts)) for spec in specs]

    async def _load_images(self, specs: list[ItemSpec], sources: dict[str, PartSpec]) -> dict[int, Text | EncodedImage]:
        """Every distinct image source loaded once, concurrently, under one request budget."""
        budget = self.images.budget()
        try:
            async with asyncio.TaskGroup() as group:  # the first failure cancels the other fetches
                tasks = {
                    source: group.create_task(self.images.load(source, param=part.param, budget=budget))
                    for source, part in sources.items()
                }
        except BaseExceptionGroup as errors:
            raise _first_in_input_order(errors, list(sources.values())) from None
        loaded = {source: task.result() for source, task in tasks.items()}
        return {
            id(part): loaded[str(part.value)]
            for spec in specs
            for part in spec.parts
            if part.modality is Modality.IMAGE
        }

    def _decode_tokens(self, token_parts: list[PartSpec]) -> dict[int, Text | EncodedImage]:
        decoded: dict[int, Text | EncodedImage] = {}
        for part in token_parts:
            assert isinstance(part.value, list)
            decoded[id(part)] = Text(self.tokens.decode(part.value, param=part.param))
        return decoded

    async def decode(self, items: Sequence[ResolvedItem]) -> list[Item]:
        """Decode the images of `items` (only those about to be computed) into model-ready parts."""
        encoded = {image.sha256: image for item in items for image in item.parts if isinstance(image, EncodedImage)}
        try:
            async with asyncio.TaskGroup() as group:
                tasks = {digest: group.create_task(self.images.decode(image)) for digest, image in encoded.items()}
        except BaseExceptionGroup as errors:
            raise _first_in_input_order(errors, []) from None
        images: dict[str, Image] = {digest: task.result() for digest, task in tasks.items()}
        return [Item(tuple(p if isinstance(p, Text) else images[p.sha256] for p in item.parts)) for item in items]


def texts_only(items: Sequence[ResolvedItem]) -> list[Item] | None:
    """`items` as model-ready items when none has an image (texts need no decoding), else None."""
    texts: list[Item] = []
    for item in items:
        parts = tuple(part for part in item.parts if isinstance(part, Text))
        if len(parts) != len(item.parts):
            return None
        texts.append(Item(parts))
    return texts


def _first_in_input_order(errors: BaseExceptionGroup[BaseException], parts: list[PartSpec]) -> BaseException:
    """The error of the earliest input among those that failed, so a retry fixes inputs in order."""
    order = {part.param: i for i, part in enumerate(parts)}
    leaves: list[BaseException] = []
    pending: list[BaseException] = [errors]
    while pending:
        error = pending.pop()
        if isinstance(error, BaseExceptionGroup):
            pending.extend(error.exceptions)
        else:
            leaves.append(error)
    client = [e for e in leaves if isinstance(e, InvalidRequest)]
    if not client:
        return leaves[0]
    return min(client, key=lambda e: order.get(e.param or "", len(order)))
