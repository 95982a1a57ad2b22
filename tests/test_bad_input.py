"""Every bad input gets the OpenAI error envelope, the right status, and a param naming it."""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.images_data import b64, data_uri, encode, gradient, png
from tests.servers import ImageHost

GOOD_PNG = png()


def _truncated() -> bytes:
    return encode(gradient(200, 200), "JPEG")[:300]


def _bomb() -> bytes:
    """A small PNG that claims 10000x10000 pixels: over the gateway's pixel cap."""
    return encode(Image.new("1", (10_000, 10_000)), "PNG")


def assert_error(response: httpx.Response, status: int, code: str | None, param: str | None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code
    assert error["param"] == param
    assert error["type"] == ("invalid_request_error" if status < 429 else error["type"])
    assert error["message"]
    return error


CASES: list[tuple[str, dict[str, Any], int, str, str | None]] = [
    ("empty list", {"input": []}, 400, "empty_input", "input"),
    ("empty string", {"input": ""}, 400, "empty_input", "input"),
    ("empty string in list", {"input": ["a", ""]}, 400, "empty_input", "input[1]"),
    ("empty text part", {"input": [{"text": ""}]}, 400, "empty_input", "input[0].text"),
    ("too many items", {"input": ["a"] * 2049}, 400, "too_many_inputs", "input"),
    ("unknown model", {"model": "nope"}, 404, "model_not_found", "model"),
    (
        "image to text-only model",
        {"model": "siglip-text", "input": ["a", {"image": b64(GOOD_PNG)}]},
        400,
        "unsupported_modality",
        "input[1].image",
    ),
    (
        "text to image-only model",
        {"model": "siglip-vision", "input": [{"image": b64(GOOD_PNG)}, "a"]},
        400,
        "unsupported_modality",
        "input[1]",
    ),
    (
        "text part in fused item to image-only model",
        {
            "model": "siglip-vision",
            "input": [
                {"content": [{"type": "image_base64", "image_base64": b64(GOOD_PNG)}, {"type": "text", "text": "a"}]}
            ],
        },
        400,
        "unsupported_modality",
        "input[0].content[1].text",
    ),
    ("invalid base64", {"input": ["a", "b", "c", {"image": "not base64!!"}]}, 400, "invalid_base64", "input[3].image"),
    ("data uri not base64", {"input": [{"image": "data:image/png,abc"}]}, 400, "invalid_base64", "input[0].image"),
    (
        "not an image",
        {"input": [{"image": b64(b"hello, I am text, not a picture")}]},
        400,
        "invalid_image",
        "input[0].image",
    ),
    (
        "truncated image",
        {"input": [{"image": data_uri(_truncated(), "image/jpeg")}]},
        400,
        "invalid_image",
        "input[0].image",
    ),
    ("decompression bomb", {"input": [{"image": b64(_bomb())}]}, 400, "image_too_large", "input[0].image"),
    (
        "image too many bytes",
        {"input": [{"image": b64(encode(gradient(400, 400), "BMP"))}]},
        400,
        "image_too_large",
        "input[0].image",
    ),
    (
        "ftp url",
        {"input": [{"type": "image_url", "image_url": {"url": "ftp://127.0.0.1/x.png"}}]},
        400,
        "invalid_image_url",
        "input[0].image_url.url",
    ),
    ("bad encoding_format", {"encoding_format": "int8"}, 400, "invalid_encoding_format", "encoding_format"),
    ("dimensions on non-Matryoshka model", {"dimensions": 8}, 400, "invalid_dimensions", "dimensions"),
    ("dimensions out of range", {"model": "siglip-mrl", "dimensions": 33}, 400, "invalid_dimensions", "dimensions"),
    (
        "dimensions configured but over the native size",
        {"model": "siglip-mrl", "dimensions": 64},
        400,
        "invalid_dimensions",
        "dimensions",
    ),
    ("dimensions zero", {"model": "siglip-mrl", "dimensions": 0}, 400, "invalid_dimensions", "dimensions"),
    ("dimensions not integer", {"dimensions": "8"}, 400, "invalid_value", "dimensions"),
    ("token id out of range", {"input": [[1, 2], [3, 100_000_000]]}, 400, "invalid_token_id", "input[1][1]"),
    ("negative token id", {"input": [5, -1]}, 400, "invalid_token_id", "input[1]"),
    ("empty token list", {"input": [[1], []]}, 400, "empty_input", "input[1]"),
    ("unknown top-level field", {"foo": 1}, 400, "unknown_parameter", "foo"),
    ("missing model", {"model": None}, 400, "missing_required_parameter", "model"),
    ("missing input", {"input": None}, 400, "missing_required_parameter", "input"),
    ("unknown part type", {"input": [{"type": "video_url", "video_url": "x"}]}, 400, "invalid_input", "input[0].type"),
    ("unknown item field", {"input": [{"text": "a", "lang": "en"}]}, 400, "invalid_input", "input[0].lang"),
    ("text and image in one object", {"input": [{"text": "a", "image": "b"}]}, 400, "invalid_input", "input[0]"),
    ("number item", {"input": ["a", 3.5]}, 400, "invalid_input", "input[1]"),
    ("bad input_type", {"input_type": "passage"}, 400, "invalid_value", "input_type"),
    ("bad task", {"task": "classification"}, 400, "invalid_value", "task"),
]


@pytest.mark.parametrize(("body", "status", "code", "param"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input(gateway_url: str, body: dict[str, Any], status: int, code: str, param: str | None) -> None:
    request = {"model": "siglip-tiny", "input": "hello", **body}
    request = {k: v for k, v in request.items() if v is not None}
    response = httpx.post(f"{gateway_url}/v1/embeddings", json=request, timeout=30)
    assert_error(response, status, code, param)
    if status == 429:
        assert int(response.headers["retry-after"]) >= 1


def overload(gateway_url: str, clients: int = 12) -> list[httpx.Response]:
    """`clients` concurrent 4-item requests to a model whose queue holds 4 parts."""
    body = {"model": "siglip-small-queue", "input": [f"busy {i}" for i in range(4)]}

    def send(i: int) -> httpx.Response:
        sent = {**body, "input": [f"{text} {i}" for text in body["input"]]}
        return httpx.post(f"{gateway_url}/v1/embeddings", json=sent, timeout=60)

    with ThreadPoolExecutor(clients) as pool:
        return list(pool.map(send, range(clients)))


def test_a_full_queue_answers_429_with_retry_after(gateway_url: str) -> None:
    responses = overload(gateway_url)
    statuses = sorted({r.status_code for r in responses})
    assert statuses == [200, 429], statuses
    for response in responses:
        if response.status_code == 429:
            assert_error(response, 429, "server_overloaded", None)
            assert int(response.headers["retry-after"]) >= 1


def test_a_request_larger_than_the_queue_is_admitted_in_chunks(gateway_url: str) -> None:
    """Nine parts for a queue of four: admitted four at a time on an idle server, not a 429 forever."""
    body = {"model": "siglip-small-queue", "input": [f"chunked {i}" for i in range(9)]}
    response = httpx.post(f"{gateway_url}/v1/embeddings", json=body, timeout=60)
    assert response.status_code == 200, response.text
    assert [row["index"] for row in response.json()["data"]] == list(range(9))


def test_unreachable_image_names_the_item(gateway_url: str) -> None:
    closed = "http://127.0.0.1:9/none.png"  # the discard port: nothing listens
    response = httpx.post(
        f"{gateway_url}/v1/embeddings",
        json={"model": "siglip-tiny", "input": ["a", "b", {"image": closed}]},
        timeout=30,
    )
    assert_error(response, 400, "image_fetch_failed", "input[2].image")


def test_missing_and_oversized_remote_images(gateway_url: str, image_host: ImageHost) -> None:
    missing = image_host.url("/does-not-exist.png")
    big = image_host.add("/big.bmp", encode(gradient(400, 400), "BMP"))
    html = image_host.add("/page.html", b"<html>hi</html>", content_type="text/html")
    for url, code in [(missing, "image_fetch_failed"), (big, "image_too_large"), (html, "invalid_image")]:
        body = {"model": "siglip-tiny", "input": [{"type": "image_url", "image_url": url}]}
        response = httpx.post(f"{gateway_url}/v1/embeddings", json=body, timeout=30)
        assert_error(response, 400, code, "input[0].image_url")


def test_redirects_are_followed_up_to_the_cap(gateway_url: str, image_host: ImageHost) -> None:
    image_host.add("/final.png", GOOD_PNG)
    for hop in range(5):
        target = "/final.png" if hop == 0 else f"/hop{hop - 1}"
        image_host.add(f"/hop{hop}", b"", 302, location=target)
    ok = httpx.post(
        f"{gateway_url}/v1/embeddings",
        json={"model": "siglip-tiny", "input": [{"image": image_host.url("/hop2")}]},
        timeout=30,
    )
    assert ok.status_code == 200, ok.text
    too_many = httpx.post(
        f"{gateway_url}/v1/embeddings",
        json={"model": "siglip-tiny", "input": [{"image": image_host.url("/hop4")}]},
        timeout=30,
    )
    assert_error(too_many, 400, "image_fetch_failed", "input[0].image")


def test_malformed_json(gateway_url: str) -> None:
    response = httpx.post(
        f"{gateway_url}/v1/embeddings",
        content=b'{"model": "siglip-tiny", "input": ',
        headers={"content-type": "application/json"},
    )
    assert_error(response, 400, "invalid_json", None)


def test_wrong_content_type(gateway_url: str) -> None:
    response = httpx.post(
        f"{gateway_url}/v1/embeddings",
        content=b"model=siglip-tiny&input=a",
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert_error(response, 415, "unsupported_media_type", None)


def test_unknown_route_and_method(gateway_url: str) -> None:
    assert_error(httpx.get(f"{gateway_url}/v1/nothing"), 404, "not_found", None)
    assert_error(httpx.get(f"{gateway_url}/v1/embeddings"), 405, "method_not_allowed", None)


def test_server_survives_all_of_the_above(gateway_url: str) -> None:
    response = httpx.post(f"{gateway_url}/v1/embeddings", json={"model": "siglip-tiny", "input": "still here"})
    assert response.status_code == 200
    assert len(response.json()["data"][0]["embedding"]) == 32


def test_image_io_bytes_are_valid_fixture() -> None:
    """Guards the fixtures: the good image decodes, the bomb really is 100M pixels."""
    assert Image.open(io.BytesIO(GOOD_PNG)).size == (48, 40)
    with pytest.warns(Image.DecompressionBombWarning):
        assert Image.open(io.BytesIO(_bomb())).size == (10_000, 10_000)


def test_private_addresses_are_refused_unless_allowed(gateway_url: str, image_host: ImageHost) -> None:
    """The test config allows only 127.0.0.1/32, so another loopback address is refused before any connection."""
    image_host.add("/secret.png", GOOD_PNG)
    hits_before = image_host.hits.get("/secret.png", 0)
    for url in (f"http://127.0.0.2:{image_host.port}/secret.png", f"http://[::1]:{image_host.port}/secret.png"):
        response = httpx.post(
            f"{gateway_url}/v1/embeddings",
            json={"model": "siglip-tiny", "input": ["a", {"type": "image_url", "image_url": {"url": url}}]},
        )
        assert_error(response, 400, "image_url_forbidden", "input[1].image_url.url")
    assert image_host.hits.get("/secret.png", 0) == hits_before


@pytest.mark.parametrize(
    "address",
    [
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "::1",
        "fe80::1",
        "::ffff:10.0.0.1",
        "0.0.0.0",
        "127.0.0.1",
    ],
)
def test_internal_address_classification(address: str) -> None:
    import ipaddress

    from gateway.fetch import is_forbidden_address

    assert is_forbidden_address(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["93.184.216.34", "2606:4700::1111"])
def test_public_address_classification(address: str) -> None:
    import ipaddress

    from gateway.fetch import is_forbidden_address

    assert not is_forbidden_address(ipaddress.ip_address(address))


URL_CASES = [
    ("http://127.0.0.1:99999/x.png", "invalid_image_url"),
    ("http://127.0.0.1:abc/x.png", "invalid_image_url"),
    ("http://[::1/png", "invalid_image_url"),
    ("http://a..b/x.png", "invalid_image_url"),
    (f"http://{'a' * 64}.example/x.png", "invalid_image_url"),
    ("http://exa\tmple.com/x", "invalid_image_url"),
    ("http://exa\x7fmple.com/x", "invalid_image_url"),
    ("http://\uff11\uff12\uff17.0.0.1/x.png", "invalid_image_url"),  # full-width digits
    ("http://127.0.0.2/x.png", "image_url_forbidden"),
    ("http://[::ffff:127.0.0.2]/x.png", "image_url_forbidden"),
    ("http://[::1]/x.png", "image_url_forbidden"),
    ("http://2130706434/x.png", "image_url_forbidden"),  # 127.0.0.2 as one decimal number
    ("http://100.100.100.200/latest/meta-data", "image_url_forbidden"),
    ("http://169.254.169.254/latest/meta-data", "image_url_forbidden"),
    ("http://[2002:7f00:2::]/x.png", "image_url_forbidden"),  # 6to4 around 127.0.0.2
]


@pytest.mark.parametrize(("url", "code"), URL_CASES, ids=[repr(u)[:40] for u, _ in URL_CASES])
def test_hostile_image_urls_through_the_server(gateway_url: str, url: str, code: str) -> None:
    body = {"model": "siglip-tiny", "input": ["a", {"type": "image_url", "image_url": {"url": url}}]}
    response = httpx.post(f"{gateway_url}/v1/embeddings", json=body, timeout=30)
    assert_error(response, 400, code, "input[1].image_url.url")


def test_a_malformed_redirect_location_through_the_server(gateway_url: str, image_host: ImageHost) -> None:
    bad = image_host.add("/bad-redirect", b"", 302, location="http://[bad")
    to_private = image_host.add("/to-private", b"", 302, location=f"http://127.0.0.2:{image_host.port}/x.png")
    for url, code in [(bad, "invalid_image_url"), (to_private, "image_url_forbidden")]:
        response = httpx.post(f"{gateway_url}/v1/embeddings", json={"model": "siglip-tiny", "input": [{"image": url}]})
        assert_error(response, 400, code, "input[0].image")
