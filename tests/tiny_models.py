"""Build small SigLIP / SigLIP2 checkpoints on the spot: random weights, a tokenizer trained here.

The weights are random but the classes, files and loading path are the real ones, so the
gateway loads them exactly as it loads a hub checkpoint. The benchmark reuses this module with
the base-size configs (same cost as the released models).
"""

from __future__ import annotations

import io
from pathlib import Path

import torch
from transformers import (
    Siglip2Config,
    Siglip2ImageProcessorPil,
    Siglip2Model,
    Siglip2Processor,
    Siglip2Tokenizer,
    SiglipConfig,
    SiglipImageProcessorPil,
    SiglipModel,
    SiglipProcessor,
    SiglipTokenizer,
)

CORPUS = [
    "a photo of a cat",
    "a photo of a dog sitting on the grass",
    "red sunset over the sea",
    "the quick brown fox jumps over the lazy dog",
    "retrieval augmented generation with images and text",
    "an invoice with a table of numbers",
    "hello world",
    "embeddings gateway serves vectors",
] * 20

TINY_TEXT = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "pad_token_id": 0,
    "eos_token_id": 1,
    "bos_token_id": 1,
}
TINY_VISION = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}


def _size(width: int, layers: int) -> dict[str, int]:
    return {"hidden_size": width, "intermediate_size": 2 * width, "num_hidden_layers": layers}


def _train_sentencepiece(directory: Path, vocab_size: int) -> Path:
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS),
        model_writer=model,
        vocab_size=vocab_size,
        model_type="unigram",
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        pad_piece="<pad>",
        eos_piece="</s>",
        unk_piece="<unk>",
        hard_vocab_limit=False,
        minloglevel=2,
    )
    path = directory / "spiece.model"
    path.write_bytes(model.getvalue())
    return path


def build_siglip(
    directory: Path, *, seed: int = 0, image_size: int = 32, base: bool = False, width: int = 32, layers: int = 2
) -> Path:
    """Save a SigLIP checkpoint (model, SentencePiece tokenizer, image processor) to `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    # input_ids only, as the hub SigLIP tokenizers (and transformers 4.x's class) declare.
    tokenizer = SiglipTokenizer(
        vocab_file=str(_train_sentencepiece(directory, 96)), model_max_length=64, model_input_names=["input_ids"]
    )
    vocab = max(len(tokenizer), 96)
    if base:
        # google/siglip-base-patch16-224's config (203M parameters, 32000-token vocabulary).
        text = {"vocab_size": 32000, "pad_token_id": 0, "eos_token_id": 1, "bos_token_id": 1}
        config = SiglipConfig(text_config=text, vision_config={"image_size": 224, "patch_size": 16})
    else:
        config = SiglipConfig(
            text_config={**TINY_TEXT, **_size(width, layers), "vocab_size": vocab, "max_position_embeddings": 64},
            vision_config={**TINY_VISION, **_size(width, layers), "image_size": image_size, "patch_size": 8},
        )
    torch.manual_seed(seed)
    SiglipModel(config).eval().save_pretrained(directory)
    size = config.vision_config.image_size
    image_processor = SiglipImageProcessorPil(size={"height": size, "width": size})
    SiglipProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(directory)
    return directory


def _train_bpe(vocab_size: int) -> tuple[dict[str, int], list[tuple[str, str]]]:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials))
    model = tok.model
    state = __import__("json").loads(tok.to_str())["model"]
    del model
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in state["merges"]]
    return dict(state["vocab"]), merges  # type: ignore[return-value]


def build_siglip2(directory: Path, *, seed: int = 0, max_patches: int = 16) -> Path:
    """Save a SigLIP2 (NaFlex) checkpoint with a BPE tokenizer trained here."""
    directory.mkdir(parents=True, exist_ok=True)
    vocab, merges = _train_bpe(120)
    tokenizer = Siglip2Tokenizer(vocab=vocab, merges=merges, model_max_length=64)
    config = Siglip2Config(
        text_config={**TINY_TEXT, "vocab_size": max(len(tokenizer), 120), "max_position_embeddings": 64},
        vision_config={**TINY_VISION, "patch_size": 8, "num_patches": max_patches},
    )
    torch.manual_seed(seed)
    Siglip2Model(config).eval().save_pretrained(directory)
    image_processor = Siglip2ImageProcessorPil(patch_size=8, max_num_patches=max_patches)
    Siglip2Processor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(directory)
    return directory
