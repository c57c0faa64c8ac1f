"""`gateway sandbox run` against a second, real gateway (`gateway serve`): every step passes, nothing of the
run is left; the session it recorded replays offline (respx) with the same result."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
import respx

from gateway.sandbox import Replay, Server, run
from gateway.sandbox.runner import DERIVED_SEARCHES
from tests.integration.conftest import GATEWAY_BIN, LiveServer, start_server


@pytest_asyncio.fixture(scope="module")
async def target(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LiveServer]:
    folder = tmp_path_factory.mktemp("sandbox-target")
    server = await start_server("sqlite", f"sqlite+aiosqlite:///{folder / 'target.db'}", folder / "serve.log")
    try:
        yield server
    finally:
        server.process.terminate()
        server.process.wait(timeout=10)


@pytest.fixture(scope="module")
def recorded(target: LiveServer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One live run through the CLI, as an operator would type it, recorded."""
    client = target.add_client("system/*.cruds")
    folder = tmp_path_factory.mktemp("recording")
    done = subprocess.run(
        [
            GATEWAY_BIN,
            "sandbox",
            "run",
            "--base-url",
            f"{target.base_url}/fhir",
            "--json",
            "--record",
            str(folder),
        ],
        env={
            **target.env(),
            "GATEWAY_SANDBOX_CLIENT_ID": client["client_id"],
            "GATEWAY_SANDBOX_CLIENT_SECRET": client["client_secret"],
        },
        capture_output=True,
        text=True,
        timeout=120,
    )
    return {"rc": done.returncode, "report": json.loads(done.stdout), "folder": folder, "client": client}


async def test_every_step_passes_against_a_gateway_and_nothing_of_the_run_is_left(
    target: LiveServer, recorded: dict[str, Any]
) -> None:
    report = recorded["report"]
    assert recorded["rc"] == 0, [s for s in report["steps"] if s["result"] != "pass"]
    names = [s["step"] for s in report["steps"]]
    assert names[:2] == ["read CapabilityStatement", "token (client credentials)"]
    assert {"create Observation 751-8", "create Task prior-authorization", "delete Patient"} <= set(names)
    token = await target.token("system/*.rs")
    async with httpx.AsyncClient(base_url=f"{target.base_url}/fhir") as http:
        for rtype in ("Patient", "MedicationRequest", "Observation", "Task"):
            for suffix in ("patient", "order", "lab1", "lab2", "pa"):
                found = await http.get(
                    rtype,
                    params={
                        "identifier": f"https://specialty-gateway.org/fhir/sandbox-run|{report['run']}-{suffix}"
                    },
                    headers={"authorization": f"Bearer {token}"},
                )
                assert found.status_code == 200 and found.json().get("entry", []) == [], (rtype, suffix)
        # nor anything the gateway derived from the run's data (its alert Tasks, calendars, Provenance)
        deleted = next(s for s in report["steps"] if s["step"] == "delete Patient")["detail"]
        patient = re.search(r"Patient/[A-Za-z0-9.-]+", deleted)
        assert patient is not None, deleted
        for rtype, param in DERIVED_SEARCHES:
            found = await http.get(
                rtype, params={param: patient.group(0)}, headers={"authorization": f"Bearer {token}"}
            )
            assert found.status_code == 200 and found.json().get("entry", []) == [], (rtype, found.text[:300])


def test_the_recording_keeps_no_credentials(recorded: dict[str, Any]) -> None:
    text = "".join(p.read_text() for p in Path(recorded["folder"]).glob("*.json"))
    assert recorded["client"]["client_secret"] not in text
    assert "Bearer REDACTED" in text and '"access_token": "REDACTED"' in text


def test_a_recorded_session_replays_offline(recorded: dict[str, Any]) -> None:
    replay = Replay.load(Path(recorded["folder"]))
    session = replay.session
    with respx.mock() as mock:  # any request that escapes the mock fails: no network
        mock.route().mock(side_effect=replay.respond)
        with Server(session["base_url"]) as server:
            report = run(
                server,
                run_id=session["run"],
                now=datetime.fromisoformat(session["now"]),
                credentials=("replayed", "replayed") if session["client_credentials"] else None,
            )
    assert replay.strays == [] and replay.served == len(replay.exchanges)
    assert report.passed
    assert [s.name for s in report.steps] == [s["step"] for s in recorded["report"]["steps"]]
