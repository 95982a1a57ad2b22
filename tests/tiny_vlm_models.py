"""Build a small LLaVA-NeXT checkpoint on the spot (E5-V's architecture): random weights, a
byte-level BPE tokenizer trained here with llama3's header tokens and `<image>`.

The weights are random but the classes, files and loading path are the real ones
(`LlavaNextForConditionalGeneration`, `LlavaNextProcessor` with the PIL image processor), so the
provider loads it exactly as it loads `royokong/e5-v`. Images are tiled as LLaVA-NeXT's anyres
does, on 28 px tiles, so a forward pass takes milliseconds.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextImageProcessorPil,
    LlavaNextProcessor,
    PreTrainedTokenizerFast,
)

from tests.tiny_models import CORPUS

BOS, EOS, PAD, IMAGE = "<|begin_of_text|>", "<|eot_id|>", "<|end_of_text|>", "<image>"
HEADER_START, HEADER_END = "<|start_header_id|>", "<|end_header_id|>"
SPECIALS = [BOS, PAD, HEADER_START, HEADER_END, EOS, IMAGE]
TILE = 28  # the vision tower's input size: one anyres tile
PATCH = 14
GRID_PINPOINTS = [[TILE, 2 * TILE], [2 * TILE, TILE], [2 * TILE, 2 * TILE]]


def _train_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE (llama3's kind) that prepends BOS, as llama3's tokenizer does."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator([*CORPUS, "Summary above sentence image in one word: Modify this"], trainer)
    bos = tokenizer.token_to_id(BOS)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        extra_special_tokens={"image_token": IMAGE},
        model_max_length=8192,
    )


def build_llava_next(directory: Path, *, seed: int = 0, width: int = 32, layers: int = 2) -> Path:
    """Save a LLaVA-NeXT checkpoint (model, tokenizer, anyres image processor) to `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = _train_tokenizer(300)
    size = {"hidden_size": width, "intermediate_size": 2 * width, "num_hidden_layers": layers}
    config = LlavaNextConfig(
        vision_config={
            "model_type": "clip_vision_model",
            **size,
            "num_attention_heads": 4,
            "image_size": TILE,
            "patch_size": PATCH,
            "projection_dim": width,
        },
        text_config={
            "model_type": "llama",
            **size,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "vocab_size": len(tokenizer),
            "max_position_embeddings": 1024,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE),
        image_grid_pinpoints=GRID_PINPOINTS,
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
    )
    torch.manual_seed(seed)
    LlavaNextForConditionalGeneration(config).eval().save_pretrained(directory)
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": TILE},
        crop_size={"height": TILE, "width": TILE},
        image_grid_pinpoints=GRID_PINPOINTS,
    )
    processor = LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=PATCH,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )
    processor.save_pretrained(directory)
    return directory
