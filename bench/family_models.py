"""Random-weight checkpoints of jina-clip-v2, GME (Qwen2-VL) and E5-V (LLaVA-NeXT) for the benchmark.

Each keeps the published model's WIDTHS (hidden sizes, heads, MLP sizes, vocabulary, image size and
patching) and cuts only the DEPTH (`Depth`), so a layer costs what it costs in the released model
and the per-item work around the forward (tokenising, resizing, tiling, padding) is the real one; at
full depth an image takes 10-60 s on 2 CPU cores. `full_depth_parameters` counts what the released
depth would hold (on the meta device: nothing is allocated).

* jina-clip-v2: the tests' remote-code stand-in (`tests/jina_clip_fixture.py`) at XLM-R large widths
  (1024 wide, 16 heads, MLP 4096, vocabulary 250,002) and a CLIP ViT-L/14 at 512x512 standing in for
  EVA02-L (EVA02's SwiGLU MLP of 2.67x costs what a 4x GELU MLP costs); 1024-d output.
* GME-2B: `Qwen2VLForConditionalGeneration` at Qwen2-VL-2B's widths (LM 1536 wide, 12 heads, 2 KV
  heads, MLP 8960, vocabulary 151,936; vision 1280 wide, 16 heads, patch 14, merge 2); the tests'
  tokenizer trainer and chat template (`tests/tiny_qwen2_vl.py`); GME's pixel bounds.
* E5-V: `LlavaNextForConditionalGeneration` with a CLIP ViT-L/336 tower (1024 wide, 16 heads, MLP
  4096, 336x336, patch 14, E5-V's anyres grid) and a REDUCED Llama: Llama-3.2-1B's widths (2048 wide,
  32 heads, 8 KV heads, MLP 8192, vocabulary 128,256) instead of Llama-3-8B's (4096, MLP 14336), which
  does not fit twice in 24 GB in float32 here; the tests' tokenizer trainer (`tests/tiny_vlm_models.py`).

The tokenizers are trained on the spot (no hub here), on a small corpus: the benchmark's texts are
made of that corpus's words so their token counts are those of a real tokenizer's common words.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import torch

ROOT = Path(__file__).resolve().parent.parent
MODELS_DIR = ROOT / "bench" / "models"
MARKER = "bench_build.json"
TOKENIZER_VOCAB = 1000  # every word of the tests' corpus a token or two, as in a real vocabulary
BUILD_VERSION = 2  # bump when a builder changes, so cached folders are rebuilt


@dataclass(frozen=True)
class Depth:
    """Layers kept of the text (language) model and of the vision tower."""

    text: int
    vision: int

    @property
    def tag(self) -> str:
        return f"t{self.text}-v{self.vision}"


# --- jina-clip-v2 ----------------------------------------------------------------------------

JINA_REAL = Depth(text=24, vision=24)
JINA_IMAGE_SIZE = 512
JINA_MATRYOSHKA = [32, 64, 128, 256, 512, 768]


def jina_config(depth: Depth) -> dict[str, Any]:
    """Overrides of `tests.jina_clip_fixture.config_dict` at jina-clip-v2's widths."""
    from tests.jina_clip_fixture import QUERY_INSTRUCTION

    text = {
        "embed_dim": 1024,
        "pooler_type": "mean_pooler",
        "default_lora_task": "retrieval.query",
        "hf_model_config_kwargs": {
            "vocab_size": 250002,
            "hidden_size": 1024,
            "num_hidden_layers": depth.text,
            "num_attention_heads": 16,
            "intermediate_size": 4096,
            "max_position_embeddings": 8194,
            "pad_token_id": 1,
            "bos_token_id": 0,
            "eos_token_id": 2,
            "lora_adaptations": ["retrieval.query"],
            "task_instructions": {"retrieval.query": QUERY_INSTRUCTION},
        },
    }
    vision = {
        "embed_dim": 1024,
        "width": 1024,
        "image_size": JINA_IMAGE_SIZE,
        "patch_size": 14,
        "layers": depth.vision,
        "head_width": 64,
        "mlp_ratio": 4.0,
    }
    return {
        "text_config": text,
        "vision_config": vision,
        "projection_dim": 1024,
        "matryoshka_dimensions": JINA_MATRYOSHKA,
    }


