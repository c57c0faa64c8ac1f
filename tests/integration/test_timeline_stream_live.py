"""The live timeline against real `gateway serve` processes: a result sent over MLLP to one process reaches a
stream open on another process of the same database (its poll finds the commit), and SIGTERM ends open
streams so the server stops. Timeouts are generous and only keep a broken test from hanging."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import hl7
import httpx
import orjson
import pytest
from hl7.mllp import open_hl7_connection

from tests import factories as f
from tests.hl7_messages import anc_oru
from tests.integration.conftest import LiveServer, start_server

pytestmark = pytest.mark.asyncio(loop_scope="session")

WAIT = 30.0


@asynccontextmanager
async def second_server(live: LiveServer, tmp_path: Path) -> AsyncIterator[LiveServer]:
    other = await start_server(live.backend, live.database_url, tmp_path / "second.log")
    try:
        yield other
    finally:
        other.process.terminate()
        try:
            other.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            other.process.kill()


async def send_mllp(port: int, message: str) -> str:
    reader, writer = await open_hl7_connection("127.0.0.1", port)
    try:
        writer.writemessage(hl7.parse(message))
        await writer.drain()
        async with asyncio.timeout(WAIT):
            ack = await reader.readmessage()
    finally:
        writer.close()
    return str(ack.segment("MSA")[1])


async def events(response: httpx.Response) -> AsyncIterator[tuple[str, dict[str, object] | None]]:
    """(event id, entry) per event; ("", None) per comment line."""
    event_id, data = "", ""
    async for line in response.aiter_lines():
        if line.startswith(":"):
            yield line, None
        elif line.startswith("id: "):
            event_id = line[4:]
        elif line.startswith("data: "):
            data = line[6:]
        elif line == "" and data:
            yield event_id, orjson.loads(data)
            event_id, data = "", ""


async def test_a_result_sent_to_another_process_reaches_the_stream(live: LiveServer, tmp_path: Path) -> None:
    bearer = await live.token("system/*.cruds")
    auth = {"Authorization": f"Bearer {bearer}"}
    mrn = f"MRN-LIVE-{uuid.uuid4().hex[:8]}"
    async with second_server(live, tmp_path) as other, httpx.AsyncClient(timeout=WAIT) as http:
        # The patient first (its first message), then the stream on the first process.
        assert await send_mllp(other.mllp_port, anc_oru(f"TL-{mrn}-1", mrn)) == "AA"
        found = await http.get(f"{live.base_url}/fhir/Patient", params={"identifier": mrn}, headers=auth)
        patient = found.json()["entry"][0]["resource"]["id"]
        url = f"{live.base_url}/fhir/Patient/{patient}/$timeline"
        headers = {**auth, "Accept": "text/event-stream"}
        async with http.stream("GET", url, params={"_stream": "true"}, headers=headers) as response:
            assert response.status_code == 200
            assert await send_mllp(other.mllp_port, anc_oru(f"TL-{mrn}-2", mrn, "0.7")) == "AA"
            received: list[tuple[str, dict[str, object]]] = []
            async with asyncio.timeout(WAIT):
                async for event_id, entry in events(response):
                    if entry is not None and entry["kind"] == "observation":
                        received.append((event_id, entry))
                        break
            [(event_id, observation)] = received
            assert event_id and str(observation["summary"]).startswith("Neutrophils 0.7")
            assert observation["source"] == {"system": "LABSYS / CITY LAB", "kind": "hl7v2"}


async def test_sigterm_ends_open_streams_and_the_server_stops(
    tmp_path: Path, database_url_factory: Callable[[str], Awaitable[str]]
) -> None:
    url = await database_url_factory("sqlite")
    server = await start_server("sqlite", url, tmp_path / "server.log")
    try:
        bearer = await server.token("system/*.cruds")
        headers = {"Authorization": f"Bearer {bearer}"}
        async with httpx.AsyncClient(base_url=server.base_url, timeout=WAIT, headers=headers) as http:
            patient = (await http.post("/fhir/Patient", json=f.patient())).json()["id"]
            path = f"/fhir/Patient/{patient}/$timeline"
            sse = {"Accept": "text/event-stream"}
            async with http.stream("GET", path, params={"_stream": "true"}, headers=sse) as response:
                assert response.status_code == 200
                server.process.send_signal(signal.SIGTERM)
                comments = []
                async with asyncio.timeout(WAIT):
                    async for line, entry in events(response):
                        assert entry is None
                        comments.append(line)
                assert comments[-1] == ": closed: server shutting down"
        assert await asyncio.to_thread(server.process.wait, WAIT) == 0
    finally:
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait(timeout=WAIT)
