"""The image fetcher against real servers on 127.0.0.1: SSRF guard, pinning, caps, timeouts, logs.

Every hostile case here failed against the fetcher this module replaced (`ImageLoader.fetch`).
"""

from __future__ import annotations

import asyncio
import gzip
import ipaddress
import logging
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from gateway.config import ImageSettings
from gateway.errors import InvalidRequest
from gateway.fetch import ImageFetcher, is_forbidden_address, redact_url
from tests.servers import RawHost, Send, free_port, http_response

PARAM = "input[0].image"
PNG_ISH = b"\x89PNG\r\n\x1a\n" + bytes(range(256))
LOCAL = ["127.0.0.1/32"]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@pytest.fixture(scope="module")
def host() -> Iterator[RawHost]:
    server = RawHost()
    yield server
    server.close()


def ok(body: bytes = PNG_ISH, **headers: str) -> bytes:
    named = {key.replace("_", "-"): value for key, value in headers.items()}
    return http_response(body, 200, {"Content-Length": str(len(body)), **named})


def redirect(location: str, status: int = 302) -> bytes:
    return http_response(b"", status, {"Location": location, "Content-Length": "0"})


def trickle(head: bytes, every_s: float = 1.0, count: int = 10) -> Callable[[Send], None]:
    """Send `head`, then one byte every `every_s` seconds."""

    def respond(send: Send) -> None:
        send(head)
        for _ in range(count):
            time.sleep(every_s)
            send(b"x")

    return respond


def delayed(data: bytes, delay_s: float) -> Callable[[Send], None]:
    def respond(send: Send) -> None:
        time.sleep(delay_s)
        send(data)

    return respond


async def fetch(
    url: str, *, max_bytes: int = 1_000_000, resolver: Any = None, ssl_context: Any = None, **settings: Any
) -> bytes:
    fetcher = ImageFetcher(ImageSettings(**settings), resolver=resolver, ssl_context=ssl_context)
    try:
        return await fetcher.fetch(url, param=PARAM, max_bytes=max_bytes)
    finally:
        await fetcher.aclose()


async def fetch_error(url: str, **kwargs: Any) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as caught:
        await fetch(url, **kwargs)
    assert caught.value.param == PARAM
    assert len(caught.value.message) < 300  # never the whole of a hostile input
    return caught.value


def static_resolver(table: dict[str, str], calls: list[tuple[str, int]] | None = None) -> Any:
    """A resolver answering from `table`; records what it was asked in `calls`."""

    async def resolve(name: str, port: int) -> Sequence[IPAddress]:
        if calls is not None:
            calls.append((name, port))
        if name not in table:
            raise socket.gaierror(socket.EAI_NONAME, "not in the table")
        return [ipaddress.ip_address(table[name])]

    return resolve


