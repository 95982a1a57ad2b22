"""Fake Jina, Voyage and OpenAI-compatible (OpenAI, vLLM, TEI) embeddings APIs: real threaded HTTP
servers on 127.0.0.1, written from the documented wire formats (shared/research/wire-formats.md).

Each one validates a request as strictly as its API documents (unknown fields, wrong shapes, limits:
the API's own 400/422 error body), records it, and answers with deterministic vectors: by default
`fake_vector(item_key(parts, role), dimension)`, a seeded unit vector from the input's content (texts,
and the sha256 of each image's decoded bytes) and its task / input_type, which a test can compute on
its own. Usage is reported as the real API reports it. A test scripts answers with `script(Canned(...))`:
a fixed status, body and headers (Retry-After), a delay, or the real answer altered (`mutate`).

    with JinaFake(api_key="k") as jina:             # or from a fixture; runs in a thread of the test process
        jina.script(Canned(429, {"detail": "slow down"}, {"Retry-After": "1"}))
        ... a provider with base_url=jina.url ...
        jina.requests[0].body                        # the parsed JSON of the first request
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import math
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

import numpy as np
from PIL import Image as PILImage
from PIL import UnidentifiedImageError

from providers.base import Image, Item, Text
from providers.http import HttpProvider

VectorFn = Callable[[str, int], np.ndarray]


def fake_vector(key: str, dimension: int) -> np.ndarray:
    """A unit vector seeded by `key`: what the fakes answer for an input, reproducible by a test."""
    seed = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little")
    vector = np.random.default_rng(seed).standard_normal(dimension)
    return vector / np.linalg.norm(vector)


def item_key(parts: Sequence[tuple[str, str]], role: str | None = None) -> str:
    """One input's key: its parts as ("text", text) or ("image", sha256 hex of the image bytes), in
    order, and its task or input_type (None when the request names none)."""
    return json.dumps([[kind, value] for kind, value in parts] + [role])


def expected(parts: Sequence[tuple[str, str]], role: str | None, dimension: int) -> np.ndarray:
    """The float32 unit vector a fake answers (with the default `vector_fn`) for one input."""
    return fake_vector(item_key(parts, role), dimension).astype(np.float32)


def fake_tokens(text: str) -> int:
    """The fakes' tokenizer: a token per 4 UTF-8 bytes, at least one."""
    return len(text.encode()) // 4 + 1


def make_image(data: bytes) -> Image:
    """A provider `Image` from encoded bytes, as the gateway builds it."""
    with PILImage.open(io.BytesIO(data)) as opened:
        mime = opened.get_format_mimetype() or "application/octet-stream"
        pixels = opened.convert("RGB")
    return Image(data=data, mime=mime, sha256=hashlib.sha256(data).hexdigest(), pixels=pixels)


@dataclass
class Canned:
    """One scripted answer. With a `body` or a status other than 200 it replaces the real answer
    (`body`: JSON-able, or bytes sent as they are); otherwise the real answer is sent, passed
    through `mutate` first. `delay_s` waits before answering either way."""

    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    mutate: Callable[[dict[str, Any]], Any] | None = None

    @property
    def replaces_answer(self) -> bool:
        return self.body is not None or self.status != 200


def as_floats(answer: dict[str, Any]) -> dict[str, Any]:
    """The answer with any base64 vectors written as float lists, for the mutations below to edit."""
    for row in answer["data"]:
        if isinstance(row["embedding"], str):
            row["embedding"] = np.frombuffer(base64.b64decode(row["embedding"]), "<f4").tolist()
    return answer


def drop_last_vector(answer: dict[str, Any]) -> dict[str, Any]:
    """One vector fewer than inputs."""
    answer["data"].pop()
    return answer


def shorten_vectors(answer: dict[str, Any]) -> dict[str, Any]:
    """Every vector one dimension short."""
    for row in as_floats(answer)["data"]:
        row["embedding"] = row["embedding"][:-1]
    return answer


