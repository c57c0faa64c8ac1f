"""A real `gateway serve` closes HTTP connections whose request headers do not arrive in time
(slowloris), and still serves requests that arrive whole and keep-alive connections between them; with
either HTTP parser (httptools, the default, and h11)."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import pytest_asyncio

from tests.integration.conftest import LiveServer, start_server


@pytest_asyncio.fixture(scope="module", params=["httptools", "h11"])
async def server(
    request: pytest.FixtureRequest,
    database_url_factory: Callable[[str], Awaitable[str]],
    tmp_path_factory: object,
) -> AsyncIterator[LiveServer]:
    import tempfile
    from pathlib import Path

    log = Path(tempfile.mkdtemp()) / "serve.log"
    live = await start_server(
        "sqlite",
        await database_url_factory("sqlite"),
        log,
        env={
            "GATEWAY_HTTP_HEADER_TIMEOUT_SECONDS": "1",
            "GATEWAY_MLLP_ENABLED": "false",
            "GATEWAY_HTTP_PARSER": request.param,
        },
    )
    yield live
    live.process.terminate()
    live.process.wait(timeout=10)


def port_of(live: LiveServer) -> int:
    return int(live.base_url.rsplit(":", 1)[1])


def read_response(sock: socket.socket) -> bytes:
    """One whole HTTP response (headers, then Content-Length bytes of body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(4096)
    head, body = data.split(b"\r\n\r\n", 1)
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length")
    )
    while len(body) < length:
        body += sock.recv(4096)
    return head + b"\r\n\r\n" + body


def closed_within(sock: socket.socket, seconds: float) -> bool:
    sock.settimeout(seconds)
    try:
        while True:
            data = sock.recv(4096)
            if not data:
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


async def test_headers_trickled_past_the_timeout_close_the_connection(server: LiveServer) -> None:
    def slowloris() -> tuple[bool, float]:
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", port_of(server))) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            for _ in range(30):  # a header line every 100 ms: never idle, never done
                try:
                    sock.sendall(b"X-Slow: 1\r\n")
                except OSError:
                    return True, time.monotonic() - started
                time.sleep(0.1)
            return closed_within(sock, 1), time.monotonic() - started

    closed, after = await asyncio.to_thread(slowloris)
    assert closed and after < 3.0


async def test_a_silent_connection_is_closed(server: LiveServer) -> None:
    def silent() -> bool:
        with socket.create_connection(("127.0.0.1", port_of(server))) as sock:
            return closed_within(sock, 4)

    assert await asyncio.to_thread(silent)


async def test_whole_requests_on_a_keep_alive_connection_are_served(server: LiveServer) -> None:
    def two_requests() -> list[bytes]:
        answers = []
        with socket.create_connection(("127.0.0.1", port_of(server))) as sock:
            sock.settimeout(5)
            for _ in range(2):
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                answers.append(read_response(sock))
                time.sleep(1.5)  # longer than the header timeout, shorter than keep-alive (5 s)
        return answers

    answers = await asyncio.to_thread(two_requests)
    assert all(a.startswith(b"HTTP/1.1 200") for a in answers)
