"""`gateway serve --workers 2` on PostgreSQL: two processes answer on one HTTP and one MLLP port, a worker
that dies is replaced, and SIGTERM stops them all."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx

from tests.integration.conftest import start_server


def _children(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found.update(int(p) for p in text)
    return found


async def _workers_answering(base_url: str, want: set[int], seconds: float = 30) -> set[int]:
    """The worker numbers seen over new connections until all of `want` answered (or time ran out)."""
    seen: set[int] = set()
    deadline = time.monotonic() + seconds
    while not want <= seen and time.monotonic() < deadline:
        async with httpx.AsyncClient() as http:  # a new connection each time: the kernel picks a worker
            try:
                seen.add((await http.get(f"{base_url}/healthz")).json()["worker"])
            except httpx.TransportError:
                await asyncio.sleep(0.1)
    return seen


def _oru(n: int) -> bytes:
    text = "\r".join(
        [
            f"MSH|^~\\&|CLUSTERLAB|LAB|GW|RX|20260301083000-0500||ORU^R01^ORU_R01|CL{n}|P|2.5.1",
            f"PID|1||CL{n % 3}^^^CLU&2.16.840.1.113883.19.55&ISO^MR||Cluster^Pat||19700101|F",
            f"OBR|1|CLO{n}^EHR|CLF{n}^LAB|2823-3^Potassium^LN|||20260301070000-0500",
            f"OBX|1|NM|2823-3^Potassium^LN||4.{n % 10}|mmol/L^^UCUM|3.5-5.1|N|||F",
        ]
    )
    return b"\x0b" + text.encode() + b"\x1c\x0d"


def _send_on_one_connection(port: int, numbers: list[int]) -> list[bytes]:
    replies = []
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        for n in numbers:
            sock.sendall(_oru(n))
            reply = b""
            while not reply.endswith(b"\x1c\x0d"):
                reply += sock.recv(65536)
            replies.append(reply)
    return replies


async def test_two_workers_share_the_ports_are_replaced_when_they_die_and_stop_together(
    database_url_factory: Callable[[str], Awaitable[str]], tmp_path: Path
) -> None:
    url = await database_url_factory("postgresql")
    live = await start_server("postgresql", url, tmp_path / "cluster.log", env={"GATEWAY_SERVE_WORKERS": "2"})
    try:
        assert await _workers_answering(live.base_url, {1, 2}) == {1, 2}
        first = _children(live.process.pid)
        assert len(first) == 2

        # Six MLLP connections at once, five messages each: every one stored and acknowledged.
        batches = [list(range(c * 5, c * 5 + 5)) for c in range(6)]
        replies = await asyncio.gather(
            *(asyncio.to_thread(_send_on_one_connection, live.mllp_port, b) for b in batches)
        )
        for batch, answers in zip(batches, replies, strict=True):
            assert [f"MSA|AA|CL{n}".encode() in a for n, a in zip(batch, answers, strict=True)] == [True] * 5
        token = await live.token("system/Observation.rs")
        async with httpx.AsyncClient(base_url=live.base_url) as http:
            found = await http.get(
                "/fhir/Observation",
                params={"code": "http://loinc.org|2823-3", "_summary": "count"},
                headers={"Authorization": f"Bearer {token}"},
            )
        assert found.json()["total"] == 30

        # A worker killed outright is replaced under the same number.
        victim = min(first)
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            now = _children(live.process.pid)
            if len(now) == 2 and victim not in now:
                break
            await asyncio.sleep(0.2)
        assert len(now) == 2 and victim not in now
        assert await _workers_answering(live.base_url, {1, 2}) == {1, 2}

        # SIGTERM to the supervisor stops every worker, and it exits cleanly.
        live.process.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(live.process.wait, 40) == 0
        assert all(not Path(f"/proc/{pid}").exists() for pid in now)
    finally:
        if live.process.poll() is None:
            live.process.kill()
            live.process.wait()
