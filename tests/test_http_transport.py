"""The upstream connection pools, one contract for all three: the direct pool for plain http://
(`providers/http_direct.py`), aiohttp's (`providers/http_aiohttp.py`) and httpcore's on its lean
asyncio backend (`providers/http_backend.py`), behind `UpstreamPool` (`providers/http_transport.py`):
what reaches the server, keep-alive, pool limits, proxies and certificates from the environment
(aiohttp and httpcore: the direct pool never takes them), compressed answers, timeouts and errors,
close. Against real servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import random
import shutil
import socket
import ssl
import subprocess
import threading
import time
import zlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpcore
import httpx
import pytest
import uvloop

from providers import http_backend, http_direct
from providers.base import ProviderError
from providers.http_aiohttp import AiohttpPool
from providers.http_direct import DirectPool
from providers.http_errors import UpstreamTransient, upstream_errors, upstream_message
from providers.http_transport import HttpcorePool, Transport, UpstreamPool

PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


@dataclass
class Seen:
    """One request as it arrived: the request line, headers (names lower-cased) and body."""

    line: str
    headers: dict[str, str]
    body: bytes


def response(body: bytes = b'{"ok": true}', status: int = 200, headers: dict[str, str] | None = None) -> bytes:
    fields = {"Content-Type": "application/json", "Content-Length": str(len(body)), **(headers or {})}
    head = f"HTTP/1.1 {status} X\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields.items()) + "\r\n"
    return head.encode("latin-1") + body


Answer = Callable[[Seen], bytes | None]
"""A whole response for a request, or None to leave it unanswered."""


class Server:
    """A keep-alive HTTP/1.1 server in the test's own event loop; `close_after_answer` drops each
    connection right after its response (while the response still says keep-alive);
    `drop_request` says, for each request, to read it and hang up without a word."""

    def __init__(
        self,
        answer: Answer,
        *,
        close_after_answer: bool = False,
        drop_request: Callable[[Seen, int], bool] | None = None,
    ) -> None:
        self.answer = answer
        self.close_after_answer = close_after_answer
        self.drop_request = drop_request
        self.requests: list[Seen] = []
        self.connections = 0
        self.closed = 0
        self.port = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
                headers = {
                    k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in head[1:] if line)
                }
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                seen = Seen(head[0], headers, body)
                self.requests.append(seen)
                if self.drop_request is not None and self.drop_request(seen, len(self.requests)):
                    break
                answer = self.answer(seen)
                if answer is None:
                    await asyncio.sleep(3600)
                    return
                writer.write(answer)
                await writer.drain()
                if self.close_after_answer:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.closed += 1
            writer.close()


@asynccontextmanager
async def serving(answer: Answer, *, tls: ssl.SSLContext | None = None, **options: Any) -> AsyncIterator[Server]:
    server = Server(answer, **options)
    listener = await asyncio.start_server(server.serve, "127.0.0.1", 0, ssl=tls)
    server.port = listener.sockets[0].getsockname()[1]
    try:
        yield server
    finally:
        listener.close()


TRANSPORTS: list[Transport] = ["direct", "aiohttp", "httpcore"]
PROXY_TRANSPORTS: list[Transport] = ["aiohttp", "httpcore"]
"""The pools that go through proxies and speak TLS: the direct pool is for plain http:// only."""


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> Transport:
    """Each pool test runs on every pool."""
    kind: Transport = request.param
    return kind


@pytest.fixture(params=PROXY_TRANSPORTS)
def proxy_transport(request: pytest.FixtureRequest) -> Transport:
    kind: Transport = request.param
    return kind


@pytest.fixture(scope="module", params=["asyncio", "uvloop"])
def event_loop_policy(request: pytest.FixtureRequest) -> asyncio.AbstractEventLoopPolicy:
    """Every test on asyncio's loop and on uvloop's, which the gateway serves on (its transports are
    not asyncio's classes, and it orders callbacks its own way)."""
    return uvloop.EventLoopPolicy() if request.param == "uvloop" else asyncio.DefaultEventLoopPolicy()


@asynccontextmanager
async def pool_for(
    url: str, transport: Transport, headers: dict[str, str] | None = None, max_connections: int = 2
) -> AsyncIterator[UpstreamPool]:
    pool = UpstreamPool(url, headers or {}, max_connections=max_connections, transport=transport)
    assert pool.transport == transport
    try:
        yield pool
    finally:
        await pool.aclose()


