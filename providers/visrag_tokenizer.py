"""The sentencepiece tokenisation VisRAG-Ret was trained and published with, on sentencepiece alone.

The published code tokenises with transformers 4.x's slow, sentencepiece-backed `LlamaTokenizer`:
split the text on the added tokens (`<unk>`, `<s>`, ... longest match first, honouring each one's
`lstrip`/`rstrip`), encode every other chunk with the sentencepiece model, prepend BOS. In its
`legacy` mode (the 4.x default when the checkpoint does not say) each chunk gets sentencepiece's
dummy-prefix space, so the text after a placeholder tokenises differently than in the newer mode.
transformers 5 dropped that tokenizer (its `LlamaTokenizer` is a converted `tokenizers` BPE with
the non-legacy behaviour), so the ids would drift; reading `tokenizer.model` and
`tokenizer_config.json` here keeps them the published ones on every transformers release.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sentencepiece

UNDERLINE = "\u2581"  # sentencepiece's visible space


@dataclass(frozen=True, slots=True)
class AddedToken:
    """A token matched in the raw text before sentencepiece runs (transformers' `AddedToken`)."""

    content: str
    id: int
    lstrip: bool = False
    rstrip: bool = False
    single_word: bool = False
    special: bool = True


def _content(value: Any) -> str | None:
    """A special token as `tokenizer_config.json` spells it: a string or an AddedToken dict."""
    if isinstance(value, dict):
        return str(value["content"])
    return None if value is None else str(value)


class SentencePieceLlamaTokenizer:
    """transformers 4.x's slow `LlamaTokenizer.encode`, for a directory holding `tokenizer.model`."""

    def __init__(self, model_file: Path, config: Mapping[str, Any]) -> None:
        self.legacy = config.get("legacy") is not False  # 4.x: unset means legacy
        self.add_prefix_space = bool(config.get("add_prefix_space", True))
        self.add_bos = bool(config.get("add_bos_token", True))
        self.add_eos = bool(config.get("add_eos_token", False))
        self.model = sentencepiece.SentencePieceProcessor()
        proto = model_file.read_bytes()
        if not self.legacy:  # the newer mode adds the prefix space itself
            from sentencepiece import sentencepiece_model_pb2

            parsed = sentencepiece_model_pb2.ModelProto.FromString(proto)  # type: ignore[attr-defined]
            parsed.normalizer_spec.add_dummy_prefix = False
            proto = parsed.SerializeToString()
        self.model.LoadFromSerializedProto(proto)
        self.unk_token = _content(config.get("unk_token")) or "<unk>"
        self.added = self._added_tokens(config)
        self.special = set(filter(None, map(_content, self._special_values(config))))
        pattern = "|".join(re.escape(t) for t in sorted(self.added, key=len, reverse=True))
        self._splitter = re.compile(f"({pattern})") if pattern else None
        self._unk_length = len(self.model.encode(self.unk_token, out_type=str))
        self.bos_id = self._id(_content(config.get("bos_token")) or "<s>")
        self.eos_id = self._id(_content(config.get("eos_token")) or "</s>")

    @classmethod
    def from_directory(cls, directory: Path) -> SentencePieceLlamaTokenizer:
        config_file = directory / "tokenizer_config.json"
        config = json.loads(config_file.read_text()) if config_file.is_file() else {}
        return cls(directory / "tokenizer.model", config)

    def _added_tokens(self, config: Mapping[str, Any]) -> dict[str, AddedToken]:
        """The saved added tokens, plus the special tokens (at their sentencepiece ids) as 4.x adds them."""
        added: dict[str, AddedToken] = {}
        for key, spec in (config.get("added_tokens_decoder") or {}).items():
            added[spec["content"]] = AddedToken(
                spec["content"],
                int(key),
                bool(spec.get("lstrip", False)),
                bool(spec.get("rstrip", False)),
                bool(spec.get("single_word", False)),
                bool(spec.get("special", True)),
            )
        for value in self._special_values(config):
            content = _content(value)
            if content is None or content in added:
                continue
            piece = self.model.piece_to_id(content)
            if piece == self.model.unk_id() and content != self.unk_token:
                raise ValueError(f"special token {content!r} is neither in the vocabulary nor an added token")
            added[content] = AddedToken(content, int(piece))
        return added

    @staticmethod
    def _special_values(config: Mapping[str, Any]) -> list[Any]:
        """The named special tokens and the additional ones (transformers' `all_special_tokens`)."""
        named = [config.get(f"{n}_token") for n in ("unk", "bos", "eos", "pad")]
        return [*named, *(config.get("additional_special_tokens") or [])]

    def _id(self, token: str) -> int:
        known = self.added.get(token)
        return known.id if known is not None else int(self.model.piece_to_id(token))

    def piece_id(self, piece: str) -> int:
        """A piece's id in the sentencepiece vocabulary (how the published code finds `<image>`)."""
        return int(self.model.piece_to_id(piece))

    def encode(self, text: str) -> list[int]:
        """Token ids as the published `tokenizer.encode(text)` gives them: BOS, the text, EOS if configured."""
        ids = [self._id(token) for token in self.tokenize(text)]
        return [self.bos_id] * self.add_bos + ids + [self.eos_id] * self.add_eos

    def tokenize(self, text: str) -> list[str]:
        if self.legacy or not text:
            return self._split_and_encode(text)
        text = text.replace(UNDERLINE, " ")
        if self.add_prefix_space:
            text = UNDERLINE + text
        tokens = self._split_and_encode(text)
        if len(tokens) > 1 and tokens[0] == UNDERLINE and tokens[1] in self.special:
            tokens = tokens[1:]
        return tokens

    def _split_and_encode(self, text: str) -> list[str]:
        chunks = self._splitter.split(text) if self._splitter is not None else [text]
        for i, chunk in enumerate(chunks):
            token = self.added.get(chunk) if i % 2 else None  # odd positions are the separators
            if token is None:
                continue
            left = chunks[i - 1] if i > 0 else None
            right = chunks[i + 1] if i + 1 < len(chunks) else None
            if token.rstrip and right:
                chunks[i + 1] = right.lstrip()
            if token.lstrip and left:
                chunks[i - 1] = left.rstrip()
            if token.single_word and left and left[-1] != " ":
                chunks[i - 1] += chunk
                chunks[i] = ""
            elif token.single_word and right and right[0] != " ":
                chunks[i + 1] = chunk + chunks[i + 1]
                chunks[i] = ""
        tokens: list[str] = []
        for i, chunk in enumerate(chunks):
            if not chunk:
                continue
            if i % 2 and chunk in self.added:
                tokens.append(chunk)
            else:
                tokens.extend(self._encode_chunk(chunk))
        return tokens

    def _encode_chunk(self, chunk: str) -> list[str]:
        if self.legacy or not chunk.startswith((UNDERLINE, " ")):
            return list(self.model.encode(chunk, out_type=str))
        pieces = list(self.model.encode(self.unk_token + chunk, out_type=str))
        return pieces[self._unk_length :] if len(pieces) >= self._unk_length else pieces


__all__ = ["AddedToken", "SentencePieceLlamaTokenizer"]
