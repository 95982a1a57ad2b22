"""Per-request limits: each checked before the work it bounds, each a 4xx naming the limit and the input."""

from __future__ import annotations

import gzip
import json
import os
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from gateway.config import LimitSettings, load_settings
from gateway.errors import InvalidRequest
from gateway.images import decode_image
from gateway.inputs import parse_input
from gateway.schema import parse_request
from providers.fingerprint import directory_fingerprint
from tests.images_data import b64, encode, png
from tests.test_bad_input import assert_error

SMALL = LimitSettings(
    max_items=4,
    max_parts_per_item=3,
    max_text_chars=10,
    max_request_text_chars=25,
    max_token_ids=5,
    max_request_token_ids=8,
    max_images=2,
)

PARSE_CASES: list[tuple[str, Any, str, str]] = [
    ("too many items", ["a"] * 5, "too_many_inputs", "input"),
    ("a text over the per-input limit", ["ok", "x" * 11], "text_too_long", "input[1]"),
    ("texts over the per-request limit", ["x" * 10, "y" * 10, "z" * 6], "text_too_long", "input[2]"),
    ("text part over the limit", [{"content": ["a", {"text": "x" * 11}]}], "text_too_long", "input[0].content[1].text"),
    ("too many parts", [{"content": ["a", "b", "c", "d"]}], "too_many_parts", "input[0].content"),
    ("token ids over the per-input limit", [[1, 2, 3, 4, 5, 6]], "too_many_tokens", "input[0]"),
    ("flat token ids over the per-input limit", [1, 2, 3, 4, 5, 6], "too_many_tokens", "input"),
    ("token ids over the per-request limit", [[1, 2, 3, 4], [1, 2, 3, 4], [1]], "too_many_tokens", "input[2]"),
    ("too many images", [{"image": "aGk="}, {"image": "aGk="}, {"image": "aGk="}], "too_many_images", "input[2].image"),
    ("a non-integer token", [[1, 2.5]], "invalid_input", "input[0][1]"),
]


@pytest.mark.parametrize(("value", "code", "param"), [c[1:] for c in PARSE_CASES], ids=[c[0] for c in PARSE_CASES])
def test_limits_name_the_input_and_the_setting(value: Any, code: str, param: str) -> None:
    with pytest.raises(InvalidRequest) as error:
        parse_input(value, limits=SMALL)
    assert (error.value.code, error.value.param) == (code, param)
    if code != "invalid_input":
        assert "limits." in error.value.message


def test_limits_are_checked_before_any_element_is_looked_at() -> None:
    """A list over the limit is refused by its length: a million ids cost microseconds, not a walk."""
    huge = [[0] * 1_000_000]
    started = time.perf_counter()
    with pytest.raises(InvalidRequest) as error:
        parse_input(huge, limits=LimitSettings())
    assert error.value.code == "too_many_tokens"
    assert time.perf_counter() - started < 0.01


def test_a_flat_token_list_longer_than_max_items_is_one_input() -> None:
    """3000 ids are one input of 3000 tokens (under OpenAI's 8192), not 3000 inputs."""
    specs = parse_input(list(range(3000)), limits=LimitSettings())
    assert len(specs) == 1
    assert len(specs[0].parts[0].value) == 3000


def test_deep_json_is_a_400_not_a_recursion_error() -> None:
    body = b'{"model": "m", "input": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    with pytest.raises(InvalidRequest) as error:
        parse_request(body, "application/json")
    assert error.value.code == "invalid_json"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b'{"model": "m", "input": ["ok", "bad \\ud800 text"]}', "input[1]"),
        (b'{"model": "m\\udc00", "input": "x"}', "model"),
        (b'{"model": "m", "input": [{"content": [{"type": "text", "text": "\\ud83d"}]}]}', "input[0].content[0].text"),
    ],
)
def test_a_lone_surrogate_is_named(body: bytes, param: str) -> None:
    with pytest.raises(InvalidRequest) as error:
        parse_request(body, "application/json")
    assert (error.value.code, error.value.param) == ("invalid_input", param)


def test_a_surrogate_pair_is_text() -> None:
    request = parse_request(b'{"model": "m", "input": "smile \\ud83d\\ude00"}', "application/json")
    assert request.input == "smile \N{GRINNING FACE}"


def test_error_messages_do_not_echo_huge_inputs() -> None:
    body = json.dumps({"model": "m", "input": "x", "task": "t" * 100_000}).encode()
    with pytest.raises(InvalidRequest) as error:
        parse_request(body, "application/json").resolved_input_type()
    assert len(error.value.message) < 300
    body = json.dumps({"model": "m", "input": "x", "k" * 100_000: 1}).encode()
    with pytest.raises(InvalidRequest) as error:
        parse_request(body, "application/json")
    assert len(error.value.message) <= 1000
    assert error.value.param is not None
    assert len(error.value.param) <= 200


def test_legacy_limit_keys_still_configure_the_limits(tmp_path: Path) -> None:
    config = tmp_path / "old.yaml"
    config.write_text("max_inputs: 7\nmax_request_bytes: 4096\nimages:\n  max_bytes: 99\n  max_pixels: 1000\n")
    limits = load_settings(config).limits
    assert (limits.max_items, limits.max_body_bytes, limits.max_image_bytes, limits.max_image_pixels) == (
        7,
        4096,
        99,
        1000,
    )


def test_sixteen_bit_greys_are_scaled_not_clipped_to_white() -> None:
    ramp = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16).astype(np.uint16)
    data = encode(Image.fromarray(ramp), "PNG")
    pixels = np.asarray(decode_image(data, max_pixels=10_000, param="p").pixels)
    np.testing.assert_array_equal(pixels[..., 0], (ramp >> 8).astype(np.uint8))
    assert pixels.mean() < 200  # clipped, every value over 255 would have become 255


