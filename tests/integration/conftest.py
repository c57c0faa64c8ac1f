"""A real `gateway serve` process per backend, and API clients registered through the real CLI."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import pytest_asyncio

GATEWAY_BIN = str(Path(sys.executable).parent / "gateway")


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(count: int, *, besides: set[int] | None = None) -> list[int]:
    """`count` distinct free ports, none of `besides`: the sockets are held open together while the kernel
    picks, so two picks cannot be one port, and a port a stopped server will take again (a restart on
    its old port) is never handed to another listener (seen once: MLLP took the HTTP port of a server
    being restarted, and the HTTP listener could not bind)."""
    held: list[socket.socket] = []
    try:
        while len(held) < count + len(besides or ()):
            sock = socket.socket()
            held.append(sock)
            sock.bind(("127.0.0.1", 0))
        ports = [int(s.getsockname()[1]) for s in held]
        return [p for p in ports if p not in (besides or set())][:count]
    finally:
        for sock in held:
            sock.close()


@dataclass
class LiveServer:
    backend: str
    database_url: str
    base_url: str
    process: subprocess.Popen[bytes]
    mllp_port: int

    def env(self) -> dict[str, str]:
        return {**os.environ, "GATEWAY_DATABASE_URL": self.database_url}

    def add_client(self, scope: str) -> dict[str, str]:
        """Register a client with `gateway clients add --json`, as an operator would."""
        done = subprocess.run(
            [GATEWAY_BIN, "clients", "add", f"it-{uuid.uuid4().hex[:8]}", "--scope", scope, "--json"],
            env=self.env(),
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        created: dict[str, str] = json.loads(done.stdout)
        return created

    async def token(self, scope: str) -> str:
        client = self.add_client(scope)
        async with httpx.AsyncClient() as http:
            answer = await http.post(
                f"{self.base_url}/auth/token",
                data={"grant_type": "client_credentials"},
                auth=(client["client_id"], client["client_secret"]),
            )
        answer.raise_for_status()
        return str(answer.json()["access_token"])


# Subscriber endpoints in the tests are real receivers on 127.0.0.1, which only an allow-list permits.
# One serving process unless a test asks for a cluster (`serve` would start one per core on PostgreSQL).
LIVE_ENV = {
    "GATEWAY_SUBSCRIPTION_ALLOWLIST": "127.0.0.0/8",
    "GATEWAY_DELIVERY_POLL_SECONDS": "0.2",
    "GATEWAY_SERVE_WORKERS": "1",
}


async def start_server(
    backend: str,
    database_url: str,
    log_path: Path,
    *,
    port: int | None = None,
    mllp_port: int | None = None,
    env: dict[str, str] | None = None,
) -> LiveServer:
    fresh = iter(free_ports(2, besides={p for p in (port, mllp_port) if p}))
    port, mllp_port = port or next(fresh), mllp_port or next(fresh)
    with log_path.open("ab") as log:  # the child keeps its own descriptor
        process = subprocess.Popen(
            [
                GATEWAY_BIN,
                "serve",
                "--port",
                str(port),
                "--mllp-port",
                str(mllp_port),
                "--database-url",
                database_url,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **LIVE_ENV, **(env or {})},
        )
    server = LiveServer(backend, database_url, f"http://127.0.0.1:{port}", process, mllp_port)
    async with httpx.AsyncClient() as http:
        for _ in range(300):
            if process.poll() is not None:
                raise RuntimeError(f"gateway serve exited: {log_path.read_text()[-2000:]}")
            try:
                if (await http.get(f"{server.base_url}/healthz")).status_code == 200:
                    return server
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
    process.kill()
    raise RuntimeError(f"gateway serve did not come up: {log_path.read_text()[-2000:]}")


@pytest_asyncio.fixture(scope="session")
async def live_servers(
    database_url_factory: Callable[[str], Awaitable[str]], tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[dict[str, LiveServer]]:
    servers: dict[str, LiveServer] = {}
    logs = tmp_path_factory.mktemp("live")
    try:
        for backend in ("sqlite", "postgresql"):
            url = await database_url_factory(backend)
            servers[backend] = await start_server(backend, url, logs / f"{backend}.log")
        yield servers
    finally:
        for server in servers.values():
            server.process.terminate()
            try:
                server.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.process.kill()


@pytest.fixture(params=["sqlite", "postgresql"])
def live(request: pytest.FixtureRequest, live_servers: dict[str, LiveServer]) -> LiveServer:
    return live_servers[str(request.param)]
