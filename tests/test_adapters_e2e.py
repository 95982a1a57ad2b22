"""The README's llama-index example, run as written against a gateway process on the tiny SigLIP: a
folder of images and a few texts indexed in `MultiModalVectorStoreIndex` (its default in-memory
vector stores), queried with a text and with an image. Random weights carry no meaning, so the test
asserts by vector: the stores hold the gateway's own vectors, and each hit is the stored item nearest
to the gateway's own vector of the query."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from llama_index.core.schema import ImageNode

from tests.images_data import data_uri, png
from tests.servers import ROOT

# Exactly the README's example ("LangChain and llama-index"); the test swaps in its gateway and model.
EXAMPLE = """\
from pathlib import Path

from llama_index.core.indices import MultiModalVectorStoreIndex
from llama_index.core.schema import ImageNode, TextNode

from gateway.adapters.llama_index import GatewayMultiModalEmbedding

embed = GatewayMultiModalEmbedding(
    model_name="google/siglip2-base-patch16-224", api_base="http://localhost:8000/v1", api_key="unused"
)
# An image node needs some metadata: llama-index skips nodes with neither text nor metadata.
photos = sorted(Path("photos").glob("*.png"))
nodes = [ImageNode(image_path=str(path), metadata={"file_name": path.name}) for path in photos]
nodes += [TextNode(text=text) for text in ["a red car", "a cat asleep on a sofa", "a bowl of soup"]]
index = MultiModalVectorStoreIndex(nodes, embed_model=embed, image_embed_model=embed)

retriever = index.as_retriever(similarity_top_k=1, image_similarity_top_k=2)
by_text = retriever.retrieve("a photo of a cat")  # the nearest text, then the 2 nearest images
by_image = retriever.image_to_image_retrieve("query.png")  # the 2 nearest images to a picture
"""

MODEL = "siglip-tiny"
TEXTS = ["a red car", "a cat asleep on a sofa", "a bowl of soup"]
TOLERANCE = 1e-5


def gateway_vectors(url: str, inputs: list[Any], input_type: str) -> np.ndarray:
    body = {"model": MODEL, "input": inputs, "input_type": input_type, "encoding_format": "float"}
    response = httpx.post(f"{url}/v1/embeddings", json=body, timeout=60)
    assert response.status_code == 200, response.text
    return np.array([row["embedding"] for row in response.json()["data"]], dtype=np.float64)


def nearest(stored: dict[str, list[float]], query: np.ndarray, k: int) -> list[str]:
    ids = list(stored)
    scores = np.array([stored[i] for i in ids], dtype=np.float64) @ query
    return [ids[i] for i in np.argsort(-scores)[:k]]


@pytest.fixture(scope="module")
def example(gateway_url: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Run the README example in a folder holding `photos/*.png` and `query.png`; return its names."""
    workdir = tmp_path_factory.mktemp("readme-example")
    (workdir / "photos").mkdir()
    for seed in range(4):
        (workdir / "photos" / f"photo{seed}.png").write_bytes(png(seed=10 + seed))
    (workdir / "query.png").write_bytes(png(seed=20))
    code = EXAMPLE.replace("http://localhost:8000/v1", f"{gateway_url}/v1").replace(
        "google/siglip2-base-patch16-224", MODEL
    )
    namespace: dict[str, Any] = {}
    cwd = Path.cwd()
    os.chdir(workdir)
    try:
        exec(compile(code, "README example", "exec"), namespace)
    finally:
        os.chdir(cwd)
    namespace["workdir"] = workdir
    return namespace


def stored_vectors(example: dict[str, Any]) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    index = example["index"]
    return dict(index.vector_store.data.embedding_dict), dict(index.image_vector_store.data.embedding_dict)


@pytest.mark.slow
def test_the_stores_hold_exactly_the_gateways_vectors(gateway_url: str, example: dict[str, Any]) -> None:
    texts, images = stored_vectors(example)
    nodes = example["nodes"]
    image_nodes = [node for node in nodes if isinstance(node, ImageNode)]
    text_nodes = [node for node in nodes if not isinstance(node, ImageNode)]
    assert set(images) == {node.node_id for node in image_nodes}
    assert set(texts) == {node.node_id for node in text_nodes}
    photos = sorted((example["workdir"] / "photos").glob("*.png"))
    expected_images = gateway_vectors(gateway_url, [{"image": data_uri(p.read_bytes())} for p in photos], "document")
    got_images = np.array([images[node.node_id] for node in image_nodes])
    np.testing.assert_allclose(got_images, expected_images, atol=TOLERANCE, rtol=0)
    assert [node.text for node in text_nodes] == TEXTS
    got_texts = np.array([texts[node.node_id] for node in text_nodes])
    np.testing.assert_allclose(got_texts, gateway_vectors(gateway_url, TEXTS, "document"), atol=TOLERANCE, rtol=0)


@pytest.mark.slow
def test_a_text_query_finds_the_nearest_text_and_images(gateway_url: str, example: dict[str, Any]) -> None:
    texts, images = stored_vectors(example)
    query = gateway_vectors(gateway_url, ["a photo of a cat"], "query")[0]
    hits = example["by_text"]
    text_hits = [hit for hit in hits if not isinstance(hit.node, ImageNode)]
    image_hits = [hit for hit in hits if isinstance(hit.node, ImageNode)]
    assert [hit.node.node_id for hit in text_hits] == nearest(texts, query, 1)
    assert [hit.node.node_id for hit in image_hits] == nearest(images, query, 2)
    for hit in hits:
        stored = {**texts, **images}[hit.node.node_id]
        assert hit.score == pytest.approx(float(np.dot(stored, query)), abs=1e-4)


@pytest.mark.slow
def test_an_image_query_finds_the_nearest_images(gateway_url: str, example: dict[str, Any]) -> None:
    _, images = stored_vectors(example)
    picture = (example["workdir"] / "query.png").read_bytes()
    query = gateway_vectors(gateway_url, [{"image": data_uri(picture)}], "document")[0]
    hits = example["by_image"]
    assert all(isinstance(hit.node, ImageNode) for hit in hits)
    assert [hit.node.node_id for hit in hits] == nearest(images, query, 2)


def test_the_readme_shows_the_example_verbatim() -> None:
    assert EXAMPLE in (ROOT / "README.md").read_text()
