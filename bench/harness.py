"""Shared benchmark plumbing: throw-away databases, a real `gateway serve`, timing helpers."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx

GATEWAY_BIN = str(Path(sys.executable).parent / "gateway")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@asynccontextmanager
async def throwaway_database(backend: str, postgres_url: str) -> AsyncIterator[str]:
    """A database URL that exists only for the duration of the block."""
    if backend == "sqlite":
        folder = tempfile.mkdtemp(prefix="gw-bench-")
        try:
            yield f"sqlite+aiosqlite:///{folder}/gateway.db"
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return
    name = f"gw_bench_{uuid.uuid4().hex[:10]}"
    dsn = postgres_url.replace("postgresql+asyncpg://", "postgresql://", 1)
    conn = await asyncpg.connect(dsn)
    await conn.execute(f'CREATE DATABASE "{name}"')
    await conn.close()
    try:
        yield postgres_url.rsplit("/", 1)[0] + "/" + name
    finally:
        conn = await asyncpg.connect(dsn)
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.close()


@dataclass
class Server:
    base_url: str
    process: subprocess.Popen[bytes]
    mllp_port: int


@asynccontextmanager
async def running_gateway(database_url: str, env: Mapping[str, str] | None = None) -> AsyncIterator[Server]:
    """`gateway serve` on free ports; `env` adds or overrides GATEWAY_* settings (e.g. the allow-list)."""
    port, mllp_port = free_port(), free_port()
    # One process unless the benchmark asks for more (GATEWAY_SERVE_WORKERS in `env`).
    environment = {**os.environ, "GATEWAY_LOG_LEVEL": "WARNING", "GATEWAY_SERVE_WORKERS": "1", **(env or {})}
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
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    server = Server(f"http://127.0.0.1:{port}", process, mllp_port)
    try:
        async with httpx.AsyncClient() as http:
            for _ in range(300):
                try:
                    if (await http.get(f"{server.base_url}/healthz")).status_code == 200:
                        break
                except httpx.TransportError:
                    await asyncio.sleep(0.1)
            else:
                raise RuntimeError("gateway serve did not start")
        yield server
    finally:
        process.terminate()
        process.wait(timeout=30)


async def timed_concurrently(
    count: int, concurrency: int, action: Callable[[int], Awaitable[None]]
) -> tuple[float, list[float]]:
    """Run action(i) for i in range(count) with `concurrency` workers; (wall seconds, per-call seconds)."""
    latencies: list[float] = []
    next_index = 0

    async def worker() -> None:
        nonlocal next_index
        while next_index < count:
            index = next_index
            next_index += 1
            started = time.perf_counter()
            await action(index)
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*[worker() for _ in range(concurrency)])
    return time.perf_counter() - started, latencies


class ClientCredentials(httpx.Auth):
    """Bearer tokens from the gateway's token endpoint, renewed before they expire (runs outlast a token)."""

    requires_response_body = True

    def __init__(self, token_url: str, client_id: str, client_secret: str) -> None:
        self.token_url = token_url
        self.credentials = (client_id, client_secret)
        self.token = ""
        self.renew_at = 0.0

    def auth_flow(self, request: httpx.Request):  # type: ignore[no-untyped-def]
        if time.monotonic() >= self.renew_at:
            answer = yield httpx.Request(
                "POST",
                self.token_url,
                data={"grant_type": "client_credentials"},
                headers={"Authorization": httpx.BasicAuth(*self.credentials)._auth_header},
            )
            answer.raise_for_status()
            body = answer.json()
            self.token = body["access_token"]
            self.renew_at = time.monotonic() + body["expires_in"] * 0.8
        request.headers["Authorization"] = f"Bearer {self.token}"
        yield request


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def describe_ms(values: list[float]) -> str:
    return (
        f"p50 {percentile(values, 0.5) * 1000:6.2f} ms  p95 {percentile(values, 0.95) * 1000:6.2f} ms"
        f"  mean {statistics.fmean(values) * 1000:6.2f} ms"
    )