async def post(pool: UpstreamPool, body: bytes = b'{"input": "x"}', timeout_s: float = 5.0) -> tuple[int, bytes]:
    reply = await pool.post(body, timeout_s=timeout_s, connect_timeout_s=timeout_s)
    return reply.status, reply.content


@pytest.fixture(autouse=True)
def no_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever proxies this machine names, the tests set their own."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)


async def test_requests_carry_httpx_headers_and_share_one_connection(transport: Transport) -> None:
    async with serving(lambda seen: response(b"answer " + seen.body)) as server:
        url = f"http://127.0.0.1:{server.port}/v1/embeddings"
        async with pool_for(
            url, transport, {"Authorization": "Bearer sk-1", "Content-Type": "application/json"}
        ) as pool:
            assert await post(pool, b'{"input": "a"}') == (200, b'answer {"input": "a"}')
            assert await post(pool, b'{"input": "bb"}') == (200, b'answer {"input": "bb"}')
    assert server.connections == 1
    first = server.requests[0]
    assert first.line == "POST /v1/embeddings HTTP/1.1"
    assert first.headers["host"] == f"127.0.0.1:{server.port}"
    assert first.headers["content-length"] == "14"
    assert first.headers["authorization"] == "Bearer sk-1"
    assert first.headers["content-type"] == "application/json"
    assert first.headers["accept-encoding"] == "gzip, deflate"
    assert first.headers["user-agent"] == f"python-httpx/{httpx.__version__}"


async def test_a_connection_the_server_dropped_while_idle_is_replaced(transport: Transport) -> None:
    async with (
        serving(lambda seen: response(), close_after_answer=True) as server,
        pool_for(f"http://127.0.0.1:{server.port}/e", transport) as pool,
    ):
        for _ in range(3):  # no pause: the next request may find the close not yet read by the loop
            assert (await post(pool))[0] == 200
    assert server.connections == 3


