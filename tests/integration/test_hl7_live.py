"""HL7 v2 into a running `gateway serve`: a real MLLP client (python-hl7), and `gateway ingest` files."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
from pathlib import Path

import httpx
from hl7.client import MLLPClient

from tests.hl7_messages import ack_code, anc_oru, msh, pid
from tests.integration.conftest import GATEWAY_BIN, LiveServer

START, END = b"\x0b", b"\x1c\x0d"


def mllp_send(port: int, message: str) -> str:
    with MLLPClient("127.0.0.1", port) as client:
        answer: bytes = client.send_message(message)
    return answer.strip(START + END).decode()


async def fhir(live: LiveServer, path: str, **params: str) -> dict:
    token = await live.token("system/*.cruds hl7v2/messages.read hl7v2/messages.reprocess")
    async with httpx.AsyncClient(
        base_url=live.base_url, headers={"Authorization": f"Bearer {token}"}
    ) as http:
        answer = await http.get(path, params=params)
    answer.raise_for_status()
    return dict(answer.json())


async def test_mllp_client_gets_aa_only_after_the_result_is_stored(live: LiveServer) -> None:
    ack = await asyncio.to_thread(mllp_send, live.mllp_port, anc_oru("LIVE-1", "LIVE-MRN-1"))
    assert ack_code(ack) == "AA"
    assert "MSA|AA|LIVE-1" in ack
    # The ACK came after the commit: the Observation is readable at once.
    bundle = await fhir(live, "/fhir/Observation", **{"patient.identifier": "LIVE-MRN-1"})
    assert bundle["total"] == 1
    assert bundle["entry"][0]["resource"]["valueQuantity"]["value"] == 1.2


async def test_a_client_killed_mid_message_leaves_nothing_half_stored(live: LiveServer) -> None:
    message = anc_oru("LIVE-2", "LIVE-MRN-2").encode()
    with socket.create_connection(("127.0.0.1", live.mllp_port)) as raw:
        raw.sendall(START + message[: len(message) // 2])  # half a message, then the sender dies
    ack = await asyncio.to_thread(mllp_send, live.mllp_port, anc_oru("LIVE-3", "LIVE-MRN-3"))
    assert ack_code(ack) == "AA"  # and the listener kept serving
    log = await fhir(live, "/hl7v2/messages", sender="LABSYS|CITY LAB", count="500")
    control_ids = {m["controlId"] for m in log["messages"]}
    assert "LIVE-3" in control_ids and "LIVE-2" not in control_ids
    assert (await fhir(live, "/fhir/Patient", identifier="LIVE-MRN-2"))["total"] == 0


async def test_gateway_ingest_reads_batch_files_and_reports(live: LiveServer, tmp_path: Path) -> None:
    unsupported = "\r".join([msh("VXU^V04", "ING-3"), pid("ING-MRN-3")])
    batch = "\r".join(
        [
            "FHS|^~\\&|LABSYS",
            "BHS|^~\\&|LABSYS",
            anc_oru("ING-1", "ING-MRN-1").strip(),
            anc_oru("ING-2", "ING-MRN-2").strip(),
            unsupported,
            "BTS|3",
            "FTS|1",
        ]
    )
    path = tmp_path / "batch.hl7"
    path.write_text(batch)
    env = {**os.environ, "GATEWAY_DATABASE_URL": live.database_url}
    first = subprocess.run(
        [GATEWAY_BIN, "ingest", str(path)], env=env, capture_output=True, text=True, timeout=120
    )
    assert first.returncode == 1  # one message was rejected: scripts must notice
    assert "3 messages from 1 file(s)" in first.stdout
    assert "2 accepted, 0 duplicates, 0 errors, 1 rejected" in first.stdout
    assert "VXU" in first.stdout
    again = subprocess.run(
        [GATEWAY_BIN, "ingest", str(path)], env=env, capture_output=True, text=True, timeout=120
    )
    assert "0 accepted, 2 duplicates" in again.stdout
    assert (await fhir(live, "/fhir/Patient", identifier="ING-MRN-2"))["total"] == 1
