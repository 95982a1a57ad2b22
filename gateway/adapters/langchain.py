"""LangChain `Embeddings` for the gateway, texts and images in one vector space.

`embed_image(uris)` is the interface of `OpenCLIPEmbeddings`, which `Chroma.add_images` and
`similarity_search_by_image` call; the async methods use `openai.AsyncOpenAI` instead of a thread.
"""

from __future__ import annotations

from collections.abc import Sequence

import openai
from langchain_core.embeddings import Embeddings

from gateway.adapters.client import EmbeddingRequest, Role, Timeout, clients, image_items, shifted
from gateway.adapters.images import ImageSource

Batch = Sequence[str | dict[str, str]]


class GatewayEmbeddings(Embeddings):
    """Documents go with `input_type: document`, queries with `query`, images (paths, URLs, bytes,
    streams, PIL images) as `{"image": ...}` items. Lists are sent `chunk_size` at a time (images
    `image_chunk_size`, under the gateway's `limits.max_images`, 32 by default). Errors are the openai
    SDK's typed exceptions carrying the gateway's message, as `OpenAIEmbeddings` raises them, with
    `input[i]` counted in the caller's whole list."""

    def __init__(
        self,
        *,
        model: str,
        base_url: str | None = None,
        api_key: str | None = None,
        dimensions: int | None = None,
        chunk_size: int = 1000,
        image_chunk_size: int = 16,
        timeout: Timeout = openai.DEFAULT_TIMEOUT,
        max_retries: int = openai.DEFAULT_MAX_RETRIES,
        client: openai.OpenAI | None = None,
        async_client: openai.AsyncOpenAI | None = None,
    ) -> None:
        """`base_url` is the gateway's `/v1` URL and `api_key` a client key (else `OPENAI_API_KEY`); they,
        `timeout` and `max_retries` build the openai SDK clients unless `client` / `async_client` are given."""
        if chunk_size < 1 or image_chunk_size < 1:
            raise ValueError("chunk_size and image_chunk_size must be at least 1")
        self.model = model
        self.dimensions = dimensions
        self.chunk_size = chunk_size
        self.image_chunk_size = image_chunk_size
        self.request = EmbeddingRequest(model, dimensions)
        self.client, self.async_client = clients(
            base_url,
            api_key=api_key,
            timeout=timeout,
            max_retries=max_retries,
            client=client,
            async_client=async_client,
        )

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """Vectors of `texts` as documents."""
        return self._embed(texts, "document", self.chunk_size)

    def embed_query(self, text: str) -> list[float]:
        """The vector of `text` as a query."""
        return self._embed([text], "query", 1)[0]

    def embed_image(self, uris: Sequence[ImageSource]) -> list[list[float]]:
        """Vectors of images: paths, http(s) URLs, data URIs, bytes, streams or PIL images."""
        return self._embed(image_items(uris), "document", self.image_chunk_size)

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        """`embed_documents` on the async client."""
        return await self._aembed(texts, "document", self.chunk_size)

    async def aembed_query(self, text: str) -> list[float]:
        """`embed_query` on the async client."""
        return (await self._aembed([text], "query", 1))[0]

    async def aembed_image(self, uris: Sequence[ImageSource]) -> list[list[float]]:
        """`embed_image` on the async client."""
        return await self._aembed(image_items(uris), "document", self.image_chunk_size)

    def close(self) -> None:
        """Close the sync client's connections."""
        self.client.close()

    async def aclose(self) -> None:
        """Close both clients' connections."""
        self.client.close()
        await self.async_client.close()

    def _embed(self, inputs: Batch, role: Role, size: int) -> list[list[float]]:
        found: list[list[float]] = []
        for start in range(0, len(inputs), size):
            try:
                found += self.request.embed(self.client, inputs[start : start + size], role)
            except openai.APIStatusError as exc:
                raise shifted(exc, start) from exc
        return found

    async def _aembed(self, inputs: Batch, role: Role, size: int) -> list[list[float]]:
        found: list[list[float]] = []
        for start in range(0, len(inputs), size):
            try:
                found += await self.request.aembed(self.async_client, inputs[start : start + size], role)
            except openai.APIStatusError as exc:
                raise shifted(exc, start) from exc
        return found