async def test_a_close_the_loop_has_not_read_yet_is_found_on_a_long_idle_connection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """httpcore asks `is_readable` before reusing a connection: a FIN still in the kernel counts,
    but only past `POLL_AFTER_IDLE_S` (before that the loop's own view is trusted, no syscall)."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    thread = threading.Thread(target=lambda: accepted.append(listener.accept()[0]))
    thread.start()
    stream = await http_backend.StreamBackend().connect_tcp("127.0.0.1", listener.getsockname()[1], timeout=5)
    thread.join(5)
    try:
        assert stream.get_extra_info("is_readable") is False
        accepted[0].close()  # the server hangs up
        time.sleep(0.05)  # noqa: ASYNC251 (on purpose: the FIN must reach the kernel, not the event loop)
        assert stream.get_extra_info("is_readable") is False  # idle for less than the threshold
        monkeypatch.setattr(http_backend, "POLL_AFTER_IDLE_S", 0.0)
        assert stream.get_extra_info("is_readable") is True
    finally:
        await stream.aclose()
        listener.close()


async def test_a_large_body_arrives_whole(transport: Transport) -> None:
    body = bytes(range(256)) * 12_000  # 3 MB: past the backend's flush size, through flow control

    def digest(seen: Seen) -> bytes:
        return response(hashlib.sha256(seen.body).hexdigest().encode())

    async with serving(digest) as server, pool_for(f"http://127.0.0.1:{server.port}/e", transport) as pool:
        assert await post(pool, body) == (200, hashlib.sha256(body).hexdigest().encode())
        assert await post(pool, b"small") == (200, hashlib.sha256(b"small").hexdigest().encode())


@pytest.mark.parametrize(
    ("encoding", "compress"),
    [("gzip", gzip.compress), ("deflate", zlib.compress), ("deflate", lambda data: zlib.compress(data)[2:-4])],
    ids=["gzip", "zlib-deflate", "raw-deflate"],
)
async def test_compressed_answers_are_decompressed(
    encoding: str, compress: Callable[[bytes], bytes], transport: Transport
) -> None:
    payload = b'{"data": []}' * 100
    answer = response(compress(payload), headers={"Content-Encoding": encoding})
    async with serving(lambda seen: answer) as server, pool_for(f"http://127.0.0.1:{server.port}/e", transport) as pool:
        assert await post(pool) == (200, payload)


async def test_an_answer_that_does_not_decompress_is_a_provider_error(transport: Transport) -> None:
    answer = response(b"not gzip at all", headers={"Content-Encoding": "gzip"})
    async with serving(lambda seen: answer) as server, pool_for(f"http://127.0.0.1:{server.port}/e", transport) as pool:
        with (
            pytest.raises(ProviderError, match="dep: the upstream's answer does not decompress") as raised,
            upstream_errors("dep", None),
        ):
            await post(pool)
    assert type(raised.value) is ProviderError  # not retried


async def test_an_error_answer_keeps_the_upstreams_own_words(transport: Transport) -> None:
    def refuse(seen: Seen) -> bytes:
        return response(b"", status=503).replace(b"503 X", b"503 Warming Up")

    async with serving(refuse) as server, pool_for(f"http://127.0.0.1:{server.port}/e", transport) as pool:
        reply = await pool.post(b"{}", timeout_s=5, connect_timeout_s=5)
    answer = reply.as_httpx()
    assert (answer.status_code, answer.reason_phrase) == (503, "Warming Up")
    assert upstream_message(answer) == "Warming Up"


async def test_a_silent_upstream_times_out_as_a_transient_failure(transport: Transport) -> None:
    async with serving(lambda seen: None) as server, pool_for(f"http://127.0.0.1:{server.port}/e", transport) as pool:
        with pytest.raises(httpcore.ReadTimeout):
            await post(pool, timeout_s=0.2)
        with pytest.raises(UpstreamTransient, match="did not answer in time"), upstream_errors("dep", None):
            await post(pool, timeout_s=0.2)


async def test_credentials_in_the_url_become_basic_auth(transport: Transport) -> None:
    async with (
        serving(lambda seen: response()) as server,
        pool_for(f"http://user:pa%3Ass@127.0.0.1:{server.port}/e", transport, {"Authorization": "Bearer x"}) as pool,
    ):
        await post(pool)
    assert server.requests[0].headers["authorization"] == "Basic dXNlcjpwYTpzcw=="  # user:pa:ss


async def test_the_environment_proxy_is_used_unless_no_proxy_names_the_host(
    monkeypatch: pytest.MonkeyPatch, proxy_transport: Transport
) -> None:
    transport = proxy_transport
    async with serving(lambda seen: response(b"via proxy")) as proxy, serving(lambda seen: response()) as origin:
        monkeypatch.setenv("HTTP_PROXY", f"http://agent:secret@127.0.0.1:{proxy.port}")
        async with pool_for("http://upstream.test:8080/v1/embeddings", transport) as pool:
            assert await post(pool) == (200, b"via proxy")
        seen = proxy.requests[0]
        assert seen.line == "POST http://upstream.test:8080/v1/embeddings HTTP/1.1"
        assert seen.headers["proxy-authorization"] == "Basic YWdlbnQ6c2VjcmV0"  # agent:secret
        monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1")
        async with pool_for(f"http://127.0.0.1:{origin.port}/v1/embeddings", transport) as pool:
            assert (await post(pool))[0] == 200
    assert origin.requests[0].line == "POST /v1/embeddings HTTP/1.1"
    assert len(proxy.requests) == 1


def _certificates(directory: Path) -> ssl.SSLContext:
    """A throwaway CA (`ca.pem`) and a server context whose certificate is for 127.0.0.1."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True, timeout=30)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=test CA")
    openssl("req", *ec, "-keyout", "leaf.key", "-out", "leaf.csr", "-subj", "/CN=127.0.0.1")
    (directory / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    signing = ["-CA", "ca.pem", "-CAkey", "ca.key", "-days", "2", "-extfile", "san.ext"]
    openssl("x509", "-req", "-in", "leaf.csr", *signing, "-out", "leaf.pem")
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(directory / "leaf.pem", directory / "leaf.key")
    return server


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make certificates")
async def test_https_trusts_ssl_cert_file_and_refuses_an_unknown_ca(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, proxy_transport: Transport
) -> None:
    transport = proxy_transport
    tls = _certificates(tmp_path)
    async with serving(lambda seen: response(b"secure"), tls=tls) as server:
        url = f"https://127.0.0.1:{server.port}/v1/embeddings"
        async with pool_for(url, transport) as pool:  # certifi's roots do not know our CA
            with pytest.raises(UpstreamTransient, match="cannot reach the upstream"), upstream_errors("dep", None):
                await post(pool)
        monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "ca.pem"))
        async with pool_for(url, transport) as pool:
            assert await post(pool) == (200, b"secure")
            assert await post(pool) == (200, b"secure")
    assert server.requests[-1].line == "POST /v1/embeddings HTTP/1.1"


