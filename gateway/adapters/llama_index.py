"""llama-index `MultiModalEmbedding` for the gateway: the text and image embedder that
`MultiModalVectorStoreIndex` needs, with texts and images in one vector space.

The framework batches (`embed_batch_size`) and calls the `_get_*` hooks below once per batch; the
async hooks use `openai.AsyncOpenAI`, so `use_async=True` indexing never runs in a thread.
"""

from __future__ import annotations

from typing import Any

import openai
from llama_index.core.base.embeddings.base import Embedding
from llama_index.core.embeddings import MultiModalEmbedding
from llama_index.core.schema import ImageType
from pydantic import Field, PrivateAttr

from gateway.adapters.client import EmbeddingRequest, clients, image_items


class GatewayMultiModalEmbedding(MultiModalEmbedding):
    """Texts go with `input_type: document`, queries with `query`, images (paths, http(s) URLs, data
    URIs, bytes, streams or PIL images) as `{"image": ...}` items, also as documents (an image query
    and an indexed image are embedded alike). Errors are the openai SDK's typed exceptions carrying
    the gateway's message, as llama-index's OpenAI embeddings raise them; `input[i]` counts within
    the framework's batch."""

    api_base: str | None = Field(default=None, description="The gateway's `/v1` URL.")
    api_key: str | None = Field(default=None, description="A client key; else `OPENAI_API_KEY`.", exclude=True)
    dimensions: int | None = Field(default=None, description="Matryoshka size, where the model declares one.")
    timeout: float = Field(default=60.0, description="Seconds per request (the openai SDK's timeout).")
    max_retries: int = Field(default=openai.DEFAULT_MAX_RETRIES, description="The openai SDK's retries.")

    _client: openai.OpenAI = PrivateAttr()
    _async_client: openai.AsyncOpenAI = PrivateAttr()
    _request: EmbeddingRequest = PrivateAttr()

    def __init__(
        self,
        *,
        client: openai.OpenAI | None = None,
        async_client: openai.AsyncOpenAI | None = None,
        **fields: Any,
    ) -> None:
        """Fields as declared above plus `model_name` and `embed_batch_size`; `client` / `async_client`
        replace the SDK clients built from `api_base`, `api_key`, `timeout` and `max_retries`."""
        super().__init__(**fields)
        self._request = EmbeddingRequest(self.model_name, self.dimensions)
        self._client, self._async_client = clients(
            self.api_base,
            api_key=self.api_key,
            timeout=self.timeout,
            max_retries=self.max_retries,
            client=client,
            async_client=async_client,
        )

    @classmethod
    def class_name(cls) -> str:
        return "GatewayMultiModalEmbedding"

    def _get_query_embedding(self, query: str) -> Embedding:
        return self._request.embed(self._client, [query], "query")[0]

    async def _aget_query_embedding(self, query: str) -> Embedding:
        return (await self._request.aembed(self._async_client, [query], "query"))[0]

    def _get_text_embedding(self, text: str) -> Embedding:
        return self._request.embed(self._client, [text], "document")[0]

    async def _aget_text_embedding(self, text: str) -> Embedding:
        return (await self._request.aembed(self._async_client, [text], "document"))[0]

    def _get_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        return self._request.embed(self._client, texts, "document")

    async def _aget_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        return await self._request.aembed(self._async_client, texts, "document")

    def _get_image_embedding(self, img_file_path: ImageType) -> Embedding:
        return self._request.embed(self._client, image_items([img_file_path]), "document")[0]

    async def _aget_image_embedding(self, img_file_path: ImageType) -> Embedding:
        return (await self._request.aembed(self._async_client, image_items([img_file_path]), "document"))[0]

    def _get_image_embeddings(self, img_file_paths: list[ImageType]) -> list[Embedding]:
        return self._request.embed(self._client, image_items(img_file_paths), "document")

    async def _aget_image_embeddings(self, img_file_paths: list[ImageType]) -> list[Embedding]:
        return await self._request.aembed(self._async_client, image_items(img_file_paths), "document")
