"""A real `gateway serve` at DEBUG, fed patients' data through every door and pushed into errors, logs
no patient name, birth date, MRN or clinical note: application logs carry ids only.

The errors include 500s from a database that fails mid-run (a table renamed under the running server),
whose exception texts would carry the SQL parameters of the failed statement.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson

from tests import factories as f
from tests.integration.conftest import start_server

FAMILY = "Quixotewhistle"
GIVEN = "Ottoline"
MRN = "MRN-PHI-77631"
BIRTH = "19490817"
BIRTH_FHIR = "1949-08-17"
NOTE = "Patient reports dizziness after the third dose"
MARKERS = (FAMILY, GIVEN, MRN, BIRTH, BIRTH_FHIR, NOTE)


def _oru(control_id: str, value: str = "1.2") -> str:
    return (
        "\r".join(
            [
                f"MSH|^~\\&|LABSYS|CITY LAB|GW|RX|20240301083000-0500||ORU^R01^ORU_R01|{control_id}|P|2.5.1",
                f"PID|1||{MRN}^^^HOSP&2.16.840.1.113883.19.5&ISO^MR||{FAMILY}^{GIVEN}||{BIRTH}|F",
                f"OBR|1|{control_id}^EHR|F{control_id}^LAB|57021-8^CBC^LN|||20240301070000-0500",
                f"OBX|1|NM|751-8^Neutrophils^LN||{value}|10*3/uL^^UCUM|1.5-8.0|L|||F",
                f"NTE|1||{NOTE}",
            ]
        )
        + "\r"
    )


def _mllp(port: int, message: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"\x0b" + message.encode() + b"\x1c\x0d")
        return sock.recv(65536)


def _patient() -> dict[str, Any]:
    return f.patient(
        MRN,
        name=[{"family": FAMILY, "given": [GIVEN]}],
        birthDate=BIRTH_FHIR,
        extension=[{"url": "https://example.org/note", "valueString": NOTE}],
    )


async def _stream(http: httpx.AsyncClient, patient: str, lines: list[str], ready: asyncio.Event) -> None:
    path = f"/fhir/Patient/{patient}/$timeline"
    async with http.stream(
        "GET", path, params={"_stream": "true"}, headers={"Accept": "text/event-stream"}
    ) as r:
        assert r.status_code == 200
        ready.set()
        with contextlib.suppress(httpx.TransportError):  # closed under it when the client closes
            async for line in r.aiter_lines():
                lines.append(line)


async def test_a_full_run_logs_no_phi(database_url_factory: Any, tmp_path: Path) -> None:
    url = await database_url_factory("postgresql")
    log_path = tmp_path / "gateway.log"
    # JSON lines (GATEWAY_LOG_FORMAT=json): the formatter adds no content of its own, so what holds for them
    # holds for text lines, and each line can be checked for its correlation id.
    env = {"GATEWAY_LOG_LEVEL": "DEBUG", "GATEWAY_LOG_FORMAT": "json"}
    live = await start_server("postgresql", url, log_path, env=env)
    stream: asyncio.Task[None] | None = None
    try:
        token = await live.token("system/*.cruds hl7v2/messages.read hl7v2/messages.reprocess")
        headers = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(base_url=live.base_url, headers=headers, timeout=30) as http:
            created = await http.post("/fhir/Patient", json=_patient())
            assert created.status_code == 201
            # A live timeline of the patient, open through what follows.
            streamed: list[str] = []
            ready = asyncio.Event()
            stream = asyncio.create_task(_stream(http, created.json()["id"], streamed, ready))
            await asyncio.wait_for(ready.wait(), 30)
            await http.get("/fhir/Patient", params={"family": FAMILY, "birthdate": BIRTH_FHIR})
            await http.get("/fhir/Patient", params={"identifier": MRN, "_sort": "nonsense"})  # a 400
            await http.get("/fhir/Patient", params={"birthdate": "not-a-date-" + BIRTH})  # a 400
            await http.post(
                "/fhir/Patient", content=b'{"resourceType": "Patient", "name": "' + FAMILY.encode()
            )
            await http.post("/fhir/Patient", json={**_patient(), "gender": 17})  # a 422
            await http.post("/hl7v2", content=_oru("PHI-1").encode())
            await http.post("/hl7v2", content=_oru("PHI-1", "9.9").encode())  # a reused control id
            await http.post("/hl7v2", content=_oru("PHI-2").replace("PID|1||", "PID|1|| ").encode())
            await asyncio.to_thread(_mllp, live.mllp_port, _oru("PHI-3"))
            await asyncio.to_thread(_mllp, live.mllp_port, "MSH|^~\\&|junk " + FAMILY)
            await http.get("/hl7v2/messages")
            async with asyncio.timeout(30):
                while not any(line.startswith("data: ") for line in streamed):
                    await asyncio.sleep(0.05)
            # The database fails under the running server: writes now end in 500s.
            conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
            try:
                await conn.execute("ALTER TABLE sp_string RENAME TO sp_string_gone")
            finally:
                await conn.close()
            failed = await http.post("/fhir/Patient", json=_patient())
            assert failed.status_code == 500
            await http.post("/hl7v2", content=_oru("PHI-4").encode())
            await asyncio.to_thread(_mllp, live.mllp_port, _oru("PHI-5"))
    finally:
        live.process.terminate()
        live.process.wait(timeout=10)
    if stream is not None:
        await asyncio.wait_for(stream, 10)
    logged = log_path.read_text(errors="replace")
    assert "HTTP" in logged or "gateway" in logged  # the log is not empty: something was there to leak
    leaks = [marker for marker in MARKERS if marker in logged]
    assert leaks == [], [line for line in logged.splitlines() if any(m in line for m in leaks)][:5]
    entries = [orjson.loads(line) for line in logged.splitlines() if line.strip()]  # every line is JSON
    # The HL7 v2 messages over MLLP are logged under their own ids; the requests under theirs.
    by_id: dict[str, set[str]] = {}
    for entry in entries:
        by_id.setdefault(entry.get("correlation_id", "-"), set()).add(entry["logger"])
    assert sum(1 for cid in by_id if cid.startswith("mllp-")) >= 3, sorted(by_id)[:10]
    assert any(
        cid != "-" and not cid.startswith("mllp-") and "gateway.http" in loggers
        for cid, loggers in by_id.items()
    )
