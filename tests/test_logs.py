"""Logs as an operator reads them: a request id on every response and log line, one access line per
request, JSON when asked, and no input content, URL credentials or query strings at the default level."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.images_data import png
from tests.servers import ImageHost, gateway_process

GENERATED_ID = re.compile(r"[0-9a-f]{32}")


def config(model_dirs: dict[str, Path], **extra: Any) -> dict[str, Any]:
    """One tiny model, the default log level (info) unless `extra` says otherwise."""
    return {
        "models": [{"name": "tiny", "provider": "siglip", "model": str(model_dirs["siglip"])}],
        "images": {"allowed_private_networks": ["127.0.0.1/32"], "fetch_timeout_s": 2},
        **extra,
    }


def log_of(workdir: Path) -> Path:
    return next(workdir.glob("gateway-*.log"))


def wait_for_log(workdir: Path, needle: str) -> str:
    """The process log once it holds `needle` (the access line is written just after the response)."""
    deadline = time.monotonic() + 5
    while needle not in (text := log_of(workdir).read_text()):
        assert time.monotonic() < deadline, f"{needle!r} not logged:\n{text}"
        time.sleep(0.05)
    return text


@pytest.fixture(scope="module")
def text_gateway(model_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    workdir = tmp_path_factory.mktemp("text-logs")
    with gateway_process(config(model_dirs), workdir) as url:
        yield url, workdir


def test_request_id_is_echoed_or_generated_on_every_response(text_gateway: tuple[str, Path]) -> None:
    base, _ = text_gateway
    sent = {"x-request-id": "client-id.1_A"}
    assert httpx.get(f"{base}/health", headers=sent).headers["x-request-id"] == "client-id.1_A"
    bad_request = httpx.post(f"{base}/v1/embeddings", json={"model": "tiny"}, headers=sent)
    assert bad_request.status_code == 400
    assert bad_request.headers["x-request-id"] == "client-id.1_A"
    not_found = httpx.get(f"{base}/no/such/route", headers=sent)
    assert not_found.status_code == 404
    assert not_found.headers["x-request-id"] == "client-id.1_A"
    generated = [httpx.get(f"{base}/health").headers["x-request-id"] for _ in range(2)]
    assert all(GENERATED_ID.fullmatch(value) for value in generated), generated
    assert generated[0] != generated[1]
    for unsafe in ("two words", "a" * 65, "semi;colon", ""):
        answered = httpx.get(f"{base}/v1/models/nope", headers={"x-request-id": unsafe})
        assert answered.status_code == 404
        assert GENERATED_ID.fullmatch(answered.headers["x-request-id"]), unsafe
        assert len(answered.headers.get_list("x-request-id")) == 1


def test_one_access_line_per_request_with_its_id_and_without_the_query(text_gateway: tuple[str, Path]) -> None:
    base, workdir = text_gateway
    response = httpx.get(f"{base}/health?token=SECRETQUERY", headers={"x-request-id": "access-check-1"})
    assert response.status_code == 200
    httpx.get(f"{base}/missing-page", headers={"x-request-id": "access-check-2"})
    text = wait_for_log(workdir, "[access-check-2]")
    lines = [line for line in text.splitlines() if "[access-check-1]" in line]
    assert len(lines) == 1, text
    assert re.search(r"GET /health 200 \d+\.\dms$", lines[0]), lines[0]
    assert re.search(r"\[access-check-2\] GET /missing-page 404 ", text)
    assert "SECRETQUERY" not in text


def test_no_input_content_credentials_or_query_strings_in_the_log(
    text_gateway: tuple[str, Path], image_host: ImageHost
) -> None:
    base, workdir = text_gateway
    image_host.add("/signed.png?X-Amz-Signature=SECRETSIG", png(3), content_type="image/png")
    signed = f"http://SECRETUSER:SECRETPASS@127.0.0.1:{image_host.port}/signed.png?X-Amz-Signature=SECRETSIG"
    missing = f"http://SECRETUSER:SECRETPASS@127.0.0.1:{image_host.port}/gone.png?X-Amz-Signature=SECRETSIG"
    private = "http://SECRETUSER:SECRETPASS@10.0.0.1/x.png?X-Amz-Signature=SECRETSIG"
    ok = httpx.post(
        f"{base}/v1/embeddings?key=SECRETQUERY",
        json={"model": "tiny", "input": ["SECRETTEXT", {"image": signed}]},
        headers={"x-request-id": "leak-check-1"},
        timeout=30,
    )
    assert ok.status_code == 200, ok.text
    assert image_host.hits["/signed.png?X-Amz-Signature=SECRETSIG"] >= 1
    for number, url in enumerate((missing, private), start=2):
        failed = httpx.post(
            f"{base}/v1/embeddings",
            json={"model": "tiny", "input": [{"content": ["SECRETTEXT", {"image": url}]}]},
            headers={"x-request-id": f"leak-check-{number}"},
            timeout=30,
        )
        assert failed.status_code == 400, failed.text
    text = wait_for_log(workdir, "[leak-check-3] POST /v1/embeddings 400")
    assert "[leak-check-1] POST /v1/embeddings 200" in text
    for secret in ("SECRETTEXT", "SECRETUSER", "SECRETPASS", "SECRETSIG", "SECRETQUERY"):
        assert secret not in text, f"{secret} in the log:\n{text}"


def test_json_format_is_one_object_per_line_with_the_request_id(model_dirs: dict[str, Path], tmp_path: Path) -> None:
    # No private network allowed: a host that resolves to 127.0.0.1 is refused, which is logged in the request.
    with gateway_process(config(model_dirs, log_format="json", images={}), tmp_path) as base:
        response = httpx.get(f"{base}/health", headers={"x-request-id": "json-check-1"})
        assert response.status_code == 200
        refused = httpx.post(
            f"{base}/v1/embeddings",
            json={
                "model": "tiny",
                "input": [{"image": "http://SECRETUSER:SECRETPASS@localhost:9/x.png?sig=SECRETSIG"}],
            },
            headers={"x-request-id": "json-check-2"},
        )
        assert refused.json()["error"]["code"] == "image_url_forbidden"
        text = wait_for_log(tmp_path, "json-check-2")
    records = [json.loads(line) for line in text.splitlines() if line.strip()]
    access = [r for r in records if r.get("request_id") == "json-check-1"]
    assert len(access) == 1, text
    assert access[0]["logger"] == "gateway.access"
    assert access[0]["level"] == "INFO"
    assert (access[0]["method"], access[0]["path"], access[0]["status"]) == ("GET", "/health", 200)
    assert access[0]["duration_ms"] >= 0
    assert any(r["message"].startswith("loading model tiny") and r["request_id"] is None for r in records), text
    # A record logged while a request is handled carries that request's id.
    in_request = [r for r in records if r["message"].startswith("refused image URL")]
    assert [r["request_id"] for r in in_request] == ["json-check-2"], in_request or text
    for secret in ("SECRETUSER", "SECRETPASS", "SECRETSIG"):
        assert secret not in text


def test_the_access_line_can_be_turned_off() -> None:
    import logging

    from gateway.logs import access_logger, configure_logging

    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    try:
        configure_logging("info", access=False)
        assert not access_logger.isEnabledFor(logging.INFO)
        assert logging.getLogger("gateway.cache").isEnabledFor(logging.INFO)
        configure_logging("info")
        assert access_logger.isEnabledFor(logging.INFO)
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        access_logger.setLevel(logging.NOTSET)