def record_getaddrinfo(monkeypatch: pytest.MonkeyPatch, answer: Callable[[str, int], str]) -> list[str]:
    """Make the system's getaddrinfo answer `answer(name, call_number)` and record every name it is asked."""
    real = socket.getaddrinfo
    names: list[str] = []

    def fake(name: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        text = name.decode() if isinstance(name, bytes) else str(name)
        names.append(text)
        return real(answer(text, len(names)), port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    return names


# 1. Decompression bombs: nothing is decoded, encoded bodies are refused.


@pytest.mark.parametrize("encoding", ["gzip, gzip", "gzip", "br", "deflate", "identity, gzip"])
async def test_encoded_bodies_are_refused_not_decoded(host: RawHost, encoding: str) -> None:
    bomb = gzip.compress(gzip.compress(bytes(16 * 1024 * 1024), mtime=0), mtime=0)  # 16 MiB of zeros
    assert len(bomb) < 20_000
    path = f"/bomb/{len(host.routes)}"
    url = host.add(path, ok(bomb, Content_Encoding=encoding))
    error = await fetch_error(url, allowed_private_networks=LOCAL, max_bytes=1_000_000)
    assert error.code == "image_fetch_failed"
    assert "Content-Encoding" in error.message
    assert host.headers_of(path)[-1]["accept-encoding"] == "identity"


async def test_stacked_content_encoding_headers_are_refused(host: RawHost) -> None:
    body = gzip.compress(PNG_ISH)
    raw = http_response(body, 200, {"Content-Length": str(len(body)), "Content-Encoding": "identity"})
    url = host.add("/two-encoding-headers", raw.replace(b"\r\n\r\n", b"\r\nContent-Encoding: gzip\r\n\r\n", 1))
    assert (await fetch_error(url, allowed_private_networks=LOCAL)).code == "image_fetch_failed"


async def test_identity_encoding_is_read_as_is(host: RawHost) -> None:
    url = host.add("/identity", ok(Content_Encoding="identity"))
    assert await fetch(url, allowed_private_networks=LOCAL) == PNG_ISH


# 2. Resolve once, with httpx's spelling of the name, and connect to the address checked.


async def test_idna_2008_name_is_resolved_once_and_as_httpx_spells_it(
    host: RawHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    host.add("/idna", ok())
    names = record_getaddrinfo(monkeypatch, lambda _name, _n: "127.0.0.1")
    body = await fetch(host.url("/idna", "faß.example"), allowed_private_networks=LOCAL)
    assert body == PNG_ISH
    assert names == ["xn--fa-hia.example"]  # IDNA 2003 would have checked "fass.example"
    assert host.headers_of("/idna")[-1]["host"] == f"xn--fa-hia.example:{host.port}"


async def test_a_second_lookup_cannot_rebind_the_checked_name(host: RawHost, monkeypatch: pytest.MonkeyPatch) -> None:
    host.add("/rebind", ok())
    # The first answer is allowed; any later one is an address nothing listens on.
    names = record_getaddrinfo(monkeypatch, lambda _name, n: "127.0.0.1" if n == 1 else "127.0.0.2")
    assert await fetch(host.url("/rebind", "rebind.test"), allowed_private_networks=LOCAL) == PNG_ISH
    assert names == ["rebind.test"]


async def test_connection_goes_to_the_resolved_address_with_the_original_host(host: RawHost) -> None:
    host.add("/pinned", ok())
    calls: list[tuple[str, int]] = []
    resolver = static_resolver({"images.test": "127.0.0.1"}, calls)
    url = host.url("/pinned?size=1", "images.test")
    assert await fetch(url, resolver=resolver, allowed_private_networks=LOCAL) == PNG_ISH
    assert calls == [("images.test", host.port)]
    assert host.headers_of("/pinned?size=1")[-1]["host"] == f"images.test:{host.port}"


async def test_localhost_is_pinned_to_loopback_when_allowed(host: RawHost) -> None:
    host.add("/localhost", ok())
    assert await fetch(host.url("/localhost", "localhost"), allowed_private_networks=["127.0.0.0/8", "::1/128"])
    assert host.headers_of("/localhost")[-1]["host"] == f"localhost:{host.port}"


async def test_an_address_the_resolver_chose_is_checked(host: RawHost) -> None:
    resolver = static_resolver({"evil.test": "169.254.169.254"})
    error = await fetch_error("http://evil.test/latest/meta-data/", resolver=resolver, allowed_private_networks=LOCAL)
    assert error.code == "image_url_forbidden"


async def test_unresolvable_and_unreachable_hosts_fail_cleanly(host: RawHost) -> None:
    error = await fetch_error("http://nowhere.test/x", resolver=static_resolver({}))
    assert error.code == "image_fetch_failed"
    closed = f"http://127.0.0.1:{free_port()}/x"
    assert (await fetch_error(closed, allowed_private_networks=LOCAL)).code == "image_fetch_failed"


# 2b. TLS: connected to the IP, the certificate is still checked against the URL's name.


def _certificates(directory: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A throwaway CA and a certificate for `images.test`: (client context trusting the CA, server context)."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True, timeout=30)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=test CA")
    openssl("req", *ec, "-keyout", "leaf.key", "-out", "leaf.csr", "-subj", "/CN=images.test")
    (directory / "san.ext").write_text("subjectAltName=DNS:images.test\n")
    signing = ["-CA", "ca.pem", "-CAkey", "ca.key", "-days", "2", "-extfile", "san.ext"]
    openssl("x509", "-req", "-in", "leaf.csr", *signing, "-out", "leaf.pem")
    client = ssl.create_default_context(cafile=str(directory / "ca.pem"))
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(directory / "leaf.pem", directory / "leaf.key")
    return client, server


async def test_https_is_pinned_with_sni_and_the_certificate_checked_for_the_name(tmp_path: Path) -> None:
    client, server = _certificates(tmp_path)
    tls_host = RawHost(tls=server)
    try:
        tls_host.add("/tls", ok())
        resolver = static_resolver({"images.test": "127.0.0.1", "other.test": "127.0.0.1"})
        url = tls_host.url("/tls", "images.test")
        assert await fetch(url, resolver=resolver, ssl_context=client, allowed_private_networks=LOCAL) == PNG_ISH
        assert tls_host.server_names[-1] == "images.test"
        assert tls_host.headers_of("/tls")[-1]["host"] == f"images.test:{tls_host.port}"
        wrong_name = tls_host.url("/tls", "other.test")  # same address, a certificate for another name
        error = await fetch_error(wrong_name, resolver=resolver, ssl_context=client, allowed_private_networks=LOCAL)
        assert error.code == "image_fetch_failed"
    finally:
        tls_host.close()


# 3. Capacity: the slot wait is inside the timeout; DNS has threads of its own.


async def test_waiting_for_a_fetch_slot_counts_against_the_timeout(host: RawHost) -> None:
    host.add("/hold-slot", delayed(ok(), 1.5))
    fast = host.add("/fast", delayed(ok(), 0.3))  # alone, well within its 0.5 s
    fetcher = ImageFetcher(ImageSettings(allowed_private_networks=LOCAL, max_concurrent_fetches=1, fetch_timeout_s=0.5))
    try:
        started = time.monotonic()
        slow_result, fast_result = await asyncio.gather(
            fetcher.fetch(host.url("/hold-slot"), param=PARAM, max_bytes=10_000),
            fetcher.fetch(fast, param=PARAM, max_bytes=10_000),
            return_exceptions=True,
        )
        elapsed = time.monotonic() - started
    finally:
        await fetcher.aclose()
    assert isinstance(slow_result, InvalidRequest)
    assert slow_result.code == "image_fetch_failed"
    assert isinstance(fast_result, InvalidRequest)  # it waited 0.5 s for the slot: its whole budget
    assert fast_result.code == "image_fetch_failed"
    assert elapsed < 1.2


async def test_slow_dns_does_not_hold_the_default_executor(host: RawHost, monkeypatch: pytest.MonkeyPatch) -> None:
    loop = asyncio.get_running_loop()
    loop.set_default_executor(ThreadPoolExecutor(1))  # as busy as image decoding makes it
    entered, release = asyncio.Event(), threading.Event()

    def answer(name: str, _n: int) -> str:
        if name == "slow-dns.test":
            loop.call_soon_threadsafe(entered.set)
            release.wait(5)
        return "127.0.0.1"

    record_getaddrinfo(monkeypatch, answer)
    host.add("/dns", ok())
    task = asyncio.create_task(fetch(host.url("/dns", "slow-dns.test"), allowed_private_networks=LOCAL))
    try:
        await asyncio.wait_for(entered.wait(), 5)
        assert await asyncio.wait_for(loop.run_in_executor(None, lambda: "decoded"), 1.0) == "decoded"
    finally:
        release.set()
    assert await task == PNG_ISH


# 4. Cookies are never kept.


async def test_cookies_are_neither_stored_nor_sent(host: RawHost) -> None:
    first = host.add("/cookie/set", ok(Set_Cookie="session=abc123; Path=/"))
    second = host.add("/cookie/next", ok())
    fetcher = ImageFetcher(ImageSettings(allowed_private_networks=LOCAL))
    try:
        assert await fetcher.fetch(first, param=PARAM, max_bytes=10_000) == PNG_ISH
        assert await fetcher.fetch(second, param=PARAM, max_bytes=10_000) == PNG_ISH
    finally:
        await fetcher.aclose()
    assert "cookie" not in host.headers_of("/cookie/next")[-1]


# 5. No secrets in logs.


async def test_logs_carry_no_credentials_or_query(host: RawHost, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    host.add("/logged/start", redirect(host.url("/logged/image")))
    host.add("/logged/image", ok())
    url = f"http://alice:hunter2@127.0.0.1:{host.port}/logged/start?token=s3cret#frag"
    assert await fetch(url, allowed_private_networks=LOCAL) == PNG_ISH
    lines = [record.getMessage() for record in caplog.records]
    assert any(f"http://127.0.0.1:{host.port}/logged/start" in line for line in lines)
    assert not [line for line in lines if "hunter2" in line or "s3cret" in line or "alice" in line]
    start, image = host.headers_of("/logged/start?token=s3cret")[-1], host.headers_of("/logged/image")[-1]
    assert start["authorization"].startswith("Basic ")  # the URL's own credentials, for its own hop only
    assert "authorization" not in image


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://user:pass@example.com:8080/a/b.png?sig=x#frag", "http://example.com:8080/a/b.png"),
        ("https://example.com/a.png?X-Amz-Signature=abc", "https://example.com/a.png"),
        ("https://tok@[::1]:9/p", "https://[::1]:9/p"),
        ("http://example.com/a\x1b[31mb", "http://example.com/a%1B[31mb"),
        ("http://[::1/png", "<unparseable URL>"),
        ("http://x:99999/p?q", "http://x:99999/p"),
        ("", "://"),
    ],
)
def test_redact_url(url: str, expected: str) -> None:
    assert redact_url(url) == expected


# 6. Malformed URLs, the client's or a redirect's, are a clean invalid_image_url.

MALFORMED = [
    "http://example.com:99999/x",
    "http://example.com:abc/x",
    "http://example.com:0/x",
    "http://[::1/png",
    "http://[bad",
    "http://a..b/x",
    "http://" + "a" * 64 + ".example/x",
    "http://" + "a." * 127 + "example/x",
    "http://exa\tmple.com/x",
    "http://exa\x7fmple.com/x",
    "http://\uff11\uff12\uff17.0.0.1/",  # full-width digits: IDNA 2003 maps them to 127.0.0.1
    "http://0177.0.0.1/",  # httpx reads an IPv4 literal and refuses its leading zero (octal elsewhere)
    "http:///x",
    "http://exa mple.com/x",
    "ftp://example.com/x",
    "file:///etc/passwd",
    "gopher://127.0.0.1:6379/_INFO",
    "",
    "not a url",
]


@pytest.mark.parametrize("url", MALFORMED)
async def test_malformed_urls_are_invalid_image_url(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    names = record_getaddrinfo(monkeypatch, lambda _name, _n: "127.0.0.1")
    assert (await fetch_error(url, allowed_private_networks=LOCAL)).code == "invalid_image_url"
    assert names == []  # refused before any lookup


@pytest.mark.parametrize(
    "location",
    ["http://[bad", "http://x:99999/", "http://a..b/", "ftp://example.com/x", "file:///etc/passwd", "https:no-host"],
)
async def test_malformed_redirects_are_invalid_image_url(host: RawHost, location: str) -> None:
    url = host.add(f"/bad-redirect/{len(host.routes)}", redirect(location))
    assert (await fetch_error(url, allowed_private_networks=LOCAL)).code == "invalid_image_url"


# 7. Only globally routable destinations, whatever their spelling.

FORBIDDEN_ADDRESSES = [
    "10.1.2.3",
    "172.16.0.1",
    "192.168.1.1",
    "127.0.0.1",
    "0.0.0.0",
    "169.254.169.254",  # cloud metadata
    "100.100.100.200",  # Alibaba metadata, in 100.64.0.0/10
    "100.64.0.1",
    "192.0.0.171",
    "192.88.99.1",  # 6to4 relay anycast
    "198.18.0.1",
    "224.0.0.1",
    "239.255.255.250",
    "255.255.255.255",
    "::1",
    "::",
    "fe80::1",
    "fc00::1",
    "fd00:ec2::254",  # AWS metadata over IPv6
    "ff02::1",
    "ff0e::1",  # global-scope multicast
    "::ffff:10.0.0.1",
    "::ffff:127.0.0.1",
    "::7f00:1",  # IPv4-compatible 127.0.0.1
    "2002:a00:1::",  # 6to4 for 10.0.0.1
    "2002:7f00:1::",  # 6to4 for 127.0.0.1
    "2001:0:4136:e378:8000:63bf:80ff:fffe",  # Teredo, client 127.0.0.1
    "64:ff9b::a00:1",  # NAT64 for 10.0.0.1
    "64:ff9b::a9fe:a9fe",  # NAT64 for 169.254.169.254
    "64:ff9b:1::1",
    "2001:db8::1",
]
PUBLIC_ADDRESSES = ["93.184.216.34", "2606:4700::1111", "::ffff:93.184.216.34", "2002:5db8:d822::1", "8.8.8.8"]


@pytest.mark.parametrize("address", FORBIDDEN_ADDRESSES)
def test_non_global_addresses_are_forbidden(address: str) -> None:
    assert is_forbidden_address(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", PUBLIC_ADDRESSES)
def test_public_addresses_are_not_forbidden(address: str) -> None:
    assert not is_forbidden_address(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    "url",
    [
        "http://[::1]:{port}/x",
        "http://[::ffff:127.0.0.1]:{port}/x",
        "http://0.0.0.0:{port}/x",
        "http://127.1:{port}/x",
        "http://2130706433:{port}/x",
        "http://0x7f.1:{port}/x",
        "http://localhost:{port}/x",
        "http://localhost.:{port}/x",
        "http://LOCALHOST:{port}/x",
        "http://169.254.169.254/latest/meta-data/",
        "http://100.100.100.200/latest/meta-data/",
        "http://[fd00:ec2::254]/latest/meta-data/",
        "http://[2002:a00:1::]/x",
        "http://[2002:7f00:1::]:{port}/x",
        "http://[2001:0:4136:e378:8000:63bf:80ff:fffe]/x",
        "http://[64:ff9b::7f00:1]/x",
    ],
)
async def test_urls_spelling_internal_addresses_are_forbidden(host: RawHost, url: str) -> None:
    hits = len(host.requests)
    assert (await fetch_error(url.format(port=host.port))).code == "image_url_forbidden"
    assert len(host.requests) == hits


@pytest.mark.parametrize(
    "location", ["http://10.0.0.1/x", "http://169.254.169.254/latest/meta-data/", "http://[::1]:{port}/x"]
)
async def test_redirects_to_internal_addresses_are_forbidden(host: RawHost, location: str) -> None:
    url = host.add(f"/to-internal/{len(host.routes)}", redirect(location.format(port=host.port)))
    assert (await fetch_error(url, allowed_private_networks=LOCAL)).code == "image_url_forbidden"


async def test_allowed_networks_are_checked_against_the_address_connected_to(host: RawHost) -> None:
    host.add("/allowed", ok())
    assert await fetch(host.url("/allowed", "127.1"), allowed_private_networks=["127.0.0.0/8"]) == PNG_ISH
    # 6to4 for 10.0.0.1 goes through a relay, not to 10.0.0.1: allowing 10/8 does not allow it.
    error = await fetch_error("http://[2002:a00:1::]/x", allowed_private_networks=["10.0.0.0/8"])
    assert error.code == "image_url_forbidden"


# 8. Slow and huge servers.


@pytest.mark.parametrize("head", [b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n", b"HTTP/1.1 200 OK\r\n"])
async def test_a_trickling_server_times_out(host: RawHost, head: bytes) -> None:
    url = host.add(f"/trickle/{len(head)}", trickle(head))
    started = time.monotonic()
    error = await fetch_error(url, allowed_private_networks=LOCAL, fetch_timeout_s=0.5)
    assert error.code == "image_fetch_failed"
    assert "timed out" in error.message
    assert time.monotonic() - started < 1.0


async def test_declared_length_over_the_cap_is_refused_before_reading(host: RawHost) -> None:
    url = host.add("/declared-huge", trickle(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000\r\n\r\n", 5.0, 1))
    started = time.monotonic()
    error = await fetch_error(url, allowed_private_networks=LOCAL, max_bytes=10_000, fetch_timeout_s=3)
    assert error.code == "image_too_large"
    assert time.monotonic() - started < 1.0


async def test_an_endless_body_is_cut_at_the_cap(host: RawHost) -> None:
    def endless(send: Send) -> None:
        send(http_response(headers={"Content-Type": "image/png"}))
        while True:
            send(bytes(65536))

    url = host.add("/endless", endless)
    assert (await fetch_error(url, allowed_private_networks=LOCAL, max_bytes=200_000)).code == "image_too_large"


async def test_a_body_exactly_at_the_cap_is_accepted(host: RawHost) -> None:
    url = host.add("/at-cap", http_response(PNG_ISH))  # no Content-Length: read to the close
    assert await fetch(url, allowed_private_networks=LOCAL, max_bytes=len(PNG_ISH)) == PNG_ISH


# 9. Redirects, statuses, schemes, environment.


async def test_redirects_are_followed_up_to_the_cap(host: RawHost) -> None:
    for i in range(3):
        host.add(f"/hop/{i}", redirect(f"/hop/{i + 1}", status=(301, 307, 308)[i]))
    host.add("/hop/3", ok())
    assert await fetch(host.url("/hop/0"), allowed_private_networks=LOCAL, max_redirects=3) == PNG_ISH
    error = await fetch_error(host.url("/hop/0"), allowed_private_networks=LOCAL, max_redirects=2)
    assert error.code == "image_fetch_failed"
    assert "redirects" in error.message


@pytest.mark.parametrize("status", [204, 206, 302, 304, 404, 500])
async def test_statuses_other_than_200_fail(host: RawHost, status: int) -> None:
    url = host.add(f"/status/{status}", http_response(PNG_ISH, status, {"Content-Length": str(len(PNG_ISH))}))
    error = await fetch_error(url, allowed_private_networks=LOCAL)
    assert error.code == "image_fetch_failed"
    assert str(status) in error.message


async def test_proxies_from_the_environment_are_ignored(host: RawHost, monkeypatch: pytest.MonkeyPatch) -> None:
    proxy = RawHost()
    try:
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "all_proxy"):
            monkeypatch.setenv(name, f"http://127.0.0.1:{proxy.port}")
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        url = host.add("/no-proxy", ok())
        assert await fetch(url, allowed_private_networks=LOCAL) == PNG_ISH
        assert proxy.requests == []
    finally:
        proxy.close()


async def test_closing_twice_is_harmless() -> None:
    fetcher = ImageFetcher(ImageSettings())
    await fetcher.aclose()
    await fetcher.aclose()
