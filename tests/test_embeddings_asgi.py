"""`POST /v1/embeddings` served in front of Litestar's router (`gateway.embeddings_asgi`): the body
limit, metrics, request ids, other methods and a client leaving mid-body, through the real server."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from litestar.datastructures import State

from gateway.embeddings_asgi import EmbeddingsEndpoint
from tests.conftest import gateway_config
from tests.servers import gateway_process

LIMIT = 4096


@pytest.fixture(scope="module")
def small_gateway(model_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    config = gateway_config(model_dirs)
    config["models"] = config["models"][:1]
    config["limits"] = {"max_body_bytes": LIMIT}
    workdir = tmp_path_factory.mktemp("asgi")
    with gateway_process(config, workdir) as url:
        yield url, workdir


def requests_counted(base: str, path: str, status: int) -> float:
    for line in httpx.get(f"{base}/metrics").text.splitlines():
        if (
            line.startswith("gateway_requests_total{")
            and f'path="{path}"' in line
            and f'status_code="{status}"' in line
        ):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def assert_too_large(response: httpx.Response) -> None:
    assert response.status_code == 413, response.text
    assert response.json() == {
        "error": {
            "message": "Request Entity Too Large",
            "type": "invalid_request_error",
            "param": None,
            "code": "request_too_large",
        }
    }


def test_bodies_over_the_limit_are_413_announced_or_streamed(small_gateway: tuple[str, Path]) -> None:
    base, _ = small_gateway
    json_type = {"content-type": "application/json"}
    padding = " " * (LIMIT - 100)
    fits = f'{{"model": "siglip-tiny", "input": "a cat"{padding}}}'.encode()
    assert httpx.post(f"{base}/v1/embeddings", content=fits, headers=json_type).status_code == 200
    too_big = f'{{"model": "siglip-tiny", "input": "a cat"{padding * 2}}}'.encode()
    assert_too_large(httpx.post(f"{base}/v1/embeddings", content=too_big, headers=json_type))  # content-length says so

    def chunks() -> Iterator[bytes]:  # no content-length: counted as it streams
        yield too_big[:1000]
        yield too_big[1000:]

    assert_too_large(httpx.post(f"{base}/v1/embeddings", content=chunks(), headers=json_type))
    assert httpx.get(f"{base}/health").status_code == 200


def test_metrics_request_ids_and_other_methods(small_gateway: tuple[str, Path]) -> None:
    base, _ = small_gateway
    before = {path: requests_counted(base, path, 200) for path in ("/v1/embeddings", "/embeddings")}
    not_found_before = requests_counted(base, "/v1/embeddings", 404)
    body = {"model": "siglip-tiny", "input": ["a", "b"]}
    first = httpx.post(f"{base}/v1/embeddings", json=body, headers={"x-request-id": "fast-path-1"})
    assert first.status_code == 200
    assert first.headers["x-request-id"] == "fast-path-1"
    assert first.headers["content-type"] == "application/json"
    assert float(first.headers["x-gateway-cost-usd"]) == 0.0
    assert len(first.json()["data"]) == 2
    assert httpx.post(f"{base}/embeddings", json=body).status_code == 200
    assert requests_counted(base, "/v1/embeddings", 200) == before["/v1/embeddings"] + 1
    assert requests_counted(base, "/embeddings", 200) == before["/embeddings"] + 1
    missing = httpx.post(f"{base}/v1/embeddings", json={"model": "nope", "input": "a"})
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "model_not_found"
    assert requests_counted(base, "/v1/embeddings", 404) == not_found_before + 1  # errors are counted too
    wrong_method = httpx.get(f"{base}/v1/embeddings")
    assert wrong_method.status_code == 405
    assert wrong_method.json()["error"]["code"] == "method_not_allowed"


def test_a_client_leaving_mid_body_costs_nothing(small_gateway: tuple[str, Path]) -> None:
    base, workdir = small_gateway
    host, port = base.removeprefix("http://").rsplit(":", 1)
    for _ in range(5):
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            sock.sendall(b'POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{"model":')
        time.sleep(0.05)
    assert httpx.post(f"{base}/v1/embeddings", json={"model": "siglip-tiny", "input": "a"}).status_code == 200
    log = "".join(path.read_text() for path in workdir.glob("gateway-*.log"))
    assert "Traceback" not in log


async def test_an_unexpected_error_is_a_logged_500_in_the_envelope(caplog: pytest.LogCaptureFixture) -> None:
    """A bug below the endpoint (here: a state without a service) answers OpenAI's error shape, not a bare 500."""
    endpoint = EmbeddingsEndpoint(app=_unreachable, state=State({}), max_body_bytes=1024)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message: Any) -> None:
        sent.append(message)

    scope: Any = {"type": "http", "method": "POST", "path": "/v1/embeddings", "headers": [], "app": None}
    await endpoint(scope, receive, send)  # type: ignore[arg-type]
    assert sent[0]["status"] == 500
    assert (b"content-type", b"application/json") in sent[0]["headers"]
    error = json.loads(sent[1]["body"])["error"]
    assert (error["code"], error["type"]) == ("internal_error", "server_error")
    assert "unhandled error on POST /v1/embeddings" in caplog.text


async def _unreachable(scope: Any, receive: Any, send: Any) -> None:
    raise AssertionError("POST /v1/embeddings must not reach Litestar")
