"""Prior authorization against a real `gateway serve` with a payers file, a real payer stand-in, and
the real `gateway ingest` command for an X12 278 response file."""

from __future__ import annotations

import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests import factories as f
from tests.integration.conftest import GATEWAY_BIN, start_server
from tests.payer_standin import PayerStandIn
from tests.unit.test_payer_x12_278 import Event, hierarchy, interchange, response, transaction

pytestmark = pytest.mark.asyncio(loop_scope="session")

NPI = "http://hl7.org/fhir/sid/us-npi|1234567893"


def payers_file(directory: Path, payer: PayerStandIn) -> Path:
    path = directory / "payers.yaml"
    path.write_text(
        "payers:\n"
        "  - name: standin\n"
        f"    base_url: {payer.base_url}\n"
        f"    insurers: ['{NPI}']\n"
        "    auth:\n"
        "      type: client-credentials\n"
        f"      token_url: {payer.token_url}\n"
        f"      client_id: {payer.client_id}\n"
        "      client_secret_env: STANDIN_PAS_SECRET\n"
        "    timeout_seconds: 2\n"
    )
    return path


async def create(http: httpx.AsyncClient, resource: dict[str, Any]) -> str:
    answer = await http.post(f"/fhir/{resource['resourceType']}", json=resource)
    assert answer.status_code == 201, answer.text
    return str(answer.json()["id"])


def ingest(database_url: str, path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [GATEWAY_BIN, "ingest", str(path), "--database-url", database_url],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_request_then_x12_file_through_gateway_ingest(
    backend: str, database_url_factory: Callable[[str], Awaitable[str]], tmp_path: Path
) -> None:
    with PayerStandIn(scenarios=["pended"]) as payer:
        url = await database_url_factory(backend)
        env = {
            "GATEWAY_PAYERS_FILE": str(payers_file(tmp_path, payer)),
            "STANDIN_PAS_SECRET": payer.client_secret,
        }
        live = await start_server(backend, url, tmp_path / "gateway.log", env=env)
        try:
            token = await live.token("system/*.cruds")
            async with httpx.AsyncClient(
                base_url=live.base_url, headers={"Authorization": f"Bearer {token}"}, timeout=30
            ) as http:
                patient = await create(http, f.patient())
                insurer = await create(
                    http,
                    {
                        "resourceType": "Organization",
                        "identifier": [{"system": NPI.split("|")[0], "value": NPI.split("|")[1]}],
                        "name": "Stand-in Health Plan",
                    },
                )
                prescriber = await create(http, {"resourceType": "Practitioner", "name": [{"family": "Rx"}]})
                await create(
                    http,
                    {
                        "resourceType": "Coverage",
                        "status": "active",
                        "beneficiary": {"reference": f"Patient/{patient}"},
                        "payor": [{"reference": f"Organization/{insurer}"}],
                    },
                )
                request = await create(
                    http,
                    f.medication_request(patient, requester={"reference": f"Practitioner/{prescriber}"}),
                )
                # No parameters: the patient's only active Coverage is used.
                answer = await http.post(f"/fhir/MedicationRequest/{request}/$request-prior-auth")
                assert answer.status_code == 200, answer.text
                task = answer.json()
                assert task["businessStatus"]["coding"][0]["code"] == "pended"
                assert payer.on("$submit")[0].headers["authorization"].startswith("Bearer ")
                trace = next(
                    i["value"] for i in task["identifier"] if i["system"].endswith("pa-trace-number")
                )

                broken = tmp_path / "broken.x12"
                event = Event(
                    [f"TRN*2*{trace}*9GATEWAY01", "HCR*A1*LIVE-AUTH", "DTP*AAH*RD8*20260101-20261231"]
                )
                broken.write_text(interchange(transaction(hierarchy(event)), drop="IEA"))
                refused = ingest(url, broken)
                assert refused.returncode == 1
                assert "refused, nothing changed" in refused.stdout and "IEA" in refused.stdout
                same = (await http.get(f"/fhir/Task/{task['id']}")).json()
                assert same["meta"]["versionId"] == task["meta"]["versionId"]

                good = tmp_path / "answer.x12"
                good.write_text(response(event))
                done = ingest(url, good)
                assert done.returncode == 0, done.stdout + done.stderr
                assert f"Task/{task['id']}: approved" in done.stdout
                after = (await http.get(f"/fhir/Task/{task['id']}")).json()
                assert after["businessStatus"]["coding"][0]["code"] == "approved"
                assert after["restriction"]["period"] == {"start": "2026-01-01", "end": "2026-12-31"}
        finally:
            live.process.terminate()
            live.process.wait(timeout=20)