def test_a_weight_file_edited_in_the_middle_changes_the_fingerprint(tmp_path: Path) -> None:
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(bytes(5 << 20))
    (tmp_path / "config.json").write_text("{}")
    before = directory_fingerprint(tmp_path)
    stat = weights.stat()
    with weights.open("r+b") as handle:  # same size, same first and last MiB
        handle.seek(2 << 20)
        handle.write(b"retrained")
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert directory_fingerprint(tmp_path) != before


# Through the server


def post(url: str, body: dict[str, Any] | bytes, **headers: str) -> httpx.Response:
    sent = {"content-type": "application/json", **{k.replace("_", "-"): v for k, v in headers.items()}}
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(f"{url}/v1/embeddings", content=content, headers=sent, timeout=60)


def test_one_huge_text_is_refused_in_milliseconds_by_the_server(gateway_url: str) -> None:
    body = {"model": "siglip-tiny", "input": ["fine", "x" * 20_000_000]}
    started = time.perf_counter()
    response = post(gateway_url, body)
    elapsed = time.perf_counter() - started
    error = assert_error(response, 400, "text_too_long", "input[1]")
    assert "limits.max_text_chars" in error["message"]
    assert elapsed < 3  # was ~30 s of tokenising for a 20 MB string


def test_deep_json_through_the_server(gateway_url: str) -> None:
    assert_error(post(gateway_url, b"[" * 10_000 + b"]" * 10_000), 400, "invalid_json", None)
    nested = b'{"model": "siglip-tiny", "input": ' + b"[" * 10_000 + b"]" * 10_000 + b"}"
    assert_error(post(gateway_url, nested), 400, "invalid_json", None)


def test_lone_surrogates_through_the_server(gateway_url: str) -> None:
    text = b'{"model": "siglip-tiny", "input": ["a", "\\udfff"]}'
    assert_error(post(gateway_url, text), 400, "invalid_input", "input[1]")
    model = b'{"model": "\\ud800", "input": "a"}'
    assert_error(post(gateway_url, model), 400, "invalid_input", "model")


def test_a_compressed_body_is_415(gateway_url: str) -> None:
    body = gzip.compress(json.dumps({"model": "siglip-tiny", "input": "a"}).encode())
    response = post(gateway_url, body, content_encoding="gzip")
    assert_error(response, 415, "unsupported_content_encoding", None)


def test_head_health(gateway_url: str) -> None:
    response = httpx.head(f"{gateway_url}/health")
    assert response.status_code == 200
    assert response.content == b""


def test_cache_headers_are_off_by_default(gateway_url: str) -> None:
    body = {"model": "siglip-tiny", "input": "who else asked this?"}
    post(gateway_url, body)
    again = post(gateway_url, body)
    assert again.status_code == 200
    assert "x-cache-hits" not in again.headers
    assert "x-cache-misses" not in again.headers


def test_parts_and_images_over_the_limits_through_the_server(gateway_url: str) -> None:
    image = {"image": b64(png())}
    too_many_parts = {"model": "siglip-tiny", "input": [{"content": ["a"] * 17}]}
    assert_error(post(gateway_url, too_many_parts), 400, "too_many_parts", "input[0].content")
    too_many_images = {"model": "siglip-tiny", "input": [image] * 33}
    assert_error(post(gateway_url, too_many_images), 400, "too_many_images", "input[32].image")


def test_token_ids_over_openais_limit(gateway_url: str) -> None:
    body = {"model": "siglip-tiny", "input": [[1] * 8193]}
    assert_error(post(gateway_url, body), 400, "too_many_tokens", "input[0]")
    body = {"model": "siglip-tiny", "input": [[1] * 8000] * 40}  # 320k ids in one request
    assert_error(post(gateway_url, body), 400, "too_many_tokens", "input[37]")
    flat = {"model": "siglip-tiny", "input": list(range(100, 3100))}
    response = post(gateway_url, flat)
    assert response.status_code == 200, response.text
    assert len(response.json()["data"]) == 1


def test_images_are_decoded_one_engine_batch_at_a_time() -> None:
    from gateway.images import EncodedImage
    from gateway.inputs import ResolvedItem
    from gateway.service import decode_groups
    from providers.base import Text

    image = EncodedImage(b"x", "00", "p")
    items = [ResolvedItem((image,)), ResolvedItem((Text("t"),)), ResolvedItem((image, image, image))] * 4
    groups = decode_groups(items, list(range(12)), 4)
    assert [i for group in groups for i in group] == list(range(12))
    for group in groups:
        assert sum(len(items[i].parts) for i in group if not isinstance(items[i].parts[0], Text)) <= 4
    assert len(groups) == 4


def test_requests_over_the_concurrency_limit_are_refused_at_once() -> None:
    from gateway.errors import RateLimited
    from gateway.service import EmbeddingService

    service = EmbeddingService(None, None, None, LimitSettings(max_concurrent_requests=2), None)  # type: ignore[arg-type]
    with service.admit(), service.admit():
        with pytest.raises(RateLimited) as refused, service.admit():
            pass
        assert refused.value.headers()["Retry-After"] == "1"
        assert "limits.max_concurrent_requests" in refused.value.message
    with service.admit():  # places are given back, errors included
        assert service.in_flight == 1
    assert service.in_flight == 0


def test_the_example_config_loads_and_states_the_defaults() -> None:
    settings = load_settings(Path(__file__).resolve().parent.parent / "gateway.example.yaml")
    assert settings.limits == LimitSettings()
