"""`gateway identity audit | repair | merge`, both backends: data joined by the old behaviour is found and
separated by sender, with every earlier Provenance kept and one more that names the repair.

The old behaviour is rebuilt exactly as it left the store: a Patient with a bare identifier T12345 that
lab A's result created, that lab B's ADT then overwrote with another person's demographics, and that lab
B's result was filed under; the message log holds each message with the resources it wrote.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from typing import Any

import httpx
import orjson
import pytest

from gateway.service.gateway import Gateway
from gateway.service.hl7 import identity_repair
from gateway.settings import PROJECT_ROOT
from gateway.store import messages as message_log
from tests.hl7_messages import msh

LAB_A = ("LIS", "NORTH LAB")
LAB_B = ("LIS", "SOUTH LAB")


def _oru(control_id: str, lab: tuple[str, str], pid: str, value: str) -> str:
    return (
        "\r".join(
            [
                msh("ORU^R01", control_id, application=lab[0], facility=lab[1]),
                pid,
                f"OBR|1|{control_id}^EHR|F{control_id}^LAB|57021-8^CBC^LN|||20240301070000-0500",
                f"OBX|1|NM|751-8^Neutrophils^LN||{value}|10*3/uL^^UCUM|1.5-8.0|L|||F",
            ]
        )
        + "\r"
    )


RIVERA = "PID|1||T12345||Rivera^Ana||19700101|F"
OKAFOR = "PID|1||T12345||Okafor^Ben||19551212|M"
ADT_B = "\r".join([msh("ADT^A08", "B-1", application=LAB_B[0], facility=LAB_B[1]), "EVN|A08", OKAFOR]) + "\r"


async def _create(api: httpx.AsyncClient, resource: dict[str, Any]) -> dict[str, Any]:
    answer = await api.post(f"/fhir/{resource['resourceType']}", json=resource)
    assert answer.status_code == 201, answer.text
    return dict(answer.json())


async def _log(gateway: Gateway, lab: tuple[str, str], control_id: str, raw: str, refs: list[str]) -> None:
    async with gateway.db.write() as conn:
        await message_log.insert_many(
            conn,
            [
                {
                    "id": str(uuid.uuid4()),
                    "sender": f"{lab[0]}|{lab[1]}",
                    "control_id": control_id,
                    "content_hash": None,  # rows from before content hashes
                    "message_type": raw.split("|")[8].rsplit("^", 1)[0] if "ADT" in raw else "ORU^R01",
                    "source": "mllp",
                    "source_detail": "old",
                    "received_us": 1_700_000_000_000_000 + len(control_id) * 1000 + ord(control_id[0]),
                    "processed_us": 1_700_000_000_000_000,
                    "status": "accepted",
                    "ack_code": "AA",
                    "attempts": 1,
                    "raw": raw,
                    "ack": "",
                    "errors": "[]",
                    "problems": "[]",
                    "unused": "[]",
                    "resources": orjson.dumps(refs).decode(),
                }
            ],
        )


def _observation(patient_id: str, value: float) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "laboratory",
                    }
                ]
            }
        ],
        "code": {"coding": [{"system": "http://loinc.org", "code": "751-8"}]},
        "subject": {"reference": f"Patient/{patient_id}"},
        "valueQuantity": {
            "value": value,
            "unit": "10*3/uL",
            "system": "http://unitsofmeasure.org",
            "code": "10*3/uL",
        },
    }


async def _old_behaviour(gateway: Gateway, api: httpx.AsyncClient) -> dict[str, str]:
    """The store as the gateway left it before identifiers always had a system."""
    patient = await _create(
        api,
        {
            "resourceType": "Patient",
            "identifier": [{"value": "T12345"}],
            "name": [{"family": "Rivera", "given": ["Ana"]}],
            "birthDate": "1970-01-01",
            "gender": "female",
        },
    )
    pid = patient["id"]
    first = await _create(api, _observation(pid, 1.2))
    provenance_a = await _create(
        api,
        {
            "resourceType": "Provenance",
            "target": [
                {"reference": f"Patient/{pid}/_history/1"},
                {"reference": f"Observation/{first['id']}/_history/1"},
            ],
            "recorded": "2024-03-01T08:30:00Z",
            "agent": [{"who": {"display": "HL7 v2 sender LIS / NORTH LAB"}}],
        },
    )
    await _log(
        gateway,
        LAB_A,
        "A-1",
        _oru("A-1", LAB_A, RIVERA, "1.2"),
        [f"Patient/{pid}/_history/1", f"Observation/{first['id']}/_history/1"],
    )
    overwritten = {
        **patient,
        "name": [{"family": "Okafor", "given": ["Ben"]}],
        "birthDate": "1955-12-12",
        "gender": "male",
    }
    assert (await api.put(f"/fhir/Patient/{pid}", json=overwritten)).status_code == 200
    await _log(gateway, LAB_B, "B-1", ADT_B, [f"Patient/{pid}/_history/2"])
    second = await _create(api, _observation(pid, 0.9))
    await _log(
        gateway,
        LAB_B,
        "B-22",
        _oru("B-22", LAB_B, OKAFOR, "0.9"),
        [f"Patient/{pid}/_history/2", f"Observation/{second['id']}/_history/1"],
    )
    return {"patient": pid, "first": first["id"], "second": second["id"], "provenance": provenance_a["id"]}


async def test_audit_finds_the_wrongly_joined_patient_and_repair_splits_it_keeping_provenance(
    gateway: Gateway, api: httpx.AsyncClient
) -> None:
    ids = await _old_behaviour(gateway, api)
    async with gateway.db.read() as conn:
        findings = await identity_repair.audit(conn)
    (finding,) = findings
    assert finding.patient == ids["patient"]
    assert set(finding.kinds) == {"joined-across-senders", "conflicting-demographics"}
    assert finding.senders == ["LIS|NORTH LAB", "LIS|SOUTH LAB"]
    assert set(finding.elements) == {"name", "birthDate", "gender"} and finding.versions == [2]

    async with gateway.db.write() as conn:
        dry = await identity_repair.repair(
            conn, gateway.fhir, gateway.pipeline.translator, ids["patient"], dry_run=True
        )
    assert (
        dry.written == []
        and (await api.get(f"/fhir/Patient/{ids['patient']}")).json()["meta"]["versionId"] == "2"
    )

    async with gateway.db.write() as conn:
        done = await identity_repair.repair(conn, gateway.fhir, gateway.pipeline.translator, ids["patient"])
    south = done.senders["LIS|SOUTH LAB"]
    assert done.senders["LIS|NORTH LAB"] == ids["patient"] and south != ids["patient"]
    kept = (await api.get(f"/fhir/Patient/{ids['patient']}")).json()
    assert kept["name"][0]["family"] == "Rivera" and kept["birthDate"] == "1970-01-01"
    assert kept["identifier"] == [
        {
            "type": {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                        "code": "PI",
                        "display": "Patient internal identifier",
                    }
                ]
            },
            "value": "T12345",
            "system": "urn:hl7v2:facility:NORTH%20LAB",
        }
    ]
    split = (await api.get(f"/fhir/Patient/{south}")).json()
    assert split["name"][0]["family"] == "Okafor" and split["gender"] == "male"
    assert split["identifier"][0]["system"] == "urn:hl7v2:facility:SOUTH%20LAB"
    first = (await api.get(f"/fhir/Observation/{ids['first']}")).json()
    second = (await api.get(f"/fhir/Observation/{ids['second']}")).json()
    assert first["subject"] == {"reference": f"Patient/{ids['patient']}"}
    assert second["subject"] == {"reference": f"Patient/{south}"}
    # The earlier Provenance is untouched; the repair's own names every version it wrote and what it revised.
    old = (await api.get(f"/fhir/Provenance/{ids['provenance']}")).json()
    assert old["meta"]["versionId"] == "1"
    repair = (await api.get(f"/fhir/{done.provenance}")).json()
    assert {t["reference"] for t in repair["target"]} == set(done.written)
    assert repair["entity"] == [
        {"role": "revision", "what": {"reference": f"Patient/{ids['patient']}/_history/2"}}
    ]
    assert repair["agent"][0]["who"]["display"] == "gateway identity repair"
    async with gateway.db.read() as conn:
        after = await identity_repair.audit(conn)
    assert [f.kinds for f in after] == [
        ["conflicting-demographics"]
    ]  # the history of version 2 stays history
    # New messages from both labs now land on their own Patients.
    await gateway.pipeline.submit(_oru("B-30", LAB_B, OKAFOR, "0.8"), _source())
    bundle = (await api.get("/fhir/Observation", params={"patient": south})).json()
    assert bundle["total"] == 2


def _source() -> Any:
    from gateway.service.hl7.pipeline import Source

    return Source("file", "test")


async def test_merge_joins_one_person_recorded_twice(gateway: Gateway, api: httpx.AsyncClient) -> None:
    one = await _create(api, {"resourceType": "Patient", "name": [{"family": "Rivera"}]})
    two = await _create(api, {"resourceType": "Patient", "name": [{"family": "Rivera"}]})
    observation = await _create(api, _observation(one["id"], 1.0))
    async with gateway.db.write() as conn:
        written = await identity_repair.merge(conn, gateway.fhir, one["id"], two["id"])
    assert len(written) == 3
    merged = (await api.get(f"/fhir/Patient/{one['id']}")).json()
    assert merged["active"] is False and merged["link"][0]["type"] == "replaced-by"
    moved = (await api.get(f"/fhir/Observation/{observation['id']}")).json()
    assert moved["subject"] == {"reference": f"Patient/{two['id']}"}
    provenance = (
        await api.get("/fhir/Provenance", params={"target": f"Observation/{observation['id']}"})
    ).json()
    assert provenance["entry"][0]["resource"]["reason"][0]["text"].startswith("identity merge")


@pytest.mark.slow
async def test_the_identity_commands_run_from_the_shell(
    gateway: Gateway, api: httpx.AsyncClient, backend: str
) -> None:
    if backend != "sqlite":
        return  # one real CLI run is enough: the service functions above cover both backends
    ids = await _old_behaviour(gateway, api)
    env = {**os.environ, "GATEWAY_DATABASE_URL": gateway.settings.database_url}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "gateway", "identity", *args],
            capture_output=True, text=True, env=env, cwd=PROJECT_ROOT, timeout=120, check=False,
        )  # fmt: skip

    audit = run("audit", "--json")
    assert audit.returncode == 0, audit.stderr
    (finding,) = orjson.loads(audit.stdout)["findings"]
    assert finding["patient"] == f"Patient/{ids['patient']}"
    table = run("audit")
    assert f"Patient/{ids['patient']}" in table.stdout and "Rivera" not in table.stdout  # ids, never names
    repaired = run("repair", ids["patient"], "--json")
    assert repaired.returncode == 0, repaired.stderr
    assert set(orjson.loads(repaired.stdout)["senders"]) == {"LIS|NORTH LAB", "LIS|SOUTH LAB"}
    missing = run("repair", str(uuid.uuid4()))
    assert missing.returncode == 1 and "no accepted HL7 v2 message" in missing.stderr