async def test_a_keepalive_connection_closed_as_the_request_arrives_is_sent_again(transport: Transport) -> None:
    """The server closes its idle keep-alive connection just as the second request reaches it (it reads
    the request and hangs up without a word); the request goes again on a fresh connection."""
    async with (
        serving(lambda seen: response(b"answer " + seen.body), drop_request=lambda seen, n: n == 2) as server,
        pool_for(f"http://127.0.0.1:{server.port}/e", transport) as pool,
    ):
        assert await post(pool, b"1") == (200, b"answer 1")
        assert await post(pool, b"2") == (200, b"answer 2")
    assert [seen.body for seen in server.requests] == [b"1", b"2", b"2"]
    assert server.connections == 2


async def test_an_upstream_that_always_hangs_up_is_tried_twice_then_unreachable(transport: Transport) -> None:
    async with (
        serving(lambda seen: response(), drop_request=lambda seen, n: True) as server,
        pool_for(f"http://127.0.0.1:{server.port}/e", transport) as pool,
    ):
        with pytest.raises(UpstreamTransient, match="cannot reach the upstream"), upstream_errors("dep", None):
            await post(pool)
    assert len(server.requests) == 2  # the second try is the last


async def test_a_refused_connection_is_a_transient_failure(transport: Transport) -> None:
    with socket.socket() as unused:  # a port nobody listens on
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    async with pool_for(f"http://127.0.0.1:{port}/e", transport) as pool:
        with pytest.raises(httpcore.ConnectError):
            await post(pool)
        with pytest.raises(UpstreamTransient, match="cannot reach the upstream"), upstream_errors("dep", None):
            await post(pool)


async def test_the_pool_opens_at_most_max_connections_and_a_wait_for_one_times_out(transport: Transport) -> None:
    def answer(seen: Seen) -> bytes | None:
        return None if seen.body == b"hang" else response(b"ok")

    async with (
        serving(answer) as server,
        pool_for(f"http://127.0.0.1:{server.port}/e", transport, max_connections=1) as pool,
    ):
        hanging = asyncio.create_task(post(pool, b"hang", timeout_s=30))
        await asyncio.sleep(0.1)  # the one connection is taken
        with pytest.raises(UpstreamTransient, match="did not answer in time"), upstream_errors("dep", None):
            await post(pool, b"next", timeout_s=0.2)
        assert server.connections == 1
        hanging.cancel()
        with pytest.raises(asyncio.CancelledError):
            await hanging
    assert [seen.body for seen in server.requests] == [b"hang"]


async def test_close_hangs_up_the_pooled_connections(transport: Transport) -> None:
    async with serving(lambda seen: response()) as server:
        pool = UpstreamPool(f"http://127.0.0.1:{server.port}/e", {}, max_connections=2, transport=transport)
        await asyncio.gather(post(pool), post(pool))
        assert (server.connections, server.closed) == (2, 0)
        await pool.aclose()
        for _ in range(50):
            if server.closed == 2:
                break
            await asyncio.sleep(0.01)
        assert server.closed == 2


@pytest.mark.parametrize(
    ("url", "proxy", "chosen"),
    [
        ("http://gpu-host.test:8000/v1/embeddings", None, DirectPool),
        ("http://gpu-host.test:8000/v1/embeddings", "http://127.0.0.1:3128", AiohttpPool),
        ("https://api.example.test/v1/embeddings", None, AiohttpPool),
        ("https://api.example.test/v1/embeddings", "http://127.0.0.1:3128", AiohttpPool),
        ("https://api.example.test/v1/embeddings", "https://127.0.0.1:3128", HttpcorePool),
    ],
    ids=["http", "http-via-http-proxy", "https", "https-via-http-proxy", "https-via-https-proxy"],
)
async def test_the_pool_is_chosen_by_scheme_and_proxy(
    monkeypatch: pytest.MonkeyPatch, url: str, proxy: str | None, chosen: type[DirectPool | AiohttpPool | HttpcorePool]
) -> None:
    """Plain http:// without a proxy goes direct; https to aiohttp; a proxy aiohttp does not speak to httpcore."""
    if proxy is not None:
        monkeypatch.setenv("HTTPS_PROXY" if url.startswith("https") else "HTTP_PROXY", proxy)
    pool = UpstreamPool(url, {}, max_connections=1)
    try:
        assert type(pool.pool) is chosen
    finally:
        await pool.aclose()


