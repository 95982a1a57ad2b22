"""Real servers on 127.0.0.1 for the tests: an image host and the gateway as a process."""

from __future__ import annotations

import os
import socket
import socketserver
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is a valid, free port too."""
    while True:
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


@dataclass
class Route:
    body: bytes = b""
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0


class ImageHost:
    """A threaded HTTP server whose routes the tests set: images, redirects, errors, slow answers."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.hits: dict[str, int] = {}
        host = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                host.hits[self.path] = host.hits.get(self.path, 0) + 1
                route = host.routes.get(self.path, Route(b"missing", 404))
                if route.delay_s:
                    time.sleep(route.delay_s)
                self.send_response(route.status)
                for key, value in route.headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(route.body)))
                self.end_headers()
                with suppress(BrokenPipeError, ConnectionResetError):
                    self.wfile.write(route.body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def add(self, path: str, body: bytes, status: int = 200, **headers: str) -> str:
        self.routes[path] = Route(body, status, {k.replace("_", "-"): v for k, v in headers.items()})
        return self.url(path)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@contextmanager
def gateway_process(config: dict[str, Any], workdir: Path, env: dict[str, str] | None = None) -> Iterator[str]:
    """Run `python -m gateway serve` with `config`; yield its base URL once /ready answers 200."""
    port = free_port()
    config_file = workdir / f"gateway-{port}.yaml"
    config_file.write_text(yaml.safe_dump(config))
    log_file = workdir / f"gateway-{port}.log"
    environment = {**os.environ, **(env or {})}
    with log_file.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--config", str(config_file), "--port", str(port)],
            cwd=ROOT,
            env=environment,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 120
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"gateway exited early:\n{log_file.read_text()}")
                try:
                    if httpx.get(f"{base}/ready", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"gateway did not become ready:\n{log_file.read_text()}")
                time.sleep(0.2)
            yield base
        finally:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()


class RedisServer:
    """A private `redis-server` on a free port, which a test may kill and restart; optionally with a
    password (`requirepass`) and a unix socket too."""

    def __init__(
        self,
        workdir: Path,
        extra_args: list[str] | None = None,
        port: int | None = None,
        *,
        password: str | None = None,
        unix_socket: bool = False,
    ) -> None:
        self.workdir = workdir
        self.extra_args = extra_args or []
        self.port = port or free_port()
        self.password = password
        # Short, under the system temp dir: a socket path may not exceed ~100 bytes, and tmp_path can.
        self.socket_path = Path(tempfile.gettempdir()) / f"gateway-redis-{self.port}.sock" if unix_socket else None
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    @property
    def unix_url(self) -> str:
        assert self.socket_path is not None, "started without unix_socket=True"
        auth = f":{self.password}@" if self.password else ""
        return f"unix://{auth}{self.socket_path}"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
                *(["--requirepass", self.password] if self.password else []),
                *(["--unixsocket", str(self.socket_path), "--unixsocketperm", "700"] if self.socket_path else []),
                *self.extra_args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode} on port {self.port}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith((b"+PONG", b"-NOAUTH")):  # -NOAUTH: up, with a password
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None
        if self.socket_path is not None:
            self.socket_path.unlink(missing_ok=True)


class RedisCluster:
    """Three `redis-server --cluster-enabled yes` masters on free ports, joined by `redis-cli --cluster create`."""

    def __init__(self, workdir: Path, nodes: int = 3) -> None:
        self.servers = []
        for i in range(nodes):
            directory = workdir / f"node{i}"
            directory.mkdir()
            cluster_args = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
            self.servers.append(RedisServer(directory, cluster_args, port=cluster_port()))

    @property
    def url(self) -> str:
        return self.servers[0].url

    def start(self) -> None:
        for server in self.servers:
            server.start()
        addresses = [f"127.0.0.1:{server.port}" for server in self.servers]
        subprocess.run(
            ["redis-cli", "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=30,
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            info = subprocess.run(
                ["redis-cli", "-p", str(self.servers[0].port), "cluster", "info"],
                capture_output=True,
                text=True,
                check=False,
            ).stdout
            if "cluster_state:ok" in info:
                return
            time.sleep(0.1)
        raise RuntimeError("redis cluster did not converge")

    def stop(self) -> None:
        for server in self.servers:
            server.stop()


Send = Callable[[bytes], None]
Responder = Callable[[Send], None]


def http_response(body: bytes = b"", status: int = 200, headers: dict[str, str] | None = None) -> bytes:
    """One HTTP/1.1 response as bytes; `Content-Length` only where `headers` declares it."""
    lines = [f"HTTP/1.1 {status} X", "Connection: close", *(f"{k}: {v}" for k, v in (headers or {}).items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class RawHost:
    """A TCP server on 127.0.0.1 whose answers the tests write byte by byte: trickled, endless or
    compressed bodies, cookies and malformed headers that `ImageHost` will not send. It records the
    head of every request (`requests`: the request line, then the header lines) to show what arrived."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        """`tls`: serve HTTPS with this server context; `server_names` then records each client's SNI."""
        self.routes: dict[str, Responder] = {}
        self.requests: list[list[str]] = []
        self.server_names: list[str | None] = []
        self.scheme = "https" if tls else "http"
        host = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                head: list[str] = []
                while (line := self.rfile.readline(65536).decode("latin-1").rstrip("\r\n")) != "":
                    head.append(line)
                if not head:
                    return
                host.requests.append(head)
                target = head[0].split(" ")[1] if " " in head[0] else ""
                responder = host.routes.get(target) or host.routes.get(target.partition("?")[0]) or host.missing

                def send(data: bytes) -> None:
                    self.wfile.write(data)
                    self.wfile.flush()

                with suppress(OSError):
                    responder(send)

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        if tls is not None:
            tls.sni_callback = lambda _sock, name, _ctx: self.server_names.append(name)
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    @staticmethod
    def missing(send: Send) -> None:
        send(http_response(b"missing", 404, {"Content-Length": "7"}))

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"{self.scheme}://{host}:{self.port}{path}"

    def add(self, path: str, responder: Responder | bytes) -> str:
        """Serve `path` (with any query, unless one is routed on its own) with `responder`, or fixed bytes."""
        if isinstance(responder, bytes):
            data = responder
            self.routes[path] = lambda send: send(data)
        else:
            self.routes[path] = responder
        return self.url(path)

    def headers_of(self, path: str) -> list[dict[str, str]]:
        """The headers (names lower-cased) of each request for `path`, in order."""
        return [
            {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in head[1:])}
            for head in self.requests
            if head[0].split(" ")[1:2] == [path]
        ]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
