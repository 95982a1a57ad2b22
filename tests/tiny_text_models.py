"""Build tiny text-encoder checkpoints on the spot: random weights, a tokenizer trained here.

BERT (WordPiece, right padding), XLM-R (Unigram, position ids offset by its padding index) and a
Qwen2 decoder (byte-level BPE, LEFT padding, for last-token pooling). The classes, files and
loading path are the real ones (`save_pretrained`, then `AutoTokenizer` / `AutoModel`), so the
provider loads them as it loads a hub checkpoint. `write_st_files` adds sentence-transformers'
own files (modules.json, 1_Pooling/config.json, ...) where a test wants them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import (
    BertConfig,
    BertModel,
    BertTokenizer,
    Qwen2Config,
    Qwen2Model,
    Qwen2Tokenizer,
    XLMRobertaConfig,
    XLMRobertaModel,
    XLMRobertaTokenizer,
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
    "query: passage: represent this sentence for searching relevant passages",
] * 20
TINY = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}
MAX_POSITIONS = 64


def _train(tokenizer: Tokenizer, trainer: Any) -> Tokenizer:
    tokenizer.train_from_iterator(CORPUS, trainer)
    return tokenizer


def build_bert(directory: Path, *, seed: int = 0) -> Path:
    """A BERT checkpoint with a lower-casing WordPiece tokenizer (right padding, token type ids)."""
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    trained = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    trained.normalizer = normalizers.BertNormalizer(lowercase=True)
    trained.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    _train(trained, trainers.WordPieceTrainer(vocab_size=200, special_tokens=specials))
    tokenizer = BertTokenizer(vocab=trained.get_vocab(), model_max_length=512)
    config = BertConfig(**TINY, vocab_size=len(tokenizer), max_position_embeddings=MAX_POSITIONS, pad_token_id=0)
    torch.manual_seed(seed)
    BertModel(config).eval().save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def build_xlm_roberta(directory: Path, *, seed: int = 0) -> Path:
    """An XLM-R checkpoint: Unigram vocabulary, `<pad>` = 1, so positions start at 2 (514 → 512)."""
    trained = Tokenizer(models.Unigram())
    trained.pre_tokenizer = pre_tokenizers.Metaspace()
    _train(trained, trainers.UnigramTrainer(vocab_size=150, special_tokens=["<unk>"], unk_token="<unk>"))
    pieces = json.loads(trained.to_str())["model"]["vocab"]
    learned = [(piece, score) for piece, score in pieces if piece != "<unk>"]
    vocab = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), *learned, ("<mask>", 0.0)]
    tokenizer = XLMRobertaTokenizer(vocab=vocab, model_max_length=512)
    config = XLMRobertaConfig(
        **TINY,
        vocab_size=len(tokenizer),
        max_position_embeddings=MAX_POSITIONS + 2,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        type_vocab_size=1,
    )
    torch.manual_seed(seed)
    XLMRobertaModel(config).eval().save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def build_qwen2(directory: Path, *, seed: int = 0) -> Path:
    """A Qwen2 decoder with a byte-level BPE tokenizer that pads on the LEFT (last-token pooling)."""
    trained = Tokenizer(models.BPE())
    trained.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trained.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    _train(trained, trainer)
    state = json.loads(trained.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in state["merges"]]
    tokenizer = Qwen2Tokenizer(vocab=state["vocab"], merges=merges, padding_side="left", model_max_length=512)
    config = Qwen2Config(
        **TINY,
        num_key_value_heads=2,
        vocab_size=len(tokenizer),
        max_position_embeddings=MAX_POSITIONS,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    Qwen2Model(config).eval().save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def write_st_files(
    directory: Path,
    *,
    pooling: str = "mean",
    normalize: bool = True,
    include_prompt: bool = True,
    max_seq_length: int | None = None,
    do_lower_case: bool = False,
    prompts: dict[str, str] | None = None,
    default_prompt_name: str | None = None,
) -> Path:
    """sentence-transformers' files, as its `save` writes them (Transformer, Pooling, Normalize)."""
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
    (directory / "modules.json").write_text(json.dumps(modules))
    (directory / "1_Pooling").mkdir(exist_ok=True)
    pooling_config = {
        "word_embedding_dimension": TINY["hidden_size"],
        "pooling_mode_cls_token": pooling == "cls",
        "pooling_mode_mean_tokens": pooling == "mean",
        "pooling_mode_max_tokens": pooling == "max",
        "pooling_mode_mean_sqrt_len_tokens": False,
        "pooling_mode_lasttoken": pooling == "last_token",
        "include_prompt": include_prompt,
    }
    (directory / "1_Pooling" / "config.json").write_text(json.dumps(pooling_config))
    bert_config: dict[str, Any] = {"do_lower_case": do_lower_case}
    if max_seq_length is not None:
        bert_config["max_seq_length"] = max_seq_length
    (directory / "sentence_bert_config.json").write_text(json.dumps(bert_config))
    st_config = {"prompts": prompts or {}, "default_prompt_name": default_prompt_name, "similarity_fn_name": "cosine"}
    (directory / "config_sentence_transformers.json").write_text(json.dumps(st_config))
    return directory


class RawEncoder:
    """The reference: a checkpoint read with `AutoTokenizer` / `AutoModel` and pooled by hand, the
    batch padded by the tokenizer itself. It shares no code with the provider (the benchmark's raw
    side too)."""

    def __init__(self, directory: Path | str) -> None:
        from transformers import AutoModel, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(directory)
        self.model = AutoModel.from_pretrained(directory, dtype=torch.float32).eval()

    @torch.inference_mode()
    def encode(
        self,
        texts: list[str],
        pooling: str = "mean",
        *,
        max_length: int | None = None,
        skip_first: int = 0,
    ) -> tuple[np.ndarray, list[int]]:
        """L2-normalised rows and each text's token count; `skip_first` real tokens of each text are
        left out of the pooling (a prompt under `include_prompt: false`)."""
        encoded = self.tokenizer(
            texts, padding=True, truncation=max_length is not None, max_length=max_length, return_tensors="pt"
        )
        hidden = self.model(**encoded).last_hidden_state
        rows = []
        for row, mask in enumerate(encoded["attention_mask"]):
            real = mask.nonzero().flatten()
            pooled_positions = real[skip_first:] if skip_first < len(real) else real
            if pooling == "mean":
                vector = hidden[row, pooled_positions].mean(dim=0)
            elif pooling == "cls":
                vector = hidden[row, pooled_positions[0]]
            else:
                vector = hidden[row, real[-1]]
            rows.append(vector / vector.norm())
        counts = [int(n) for n in encoded["attention_mask"].sum(dim=1)]
        return torch.stack(rows).numpy(), counts
