"""An item's content as the cache key sees it, shared with `gateway embed`'s `content_hash` column.

Each part, in order, is a tag and the sha256 of its bytes: `t` + sha256(UTF-8 text) or
`i` + sha256(image bytes). The cache key adds the space and options in front; the bulk command
writes the hash of the content block alone, so its rows can be matched to cache entries' content.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable


def text_digest(text: str) -> bytes:
    return b"t" + hashlib.sha256(text.encode()).digest()


def image_digest(sha256_hex: str) -> bytes:
    """From the image bytes' sha256 (hex), which the gateway computes once when it reads the image."""
    return b"i" + bytes.fromhex(sha256_hex)


def content_hash(part_digests: Iterable[bytes]) -> str:
    """sha256 over the tagged part digests, in order."""
    return hashlib.sha256(b"".join(part_digests)).hexdigest()