def jina_tokenizer(directory: Path) -> None:
    """An XLM-R (unigram) tokenizer whose pieces are the tests' corpus's whole words plus single
    characters, as in a real vocabulary where common words are one piece (the tests' trained one has
    78 pieces and splits most words into letters: 3-4 times the tokens)."""
    from transformers import XLMRobertaTokenizer

    from tests.jina_clip_fixture import QUERY_INSTRUCTION
    from tests.tiny_models import CORPUS

    text = " ".join([*CORPUS, QUERY_INSTRUCTION])
    words = sorted({f"\u2581{word}" for word in text.split()})
    characters = sorted({c for c in text if not c.isspace()} | set("0123456789"))
    specials = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]  # XLM-R's ids 0..3
    vocab = [*specials, ("\u2581", -5.0), *((w, -1.0) for w in words), *((c, -10.0) for c in characters)]
    XLMRobertaTokenizer(vocab=[*vocab, ("<mask>", 0.0)], model_max_length=8192).save_pretrained(directory)


def build_jina_clip(directory: Path, depth: Depth) -> None:
    """The tests' builder with jina-clip-v2's widths, then its image processor at 512x512 and a
    bigger tokenizer (same special ids; the 250,002-row embedding covers it)."""
    from tests.jina_clip_fixture import PROCESSOR_AUTO_MAP
    from tests.jina_clip_fixture import build_jina_clip as build_tiny
    from tests.jina_clip_remote.processing_tiny_jina_clip import TinyJinaCLIPImageProcessor

    build_tiny(directory, **jina_config(depth))
    jina_tokenizer(directory)
    processor: Any = TinyJinaCLIPImageProcessor(size=JINA_IMAGE_SIZE)
    processor.auto_map = PROCESSOR_AUTO_MAP
    processor.save_pretrained(directory)


def jina_model(depth: Depth) -> torch.nn.Module:
    from tests.jina_clip_remote.configuration_tiny_jina_clip import TinyJinaCLIPConfig
    from tests.jina_clip_remote.modeling_tiny_jina_clip import TinyJinaCLIPModel

    return TinyJinaCLIPModel(TinyJinaCLIPConfig(**jina_config(depth)))


# --- GME-2B (Qwen2-VL) -----------------------------------------------------------------------

QWEN_REAL = Depth(text=28, vision=32)
GME_MIN_PIXELS, GME_MAX_PIXELS = 256 * 28 * 28, 1280 * 28 * 28


def qwen_config(depth: Depth, ids: dict[str, int] | None = None) -> Any:
    from transformers import Qwen2VLConfig

    ids = ids or {token: index for index, token in enumerate(_qwen_specials())}
    return Qwen2VLConfig(
        text_config={
            "vocab_size": 151936,
            "hidden_size": 1536,
            "intermediate_size": 8960,
            "num_hidden_layers": depth.text,
            "num_attention_heads": 12,
            "num_key_value_heads": 2,
            "max_position_embeddings": 32768,
            "rope_parameters": {"rope_type": "default", "mrope_section": [16, 24, 24], "rope_theta": 1000000.0},
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
            "tie_word_embeddings": True,
        },
        vision_config={
            "depth": depth.vision,
            "embed_dim": 1280,
            "hidden_size": 1536,
            "num_heads": 16,
            "mlp_ratio": 4,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )


def _qwen_specials() -> list[str]:
    from tests.tiny_qwen2_vl import SPECIALS

    return SPECIALS


def build_qwen2_vl(directory: Path, depth: Depth) -> None:
    """`tests/tiny_qwen2_vl.py`'s files (tokenizer, chat template, PIL image processor) at GME-2B's widths."""
    from transformers import Qwen2Tokenizer, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessorPil

    from tests.tiny_qwen2_vl import CHAT_TEMPLATE, SPECIALS, _train_byte_level_bpe

    directory.mkdir(parents=True, exist_ok=True)
    vocab, merges = _train_byte_level_bpe(TOKENIZER_VOCAB)
    tokenizer: Any = Qwen2Tokenizer(vocab=vocab, merges=cast(Any, merges), model_max_length=32768)
    tokenizer.add_special_tokens({"additional_special_tokens": SPECIALS[1:]})
    ids = {token: int(tokenizer.convert_tokens_to_ids(token)) for token in SPECIALS}
    torch.manual_seed(0)
    model: Any = Qwen2VLForConditionalGeneration(qwen_config(depth, ids))
    model.eval().save_pretrained(directory)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(directory)
    Qwen2VLImageProcessorPil(min_pixels=GME_MIN_PIXELS, max_pixels=GME_MAX_PIXELS).save_pretrained(directory)


def qwen_model(depth: Depth) -> torch.nn.Module:
    from transformers import Qwen2VLForConditionalGeneration

    model: torch.nn.Module = Qwen2VLForConditionalGeneration(qwen_config(depth))
    return model


# --- E5-V (LLaVA-NeXT) -----------------------------------------------------------------------

E5V_REAL = Depth(text=16, vision=24)  # the reduced Llama's 16 layers (Llama-3-8B: 32)
E5V_TILE = 336
E5V_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]


