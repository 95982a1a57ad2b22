"""VisRAG-Ret's pieces on their own: slicing geometry, weight names, prompt units, batching layout,
the decoder's padding independence. (Parity with the published code: tests/test_visrag.py.)"""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pytest
import torch
from PIL import Image as PILImageModule
from pydantic import ValidationError

from providers.base import Image, InputRejected, Item, Text
from providers.minicpm import MiniCPMConfig, MiniCPMDecoder, rotary_angles
from providers.visrag import INSTRUCTION, VisragOptions, unit_of
from providers.visrag_model import normalise
from providers.visrag_prompt import collate, pixels
from providers.visrag_slicing import SlicePlan, cut, plan, snap
from providers.visrag_vision import VisionConfig, timm_to_tower

# --- slicing: the published algorithm's numbers, worked by hand -------------------------------


def test_snap_rounds_half_to_even_and_never_below_one_unit() -> None:
    assert snap(21, 14) == 28  # 1.5 -> 2
    assert snap(35, 14) == 28  # 2.5 -> 2 (Python's round), not 42
    assert snap(3, 14) == 14
    assert snap(433.0, 14) == 434


def test_a_small_picture_is_upscaled_to_about_448_squared_without_slices() -> None:
    # 300x200: height int(448 / sqrt(1.5)) = 365, width int(365 * 1.5) = 547, snapped to 14s.
    assert plan((300, 200)) == SlicePlan(source=(546, 364))


def test_a_square_page_of_nine_times_the_area_is_a_3x3_grid() -> None:
    sliced = plan((1344, 1344))
    assert sliced == SlicePlan(source=(448, 448), grid=(3, 3), refined=(1344, 1344))
    assert sliced.slice_count == 9


def test_a_portrait_page_gets_the_grid_closest_to_its_shape() -> None:
    # 1000x1300 is 6.5 areas: counts 6, 7, 8; 2 columns x 3 rows is closest to log(1000/1300).
    # Cells: 1000/2 x round(1300/3)*3/3 = 500 x 433 -> upscaled and snapped to 476 x 420.
    assert plan((1000, 1300)) == SlicePlan(source=(392, 504), grid=(2, 3), refined=(952, 1260))


def test_a_banner_is_one_row_of_five_and_never_more_than_nine() -> None:
    assert plan((4000, 200)).grid == (5, 1)
    assert plan((8000, 8000)).slice_count <= 9
    assert plan((8000, 8000), max_slices=4).grid == (2, 2)


def test_cut_gives_the_overview_then_the_grid_row_by_row() -> None:
    rng = np.random.default_rng(0)
    image = PILImageModule.fromarray(rng.integers(0, 255, (1300, 1000, 3), dtype=np.uint8))
    sliced = plan(image.size)
    pictures = cut(image, sliced)
    assert [p.size for p in pictures] == [(392, 504)] + [(476, 420)] * 6
    refined = np.asarray(image.resize((952, 1260), PILImageModule.Resampling.BICUBIC))
    # slice 3 is row 1, column 1: pixels from (476, 420) on
    np.testing.assert_array_equal(np.asarray(pictures[4]), refined[420:840, 476:952])


def test_pixels_are_rgb_bytes_channel_first_scaled_to_minus_one_one_in_the_forward() -> None:
    image = PILImageModule.new("RGBA", (3, 2), (255, 0, 51, 7))
    tensor = pixels(image)
    assert tensor.shape == (3, 2, 3)
    assert tensor.dtype == torch.uint8
    assert tensor[:, 1, 2].tolist() == [255, 0, 51]
    np.testing.assert_allclose(normalise(tensor)[:, 0, 0].numpy(), [1.0, -1.0, 51 / 255 * 2 - 1], rtol=0, atol=1e-7)


# --- the vision tower's names and sizes -------------------------------------------------------


def test_the_real_tower_is_so400m_less_its_last_block() -> None:
    config = VisionConfig.from_model_config({"vision_encoder": "vit_so400m_patch14_siglip_384.webli"})
    assert config == VisionConfig(1152, 26, 16, 4304, 14)
    kept = VisionConfig.from_model_config(
        {"vision_encoder": "vit_so400m_patch14_siglip_384", "drop_vision_last_layer": False}
    )
    assert kept.num_hidden_layers == 27
    with pytest.raises(ValueError, match="unknown vision_encoder"):
        VisionConfig.from_model_config({"vision_encoder": "vit_huge_patch14_clip_224"})


