"""A tiny jina-clip-v2 stand-in checkpoint, built on the spot: random weights, an XLM-R tokenizer
trained here, and the remote code in `tests/jina_clip_remote/` copied next to `config.json` with an
`auto_map` pointing at it, so it loads with `trust_remote_code=True` exactly as the published
checkpoint does (`AutoModel`, `AutoTokenizer`, `AutoImageProcessor`)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from tests.tiny_models import CORPUS

REMOTE = Path(__file__).resolve().parent / "jina_clip_remote"
QUERY_INSTRUCTION = "Represent the query for retrieving evidence documents: "
MATRYOSHKA = [8, 16]
IMAGE_SIZE = 32
AUTO_MAP = {
    "AutoConfig": "configuration_tiny_jina_clip.TinyJinaCLIPConfig",
    "AutoModel": "modeling_tiny_jina_clip.TinyJinaCLIPModel",
}
PROCESSOR_AUTO_MAP = {"AutoImageProcessor": "processing_tiny_jina_clip.TinyJinaCLIPImageProcessor"}


def _tokenizer(directory: Path) -> int:
    """Train a small unigram vocabulary and save it as an XLM-R tokenizer; returns the vocabulary size."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import XLMRobertaTokenizer

    trained = Tokenizer(models.Unigram())
    trained.pre_tokenizer = pre_tokenizers.Metaspace()
    specials = ["<s>", "<pad>", "</s>", "<unk>"]  # XLM-R's ids 0..3
    trainer = trainers.UnigramTrainer(vocab_size=160, special_tokens=specials, unk_token="<unk>")
    trained.train_from_iterator([*CORPUS, QUERY_INSTRUCTION] * 2, trainer)
    vocab = [(piece, score) for piece, score in json.loads(trained.to_str())["model"]["vocab"]]
    tokenizer = XLMRobertaTokenizer(vocab=[*vocab, ("<mask>", 0.0)], model_max_length=8192)
    tokenizer.save_pretrained(directory)
    return len(tokenizer)


def config_dict(vocab_size: int, **overrides: Any) -> dict[str, Any]:
    """jina-clip-v2's config layout at a tiny size (hidden 32, 2 layers each)."""
    text = {
        "embed_dim": 32,
        "pooler_type": "mean_pooler",
        "default_lora_task": "retrieval.query",
        "hf_model_config_kwargs": {
            "vocab_size": vocab_size,
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "intermediate_size": 64,
            "max_position_embeddings": 80,
            "pad_token_id": 1,
            "bos_token_id": 0,
            "eos_token_id": 2,
            "lora_adaptations": ["retrieval.query"],
            "task_instructions": {"retrieval.query": QUERY_INSTRUCTION},
        },
    }
    vision = {"embed_dim": 32, "width": 32, "image_size": IMAGE_SIZE, "patch_size": 8, "layers": 2, "head_width": 8}
    return {
        "text_config": text,
        "vision_config": vision,
        "add_projections": False,
        "projection_dim": 32,
        "matryoshka_dimensions": MATRYOSHKA,
        "truncate_dim": None,
        **overrides,
    }


def build_jina_clip(directory: Path, *, seed: int = 0, **overrides: Any) -> Path:
    """Save the checkpoint (config, weights, tokenizer, preprocessor, remote code) to `directory`."""
    from tests.jina_clip_remote.configuration_tiny_jina_clip import TinyJinaCLIPConfig
    from tests.jina_clip_remote.modeling_tiny_jina_clip import TinyJinaCLIPModel
    from tests.jina_clip_remote.processing_tiny_jina_clip import TinyJinaCLIPImageProcessor

    directory.mkdir(parents=True, exist_ok=True)
    vocab_size = _tokenizer(directory)
    config = TinyJinaCLIPConfig(**config_dict(vocab_size, **overrides))
    config.auto_map = AUTO_MAP
    torch.manual_seed(seed)
    TinyJinaCLIPModel(config).eval().save_pretrained(directory)
    processor = TinyJinaCLIPImageProcessor(size=IMAGE_SIZE)
    processor.auto_map = PROCESSOR_AUTO_MAP
    processor.save_pretrained(directory)
    for source in REMOTE.glob("*_tiny_jina_clip.py"):
        shutil.copy(source, directory / source.name)
    return directory


def load_reference(directory: Path) -> Any:
    """The checkpoint as a user loads it: `AutoModel.from_pretrained(..., trust_remote_code=True)`."""
    from transformers import AutoModel

    return AutoModel.from_pretrained(str(directory), trust_remote_code=True).eval()