def e5v_config(depth: Depth, ids: dict[str, int] | None = None) -> Any:
    from transformers import LlavaNextConfig

    ids = ids or {"bos": 0, "eos": 4, "pad": 1, "image": 5}
    return LlavaNextConfig(
        vision_config={
            "model_type": "clip_vision_model",
            "hidden_size": 1024,
            "intermediate_size": 4096,
            "num_hidden_layers": depth.vision,
            "num_attention_heads": 16,
            "image_size": E5V_TILE,
            "patch_size": 14,
            "projection_dim": 768,
        },
        text_config={
            "model_type": "llama",
            "hidden_size": 2048,
            "intermediate_size": 8192,
            "num_hidden_layers": depth.text,
            "num_attention_heads": 32,
            "num_key_value_heads": 8,
            "vocab_size": 128256,
            "max_position_embeddings": 8192,
            "rope_theta": 500000.0,
            "bos_token_id": ids["bos"],
            "eos_token_id": ids["eos"],
            "pad_token_id": ids["pad"],
            "tie_word_embeddings": True,
        },
        image_token_index=ids["image"],
        image_grid_pinpoints=E5V_PINPOINTS,
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
        tie_word_embeddings=True,
    )


def build_e5v(directory: Path, depth: Depth) -> None:
    """A LLaVA-NeXT checkpoint as `tests/tiny_vlm_models.py` builds one, at the sizes above."""
    from transformers import LlavaNextForConditionalGeneration, LlavaNextImageProcessorPil, LlavaNextProcessor

    from tests.tiny_vlm_models import IMAGE, _train_tokenizer

    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = _train_tokenizer(TOKENIZER_VOCAB)
    ids = {
        "bos": tokenizer.bos_token_id,
        "eos": tokenizer.eos_token_id,
        "pad": tokenizer.pad_token_id,
        "image": tokenizer.convert_tokens_to_ids(IMAGE),
    }
    torch.manual_seed(0)
    model: Any = LlavaNextForConditionalGeneration(e5v_config(depth, ids))
    model.eval().save_pretrained(directory)
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": E5V_TILE},
        crop_size={"height": E5V_TILE, "width": E5V_TILE},
        image_grid_pinpoints=E5V_PINPOINTS,
    )
    processor = LlavaNextProcessor(  # type: ignore[no-untyped-call]
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=14,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )
    processor.save_pretrained(directory)


def e5v_model(depth: Depth) -> torch.nn.Module:
    from transformers import LlavaNextForConditionalGeneration

    model: torch.nn.Module = LlavaNextForConditionalGeneration(e5v_config(depth))
    return model


# --- the catalogue -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Family:
    """One family's checkpoint: how to build it and how deep the released model is."""

    name: str
    released_as: str
    build: Callable[[Path, Depth], None]
    model: Callable[[Depth], torch.nn.Module]
    real: Depth
    widths: str


