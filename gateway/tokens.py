"""Token-id inputs (`int[]`, `int[][]`) back to text, as LangChain sends them by default.

LangChain's `OpenAIEmbeddings` tokenises with tiktoken's cl100k_base unless told otherwise,
so that is the default encoding. tiktoken downloads its file at first use; offline servers
need it in `TIKTOKEN_CACHE_DIR` (see the README).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from gateway.errors import InvalidRequest


@functools.cache
def _encoding(name: str) -> Any:
    import tiktoken

    return tiktoken.get_encoding(name)


class TokenDecoder:
    """Decodes token ids with one tiktoken encoding, loaded on first use."""

    def __init__(self, encoding: str) -> None:
        self.encoding = encoding

    def decode(self, ids: Sequence[int], *, param: str) -> str:
        try:
            encoding = _encoding(self.encoding)
        except Exception as exc:  # offline without the cached file: requests, ConnectionError...
            raise InvalidRequest(
                f"Token-id input needs tiktoken's {self.encoding} file, which this server could not load "
                f"({type(exc).__name__}). Send strings instead (LangChain: check_embedding_ctx_length=False), "
                "or provide the file in TIKTOKEN_CACHE_DIR on the server.",
                param=param,
                code="token_ids_unsupported",
            ) from exc
        limit = encoding.n_vocab
        for position, token in enumerate(ids):
            if not 0 <= token < limit:
                raise InvalidRequest(
                    f"{param}[{position}] is token id {token}, outside {self.encoding}'s range 0..{limit - 1}",
                    param=f"{param}[{position}]",
                    code="invalid_token_id",
                )
        try:
            return str(encoding.decode(list(ids), errors="replace"))
        except (KeyError, ValueError) as exc:  # ids inside n_vocab that map to nothing
            raise InvalidRequest(
                f"{param} holds a token id that {self.encoding} cannot decode", param=param, code="invalid_token_id"
            ) from exc