async def test_the_direct_pool_refuses_what_it_does_not_speak(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="plain http://"):
        UpstreamPool("https://api.example.test/v1/embeddings", {}, max_connections=1, transport="direct")
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:3128")
    with pytest.raises(ValueError, match="proxy"):
        UpstreamPool("http://gpu-host.test/v1/embeddings", {}, max_connections=1, transport="direct")


async def test_chunked_and_close_delimited_answers_arrive_whole(transport: Transport) -> None:
    payload = b'{"data": [' + b"1," * 5000 + b"1]}"
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunked += b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (payload[:7], payload[7:])) + b"0\r\n\r\n"
    async with (
        serving(lambda seen: chunked) as server,
        pool_for(f"http://127.0.0.1:{server.port}/e", transport) as pool,
    ):
        assert await post(pool) == (200, payload)
        assert await post(pool) == (200, payload)
    assert server.connections == 1  # a chunked answer leaves the connection reusable
    until_close = b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n" + payload  # its end is the close
    async with (
        serving(lambda seen: until_close, close_after_answer=True) as server,
        pool_for(f"http://127.0.0.1:{server.port}/e", transport) as pool,
    ):
        assert await post(pool) == (200, payload)
        assert await post(pool) == (200, payload)
    assert server.connections == 2


async def test_connection_close_in_an_answer_is_obeyed(transport: Transport) -> None:
    async with (
        serving(lambda seen: response(headers={"Connection": "close"})) as server,
        pool_for(f"http://127.0.0.1:{server.port}/e", transport) as pool,
    ):
        for _ in range(3):
            assert (await post(pool))[0] == 200
    assert server.connections == 3


async def test_callers_beyond_max_connections_queue_for_the_connections(transport: Transport) -> None:
    async with (
        serving(lambda seen: response(b"answer " + seen.body)) as server,
        pool_for(f"http://127.0.0.1:{server.port}/e", transport, max_connections=2) as pool,
    ):
        answers = await asyncio.gather(*(post(pool, str(i).encode()) for i in range(12)))
    assert answers == [(200, b"answer " + str(i).encode()) for i in range(12)]
    assert server.connections == 2


@pytest.mark.parametrize("transport", ["direct", "aiohttp"])  # httpcore sends it once more (DROPPED)
async def test_an_answer_that_is_not_http_fails_and_its_connection_is_not_reused(transport: Transport) -> None:
    answers = iter([b"SMTP ready\r\n\r\n", response(b"fine")])
    async with (
        serving(lambda seen: next(answers)) as server,
        pool_for(f"http://127.0.0.1:{server.port}/e", transport) as pool,
    ):
        with pytest.raises(UpstreamTransient, match="cannot reach the upstream"), upstream_errors("dep", None):
            await post(pool)
        assert await post(pool) == (200, b"fine")
    assert server.connections == 2


async def test_a_call_cancelled_mid_answer_closes_its_connection_and_frees_its_place(transport: Transport) -> None:
    answers = iter([None, response(b"second")])  # the first request is never answered
    async with (
        serving(lambda seen: next(answers)) as server,
        pool_for(f"http://127.0.0.1:{server.port}/e", transport, max_connections=1) as pool,
    ):
        first = asyncio.create_task(post(pool, b"1", timeout_s=30))
        await asyncio.sleep(0.1)
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        assert await post(pool, b"2") == (200, b"second")  # on a new connection, in the freed place
    assert server.connections == 2


async def test_an_answer_that_trickles_in_is_not_cut_short_by_the_read_timeout() -> None:
    """`timeout_s` bounds a silence, not the whole answer (like aiohttp's `sock_read`)."""

    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        body = b"x" * 8
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\n")
        for byte in body:
            await asyncio.sleep(0.1)
            writer.write(bytes([byte]))
        await writer.drain()

    listener = await asyncio.start_server(trickle, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    try:
        async with pool_for(f"http://127.0.0.1:{port}/e", "direct") as pool:
            started = time.monotonic()
            assert await post(pool, timeout_s=0.5) == (200, b"x" * 8)
            assert time.monotonic() - started > 0.5
    finally:
        listener.close()


async def test_an_interim_100_continue_is_skipped(transport: Transport) -> None:
    answer = b"HTTP/1.1 100 Continue\r\n\r\n" + response(b"final")
    async with serving(lambda seen: answer) as server, pool_for(f"http://127.0.0.1:{server.port}/e", transport) as pool:
        assert await post(pool) == (200, b"final")


async def test_an_idle_connection_past_its_keepalive_is_not_reused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http_direct, "KEEPALIVE_EXPIRY_S", 0.05)
    async with (
        serving(lambda seen: response()) as server,
        pool_for(f"http://127.0.0.1:{server.port}/e", "direct") as pool,
    ):
        await post(pool)
        await post(pool)
        await asyncio.sleep(0.1)
        await post(pool)
    assert server.connections == 2


