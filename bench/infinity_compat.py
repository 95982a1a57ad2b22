"""Make a SigLIP model folder saved by transformers 5.x loadable by Infinity (transformers 4.57).

Usage: python bench/infinity_compat.py [--no-pad-fix] [--keep-attention-mask] SRC DST

Only the standard library is used, so this runs from any venv. Fixes applied to the copy:

1. Processor config: transformers 5 nests the image processor config inside
   ``processor_config.json`` (``{"image_processor": {...}, "processor_class": ...}``) and may write
   no ``preprocessor_config.json``; 4.x reads the image processor only from a flat
   ``preprocessor_config.json``. The nested dicts are lifted out and dropped from
   ``processor_config.json`` (removed entirely if nothing else is left).
2. Tokenizer config: 5.x tokenizer classes unknown to 4.x (``TokenizersBackend``,
   ``SentencePieceBackend``, ...) are mapped to ``PreTrainedTokenizerFast`` (tokenizer.json present)
   or ``SiglipTokenizer`` (spiece.model present); the 5.x-only ``backend`` key is dropped; a
   list-valued ``extra_special_tokens`` (5.x) is merged into ``additional_special_tokens``
   (4.x expects a dict there and crashes on a list).
3. Model config: 4.x configs carry the legacy generation default ``max_length=20``, and Infinity
   truncates text to ``model.config.max_length`` -- i.e. SigLIP text would be cut at 20 tokens.
   ``max_length`` is set to the text tower's ``max_position_embeddings`` (64 for SigLIP).
   ``dtype`` is mirrored to ``torch_dtype`` for older loaders.
4. Padding (on by default, ``--no-pad-fix`` / ``pad_fix=False`` to skip): Infinity tokenizes with
   ``padding=True`` (pad to the longest text of the batch), but SigLIP was trained with
   ``padding="max_length"`` (64) and pools the *last* position, so Infinity's text embeddings are
   wrong and depend on batch-mates. Writing ``pad_to_multiple_of=<max_length>`` into
   tokenizer_config.json makes 4.x's SiglipProcessor pad every text to exactly max_length
   (processor defaults are taken from tokenizer init kwargs; Infinity does not pass this one),
   giving embeddings identical to transformers 5 with ``padding="max_length"``.
5. Attention mask (dropped by default, ``--keep-attention-mask`` / ``keep_attention_mask=True`` to
   keep): Infinity passes the tokenizer's attention_mask to ``get_text_features``; the original
   SigLIP (big_vision) uses no text mask. ``model_input_names=["input_ids"]`` in
   tokenizer_config.json stops the tokenizer from returning one, so Infinity's text vectors equal
   ``model.get_text_features(input_ids=...)`` on max_length-padded ids.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

# Tokenizer classes that transformers 4.x knows; anything else gets rewritten.
_V4_SAFE_FAST = "PreTrainedTokenizerFast"
_V5_ONLY_TOKENIZER_CLASSES = {
    "TokenizersBackend",
    "SentencePieceBackend",
    "PythonBackend",
    "MistralCommonBackend",
}
_PROCESSOR_SUBCONFIG_FILES = {
    "image_processor": "preprocessor_config.json",
    "feature_extractor": "preprocessor_config.json",
    "video_processor": "video_preprocessor_config.json",
}


def _load(path: Path) -> dict[str, Any]:
    with path.open(encoding="utf-8") as fh:
        data: dict[str, Any] = json.load(fh)
    return data


def _dump(path: Path, data: dict[str, Any]) -> None:
    with path.open("w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2, sort_keys=True, ensure_ascii=False)
        fh.write("\n")


def _fix_processor(dst: Path) -> None:
    proc_path = dst / "processor_config.json"
    if not proc_path.exists():
        return
    proc = _load(proc_path)
    processor_class = proc.get("processor_class")
    for key, filename in _PROCESSOR_SUBCONFIG_FILES.items():
        sub = proc.pop(key, None)
        if not isinstance(sub, dict):
            continue
        target = dst / filename
        if not target.exists():
            flat = dict(sub)
            if processor_class and "processor_class" not in flat:
                flat["processor_class"] = processor_class
            _dump(target, flat)
    # Any other nested dict (e.g. "tokenizer") would be passed to the 4.x processor __init__.
    for key in [k for k, v in proc.items() if isinstance(v, dict)]:
        proc.pop(key)
    if set(proc) <= {"processor_class"}:
        proc_path.unlink()
    else:
        _dump(proc_path, proc)


def _fix_tokenizer(dst: Path, pad_to: int | None, keep_attention_mask: bool) -> None:
    tok_path = dst / "tokenizer_config.json"
    if not tok_path.exists():
        return
    tok = _load(tok_path)
    cls = tok.get("tokenizer_class")
    has_fast = (dst / "tokenizer.json").exists()
    has_spm = (dst / "spiece.model").exists()
    if cls in _V5_ONLY_TOKENIZER_CLASSES or (cls and cls.endswith("Backend")):
        if has_fast:
            tok["tokenizer_class"] = _V4_SAFE_FAST
        elif has_spm:
            tok["tokenizer_class"] = "SiglipTokenizer"
        else:
            raise ValueError(
                f"{tok_path}: tokenizer_class {cls!r} is 5.x-only and neither tokenizer.json "
                "nor spiece.model is present"
            )
    elif cls == "SiglipTokenizerFast":  # never existed in 4.x
        tok["tokenizer_class"] = _V4_SAFE_FAST if has_fast else "SiglipTokenizer"
    tok.pop("backend", None)

    extra = tok.get("extra_special_tokens")
    if isinstance(extra, list):
        tok.pop("extra_special_tokens")
        additional = list(tok.get("additional_special_tokens") or [])
        for item in extra:
            if item not in additional:
                additional.append(item)
        if additional:
            tok["additional_special_tokens"] = additional
    if pad_to:
        tok["pad_to_multiple_of"] = int(pad_to)
    if not keep_attention_mask:
        tok["model_input_names"] = ["input_ids"]
    _dump(tok_path, tok)


def _fix_model_config(dst: Path) -> int | None:
    """Returns the text max_length written to config.json (None if unknown)."""
    cfg_path = dst / "config.json"
    cfg = _load(cfg_path)
    text_cfg = cfg.get("text_config") or {}
    max_pos = text_cfg.get("max_position_embeddings")
    if max_pos is None and cfg.get("model_type") in ("siglip", "siglip2"):
        max_pos = 64
    if max_pos is not None and "max_length" not in cfg:
        cfg["max_length"] = int(max_pos)
    if "dtype" in cfg and "torch_dtype" not in cfg:
        cfg["torch_dtype"] = cfg["dtype"]
    _dump(cfg_path, cfg)
    return cfg.get("max_length")


def make_infinity_copy(src_dir: Path, dst_dir: Path, pad_fix: bool = True, keep_attention_mask: bool = False) -> None:
    """Copy ``src_dir`` (a transformers 5.x SigLIP save) to ``dst_dir`` in a 4.x-loadable form."""
    src_dir = Path(src_dir)
    dst_dir = Path(dst_dir)
    if not (src_dir / "config.json").exists():
        raise FileNotFoundError(f"{src_dir} has no config.json")
    if dst_dir.exists():
        shutil.rmtree(dst_dir)
    shutil.copytree(src_dir, dst_dir, ignore=shutil.ignore_patterns(".git", ".cache"))
    _fix_processor(dst_dir)
    max_length = _fix_model_config(dst_dir)
    _fix_tokenizer(dst_dir, pad_to=max_length if pad_fix else None, keep_attention_mask=keep_attention_mask)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    flags = {a for a in args if a.startswith("--")}
    args = [a for a in args if not a.startswith("--")]
    unknown = flags - {"--no-pad-fix", "--keep-attention-mask"}
    if len(args) != 2 or unknown:
        print(
            "usage: python bench/infinity_compat.py [--no-pad-fix] [--keep-attention-mask] SRC DST",
            file=sys.stderr,
        )
        return 2
    make_infinity_copy(
        Path(args[0]),
        Path(args[1]),
        pad_fix="--no-pad-fix" not in flags,
        keep_attention_mask="--keep-attention-mask" in flags,
    )
    print(f"wrote Infinity-compatible copy to {args[1]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
