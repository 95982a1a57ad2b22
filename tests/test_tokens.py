"""Token-id inputs: tiktoken's file is loaded once at start-up, bounded, and never on the event loop.

A `RawHost` stands in for the proxy tiktoken's download goes through (`HTTPS_PROXY`): it records each
CONNECT and either refuses it (404) or never answers, as a blackholed network does.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from gateway.app import create_app
from gateway.config import Settings
from gateway.errors import InvalidRequest
from gateway.tokens import TokenDecoder
from tests.servers import RawHost, Send, free_port, gateway_process

HELLO_WORLD = [9906, 1917]  # "Hello world" in cl100k_base


@contextmanager
def proxy(hold_s: float) -> Iterator[RawHost]:
    """A proxy that answers every CONNECT with 404 (`hold_s` 0) or holds it `hold_s` seconds unanswered."""
    host = RawHost()
    if hold_s:

        def hold(_send: Send) -> None:
            time.sleep(hold_s)

        host.missing = hold  # type: ignore[method-assign,assignment]
    try:
        yield host
    finally:
        host.close()


@contextmanager
def serve_in_thread(app: Any) -> Iterator[str]:
    """The app under uvicorn on 127.0.0.1 in a thread of this process; yields its URL once started."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def token_request(base: str, model: str) -> httpx.Response:
    return httpx.post(f"{base}/v1/embeddings", json={"model": model, "input": [HELLO_WORLD]}, timeout=30)


async def test_token_ids_decode_with_the_file() -> None:
    decoder = TokenDecoder("cl100k_base")
    assert await decoder.load()
    assert decoder.decode(HELLO_WORLD, param="input[0]") == "Hello world"


def test_hung_download_bounds_start_up_and_never_blocks_the_loop(
    model_dirs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # p50k_base: an encoding no other test loads, so neither tiktoken nor the gateway has it cached.
    settings = Settings.model_validate(
        {
            "models": [{"name": "tiny", "provider": "siglip", "model": str(model_dirs["siglip"])}],
            "token_encoding": "p50k_base",
        }
    )
    with proxy(hold_s=8) as host:
        monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
        monkeypatch.setenv("HTTPS_PROXY", host.url(""))
        started = time.monotonic()
        with serve_in_thread(create_app(settings, token_load_timeout_s=0.5)) as base:
            start_up_s = time.monotonic() - started
            requests: list[httpx.Response] = []
            thread = threading.Thread(target=lambda: requests.append(token_request(base, "tiny")))
            thread.start()
            time.sleep(0.1)  # the token-id request is in flight
            health_started = time.monotonic()
            assert httpx.get(f"{base}/health", timeout=10).status_code == 200
            health_s = time.monotonic() - health_started
            thread.join(10)
            took = time.monotonic()
            again = token_request(base, "tiny")
            again_s = time.monotonic() - took
    assert start_up_s < 5, start_up_s
    assert health_s < 2, f"/health took {health_s:.2f} s while a token-id request was in flight"
    assert len(requests) == 1
    for response in (requests[0], again):
        assert response.status_code == 400, response.text
        assert response.json()["error"]["code"] == "token_ids_unsupported"
        assert "p50k_base file, which this server could not load (not loaded within 0.5 s)" in response.text
    assert again_s < 2
    assert len(host.requests) == 1, "tiktoken's download was tried more than once"


def test_missing_file_warns_once_and_token_requests_fail_at_once(model_dirs: dict[str, Path], tmp_path: Path) -> None:
    empty = tmp_path / "tiktoken"
    empty.mkdir()
    config = {
        "models": [{"name": "tiny", "provider": "siglip", "model": str(model_dirs["siglip"])}],
        "log_level": "warning",
    }
    with proxy(hold_s=0) as host:
        env = {"TIKTOKEN_CACHE_DIR": str(empty), "HTTPS_PROXY": host.url("")}
        with gateway_process(config, tmp_path, env=env) as base:
            durations = []
            for _ in range(5):
                started = time.monotonic()
                response = token_request(base, "tiny")
                durations.append(time.monotonic() - started)
                assert response.status_code == 400
                assert response.json()["error"]["code"] == "token_ids_unsupported"
                assert response.json()["error"]["param"] == "input[0]"
            assert httpx.post(f"{base}/v1/embeddings", json={"model": "tiny", "input": "text"}).status_code == 200
            log = next(tmp_path.glob("gateway-*.log")).read_text()
    assert max(durations) < 2, durations
    assert len(host.requests) == 1, f"{len(host.requests)} downloads tried for 5 requests"
    assert log.count("token-id inputs are disabled") == 1, log


def test_decoder_without_load_loads_on_first_use_and_reports_failure_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    with proxy(hold_s=0) as host:
        monkeypatch.setenv("HTTPS_PROXY", host.url(""))
        decoder = TokenDecoder("r50k_base")  # loaded by no other test
        for _ in range(3):
            with pytest.raises(InvalidRequest) as caught:
                decoder.decode([1, 2], param="input[2]")
            assert caught.value.code == "token_ids_unsupported"
            assert caught.value.param == "input[2]"
    assert len(host.requests) == 1
