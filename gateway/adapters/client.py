"""The one request both framework adapters make: a batch of texts or images to `POST /embeddings`
through the official openai SDK (its retries, timeouts and typed errors), with the role as
`input_type`. Errors stay the SDK's own (`openai.BadRequestError` with the gateway's message and
`param`), which is what LangChain's `OpenAIEmbeddings` and llama-index's OpenAI embeddings raise too."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import openai
from openai.types import CreateEmbeddingResponse

from gateway.adapters.images import ImageSource, image_input

Role = Literal["query", "document"]
Timeout = float | openai.Timeout | None


@dataclass(frozen=True)
class EmbeddingRequest:
    """What is the same for every batch an adapter sends: the model and the options that change vectors."""

    model: str
    dimensions: int | None = None

    def body(self, inputs: Sequence[str | dict[str, str]], role: Role) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "input": list(inputs),
            "input_type": role,
            "encoding_format": "float",  # exact float32 values as JSON: no numpy needed to read them
        }
        if self.dimensions is not None:
            body["dimensions"] = self.dimensions
        return body

    def embed(self, client: openai.OpenAI, inputs: Sequence[str | dict[str, str]], role: Role) -> list[list[float]]:
        """One POST; vectors in input order."""
        response = client.post("/embeddings", body=self.body(inputs, role), cast_to=CreateEmbeddingResponse)
        return vectors(response)

    async def aembed(
        self, client: openai.AsyncOpenAI, inputs: Sequence[str | dict[str, str]], role: Role
    ) -> list[list[float]]:
        """One POST without blocking the event loop; vectors in input order."""
        response = await client.post("/embeddings", body=self.body(inputs, role), cast_to=CreateEmbeddingResponse)
        return vectors(response)


def image_items(images: Sequence[ImageSource]) -> list[dict[str, str]]:
    """`{"image": ...}` items for the gateway, URLs passed through and local content inline."""
    return [{"image": image_input(image)} for image in images]


def vectors(response: CreateEmbeddingResponse) -> list[list[float]]:
    return [row.embedding for row in sorted(response.data, key=lambda row: row.index)]


_INPUT_INDEX = re.compile(r"input\[(\d+)\]")


def shifted(error: openai.APIStatusError, offset: int) -> openai.APIStatusError:
    """The same error for a batch that started at `offset` of the caller's list: `input[i]` in the message
    and `param` renumbered so they name the caller's element, not the batch's."""
    if offset == 0:
        return error

    def renumber(text: str) -> str:
        return _INPUT_INDEX.sub(lambda match: f"input[{int(match.group(1)) + offset}]", text)

    body = error.body
    if isinstance(body, dict):
        body = {key: renumber(value) if isinstance(value, str) else value for key, value in body.items()}
    return type(error)(renumber(error.message), response=error.response, body=body)


def clients(
    base_url: str | None,
    *,
    api_key: str | None,
    timeout: Timeout,
    max_retries: int,
    client: openai.OpenAI | None,
    async_client: openai.AsyncOpenAI | None,
) -> tuple[openai.OpenAI, openai.AsyncOpenAI]:
    """The caller's SDK clients where given (proxies, certificates, hooks), else a sync and an async one
    with the same settings (the async one never blocks the event loop)."""
    common: dict[str, Any] = {"base_url": base_url, "api_key": api_key, "timeout": timeout, "max_retries": max_retries}
    return client or openai.OpenAI(**common), async_client or openai.AsyncOpenAI(**common)