def nan_in_first(answer: dict[str, Any]) -> dict[str, Any]:
    """A NaN in the first vector, written as the bare `NaN` Python's json emits (not JSON)."""
    as_floats(answer)["data"][0]["embedding"][0] = float("nan")
    return answer


def nan_as_base64_in_first(answer: dict[str, Any]) -> dict[str, Any]:
    """The first vector as base64 float32 holding a NaN (valid JSON, so the vector check must catch it)."""
    vector = np.asarray(as_floats(answer)["data"][0]["embedding"], "<f4")
    vector[0] = np.nan
    answer["data"][0]["embedding"] = base64.b64encode(vector.tobytes()).decode()
    return answer


def zero_first(answer: dict[str, Any]) -> dict[str, Any]:
    """An all-zero first vector, which no normalisation can rescue."""
    answer["data"][0]["embedding"] = [0.0] * len(as_floats(answer)["data"][0]["embedding"])
    return answer


@dataclass(frozen=True)
class Recorded:
    """One request as it arrived: path, headers (names lower-cased), parsed JSON body (None if not
    JSON), raw bytes, and its arrival time (`time.monotonic()`)."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any
    raw: bytes
    at: float


class ApiError(Exception):
    """A validation failure; the fake renders it in its API's error body."""

    def __init__(self, status: int, message: str, detail: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.detail = detail


def _decode_image(data: bytes, where: str) -> PILImage.Image:
    try:
        with PILImage.open(io.BytesIO(data)) as opened:
            opened.load()
            picture = opened.copy()
            picture.format = opened.format  # a copy forgets what it was decoded from
            return picture
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ApiError(400, f"{where}: the image could not be decoded") from exc


def _b64(value: str, where: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ApiError(400, f"{where}: invalid base64") from exc


def _only(obj: dict[str, Any], allowed: set[str], where: str) -> None:
    extra = sorted(set(obj) - allowed)
    if extra:
        raise ApiError(
            422,
            f"{where}: extra inputs are not permitted: {extra[0]}",
            [
                {
                    "type": "extra_forbidden",
                    "loc": ["body", *where.split("."), extra[0]],
                    "msg": "Extra inputs are not permitted",
                }
            ],
        )


class FakeUpstream:
    """The server, the request log and the script; subclasses validate and answer (`answer`) and
    render errors (`error_body`) as their API does."""

    def __init__(
        self, *, api_key: str | None = None, vector_fn: VectorFn = fake_vector, reverse_data: bool = False
    ) -> None:
        """`api_key`: the only key accepted (None: any, or none); `reverse_data`: list `data` in
        reverse order (their `index` still right), which the API does not promise not to do."""
        self.api_key = api_key
        self.vector_fn = vector_fn
        self.reverse_data = reverse_data
        self.requests: list[Recorded] = []
        self.active = 0
        self.peak_active = 0
        """Requests being answered now, and the most at once (a client's concurrency cap, seen from here)."""
        self._script: deque[Canned] = deque()
        self._lock = threading.Lock()
        self._closing = threading.Event()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                fake._serve(self)

            def do_GET(self) -> None:
                fake._serve(self)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def script(self, *answers: Canned) -> None:
        """Queue answers for the next requests, one each, in order; then the real API again."""
        with self._lock:
            self._script.extend(answers)

    def unscript(self) -> int:
        """Drop the answers not yet used (a test that scripted more than it consumed); how many."""
        with self._lock:
            left = len(self._script)
            self._script.clear()
        return left

    def close(self) -> None:
        self._closing.set()
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def bodies(self, path: str | None = None) -> list[Any]:
        """The JSON bodies received (for `path`), in order."""
        return [r.body for r in self.requests if path is None or r.path == path]

    # --- what subclasses provide ---

    def answer(self, path: str, body: Any) -> dict[str, Any]:
        raise ApiError(404, "Not Found")

    def error_body(self, error: ApiError) -> Any:
        return {"detail": error.detail if error.detail is not None else error.message}

    # --- the machinery ---

    def _serve(self, handler: BaseHTTPRequestHandler) -> None:
        with self._lock:
            self.active += 1
            self.peak_active = max(self.peak_active, self.active)
        try:
            self._answer(handler)
        finally:
            with self._lock:
                self.active -= 1

    def _answer(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        headers = {k.lower(): v for k, v in handler.headers.items()}
        self.requests.append(Recorded(handler.command, handler.path, headers, body, raw, time.monotonic()))
        with self._lock:
            canned = self._script.popleft() if self._script else None
        status, extra = 200, {}
        if canned is not None and canned.replaces_answer:
            status, payload, extra = canned.status, canned.body, canned.headers
        else:
            try:
                self._authorize(headers)
                if handler.command != "POST":
                    raise ApiError(405, "Method Not Allowed")
                if raw and body is None:
                    raise ApiError(400, "the body is not valid JSON")
                payload = self.answer(handler.path, body)
                if self.reverse_data and isinstance(payload.get("data"), list):
                    payload["data"].reverse()
            except ApiError as error:
                status, payload = error.status, self.error_body(error)
            if canned is not None:
                extra = canned.headers
                if canned.mutate is not None and status == 200:
                    payload = canned.mutate(payload)
        if canned is not None and canned.delay_s and self._closing.wait(canned.delay_s):
            return
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        with suppress(OSError):
            handler.send_response(status)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(data)))
            for key, value in extra.items():
                handler.send_header(key, value)
            handler.end_headers()
            handler.wfile.write(data)

    def _authorize(self, headers: dict[str, str]) -> None:
        if self.api_key is None:
            return
        sent = headers.get("authorization", "")
        if sent != f"Bearer {self.api_key}":
            key = sent.removeprefix("Bearer ")
            raise ApiError(401, f"Incorrect API key provided: {key}" if key else "Missing API key")

    def _rows(self, keys: list[str], dimension: int, scale: float = 1.0) -> list[dict[str, Any]]:
        return [
            {"object": "embedding", "index": i, "embedding": (self.vector_fn(key, dimension) * scale).tolist()}
            for i, key in enumerate(keys)
        ]


# --- Jina ---------------------------------------------------------------------------------------

JINA_MODELS: dict[str, tuple[int, bool, set[str]]] = {  # dimension, takes images, tasks
    "jina-clip-v2": (
        1024,
        True,
        {"retrieval.query", "retrieval.passage", "text-matching", "classification", "separation"},
    ),
    "jina-embeddings-v3": (
        1024,
        False,
        {"retrieval.query", "retrieval.passage", "text-matching", "classification", "separation"},
    ),
    "jina-embeddings-v4": (
        2048,
        True,
        {"retrieval.query", "retrieval.passage", "text-matching", "code.query", "code.passage"},
    ),
}
JINA_FIELDS = {
    "model",
    "input",
    "embedding_type",
    "task",
    "dimensions",
    "normalized",
    "late_chunking",
    "truncate",
    "return_multivector",
}
JINA_MAX_INPUTS = 2048
JINA_MAX_TOKENS = 8192


class JinaFake(FakeUpstream):
    """`POST /v1/embeddings` as Jina documents it; errors as `{"detail": ...}`."""

    def answer(self, path: str, body: Any) -> dict[str, Any]:
        if path != "/v1/embeddings":
            raise ApiError(404, "Not Found")
        if not isinstance(body, dict):
            raise ApiError(422, "the body must be a JSON object")
        _only(body, JINA_FIELDS, "body")
        model = body.get("model")
        if model not in JINA_MODELS:
            raise ApiError(400, f"Model {model!r} not found")
        dimension, takes_images, tasks = JINA_MODELS[model]
        inputs = body.get("input")
        if not isinstance(inputs, list) or not inputs:
            raise ApiError(422, '"input" must be a non-empty list')
        if len(inputs) > JINA_MAX_INPUTS:
            raise ApiError(
                400, f'"input" length {len(inputs)} is larger than the largest allowed size {JINA_MAX_INPUTS}'
            )
        if body.get("embedding_type", "float") != "float":
            raise ApiError(422, "this fake only answers embedding_type float")
        task = body.get("task")
        if task is not None and task not in tasks:
            raise ApiError(422, f"task {task!r} is not one of {sorted(tasks)}")
        wanted = body.get("dimensions", dimension)
        if type(wanted) is not int or not 1 <= wanted <= dimension:
            raise ApiError(422, f"dimensions must be an integer from 1 to {dimension}")
        for flag in ("normalized", "truncate", "late_chunking"):
            if not isinstance(body.get(flag, False), bool):
                raise ApiError(422, f"{flag} must be a boolean")
        keys, tokens = [], 0
        for i, entry in enumerate(inputs):
            key, cost = self._input(entry, f"input[{i}]", takes_images, body.get("truncate", False))
            keys.append(item_key(key, task))
            tokens += cost
        scale = 1.0 if body.get("normalized", False) else 3.0  # raw embeddings are not unit length
        return {
            "model": model,
            "object": "list",
            "usage": {"total_tokens": tokens, "prompt_tokens": tokens},
            "data": self._rows(keys, wanted, scale),
        }

    def _input(self, entry: Any, where: str, takes_images: bool, truncate: bool) -> tuple[list[tuple[str, str]], int]:
        if isinstance(entry, str):
            entry = {"text": entry}
        if not isinstance(entry, dict) or len(entry) != 1 or not ({"text", "image"} & set(entry)):
            raise ApiError(422, f"{where} must be a string, {{'text': ...}} or {{'image': ...}}")
        if "text" in entry:
            text = entry["text"]
            if not isinstance(text, str) or not text:
                raise ApiError(400, f"{where}: text must be a non-empty string")
            if fake_tokens(text) > JINA_MAX_TOKENS and not truncate:
                raise ApiError(400, f"{where} is longer than {JINA_MAX_TOKENS} tokens")
            return [("text", text)], fake_tokens(text)
        if not takes_images:
            raise ApiError(400, f"{where}: this model does not take images")
        value = entry["image"]
        if not isinstance(value, str) or value.startswith(("http://", "https://", "data:")):
            raise ApiError(400, f"{where}: this fake takes images as bare base64 only")
        data = _b64(value, where)
        picture = _decode_image(data, where)
        tiles = math.ceil(picture.width / 512) * math.ceil(picture.height / 512)
        return [("image", hashlib.sha256(data).hexdigest())], 4000 * tiles


# --- Voyage -------------------------------------------------------------------------------------

VOYAGE_MULTIMODAL: dict[str, tuple[int, set[int]]] = {  # default dimension, output_dimension choices
    "voyage-multimodal-3": (1024, set()),
    "voyage-multimodal-3.5": (1024, {256, 512, 1024, 2048}),
}
VOYAGE_TEXT: dict[str, tuple[int, set[int]]] = {
    "voyage-3.5": (1024, {256, 512, 1024, 2048}),
    "voyage-3-large": (1024, {256, 512, 1024, 2048}),
    "voyage-3-lite": (512, set()),
}
VOYAGE_MIME = {"image/png": "PNG", "image/jpeg": "JPEG", "image/webp": "WEBP", "image/gif": "GIF"}
VOYAGE_MAX_INPUTS = 1000
VOYAGE_MAX_PIXELS = 16_000_000
VOYAGE_MAX_IMAGE_BYTES = 20 * 1024 * 1024
VOYAGE_MAX_INPUT_TOKENS = 32_000
VOYAGE_MAX_REQUEST_TOKENS = 320_000
PIXELS_PER_TOKEN = 560


class VoyageFake(FakeUpstream):
    """`POST /v1/multimodalembeddings` and `POST /v1/embeddings` as Voyage documents them;
    errors as `{"detail": "..."}` (400 for bad values, 422 for a malformed body)."""

    def error_body(self, error: ApiError) -> Any:
        return {"detail": error.message}

    def answer(self, path: str, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise ApiError(422, "the body must be a JSON object")
        if path == "/v1/multimodalembeddings":
            return self._multimodal(body)
        if path == "/v1/embeddings":
            return self._text(body)
        raise ApiError(404, "Not Found")

    def _common(self, body: dict[str, Any], models: dict[str, tuple[int, set[int]]]) -> tuple[int, str | None]:
        model = body.get("model")
        if model not in models:
            raise ApiError(400, f"Model {model} is not supported by this endpoint")
        dimension, choices = models[model]
        input_type = body.get("input_type")
        if input_type not in (None, "query", "document"):
            raise ApiError(400, "input_type must be None, 'query' or 'document'")
        if not isinstance(body.get("truncation", True), bool):
            raise ApiError(422, "truncation must be a boolean")
        wanted = body.get("output_dimension")
        if wanted is not None and wanted not in choices:
            raise ApiError(400, f"output_dimension {wanted} is not supported by {model}")
        return wanted or dimension, input_type

    def _multimodal(self, body: dict[str, Any]) -> dict[str, Any]:
        _only(
            body,
            {
                "inputs",
                "model",
                "input_type",
                "truncation",
                "output_encoding",
                "output_dimension",
                "output_dtype",
                "encoding_format",
            },
            "body",
        )
        dimension, input_type = self._common(body, VOYAGE_MULTIMODAL)
        inputs = body.get("inputs")
        if not isinstance(inputs, list) or not inputs:
            raise ApiError(422, "inputs must be a non-empty list")
        if len(inputs) > VOYAGE_MAX_INPUTS:
            raise ApiError(400, f"The batch size limit is {VOYAGE_MAX_INPUTS}. Your batch size is {len(inputs)}.")
        kinds = {
            p.get("type") for i in inputs if isinstance(i, dict) for p in i.get("content") or () if isinstance(p, dict)
        }
        if {"image_url", "image_base64"} <= kinds:
            raise ApiError(400, "A request must not mix image_url and image_base64 content")
        keys, text_tokens, pixels, total = [], 0, 0, 0
        for i, entry in enumerate(inputs):
            where = f"inputs[{i}]"
            if (
                not isinstance(entry, dict)
                or set(entry) != {"content"}
                or not isinstance(entry["content"], list)
                or not entry["content"]
            ):
                raise ApiError(422, f"{where} must be {{'content': [parts]}}")
            parts, item_text, item_pixels = [], 0, 0
            for j, part in enumerate(entry["content"]):
                kind, value, cost = self._part(part, f"{where}.content[{j}]")
                parts.append((kind, value))
                item_text += cost if kind == "text" else 0
                item_pixels += cost if kind == "image" else 0
            item_tokens = item_text + math.ceil(item_pixels / PIXELS_PER_TOKEN)
            if item_tokens > VOYAGE_MAX_INPUT_TOKENS and not body.get("truncation", True):
                raise ApiError(400, f"{where} has {item_tokens} tokens, over the limit of {VOYAGE_MAX_INPUT_TOKENS}")
            keys.append(item_key(parts, input_type))
            text_tokens, pixels, total = text_tokens + item_text, pixels + item_pixels, total + item_tokens
        if total > VOYAGE_MAX_REQUEST_TOKENS:
            raise ApiError(400, f"The request has {total} tokens, over the limit of {VOYAGE_MAX_REQUEST_TOKENS}")
        return {
            "object": "list",
            "data": self._rows(keys, dimension),
            "model": body["model"],
            "usage": {"text_tokens": text_tokens, "image_pixels": pixels, "total_tokens": total},
        }

    def _part(self, part: Any, where: str) -> tuple[str, str, int]:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            _only(part, {"type", "text"}, where)
            text = part.get("text")
            if not isinstance(text, str) or not text:
                raise ApiError(400, f"{where}: text must be a non-empty string")
            return "text", text, fake_tokens(text)
        if kind == "image_base64":
            _only(part, {"type", "image_base64"}, where)
            value = part.get("image_base64")
            head, _, encoded = value.partition(",") if isinstance(value, str) else ("", "", "")
            mime = head.removeprefix("data:").removesuffix(";base64")
            if not head.startswith("data:") or not head.endswith(";base64") or mime not in VOYAGE_MIME:
                raise ApiError(400, f"{where}: image_base64 must be a data URL of png, jpeg, webp or gif")
            data = _b64(encoded, where)
            if len(data) > VOYAGE_MAX_IMAGE_BYTES:
                raise ApiError(400, f"{where}: the image is over 20 MB")
            picture = _decode_image(data, where)
            if picture.format != VOYAGE_MIME[mime]:
                raise ApiError(400, f"{where}: the data URL says {mime} but holds {picture.format}")
            if picture.width * picture.height > VOYAGE_MAX_PIXELS:
                raise ApiError(400, f"{where}: the image is over {VOYAGE_MAX_PIXELS} pixels")
            return "image", hashlib.sha256(data).hexdigest(), picture.width * picture.height
        if kind == "image_url":
            raise ApiError(400, f"{where}: this fake cannot fetch image_url")
        raise ApiError(422, f"{where}: type must be text, image_url or image_base64")

    def _text(self, body: dict[str, Any]) -> dict[str, Any]:
        _only(
            body,
            {"input", "model", "input_type", "truncation", "output_dimension", "output_dtype", "encoding_format"},
            "body",
        )
        dimension, input_type = self._common(body, VOYAGE_TEXT)
        inputs = body.get("input")
        inputs = [inputs] if isinstance(inputs, str) else inputs
        if not isinstance(inputs, list) or not inputs or not all(isinstance(t, str) and t for t in inputs):
            raise ApiError(400, "input must be a non-empty string or list of non-empty strings")
        if len(inputs) > VOYAGE_MAX_INPUTS:
            raise ApiError(400, f"The batch size limit is {VOYAGE_MAX_INPUTS}. Your batch size is {len(inputs)}.")
        tokens = sum(fake_tokens(t) for t in inputs)
        keys = [item_key([("text", t)], input_type) for t in inputs]
        return {
            "object": "list",
            "data": self._rows(keys, dimension),
            "model": body["model"],
            "usage": {"total_tokens": tokens},
        }


# --- OpenAI-compatible ----------------------------------------------------------------------------


class OpenAIFake(FakeUpstream):
    """`POST /v1/embeddings` of an OpenAI-compatible server, in one of four error dialects:
    `openai` (`{"error": {message, type, param, code}}`), `vllm` (the same envelope, newer vLLM),
    `vllm-legacy` (`{"object": "error", "message", "type", "param", "code"}`) and `tei`
    (`{"error": "...", "error_type": "Validation"}`, 413 over `max_batch`, 422 for bad input).
    `images`: also take this gateway's `{"image": data URI}` and `{"content": [...]}` items.
    `extra_fields`: body fields beyond OpenAI's (e.g. {"input_type"}); `input_type` sets the role.
    `ignores_encoding`: answers floats even when asked for base64 (an old server)."""

    def __init__(
        self,
        flavor: str = "openai",
        *,
        model: str = "text-embedding-3-small",
        dimension: int = 64,
        flexible: bool = True,
        images: bool = False,
        extra_fields: Sequence[str] = (),
        max_batch: int = 2048,
        ignores_encoding: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.ignores_encoding = ignores_encoding
        self.flavor, self.model, self.dimension, self.flexible = flavor, model, dimension, flexible
        self.images, self.extra_fields, self.max_batch = images, set(extra_fields), max_batch

    def error_body(self, error: ApiError) -> Any:
        if self.flavor == "tei":
            kind = {413: "Validation", 422: "Validation", 424: "Backend", 429: "Overloaded"}.get(
                error.status, "Validation"
            )
            return {"error": error.message, "error_type": kind}
        if self.flavor == "vllm-legacy":
            return {
                "object": "error",
                "message": error.message,
                "type": "BadRequestError",
                "param": None,
                "code": error.status,
            }
        kind = "invalid_request_error" if self.flavor == "openai" else "BadRequestError"
        code = None if self.flavor == "openai" else error.status
        return {"error": {"message": error.message, "type": kind, "param": None, "code": code}}

    def answer(self, path: str, body: Any) -> dict[str, Any]:
        if path != "/v1/embeddings":
            raise ApiError(404, "Not Found")
        if not isinstance(body, dict):
            raise ApiError(422 if self.flavor == "tei" else 400, "the body must be a JSON object")
        _only(body, {"model", "input", "encoding_format", "dimensions", "user"} | self.extra_fields, "body")
        if body.get("model") != self.model and self.flavor != "tei":  # TEI serves one model, whatever the name
            raise ApiError(404, f"The model `{body.get('model')}` does not exist.")
        encoding = body.get("encoding_format", "float")
        if encoding not in ("float", "base64"):
            raise ApiError(400, "encoding_format must be float or base64")
        dimension = body.get("dimensions", self.dimension)
        if (
            type(dimension) is not int
            or not 1 <= dimension <= self.dimension
            or (dimension != self.dimension and not self.flexible)
        ):
            raise ApiError(400, f"dimensions {dimension} is not supported by {self.model}")
        inputs = body.get("input")
        inputs = [inputs] if isinstance(inputs, str | dict) else inputs
        bad = 422 if self.flavor == "tei" else 400
        if not isinstance(inputs, list) or not inputs:
            raise ApiError(bad, "input must be a non-empty string or array")
        if len(inputs) > self.max_batch:
            raise ApiError(413, f"batch size {len(inputs)} > maximum allowed batch size {self.max_batch}")
        role = body.get("input_type") if "input_type" in self.extra_fields else None
        keys, tokens = [], 0
        for i, entry in enumerate(inputs):
            parts = self._item(entry, f"input[{i}]", bad)
            keys.append(item_key(parts, role))
            tokens += sum(fake_tokens(v) if k == "text" else 1 for k, v in parts)
        rows = self._rows(keys, dimension)
        if encoding == "base64" and not self.ignores_encoding:
            for row in rows:
                row["embedding"] = base64.b64encode(np.asarray(row["embedding"], "<f4").tobytes()).decode()
        return {
            "object": "list",
            "data": rows,
            "model": self.model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    def _item(self, entry: Any, where: str, bad: int) -> list[tuple[str, str]]:
        if isinstance(entry, str):
            if not entry:
                raise ApiError(bad, f"{where}: input cannot be an empty string")
            return [("text", entry)]
        if not self.images or not isinstance(entry, dict):
            raise ApiError(bad, f"{where} must be a string")
        if set(entry) == {"content"} and isinstance(entry["content"], list) and entry["content"]:
            return [
                part for j, p in enumerate(entry["content"]) for part in self._item(p, f"{where}.content[{j}]", bad)
            ]
        if set(entry) == {"text"}:
            return self._item(entry["text"], f"{where}.text", bad)
        if set(entry) == {"image"} and isinstance(entry["image"], str) and entry["image"].startswith("data:"):
            head, _, encoded = entry["image"].partition(",")
            data = _b64(encoded, where) if head.endswith(";base64") else b""
            _decode_image(data, where)
            return [("image", hashlib.sha256(data).hexdigest())]
        raise ApiError(bad, f"{where} must be a string, {{'text'}}, {{'image': data URI}} or {{'content': [...]}}")


# --- for tests that drive providers ---------------------------------------------------------------


def texts(*strings: str) -> list[Item]:
    return [Item((Text(s),)) for s in strings]


@asynccontextmanager
async def running(provider: HttpProvider) -> AsyncIterator[HttpProvider]:
    """`provider` loaded and started, closed afterwards."""
    provider.load()
    await provider.start()
    try:
        yield provider
    finally:
        await provider.close()
