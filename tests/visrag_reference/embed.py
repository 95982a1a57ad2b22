"""Reference VisRAG-Ret embeddings: the published code, run as written, pooled as the model card does.

    .cache/visrag-reference/venv/bin/python -m tests.visrag_reference.embed DIR IN.json OUT.npz

(run from the repository root, in the reference environment). IN.json is a list of
`{"id": str, "text"?: str, "image_path"?: str, "query"?: bool}`; a query's text is
`INSTRUCTION + (text or "")`, any other item's is `text or ""`; an image is opened with PIL and
converted to RGB. The model is `AutoModel.from_pretrained(DIR, trust_remote_code=True)` with
`config.use_cache=False` (the only change transformers 4.57 needs), in eval mode and fp32.

OUT.npz holds, per id:
- `single/<id>`: float32 unit vector, the item alone in one forward;
- `batch/<id>`: float32 unit vector, from one forward over the whole list (batch independence);
- `ids/<id>`: int64 token ids of the item's prompt, as the published `_convert_to_tensors` makes them;
- `slices/<id>`: int64 (n, 2) (width, height) of each image the published slicing feeds the tower
  (the downscaled source first, then the grid row by row); shape (0, 2) without an image.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from tests.visrag_reference import environment
from tests.visrag_reference.tiny_vit import register_from

INSTRUCTION = "Represent this query for retrieving relevant documents: "


def weighted_mean_pooling(hidden: Any, attention_mask: Any) -> Any:
    """The model card's pooling: position-weighted mean over the unpadded tokens."""
    import torch

    attention_mask_ = attention_mask * attention_mask.cumsum(dim=1)
    s = torch.sum(hidden * attention_mask_.unsqueeze(-1).float(), dim=1)
    d = attention_mask_.sum(dim=1, keepdim=True).float()
    return s / d


def load(directory: Path) -> tuple[Any, Any]:
    """The published model and tokenizer from a model directory (a tiny one registers its tower)."""
    import torch
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    register_from(directory)
    tokenizer = AutoTokenizer.from_pretrained(str(directory), trust_remote_code=True)
    config = AutoConfig.from_pretrained(str(directory), trust_remote_code=True)
    config.use_cache = False  # transformers 4.57: the published decoder cannot build its legacy cache
    model = AutoModel.from_pretrained(str(directory), config=config, trust_remote_code=True, dtype=torch.float32)
    return model.eval(), tokenizer


def request(item: dict[str, Any]) -> tuple[str, Any]:
    """(text, image or None) for one IN.json item, as the model card would pass them."""
    from PIL import Image

    text = item.get("text") or ""
    if item.get("query", False):
        text = INSTRUCTION + text
    image = None
    if item.get("image_path"):
        with Image.open(item["image_path"]) as opened:
            image = opened.convert("RGB")
    return text, image


def encode(model: Any, tokenizer: Any, texts: list[str], images: list[Any]) -> np.ndarray:
    """Unit vectors for a batch, exactly as the model card computes them."""
    import torch
    import torch.nn.functional as F  # noqa: N812 (the model card's spelling)

    with torch.no_grad():
        outputs = model(text=texts, image=images, tokenizer=tokenizer)
        reps = weighted_mean_pooling(outputs.last_hidden_state, outputs.attention_mask)
        return F.normalize(reps, p=2, dim=1).float().cpu().numpy()


def prompt_facts(model: Any, tokenizer: Any, text: str, image: Any) -> tuple[np.ndarray, np.ndarray]:
    """Token ids and slice sizes, from the published `prepare_context` and `_convert_to_tensors`."""
    content, slices = model.prepare_context((text, image), tokenizer)
    ids = model._convert_to_tensors(tokenizer, content, 2048)["input_ids"][0]
    sizes = np.array([picture.size for picture in slices], dtype=np.int64).reshape(-1, 2)
    return ids.cpu().numpy().astype(np.int64), sizes


def run(directory: Path, items: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Every array OUT.npz holds, by key."""
    model, tokenizer = load(directory)
    requests = [request(item) for item in items]
    arrays: dict[str, np.ndarray] = {}
    for item, (text, image) in zip(items, requests, strict=True):
        arrays[f"single/{item['id']}"] = encode(model, tokenizer, [text], [image])[0]
        arrays[f"ids/{item['id']}"], arrays[f"slices/{item['id']}"] = prompt_facts(model, tokenizer, text, image)
    batch = encode(model, tokenizer, [text for text, _ in requests], [image for _, image in requests])
    for item, vector in zip(items, batch, strict=True):
        arrays[f"batch/{item['id']}"] = vector
    return arrays


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("directory", type=Path)
    parser.add_argument("requests", type=Path)
    parser.add_argument("output", type=Path)
    args = parser.parse_args()
    environment.configure()
    items = json.loads(args.requests.read_text())
    ids = [str(item["id"]) for item in items]
    if len(set(ids)) != len(ids) or any("/" in key for key in ids):
        raise SystemExit("ids must be unique and contain no '/'")
    arrays: dict[str, Any] = run(args.directory, items)
    np.savez(args.output, **arrays)


if __name__ == "__main__":
    main()
