"""Token-id inputs (`int[]`, `int[][]`) back to text, as LangChain sends them by default.

LangChain's `OpenAIEmbeddings` tokenises with tiktoken's cl100k_base unless told otherwise,
so that is the default encoding. tiktoken downloads its file at first use, with no timeout;
offline servers need it in `TIKTOKEN_CACHE_DIR` (see the README). So the app loads it once at
start-up (`TokenDecoder.load`), in a daemon thread, for at most `LOAD_TIMEOUT_S`: when the file is
missing or the download hangs, one warning is logged and token-id requests get a 400 at once,
never a download on the event loop. A download that finishes after the timeout is used from then on.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

from gateway.errors import InvalidRequest

LOAD_TIMEOUT_S = 10.0

logger = logging.getLogger(__name__)


class _Encoding:
    """One encoding's load, shared by every decoder of that name: started at most once."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.value: Any = None
        self.failure: str | None = None
        self.waited_s: float | None = None  # how long start-up waited, when the load outlasted it
        self.done = threading.Event()

    def run(self) -> None:
        try:
            import tiktoken

            self.value = tiktoken.get_encoding(self.name)
        except Exception as exc:  # offline without the cached file: requests' ConnectionError, ValueError...
            self.failure = type(exc).__name__
        else:
            self.failure = None
        finally:
            self.done.set()


_encodings: dict[str, _Encoding] = {}
_encodings_lock = threading.Lock()


def _start(name: str, runner: Callable[[_Encoding], None]) -> tuple[_Encoding, bool]:
    """The shared load for `name`, and whether this call created it (and so runs it)."""
    with _encodings_lock:
        encoding = _encodings.get(name)
        if encoding is not None:
            return encoding, False
        encoding = _encodings[name] = _Encoding(name)
    runner(encoding)
    return encoding, True


def _in_daemon_thread(encoding: _Encoding) -> None:
    # Not asyncio.to_thread: a download that never ends must not hold up the executor or the process exit.
    threading.Thread(target=encoding.run, name=f"tiktoken-{encoding.name}", daemon=True).start()


class TokenDecoder:
    """Decodes token ids with one tiktoken encoding, loaded by `load` (or, without it, on first use)."""

    def __init__(self, encoding: str, *, load_timeout_s: float = LOAD_TIMEOUT_S) -> None:
        self.encoding = encoding
        self.load_timeout_s = load_timeout_s

    async def load(self) -> bool:
        """Load the encoding off the event loop, waiting at most `load_timeout_s`; False (and one warning) if not."""
        encoding, created = _start(self.encoding, _in_daemon_thread)
        loaded = await asyncio.to_thread(encoding.done.wait, self.load_timeout_s)
        if encoding.value is not None:
            return True
        if not loaded:
            encoding.waited_s = self.load_timeout_s
        if created:
            reason = encoding.failure or f"not loaded within {self.load_timeout_s:g} s"
            logger.warning(
                "token-id inputs are disabled: tiktoken's %s file could not be loaded (%s); "
                "provide it in TIKTOKEN_CACHE_DIR",
                self.encoding,
                reason,
            )
        return False

    def _loaded(self, param: str) -> Any:
        # Without `load` (library use), load here once; after `load`, never wait: a failure or a
        # download still running is an answer at once.
        encoding, _ = _start(self.encoding, _Encoding.run)
        if encoding.value is not None:
            return encoding.value
        waited = f"not loaded within {encoding.waited_s:g} s" if encoding.waited_s else "still loading"
        reason = encoding.failure or waited
        raise InvalidRequest(
            f"Token-id input needs tiktoken's {self.encoding} file, which this server could not load "
            f"({reason}). Send strings instead (LangChain: check_embedding_ctx_length=False), "
            "or provide the file in TIKTOKEN_CACHE_DIR on the server.",
            param=param,
            code="token_ids_unsupported",
        )

    def decode(self, ids: Sequence[int], *, param: str) -> str:
        encoding = self._loaded(param)
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
