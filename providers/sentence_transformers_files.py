"""What a sentence-transformers checkpoint says about itself, read from its own JSON files.

sentence-transformers does not store pooling, prompts or the sequence limit in `config.json` but
beside it: `modules.json` lists the pipeline (Transformer → Pooling → Normalize, and anything
else), the Pooling module's directory holds `config.json` with the mode, `sentence_bert_config.json`
the sequence limit and lower-casing, `config_sentence_transformers.json` the prompts. Reading
them (without importing sentence-transformers) lets a plain `AutoModel` give the vectors its
`encode` gives. Every file is optional: a checkpoint without them is a plain transformers model.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

KNOWN_MODULES = {"Transformer", "Pooling", "Normalize"}
MODES = {"mean": "mean", "cls": "cls", "lasttoken": "last_token"}
"""sentence-transformers' pooling modes this reader maps to ours; others are kept by their own name."""
LEGACY_MODE_KEYS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}

Reader = Callable[[str], Any]
"""Reads one JSON file of the checkpoint by its relative path; None when it is not there."""


@dataclass(frozen=True, slots=True)
class SentenceTransformerFiles:
    """The checkpoint's sentence-transformers settings (defaults: none of the files)."""

    pooling: tuple[str, ...] = ()
    """Pooling modes in our names where we have them (`mean`, `cls`, `last_token`), else theirs."""
    include_prompt: bool = True
    normalize: bool = False
    other_modules: tuple[str, ...] = ()
    """Modules besides Transformer / Pooling / Normalize (Dense, Router...), which change vectors."""
    max_seq_length: int | None = None
    do_lower_case: bool = False
    prompts: Mapping[str, str] = field(default_factory=dict)
    default_prompt_name: str | None = None

    @property
    def present(self) -> bool:
        return bool(self.pooling or self.normalize or self.other_modules or self.prompts or self.max_seq_length)


def pooling_modes(config: Mapping[str, Any]) -> tuple[str, ...]:
    """The modes of a Pooling `config.json`: the current `pooling_mode` key or the legacy flags."""
    if "pooling_mode" in config:
        raw = config["pooling_mode"]
        names = [raw] if isinstance(raw, str) else list(raw)
    else:
        names = [mode for key, mode in LEGACY_MODE_KEYS.items() if config.get(key)]
    return tuple(MODES.get(name, name) for name in names)


def parse(read: Reader) -> SentenceTransformerFiles:
    """Assemble the settings from whichever files `read` finds."""
    modules = read("modules.json") or []
    kinds = {str(m.get("type", "")).rsplit(".", 1)[-1]: str(m.get("path", "")) for m in modules}
    pooling: Mapping[str, Any] = {}
    if "Pooling" in kinds:
        pooling = read(f"{kinds['Pooling']}/config.json") or {}
    bert = read("sentence_bert_config.json") or {}
    own = read("config_sentence_transformers.json") or {}
    max_seq_length = bert.get("max_seq_length")
    return SentenceTransformerFiles(
        pooling=pooling_modes(pooling),
        include_prompt=bool(pooling.get("include_prompt", True)),
        normalize="Normalize" in kinds,
        other_modules=tuple(sorted(set(kinds) - KNOWN_MODULES)),
        max_seq_length=int(max_seq_length) if max_seq_length else None,
        do_lower_case=bool(bert.get("do_lower_case", False)),
        prompts={str(k): str(v) for k, v in (own.get("prompts") or {}).items()},
        default_prompt_name=own.get("default_prompt_name") or None,
    )


def directory_reader(directory: Path) -> Reader:
    def read(name: str) -> Any:
        path = directory / name
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None

    return read


def hub_reader(repo_id: str, revision: str | None) -> Reader:
    """Files of a hub repository, each downloaded (or found in the local cache) on its own."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    def read(name: str) -> Any:
        try:
            path = hf_hub_download(repo_id, name, revision=revision)
        except EntryNotFoundError:  # not in the repository (or, offline, not in the cache)
            return None
        return json.loads(Path(path).read_text(encoding="utf-8"))

    return read


def read_files(source: str, revision: str | None) -> SentenceTransformerFiles:
    """The settings of a local directory or a hub repository."""
    path = Path(source)
    return parse(directory_reader(path) if path.is_dir() else hub_reader(source, revision))


__all__ = ["SentenceTransformerFiles", "parse", "pooling_modes", "read_files"]
