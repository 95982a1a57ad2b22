"""The VisRAG-Ret reference harness: the tiny directory is the published layout, the vectors are sane.

Everything here runs the published code in its own venv (see tests/visrag_fixtures.py); the
torchvision stand-in that venv uses is checked against torchvision's documented semantics.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import sentencepiece as spm
import torch
from PIL import Image
from safetensors import safe_open

from tests.visrag_fixtures import (
    Reference,
    RefItem,
    page_image,
    reference,
    visrag_dir_fixture,  # noqa: F401 (registers the session fixture `visrag_dir`)
)
from tests.visrag_reference import environment

QUESTION = "What was the revenue growth in 2023?"
STANDIN = Path(__file__).parent / "visrag_reference" / "standin" / "torchvision"


@pytest.fixture(scope="module")
def ref(visrag_dir: Path) -> Reference:
    """One run of the published code over every kind of input."""
    small = page_image(120, 90, seed=1)
    return reference(
        visrag_dir,
        [
            RefItem("query", text=QUESTION, query=True),
            RefItem("document", text=QUESTION),
            RefItem("small", image=small),
            RefItem("large", image=page_image(1400, 1800, seed=2)),
            RefItem("interleaved", text="a page about revenue", image=small),
        ],
    )


def test_directory_has_the_published_weight_names_and_code(visrag_dir: Path) -> None:
    with safe_open(str(visrag_dir / "model.safetensors"), "pt") as weights:
        names = set(weights.keys())
        pos_embed = weights.get_slice("vpm.pos_embed").get_shape()
    config = json.loads((visrag_dir / "config.json").read_text())
    vision = config["vision_config"]
    for name in (
        "vpm.patch_embed.proj.weight",
        "vpm.blocks.0.attn.qkv.weight",
        "vpm.norm.weight",
        "resampler.query",
        "resampler.kv_proj.weight",
        "resampler.attn.in_proj_weight",
        "llm.model.embed_tokens.weight",
        "llm.model.layers.0.self_attn.q_proj.weight",
        "llm.model.layers.1.mlp.gate_proj.weight",
        "llm.model.norm.weight",
        "llm.lm_head.weight",
    ):
        assert name in names
    assert all(name.split(".")[0] in {"vpm", "resampler", "llm"} for name in names)
    assert not any(name.startswith("vpm.attn_pool") for name in names)  # replaced by Identity
    blocks = {int(name.split(".")[2]) for name in names if name.startswith("vpm.blocks.")}
    assert blocks == set(range(vision["num_hidden_layers"] - 1))  # drop_vision_last_layer
    grid = vision["image_size"] // vision["patch_size"]
    assert pos_embed == [1, grid * grid, vision["hidden_size"]]
    assert config["auto_map"]["AutoModel"] == "modeling_visrag_ret.VisRAG_Ret"
    assert (config["query_num"], config["max_slice_nums"], config["scale_resolution"]) == (64, 9, 448)
    published = environment.published_code_dir()
    for name in ("configuration_minicpm.py", "modeling_minicpm.py", "modeling_minicpmv.py", "resampler.py"):
        assert (visrag_dir / name).read_bytes() == (published / name).read_bytes()
    assert "from .modeling_minicpmv import MiniCPMV" in (visrag_dir / "modeling_visrag_ret.py").read_text()


def test_tokenizer_training_is_deterministic(visrag_dir: Path) -> None:
    from tests.visrag_reference.build_tiny import train_tokenizer

    assert train_tokenizer(seed=0) == (visrag_dir / "tokenizer.model").read_bytes()


def test_vectors_are_unit_length_and_the_hidden_size(ref: Reference, visrag_dir: Path) -> None:
    hidden = json.loads((visrag_dir / "config.json").read_text())["hidden_size"]
    for item_id, vector in ref.single.items():
        assert vector.dtype == np.float32
        assert vector.shape == (hidden,)
        assert abs(float(np.linalg.norm(vector)) - 1.0) < 1e-5, item_id


def test_query_instruction_changes_the_vector(ref: Reference) -> None:
    query, document = ref.single["query"], ref.single["document"]
    assert float(query @ document) < 0.95
    assert len(ref.token_ids["query"]) > len(ref.token_ids["document"]) + 5
    assert ref.token_ids["query"][0] == ref.token_ids["document"][0] == 1  # bos


def test_small_image_is_one_upscaled_slice(ref: Reference, visrag_dir: Path) -> None:
    ((width, height),) = ref.slices["small"].tolist()
    assert width * height > 10 * 120 * 90
    assert width % 14 == 0 and height % 14 == 0
    assert ref.slices["interleaved"].tolist() == ref.slices["small"].tolist()
    assert not np.allclose(ref.single["interleaved"], ref.single["small"], atol=1e-4)
    _assert_image_slots(ref, visrag_dir, "small", slices=1)
    _assert_image_slots(ref, visrag_dir, "interleaved", slices=1)


def test_large_page_is_its_source_plus_a_three_by_three_grid(ref: Reference, visrag_dir: Path) -> None:
    sizes = ref.slices["large"].tolist()
    assert len(sizes) == 10
    source, grid = sizes[0], sizes[1:]
    assert len({tuple(size) for size in grid}) == 1
    assert source[0] * source[1] <= 448 * 448
    assert all(side % 14 == 0 for size in sizes for side in size)
    _assert_image_slots(ref, visrag_dir, "large", slices=10)


def test_published_code_is_batch_independent(ref: Reference) -> None:
    for item_id, alone in ref.single.items():
        assert np.abs(alone - ref.batch[item_id]).max() < 1e-5, item_id


def _assert_image_slots(ref: Reference, visrag_dir: Path, item_id: str, slices: int) -> None:
    """Each slice is <image>, query_num <unk> slots, </image>; a grid sits in <slice>...</slice>."""
    tokenizer = spm.SentencePieceProcessor(model_file=str(visrag_dir / "tokenizer.model"))
    ids = ref.token_ids[item_id].tolist()
    assert ids.count(tokenizer.piece_to_id("<image>")) == slices
    assert ids.count(tokenizer.piece_to_id("</image>")) == slices
    assert ids.count(tokenizer.unk_id()) == 64 * slices
    assert ids.count(tokenizer.piece_to_id("<slice>")) == (1 if slices > 1 else 0)


def _load_standin(name: str) -> ModuleType:
    """Load one stand-in file under a private name: `torchvision` must stay unimportable here."""
    spec = importlib.util.spec_from_file_location(f"_visrag_standin_{name}", STANDIN / "transforms" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_torchvision_standin_matches_the_documented_transforms() -> None:
    basic = _load_standin("_basic")
    pixels = np.array([[[0, 51, 255], [102, 153, 204]], [[255, 0, 0], [1, 2, 3]]], dtype=np.uint8)
    image = Image.fromarray(pixels, "RGB")

    tensor = basic.ToTensor()(image)  # (H, W, C) in [0, 255] -> (C, H, W) float in [0, 1]
    assert tensor.dtype == torch.float32
    assert tuple(tensor.shape) == (3, 2, 2)
    assert torch.equal(tensor, torch.from_numpy(pixels).permute(2, 0, 1).float() / 255)
    assert tuple(basic.ToTensor()(image.convert("L")).shape) == (1, 2, 2)
    assert torch.equal(basic.ToTensor()(np.zeros((2, 2), np.float64)), torch.zeros(1, 2, 2, dtype=torch.float64))

    normalize = basic.Normalize(mean=(0.5, 0.25, 0.0), std=(0.5, 0.5, 2.0))  # (x - mean) / std per channel
    before = tensor.clone()
    out = normalize(tensor)
    assert torch.equal(tensor, before)  # not in place by default
    expected = (before - torch.tensor([0.5, 0.25, 0.0]).view(3, 1, 1)) / torch.tensor([0.5, 0.5, 2.0]).view(3, 1, 1)
    assert torch.allclose(out, expected, atol=0, rtol=0)
    with pytest.raises(ValueError, match="division by zero"):
        basic.Normalize(mean=(0.0,), std=(0.0,))(tensor)
    with pytest.raises(TypeError):
        normalize(torch.zeros(3, 2, 2, dtype=torch.uint8))

    composed = basic.Compose([lambda x: [*x, "a"], lambda x: [*x, "b"]])
    assert composed(["start"]) == ["start", "a", "b"]  # applied in order
    inception = basic.Compose([basic.ToTensor(), basic.Normalize(mean=(0.5,) * 3, std=(0.5,) * 3)])
    assert torch.allclose(inception(image), tensor * 2 - 1, atol=1e-7)
    assert basic.InterpolationMode.BICUBIC.value == "bicubic"
