"""uvicorn's protocol as the gateway runs it: a response's head goes out with its first body bytes."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httpx
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

from gateway.server import write_head_with_body


class RecordingTransport:
    """The transport calls a response cycle makes, recorded."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


def cycle_on(transport: RecordingTransport, method: str = "POST") -> RequestResponseCycle:
    scope: Any = {"type": "http", "method": method, "path": "/", "http_version": "1.1", "headers": []}
    cycle = RequestResponseCycle(
        scope=scope,
        transport=transport,  # type: ignore[arg-type]
        flow=FlowControl(transport),  # type: ignore[arg-type]
        logger=logging.getLogger("test"),
        access_logger=logging.getLogger("test.access"),
        access_log=False,
        default_headers=[],
        message_event=asyncio.Event(),
        expect_100_continue=False,
        keep_alive=True,
        on_response=lambda: None,
    )
    write_head_with_body(cycle)
    return cycle


def start(length: int | None) -> dict[str, Any]:
    headers = [(b"content-type", b"application/json")]
    if length is not None:
        headers.append((b"content-length", str(length).encode()))
    return {"type": "http.response.start", "status": 200, "headers": headers}


async def test_head_and_body_go_out_in_one_write() -> None:
    transport = RecordingTransport()
    cycle = cycle_on(transport)
    await cycle.send(start(7))
    assert transport.writes == []  # the head waits for the body
    await cycle.send({"type": "http.response.body", "body": b'{"a":1}'})
    [written] = transport.writes
    assert written.startswith(b"HTTP/1.1 200 OK\r\n")
    assert written.endswith(b"\r\n\r\n" + b'{"a":1}')
    response = httpx.Response(200, content=written.split(b"\r\n\r\n", 1)[1])
    assert response.json() == {"a": 1}
    assert cycle.response_complete


async def test_a_streamed_body_sends_the_head_with_its_first_chunk_then_each_chunk() -> None:
    transport = RecordingTransport()
    cycle = cycle_on(transport)
    await cycle.send(start(None))  # no length: chunked
    await cycle.send({"type": "http.response.body", "body": b"one", "more_body": True})
    await cycle.send({"type": "http.response.body", "body": b"two", "more_body": True})
    await cycle.send({"type": "http.response.body", "body": b""})
    assert len(transport.writes) == 3
    assert b"transfer-encoding: chunked" in transport.writes[0]
    assert transport.writes[0].endswith(b"\r\n\r\n3\r\none\r\n")
    assert transport.writes[1:] == [b"3\r\ntwo\r\n", b"0\r\n\r\n"]


async def test_head_requests_and_empty_bodies_still_send_the_head() -> None:
    for method in ("HEAD", "POST"):
        transport = RecordingTransport()
        cycle = cycle_on(transport, method)
        await cycle.send(start(0))
        await cycle.send({"type": "http.response.body", "body": b""})
        [written] = transport.writes
        assert written.startswith(b"HTTP/1.1 200 OK\r\n") and written.endswith(b"\r\n\r\n")


async def test_the_real_server_answers_whole_responses(gateway_url: str) -> None:
    async with httpx.AsyncClient(base_url=gateway_url) as client:
        for _ in range(3):  # keep-alive: several responses on one connection
            health = await client.get("/health")
            assert health.json() == {"status": "ok"}
            response = await client.post("/v1/embeddings", json={"model": "siglip-tiny", "input": "a"})
            assert response.status_code == 200
            assert len(response.json()["data"][0]["embedding"]) == 32
        missing = await client.post("/v1/embeddings", json={"model": "nope", "input": "a"})
        assert missing.status_code == 404
        assert missing.json()["error"]["code"] == "model_not_found"