def test_timm_names_map_onto_the_siglip_encoder_and_qkv_splits_in_three() -> None:
    qkv = torch.arange(6 * 2, dtype=torch.float32).reshape(6, 2)
    state = {
        "patch_embed.proj.weight": torch.zeros(2, 3, 14, 14),
        "pos_embed": torch.zeros(1, 4, 2),
        "blocks.0.attn.qkv.weight": qkv,
        "blocks.0.attn.qkv.bias": torch.arange(6.0),
        "blocks.0.norm1.weight": torch.ones(2),
        "blocks.1.norm1.weight": torch.ones(2),  # past the kept layers: dropped
        "attn_pool.latent": torch.zeros(1, 1, 2),  # timm's pooling head: unused
        "norm.bias": torch.zeros(2),
    }
    mapped = timm_to_tower(state, layers=1)
    assert sorted(mapped) == [
        "embeddings.patch_embedding.weight",
        "embeddings.position_embedding",
        "encoder.layers.0.layer_norm1.weight",
        "encoder.layers.0.self_attn.k_proj.bias",
        "encoder.layers.0.self_attn.k_proj.weight",
        "encoder.layers.0.self_attn.q_proj.bias",
        "encoder.layers.0.self_attn.q_proj.weight",
        "encoder.layers.0.self_attn.v_proj.bias",
        "encoder.layers.0.self_attn.v_proj.weight",
        "post_layernorm.bias",
    ]
    torch.testing.assert_close(mapped["encoder.layers.0.self_attn.k_proj.weight"], qkv[2:4])
    torch.testing.assert_close(mapped["encoder.layers.0.self_attn.v_proj.bias"], torch.tensor([4.0, 5.0]))
    with pytest.raises(ValueError, match="no place"):
        timm_to_tower({"blocks.0.ls1.gamma": torch.ones(2)}, layers=1)
    with pytest.raises(ValueError, match="no place"):
        timm_to_tower({"cls_token": torch.ones(1, 1, 2)}, layers=1)


# --- items as the model reads them ------------------------------------------------------------


def _image(width: int = 40, height: int = 30) -> Image:
    buffer = io.BytesIO()
    PILImageModule.new("RGB", (width, height), (10, 200, 30)).save(buffer, format="PNG")
    data = buffer.getvalue()
    return Image(data, "image/png", hashlib.sha256(data).hexdigest(), PILImageModule.open(io.BytesIO(data)))


def test_a_query_gets_the_instruction_and_a_document_does_not() -> None:
    item = Item((_image(), Text("revenue by quarter")))
    query, document = unit_of(item, 0, INSTRUCTION), unit_of(item, 0, None)
    assert query.text == INSTRUCTION + "revenue by quarter"
    assert document.text == "revenue by quarter"
    assert query.image is not None
    assert unit_of(Item((_image(),)), 0, INSTRUCTION).text == INSTRUCTION


def test_two_pictures_or_two_texts_in_one_item_are_refused_by_index() -> None:
    with pytest.raises(InputRejected) as refused:
        unit_of(Item((Text("a"), _image(), _image())), 7, None)
    assert (refused.value.index, refused.value.part) == (7, 2)
    with pytest.raises(InputRejected, match="one text"):
        unit_of(Item((Text("a"), Text("b"))), 0, None)


def test_max_length_must_leave_room_for_a_sliced_page() -> None:
    with pytest.raises(ValidationError):
        VisragOptions(model="x", max_length=512)


def test_collate_pads_right_and_lists_pictures_in_item_order() -> None:
    def item(length: int, slots: list[int], slices: int) -> dict[str, torch.Tensor]:
        features = {"input_ids": torch.arange(1, length + 1).unsqueeze(0)}
        if slots:
            features["vision_positions"] = torch.tensor(slots).unsqueeze(0)
            features["pixels.source"] = torch.full((1, 3, 14, 28), float(length))
        if slices:
            features["pixels.slices"] = torch.full((1, slices, 3, 28, 14), float(-length))
        return features

    batch = collate([item(5, [1, 2], 2), item(3, [], 0), item(4, [2, 3], 0)])
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4, 5], [1, 2, 3, 0, 0], [1, 2, 3, 4, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 1, 1, 0]]
    assert [batch[f"pixels.{i}"].shape for i in range(3)] == [(1, 3, 14, 28), (2, 3, 28, 14), (1, 3, 14, 28)]
    assert float(batch["pixels.2"][0, 0, 0, 0]) == 4.0  # the third item's overview
    assert batch["vision_rows"].tolist() == [0, 0, 2, 2]
    assert batch["vision_columns"].tolist() == [1, 2, 2, 3]


# --- the decoder ------------------------------------------------------------------------------

TINY_LM = MiniCPMConfig(
    vocab_size=50,
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    scale_emb=12,
    scale_depth=1.4,
)


def test_rotary_angles_are_finite_unit_rotations_far_past_any_cache() -> None:
    cos, sin = rotary_angles(TINY_LM, 10_000, torch.device("cpu"))
    assert torch.isfinite(cos).all() and torch.isfinite(sin).all()
    torch.testing.assert_close(cos**2 + sin**2, torch.ones_like(cos))


def test_right_padding_leaves_every_real_token_as_it_is_alone() -> None:
    torch.manual_seed(0)
    decoder = MiniCPMDecoder(TINY_LM).eval()
    long, short = torch.randint(0, 50, (1, 9)), torch.randint(0, 50, (1, 4))
    padded = torch.cat([short, torch.zeros(1, 5, dtype=torch.long)], dim=1)
    with torch.inference_mode():
        alone = decoder(decoder.embed(short), torch.ones(1, 4, dtype=torch.long))
        together = decoder(decoder.embed(torch.cat([long, padded])), torch.tensor([[1] * 9, [1] * 4 + [0] * 5]))
    torch.testing.assert_close(together[1, :4], alone[0], atol=1e-5, rtol=0)
    assert torch.isfinite(together).all()
