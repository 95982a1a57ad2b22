"""A cheap identity for a checkpoint on disk, so a cache never mixes two different weights.

Hub downloads carry a commit hash; a local directory does not, so it is fingerprinted:
its JSON/tokenizer files in full, and each weight file's size, modification time (in ns) and
its first and last MiB (the safetensors header, which names every tensor and its offsets,
sits in the first), without reading gigabytes. A weight file edited in the middle changes
its mtime; only a deliberate `touch -d` back to the old time with the same size would hide it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

SAMPLE = 1 << 20
WEIGHT_SUFFIXES = {".safetensors", ".bin", ".pt", ".pth", ".gguf"}


def directory_fingerprint(directory: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(directory)).encode())
        stat = path.stat()
        size = stat.st_size
        digest.update(str(size).encode())
        with path.open("rb") as handle:
            if path.suffix not in WEIGHT_SUFFIXES:
                digest.update(handle.read())
                continue
            digest.update(str(stat.st_mtime_ns).encode())
            digest.update(handle.read(SAMPLE))
            if size > SAMPLE:
                handle.seek(max(SAMPLE, size - SAMPLE))
                digest.update(handle.read(SAMPLE))
    return digest.hexdigest()


def checkpoint_identity(source: str, revision: str | None, commit_hash: str | None) -> str:
    """Commit hash for hub checkpoints, content fingerprint for local directories."""
    path = Path(source)
    if path.is_dir():
        return f"dir:{directory_fingerprint(path)}"
    return f"hub:{source}@{commit_hash or revision or 'main'}"