async def test_a_caller_waiting_when_the_direct_pool_closes_gets_no_new_connection() -> None:
    async with serving(lambda seen: None if seen.body == b"hang" else response()) as server:
        pool = UpstreamPool(f"http://127.0.0.1:{server.port}/e", {}, max_connections=1, transport="direct")
        hanging = asyncio.create_task(post(pool, b"hang", timeout_s=30))
        await asyncio.sleep(0.1)
        waiting = asyncio.create_task(post(pool, b"next", timeout_s=30))
        await asyncio.sleep(0.05)
        await pool.aclose()
        hanging.cancel()  # its connection is closed on release, and its place goes to the waiter
        with pytest.raises(httpcore.ConnectError, match="closed"):
            await waiting
        with pytest.raises(asyncio.CancelledError):
            await hanging
    assert server.connections == 1


async def test_a_host_name_is_resolved_and_its_addresses_tried(transport: Transport) -> None:
    """`localhost` may resolve to ::1 first, where nothing listens: the next address serves."""
    async with (
        serving(lambda seen: response(b"by name")) as server,
        pool_for(f"http://localhost:{server.port}/e", transport) as pool,
    ):
        assert await post(pool) == (200, b"by name")
    assert server.requests[0].headers["host"] == f"localhost:{server.port}"


async def test_the_direct_pool_keeps_its_count_through_drops_hangs_timeouts_and_cancellations() -> None:
    """200 calls, 20 at a time, on 4 connections against a server that answers, hangs, drops or sends
    garbage at random, some callers cancelled: afterwards no place is leaked (every open connection is idle,
    nobody waits) and the pool still serves."""
    rng = random.Random(7)
    storm = True
    outcomes: dict[str, int] = {}

    def answer(seen: Seen) -> bytes | None:
        roll = rng.random() if storm else 1.0
        if roll < 0.1:
            return None  # hangs: the caller times out
        if roll < 0.15:
            return b"garbage\r\n\r\n"
        return response(b"ok " + seen.body)

    async with serving(answer, drop_request=lambda seen, n: storm and rng.random() < 0.1) as server:
        pool = UpstreamPool(f"http://127.0.0.1:{server.port}/e", {}, max_connections=4, transport="direct")
        direct = pool.pool
        assert isinstance(direct, DirectPool)

        async def call(i: int) -> None:
            task = asyncio.create_task(post(pool, str(i).encode(), timeout_s=0.2))
            if i % 7 == 0:
                await asyncio.sleep(rng.random() / 50)
                task.cancel()
            try:
                await task
                outcome = "answered"
            except (asyncio.CancelledError, httpcore.TimeoutException, httpcore.NetworkError) as exc:
                outcome = type(exc).__name__
            except httpcore.RemoteProtocolError:
                outcome = "protocol"
            outcomes[outcome] = outcomes.get(outcome, 0) + 1

        for wave in range(10):  # 20 callers at a time on the 4 connections
            await asyncio.gather(*(call(i) for i in range(wave * 20, wave * 20 + 20)))
        await asyncio.sleep(0.05)  # closes in flight land
        assert {"answered", "CancelledError", "ReadTimeout", "PoolTimeout", "protocol"} <= set(outcomes)
        assert not direct.waiters
        assert direct.open == len(direct.idle) <= 4
        storm = False
        assert await post(pool, b"last") == (200, b"ok last")
        await pool.aclose()


@pytest.mark.parametrize("transport", ["direct", "aiohttp"])  # httpcore (h11) hands them on: left as it is
async def test_bytes_after_an_answer_never_become_the_next_callers_answer(transport: Transport) -> None:
    """An upstream that sends the start of a second answer with the first: that connection is not
    reused, so the next caller gets the answer to its own request."""
    answers = iter([response(b"first") + b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab", response(b"second")])
    async with (
        serving(lambda seen: next(answers)) as server,
        pool_for(f"http://127.0.0.1:{server.port}/e", transport) as pool,
    ):
        assert await post(pool, b"1") == (200, b"first")
        assert await post(pool, b"2") == (200, b"second")
