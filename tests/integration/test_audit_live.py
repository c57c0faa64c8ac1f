"""The audit trail of a real `gateway serve`: MLLP messages from a real client and REST reads are in it,
and what was queued when the process was told to stop (SIGTERM) was written before it exited; `gateway
ingest` files are recorded under their source name."""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.hl7_messages import ack_code, anc_oru
from tests.integration.conftest import GATEWAY_BIN, start_server
from tests.integration.test_hl7_live import mllp_send

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def audit_events(base_url: str, token: str, **params: str) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(base_url=base_url, headers={"Authorization": f"Bearer {token}"}) as http:
        answer = await http.get("/fhir/AuditEvent", params=params)
    answer.raise_for_status()
    return [e["resource"] for e in answer.json().get("entry", [])]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_a_served_gateway_audits_mllp_and_rest_and_writes_its_queue_when_stopped(
    backend: str, database_url_factory: Callable[[str], Awaitable[str]], tmp_path: Path
) -> None:
    url = await database_url_factory(backend)
    live = await start_server(backend, url, tmp_path / "first.log")
    try:
        auditor = await live.token("audit/events.read")
        reader = live.add_client("system/*.rs")
        ack = await asyncio.to_thread(mllp_send, live.mllp_port, anc_oru("AUD-LIVE-1", "AUD-LIVE-MRN"))
        assert ack_code(ack) == "AA"
        imports: list[dict[str, Any]] = []
        for _ in range(100):  # written by the background task within its half-second interval
            imports = await audit_events(live.base_url, auditor, type="110107")
            if imports:
                break
            await asyncio.sleep(0.1)
        (event,) = imports
        assert event["agent"][0]["who"]["identifier"]["value"].startswith("127.0.0.1:")
        (patient,) = [e["what"]["reference"] for e in event["entity"] if e.get("role", {}).get("code") == "1"]

        async with httpx.AsyncClient(base_url=live.base_url) as http:
            token = (
                await http.post(
                    "/auth/token",
                    data={"grant_type": "client_credentials"},
                    auth=(reader["client_id"], reader["client_secret"]),
                )
            ).json()["access_token"]
            # Through a TLS proxy on this host (GATEWAY_FORWARDED_ALLOW_IPS): the client's address is audited.
            answer = await http.get(
                f"/fhir/{patient}",
                headers={"Authorization": f"Bearer {token}", "X-Forwarded-For": "203.0.113.7"},
            )
            assert answer.status_code == 200
        live.process.terminate()  # at once: the read is at most queued, and must be written on the way out
        assert live.process.wait(timeout=30) == 0  # a clean stop
    finally:
        if live.process.poll() is None:
            live.process.kill()

    again = await start_server(backend, url, tmp_path / "second.log")
    try:
        auditor = await again.token("audit/events.read")
        reads = await audit_events(again.base_url, auditor, agent=reader["client_id"], subtype="read")
        assert len(reads) == 1 and reads[0]["outcome"] == "0"
        assert reads[0]["agent"][0]["network"]["address"] == "203.0.113.7"
        assert patient in {e["what"]["reference"] for e in reads[0]["entity"]}

        path = tmp_path / "results.hl7"
        path.write_text(anc_oru("AUD-FILE-1", "AUD-FILE-MRN"))
        env = {**os.environ, "GATEWAY_DATABASE_URL": url}
        done = subprocess.run(
            [GATEWAY_BIN, "ingest", "--source", "lab-drop", str(path)],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        (ingested,) = await audit_events(again.base_url, auditor, agent="lab-drop")
        assert ingested["type"]["code"] == "110107" and ingested["outcome"] == "0"
        assert any(e.get("description") == "file results.hl7" for e in ingested["entity"])
    finally:
        again.process.terminate()
        again.process.wait(timeout=30)