FAMILIES: dict[str, Family] = {
    "jina_clip": Family(
        "jina_clip",
        "jinaai/jina-clip-v2 (0.9B)",
        build_jina_clip,
        jina_model,
        JINA_REAL,
        "XLM-R large text (1024, 16 heads, MLP 4096, vocab 250002) + CLIP ViT-L/14 @512 for EVA02-L; 1024-d",
        # the released model: 24 + 24 layers
    ),
    "qwen2_vl": Family(
        "qwen2_vl",
        "Alibaba-NLP/gme-Qwen2-VL-2B-Instruct (2.2B)",
        build_qwen2_vl,
        qwen_model,
        QWEN_REAL,
        "Qwen2-VL-2B: LM 1536 (12 heads, 2 KV, MLP 8960, vocab 151936) + ViT 1280 (16 heads, patch 14, merge 2); "
        "GME pixels 256-1280 tokens",
    ),
    "e5v": Family(
        "e5v",
        "royokong/e5-v (8.4B; here a Llama-3.2-1B-wide LM)",
        build_e5v,
        e5v_model,
        E5V_REAL,
        "CLIP ViT-L/336 (1024, 16 heads, MLP 4096, anyres up to 5 tiles) + Llama 2048 wide (32 heads, 8 KV, "
        "MLP 8192, vocab 128256)",
    ),
}


def parameters(family: Family, depth: Depth) -> int:
    """Parameters of the model at `depth`, counted on the meta device (nothing allocated)."""
    with torch.device("meta"):
        model = family.model(depth)
    return sum(p.numel() for p in model.parameters())


def model_dir(family: str, depth: Depth) -> Path:
    return MODELS_DIR / f"{family}-random-{depth.tag}"


def _cached(directory: Path, rebuild: bool) -> dict[str, Any] | None:
    marker_path = directory / MARKER
    if rebuild or not marker_path.exists():
        return None
    marker: dict[str, Any] = json.loads(marker_path.read_text())
    return marker if marker.get("version") == BUILD_VERSION else None


def ensure(family_name: str, depth: Depth, *, rebuild: bool = False) -> tuple[Path, dict[str, Any]]:
    """Build the checkpoint unless a folder of this version is there; its folder and marker."""
    family = FAMILIES[family_name]
    directory = model_dir(family_name, depth)
    cached = _cached(directory, rebuild)
    if cached is not None:
        return directory, cached
    started = time.monotonic()
    family.build(directory, depth)
    marker = {
        "version": BUILD_VERSION,
        "family": family_name,
        "released_as": family.released_as,
        "widths": family.widths,
        "depth": asdict(depth),
        "released_depth": asdict(family.real),
        "parameters": parameters(family, depth),
        "released_depth_parameters": parameters(family, family.real),
        "build_s": time.monotonic() - started,
    }
    (directory / MARKER).write_text(json.dumps(marker, indent=2))
    return directory, marker


def ensure_tiny(family_name: str, *, rebuild: bool = False) -> tuple[Path, dict[str, Any]]:
    """The tests' own tiny checkpoint of the family (hidden 32, 2 layers): to check the harness."""
    from tests.jina_clip_fixture import build_jina_clip as tiny_jina_clip
    from tests.tiny_qwen2_vl import build_qwen2_vl as tiny_qwen2_vl
    from tests.tiny_vlm_models import build_llava_next

    builders: dict[str, Callable[[Path], Path]] = {
        "jina_clip": tiny_jina_clip,
        "qwen2_vl": tiny_qwen2_vl,
        "e5v": build_llava_next,
    }
    directory = MODELS_DIR / f"{family_name}-tiny"
    cached = _cached(directory, rebuild)
    if cached is not None:
        return directory, cached
    builders[family_name](directory)
    marker = {"version": BUILD_VERSION, "family": family_name, "tiny": True}
    (directory / MARKER).write_text(json.dumps(marker, indent=2))
    return directory, marker


__all__ = ["FAMILIES", "MODELS_DIR", "Depth", "Family", "ensure", "ensure_tiny", "model_dir", "parameters"]
