"""A fake OpenAI-compatible embeddings upstream, cheap enough that a gateway benchmark measures the gateway.

`POST /v1/embeddings` answers every input with one of 64 precomputed unit vectors (chosen by the CRC-32
of the input, so the same input always gets the same vector), as floats or base64 as asked, with OpenAI
usage (a token per 4 characters). A raw asyncio HTTP/1.1 server (uvloop when installed): no framework, no
per-request JSON encoding of floats, so one request costs tens of microseconds. `GET /stats` tells how many
requests and inputs reached it and its CPU seconds, so a benchmark can check that a cache hit never
arrived here and that a miss did. `--latency-ms` delays every answer, to model a real API. Usage:

    python bench/fake_upstream.py --port N [--dimensions 256] [--latency-ms 0]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import math
import struct
import time
import zlib
from typing import Any, cast

VECTORS = 64
MAX_HEAD_BYTES = 65536
REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 431: "Too Large"}


def unit_vector(seed: int, dimensions: int) -> list[float]:
    """Components of equal size whose signs come from `seed`: a unit vector exact in float32 for 4^k dimensions."""
    size = 1 / math.sqrt(dimensions)
    state = seed * 2654435761 + 1
    signs = []
    for _ in range(dimensions):
        state = (state * 6364136223846793005 + 1442695040888963407) % 2**64
        signs.append(1.0 if state >> 63 else -1.0)
    return [sign * size for sign in signs]


class Vectors:
    """Pre-encoded JSON fragments of every vector, per dimension and encoding, built on first use."""

    def __init__(self, dimensions: int) -> None:
        self.dimensions = dimensions
        self._fragments: dict[tuple[int, str], list[bytes]] = {}

    def fragments(self, dimensions: int, encoding: str) -> list[bytes]:
        key = (dimensions, encoding)
        if key not in self._fragments:
            vectors = [unit_vector(seed, dimensions) for seed in range(VECTORS)]
            if encoding == "base64":
                self._fragments[key] = [
                    b'"' + base64.b64encode(struct.pack(f"<{dimensions}f", *v)) + b'"' for v in vectors
                ]
            else:
                self._fragments[key] = [json.dumps(v, separators=(",", ":")).encode() for v in vectors]
        return self._fragments[key]


def error(status: int, message: str, param: str | None = None) -> tuple[int, bytes]:
    body = {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": None}}
    return status, json.dumps(body).encode()


class Upstream:
    """The embeddings endpoint and its counters, apart from the HTTP framing."""

    def __init__(self, dimensions: int) -> None:
        self.vectors = Vectors(dimensions)
        self.requests = 0
        self.inputs = 0

    def handle(self, method: bytes, path: bytes, body: bytes) -> tuple[int, bytes]:
        path = path.split(b"?", 1)[0]
        if path in (b"/v1/embeddings", b"/embeddings"):
            return self.embeddings(body) if method == b"POST" else error(405, "use POST")
        if method != b"GET":
            return error(405, "use GET")
        if path == b"/health":
            return 200, b'{"status":"ok"}'
        if path == b"/stats":
            stats = {"requests": self.requests, "inputs": self.inputs, "cpu_s": time.process_time()}
            return 200, json.dumps(stats).encode()
        if path in (b"/v1/models", b"/models"):
            return 200, b'{"object":"list","data":[{"id":"fake-embed","object":"model","owned_by":"bench"}]}'
        return error(404, f"no route {path.decode(errors='replace')}")

    def embeddings(self, body: bytes) -> tuple[int, bytes]:
        try:
            request = json.loads(body)
        except ValueError:
            return error(400, "the body is not JSON")
        if not isinstance(request, dict) or not isinstance(request.get("model"), str):
            return error(400, "`model` is required", "model")
        inputs = request.get("input")
        if isinstance(inputs, str) or (isinstance(inputs, list) and inputs and isinstance(inputs[0], int)):
            inputs = [inputs]
        if not isinstance(inputs, list) or not inputs:
            return error(400, "`input` must be a string or a non-empty list", "input")
        dimensions = request.get("dimensions") or self.vectors.dimensions
        if not isinstance(dimensions, int) or not 0 < dimensions <= self.vectors.dimensions:
            return error(400, f"`dimensions` must be 1 to {self.vectors.dimensions}", "dimensions")
        encoding = request.get("encoding_format") or "float"
        if encoding not in ("float", "base64"):
            return error(400, "`encoding_format` must be float or base64", "encoding_format")
        fragments = self.vectors.fragments(dimensions, encoding)
        data, tokens = [], 0
        for index, item in enumerate(inputs):
            if isinstance(item, str):
                digest, tokens = zlib.crc32(item.encode()), tokens + max(1, (len(item) + 3) // 4)
            elif isinstance(item, list) and item:
                digest, tokens = zlib.crc32(json.dumps(item).encode()), tokens + len(item)
            else:
                return error(400, f"input {index} is neither a string nor a token list", "input")
            data.append(b'{"object":"embedding","index":%d,"embedding":%s}' % (index, fragments[digest % VECTORS]))
        self.requests += 1
        self.inputs += len(inputs)
        model = json.dumps(request["model"]).encode()
        usage = b'{"prompt_tokens":%d,"total_tokens":%d}' % (tokens, tokens)
        return 200, b'{"object":"list","data":[%s],"model":%s,"usage":%s}' % (b",".join(data), model, usage)


class HttpConnection(asyncio.Protocol):
    """HTTP/1.1 keep-alive with Content-Length bodies, one request at a time per connection."""

    def __init__(self, upstream: Upstream, latency_s: float) -> None:
        self.upstream = upstream
        self.latency_s = latency_s
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.waiting = False  # an answer is being delayed by --latency-ms: later requests wait their turn

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCP transport has asyncio.Transport's methods without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.waiting:
            self.serve_buffered()

    def serve_buffered(self) -> None:
        while self.transport is not None and not self.waiting:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buffer) > MAX_HEAD_BYTES:
                    self.send(*error(431, "request head too large"), keep_alive=False)
                return
            lines = bytes(self.buffer[:end]).split(b"\r\n")
            method, path, version = [*lines[0].split(b" "), b"", b""][:3]
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                headers[name.strip().lower()] = value.strip().lower()
            if b"chunked" in headers.get(b"transfer-encoding", b""):
                self.send(
                    *error(400, "chunked request bodies are not supported; send Content-Length"), keep_alive=False
                )
                return
            total = end + 4 + int(headers.get(b"content-length", b"0") or 0)
            if len(self.buffer) < total:
                return
            body = bytes(self.buffer[end + 4 : total])
            del self.buffer[:total]
            connection = headers.get(b"connection", b"")
            keep_alive = connection != b"close" if version == b"HTTP/1.1" else connection == b"keep-alive"
            status, payload = self.upstream.handle(method, path, body)
            if self.latency_s > 0:
                self.waiting = True
                asyncio.get_running_loop().call_later(self.latency_s, self.send_delayed, status, payload, keep_alive)
                return
            self.send(status, payload, keep_alive=keep_alive)

    def send_delayed(self, status: int, payload: bytes, keep_alive: bool) -> None:
        self.waiting = False
        self.send(status, payload, keep_alive=keep_alive)
        self.serve_buffered()

    def send(self, status: int, payload: bytes, *, keep_alive: bool) -> None:
        if self.transport is None:
            return
        head = (
            f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(payload)}\r\nconnection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n"
        )
        self.transport.write(head.encode() + payload)
        if not keep_alive:
            self.transport.close()
            self.transport = None


async def serve(host: str, port: int, dimensions: int, latency_s: float) -> None:
    upstream = Upstream(dimensions)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: HttpConnection(upstream, latency_s), host, port, backlog=1024)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dimensions", type=int, default=256)
    parser.add_argument("--latency-ms", type=float, default=0.0, help="delay of every answer, to model a real API")
    args = parser.parse_args()
    runner: Any = asyncio.run
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        pass
    with contextlib.suppress(KeyboardInterrupt):
        runner(serve(args.host, args.port, args.dimensions, args.latency_ms / 1000))


if __name__ == "__main__":
    main()
