"""Build a tiny VisRAG-Ret model directory from the published code, as the hub lays it out.

    .cache/visrag-reference/venv/bin/python -m tests.visrag_reference.build_tiny DIR [--seed N]

(run from the repository root, in the reference environment). DIR gets the published modeling
files (flat, with the one import rewrite SOURCE.md describes), a config.json whose `auto_map`
points at them, random weights saved by the published classes' own `save_pretrained` (so the
weight names are the released checkpoint's: `vpm.*` timm names, `resampler.*`, `llm.model.*`,
`llm.lm_head.*`), and a SentencePiece tokenizer trained here and saved as the published
`LlamaTokenizerWrapper`. Deterministic: the same seed gives byte-identical weights and tokenizer.

Beside them, `tiny_timm_vit.json` (how to rebuild the tiny timm tower: register it before
loading) and, in config.json, a `vision_config` block with the tower's hyperparameters under
transformers' SiglipVisionConfig names, for loaders without timm.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import shutil
from pathlib import Path
from typing import Any

from tests.visrag_reference import environment
from tests.visrag_reference.tiny_vit import TIMM_SPEC_FILE, register, spec

CODE_FILES = (
    "configuration_minicpm.py",
    "modeling_minicpm.py",
    "modeling_minicpmv.py",
    "modeling_visrag_ret.py",
    "resampler.py",
)
# The GitHub tree nests the packages; the hub repo is flat (SOURCE.md).
NESTED_IMPORT = "from ..modeling_minicpmv.modeling_minicpmv import MiniCPMV"
FLAT_IMPORT = "from .modeling_minicpmv import MiniCPMV"

# The markup tokens MiniCPM-V's tokenizer knows as single pieces (LlamaTokenizerWrapper's
# attributes, plus the chat roles its `chat` writes). `<unk>` (id 0) fills the image slots.
MARKUP_TOKENS = (
    "<image>",
    "</image>",
    "<ref>",
    "</ref>",
    "<box>",
    "</box>",
    "<quad>",
    "</quad>",
    "<point>",
    "</point>",
    "<slice>",
    "</slice>",
    "<用户>",
    "<AI>",
)

# MiniCPM-V 2.0's language model, narrowed; the scaling constants are the real model's.
LLM_CONFIG: dict[str, Any] = {
    "hidden_size": 128,
    "intermediate_size": 320,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "hidden_act": "silu",
    "max_position_embeddings": 4096,
    "initializer_range": 0.1,
    "rms_norm_eps": 1e-05,
    "rope_theta": 10000.0,
    "rope_scaling": None,
    "attention_bias": False,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "tie_word_embeddings": False,
    "scale_emb": 12,
    "dim_model_base": 256,
    "scale_depth": 1.4,
    "use_cache": True,
}
# The real slicing parameters and resampler size.
VISRAG_CONFIG: dict[str, Any] = {
    "query_num": 64,
    "image_size": 448,
    "drop_vision_last_layer": True,
    "slice_mode": True,
    "patch_size": 14,
    "max_slice_nums": 9,
    "scale_resolution": 448,
}
AUTO_MAP = {
    "AutoConfig": "configuration_minicpm.MiniCPMVConfig",
    "AutoModel": "modeling_visrag_ret.VisRAG_Ret",
}
TOKENIZER_AUTO_MAP = {"AutoTokenizer": ["modeling_minicpmv.LlamaTokenizerWrapper", None]}
VOCAB_SIZE = 700

# fmt: off
_WORDS = (
    "the", "a", "of", "and", "to", "in", "is", "for", "on", "with", "by", "from", "page", "table", "figure",
    "chart", "revenue", "invoice", "total", "report", "document", "query", "retrieval", "image", "text",
    "screenshot", "quarterly", "annual", "growth", "profit", "loss", "market", "cat", "dog", "photo", "red",
    "blue", "green", "sunset", "sea", "city", "street", "map", "diagram", "slide", "section", "summary",
    "results", "what", "where", "when", "which", "how", "does", "show", "look", "like", "relevant", "documents",
    "represent", "this", "retrieving",
)
# fmt: on


def corpus(seed: int, size: int = 400) -> list[str]:
    """A few hundred generated sentences: words, numbers, punctuation and some non-ASCII."""
    rng = random.Random(seed)
    extras = ["2023", "42.5%", "$1,200", "Q3", "naïve", "über", "東京", "(see p. 4)", "-", ":", "?"]
    lines = []
    for _ in range(size):
        words = [rng.choice(_WORDS) for _ in range(rng.randint(4, 14))]
        if rng.random() < 0.5:
            words.insert(rng.randrange(len(words)), rng.choice(extras))
        lines.append(" ".join(words).capitalize() + rng.choice([".", "?", "!", ""]))
    return lines


def train_tokenizer(seed: int) -> bytes:
    """A MiniCPM-style SentencePiece BPE model: byte fallback, identity normalisation, unk/bos/eos 0/1/2.

    No dummy prefix: with one, the legacy tokenizer puts a "▁" before `</image>` and the published
    code finds 65 image slots for 64 resampler outputs.
    """
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus(seed)),
        model_writer=model,
        model_type="bpe",
        vocab_size=VOCAB_SIZE,
        character_coverage=1.0,
        byte_fallback=True,
        split_digits=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=False,
        allow_whitespace_only_pieces=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        user_defined_symbols=list(MARKUP_TOKENS),
        num_threads=1,
        minloglevel=2,
    )
    return model.getvalue()


def copy_code(code_dir: Path, directory: Path) -> None:
    """The published files, unmodified but for the flat-repo import in modeling_visrag_ret.py."""
    for name in CODE_FILES:
        shutil.copyfile(code_dir / name, directory / name)
    path = directory / "modeling_visrag_ret.py"
    source = path.read_text()
    if source.count(NESTED_IMPORT) != 1:
        raise RuntimeError(f"expected one `{NESTED_IMPORT}` in {path}")
    path.write_text(source.replace(NESTED_IMPORT, FLAT_IMPORT))


def save_tokenizer(directory: Path, seed: int) -> int:
    """Train, then save through the published wrapper class; returns the vocabulary size."""
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    vocab_file = directory / "tokenizer.model"
    vocab_file.write_bytes(train_tokenizer(seed))
    wrapper = get_class_from_dynamic_module("modeling_minicpmv.LlamaTokenizerWrapper", str(directory))
    tokenizer = wrapper(vocab_file=str(vocab_file), legacy=True, add_bos_token=True, add_eos_token=False)
    tokenizer.save_pretrained(str(directory))
    config_path = directory / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["auto_map"] = TOKENIZER_AUTO_MAP
    # Inert in legacy mode (sentencepiece's own, absent, dummy prefix decides) and missing from the
    # hub's older tokenizer_config.json: leave it out, so no reader mistakes it for the behaviour.
    config.pop("add_prefix_space", None)
    config["tokenizer_class"] = "LlamaTokenizerWrapper"
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    return len(tokenizer)


def vision_config(vpm: Any, depth: int) -> dict[str, Any]:
    """The built tower's hyperparameters, read off the module, under SiglipVisionConfig's names.

    `num_hidden_layers` is timm's depth before `drop_vision_last_layer`: the checkpoint then holds
    one block fewer. The tower's MLP uses exact GELU (timm's default), not SigLIP's tanh GELU.
    """
    block = vpm.blocks[0]
    return {
        "hidden_size": int(vpm.embed_dim),
        "intermediate_size": int(block.mlp.fc1.out_features),
        "num_hidden_layers": depth,
        "num_attention_heads": int(block.attn.num_heads),
        "patch_size": int(vpm.patch_embed.patch_size[0]),
        "image_size": int(vpm.patch_embed.img_size[0]),
        "num_channels": 3,
        "layer_norm_eps": float(vpm.norm.eps),
        "hidden_act": "gelu",
    }


def spread_parameters(model: Any, seed: int) -> None:
    """Give every norm scale, bias and fixed embedding random values, seeded.

    Initialisation leaves norm scales at 1, biases at 0 and the resampler's query positions at their
    sin-cos values; a port that skipped a bias, swapped a scale for a shift or recomputed a stored
    table would still match such a model. Random values make each of them count.
    """
    import torch

    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, parameter in sorted(model.named_parameters()):
            noise = torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype)
            if name.endswith("bias") or name == "resampler.pos_embed":
                parameter.add_(0.1 * noise)
            elif parameter.ndim == 1:  # LayerNorm / RMSNorm scales
                parameter.copy_(1.0 + 0.2 * noise)


def build(directory: Path, code_dir: Path, seed: int = 0) -> Path:
    """Write the tiny directory; returns it."""
    import torch
    import transformers
    from transformers import AutoConfig

    auto_model: Any = transformers.AutoModel  # 4.57 runs this; the type checker sees the gateway's 5.x

    directory.mkdir(parents=True, exist_ok=True)
    copy_code(code_dir, directory)
    recipe = spec()
    (directory / TIMM_SPEC_FILE).write_text(json.dumps(recipe, indent=2) + "\n")
    register(recipe)
    vocab_size = save_tokenizer(directory, seed)
    config = {
        "architectures": ["VisRAG_Ret"],
        "auto_map": AUTO_MAP,
        "model_type": "minicpmv",
        "vocab_size": vocab_size,
        "vision_encoder": recipe["name"],
        **LLM_CONFIG,
        **VISRAG_CONFIG,
    }
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    loaded = AutoConfig.from_pretrained(str(directory), trust_remote_code=True)
    torch.manual_seed(seed)
    model = auto_model.from_config(loaded, trust_remote_code=True, dtype=torch.float32)
    spread_parameters(model, seed)
    loaded.vision_config = vision_config(model.vpm, int(recipe["model_args"]["depth"]))
    model.save_pretrained(str(directory), safe_serialization=True)
    return directory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("directory", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--code", type=Path, default=environment.published_code_dir())
    args = parser.parse_args()
    environment.configure()
    build(args.directory, args.code, args.seed)
    print(args.directory)


if __name__ == "__main__":
    main()
