"""Patient identity over HL7 v2, both backends: never the wrong patient.

Messages here disagree with each other on purpose: two senders with the same bare MRN, a lab whose
demographics are another person's, a PID whose only id is blank. Each test failed on the gateway before
identifiers always carried a system and demographics guarded the match.
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest_asyncio

from gateway.adapters.hl7v2.identity import stable_id
from gateway.service.gateway import Gateway
from gateway.service.hl7.pipeline import Result, Source
from tests.api.test_subscription_topics import events, subscribe
from tests.conftest import settings_for
from tests.hl7_messages import ack_code, msh

ER7 = {"Content-Type": "x-application/hl7-v2+er7"}
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
AUTH = "HOSP&2.16.840.1.113883.19.5&ISO"


def message(
    control_id: str,
    pid: str,
    *,
    event: str = "ORU^R01",
    facility: str = "NORTH LAB",
    application: str = "LIS",
    value: str = "1.2",
    placer: str | None = None,
) -> str:
    """A one-result ORU (or an ADT when `event` says so) with the PID as given."""
    segments = [msh(event, control_id, application=application, facility=facility), pid]
    if event.startswith("ADT"):
        segments.insert(1, "EVN|A08|20240301083000-0500")
        return "\r".join(segments) + "\r"
    order = placer or f"P-{control_id}"
    segments += [
        f"OBR|1|{order}^EHR|F-{order}^LAB|57021-8^CBC^LN|||20240301070000-0500||||||||||||||20240301083000-0500|||F",
        f"OBX|1|NM|751-8^Neutrophils^LN||{value}|10*3/uL^^UCUM|1.5-8.0|L|||F|||20240301080000-0500",
    ]
    return "\r".join(segments) + "\r"


def pid(
    ids: str, *, family: str = "Rivera", given: str = "Ana", born: str = "19700101", sex: str = "F"
) -> str:
    return f"PID|1||{ids}||{family}^{given}||{born}|{sex}"


async def send(api: httpx.AsyncClient, text: str) -> str:
    answer = await api.post("/hl7v2", content=text.encode(), headers=ER7)
    assert answer.status_code == 200, answer.text
    return answer.text


async def search(api: httpx.AsyncClient, path: str, **params: str) -> list[dict[str, Any]]:
    bundle = (await api.get(f"/fhir/{path}", params=params)).json()
    return [e["resource"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"]


async def log(api: httpx.AsyncClient, **params: str) -> list[dict[str, Any]]:
    return list((await api.get("/hl7v2/messages", params=params)).json()["messages"])


SiteGateway = Callable[[str], Awaitable[Gateway]]


@pytest_asyncio.fixture
async def with_site(gateway: Gateway, tmp_path: Path) -> AsyncIterator[SiteGateway]:
    """A second gateway on the same database whose mappings hold one extra site file."""
    started: list[Gateway] = []

    async def start(site_yaml: str) -> Gateway:
        mappings = tmp_path / f"mappings-{len(started)}"
        shutil.copytree(gateway.settings.mappings_dir, mappings)
        (mappings / "hl7v2" / "sites" / "test-site.yaml").write_text(site_yaml)
        other = await Gateway.start(settings_for(gateway.settings.database_url, mappings_dir=mappings))
        started.append(other)
        return other

    yield start
    for other in started:
        await other.close()


# -- identifiers -----------------------------------------------------------------------------------


async def test_two_senders_with_the_same_bare_mrn_are_two_patients(api: httpx.AsyncClient) -> None:
    north = message("N-1", pid("T12345", family="Rivera", given="Ana", born="19700101", sex="F"))
    south = message(
        "S-1", pid("T12345", family="Okafor", given="Ben", born="19551212", sex="M"), facility="SOUTH LAB"
    )
    assert ack_code(await send(api, north)) == "AA"
    assert ack_code(await send(api, south)) == "AA"
    patients = await search(api, "Patient", identifier="T12345")
    assert len(patients) == 2
    systems = {p["identifier"][0]["system"] for p in patients}
    assert systems == {"urn:hl7v2:facility:NORTH%20LAB", "urn:hl7v2:facility:SOUTH%20LAB"}
    for patient in patients:  # each lab's result under its own patient, demographics untouched
        (observation,) = await search(api, "Observation", patient=patient["id"])
        assert observation["subject"]["reference"] == f"Patient/{patient['id']}"
    by_family = {p["name"][0]["family"]: p for p in patients}
    assert by_family["Rivera"]["birthDate"] == "1970-01-01"
    assert by_family["Okafor"]["gender"] == "male"


async def test_an_adt_from_a_second_sender_does_not_overwrite_another_persons_patient(
    api: httpx.AsyncClient,
) -> None:
    await send(api, message("A-1", pid("T777"), event="ADT^A08", facility="HOSPITAL A"))
    other = pid("T777", family="Okafor", given="Ben", born="19551212", sex="M")
    assert ack_code(await send(api, message("B-1", other, event="ADT^A08", facility="HOSPITAL B"))) == "AA"
    patients = await search(api, "Patient", identifier="T777")
    assert sorted(p["name"][0]["family"] for p in patients) == ["Okafor", "Rivera"]


async def test_a_blank_pid3_with_no_other_id_gets_ae_on_pid3(api: httpx.AsyncClient) -> None:
    ack = await send(api, message("BL-1", pid(" ")))
    assert ack_code(ack) == "AE"
    err = next(line for line in ack.split("\r\n") if line.startswith("ERR"))
    assert "PID^1^3" in err and "101" in err
    assert await search(api, "Patient") == []
    assert await search(api, "Observation") == []
    (entry,) = await log(api, status="error")
    assert "no usable patient identifier" in entry["errors"][0]["text"]


async def test_a_site_may_quarantine_messages_without_a_patient_id(
    with_site: SiteGateway, api: httpx.AsyncClient
) -> None:
    site = await with_site(
        "site: quarantining-lab\nmatch: {sending_facility: QLAB}\nidentity: {unidentified: quarantine}\n"
    )
    result = await site.pipeline.submit(message("Q-1", pid(""), facility="QLAB"), Source("file"))
    assert result.code == "AA"
    err = next(line for line in result.ack.split("\r") if line.startswith("ERR"))
    assert "|W|" in err and "quarantine" in err  # a warning: held, not filed
    assert await search(api, "Patient") == [] and await search(api, "Observation") == []
    (held,) = await log(api, status="quarantined")
    assert held["resources"] == []
    # The same message again is a duplicate of the held one, not a second entry.
    again = await site.pipeline.submit(message("Q-1", pid(""), facility="QLAB"), Source("file"))
    assert again.duplicate and again.log_id == held["id"]


async def test_pid_2_3_4_19_and_20_become_typed_identifiers(api: httpx.AsyncClient) -> None:
    line = (
        f"PID|1|EXT-1^^^{AUTH}|MRN-1^^^{AUTH}^MR~ENC-9^^^CLINIC^PI|ALT-4|Rivera^Ana||19700101|F"
        "|||||||||||123-45-6789|D1234567^IL^20300101"
    )
    assert ack_code(await send(api, message("ID-1", line))) == "AA"
    (patient,) = await search(api, "Patient", identifier="MRN-1")
    found = {
        i["value"]: (i.get("system"), next(c["code"] for c in i["type"]["coding"] if c["system"] == V2_0203))
        for i in patient["identifier"]
    }
    assert found == {
        "MRN-1": ("urn:oid:2.16.840.1.113883.19.5", "MR"),
        "ENC-9": ("urn:hl7v2:authority:CLINIC", "PI"),
        "EXT-1": ("urn:oid:2.16.840.1.113883.19.5", "PT"),
        "ALT-4": ("urn:hl7v2:facility:NORTH%20LAB", "PI"),
        "123-45-6789": ("http://hl7.org/fhir/sid/us-ssn", "SS"),
        "D1234567": ("urn:oid:2.16.840.1.113883.4.3.17", "DL"),  # Illinois (FIPS 17)
    }
    licence = next(i for i in patient["identifier"] if i["value"] == "D1234567")
    assert licence["period"] == {"end": "2030-01-01"}
    assert patient["id"] == stable_id("Patient", "urn:oid:2.16.840.1.113883.19.5", "MRN-1")


async def test_a_message_whose_only_id_is_in_pid4_finds_its_patient(api: httpx.AsyncClient) -> None:
    await send(api, message("P4-1", "PID|1|||ALT-77^^^" + AUTH + "|Rivera^Ana||19700101|F"))
    await send(api, message("P4-2", pid(f"ALT-77^^^{AUTH}"), placer="P4-X"))
    (patient,) = await search(api, "Patient", identifier="ALT-77")
    assert len(await search(api, "Observation", patient=patient["id"])) == 2


async def test_matching_needs_the_system_a_bare_value_joins_nothing(api: httpx.AsyncClient) -> None:
    registered = await api.post(
        "/fhir/Patient",
        json={"resourceType": "Patient", "identifier": [{"value": "T12345"}], "name": [{"family": "Other"}]},
    )
    assert registered.status_code == 201
    assert ack_code(await send(api, message("BV-1", pid("T12345")))) == "AA"
    assert await search(api, "Observation", patient=registered.json()["id"]) == []
    assert len(await search(api, "Patient", identifier="T12345")) == 2


# -- the demographic guard ------------------------------------------------------------------------


async def test_a_lab_result_with_another_persons_demographics_changes_nothing_and_opens_one_review(
    api: httpx.AsyncClient,
) -> None:
    known = f"{'MRN-55'}^^^{AUTH}^MR"
    await send(api, message("G-0", pid(known), event="ADT^A08", facility="CITY HOSPITAL"))
    (before,) = await search(api, "Patient", identifier="MRN-55")
    conflict = pid(known, family="Okafor", given="Ben", born="19551212", sex="M")
    ack = await send(api, message("G-1", conflict))
    assert ack_code(ack) == "AE"
    err = next(line for line in ack.split("\r\n") if line.startswith("ERR"))
    assert "identity conflict" in err and "Okafor" not in err and "1955" not in err  # no PHI in the ACK
    (after,) = await search(api, "Patient", identifier="MRN-55")
    assert after["meta"]["versionId"] == before["meta"]["versionId"]
    assert await search(api, "Observation") == []  # nothing filed under the wrong person
    (task,) = await search(api, "Task", code="identity-review")
    assert task["for"] == {"reference": f"Patient/{before['id']}"}
    assert task["status"] == "requested"
    assert "name" in task["reasonCode"]["text"] and "birthDate" in task["reasonCode"]["text"]
    (entry,) = await log(api, status="error")
    assert entry["notes"][0]["kind"] == "identity-conflict"
    assert entry["notes"][0]["task"] == f"Task/{task['id']}"
    # The same person from the same lab again: the same Task, with the second message added.
    assert ack_code(await send(api, message("G-2", conflict, value="1.4"))) == "AE"
    (task,) = await search(api, "Task", code="identity-review")
    assert len(task["input"]) == 2


async def test_a_site_that_accepts_conflicts_files_under_the_patient_without_changing_it(
    with_site: SiteGateway, api: httpx.AsyncClient
) -> None:
    site = await with_site(
        "site: trusting-lab\nmatch: {sending_facility: TRUSTING LAB}\nidentity: {on_conflict: accept}\n"
    )
    known = f"MRN-56^^^{AUTH}^MR"
    await send(api, message("T-0", pid(known), event="ADT^A08", facility="CITY HOSPITAL"))
    conflict = pid(known, family="Okafor", given="Ben", born="19551212", sex="M")
    result = await site.pipeline.submit(message("T-1", conflict, facility="TRUSTING LAB"), Source("file"))
    assert result.code == "AA"
    assert "|W|" in next(line for line in result.ack.split("\r") if line.startswith("ERR"))
    (patient,) = await search(api, "Patient", identifier="MRN-56")
    assert patient["name"][0]["family"] == "Rivera" and patient["meta"]["versionId"] == "1"
    (observation,) = await search(api, "Observation", patient=patient["id"])
    assert observation["valueQuantity"]["value"] == 1.2
    assert len(await search(api, "Task", code="identity-review")) == 1


async def test_tolerated_differences_are_not_conflicts(api: httpx.AsyncClient) -> None:
    known = f"MRN-57^^^{AUTH}^MR"
    await send(api, message("TL-0", pid(known, family="Rivera-Lopez", given="Ana Maria")))
    # Another family name (married) with the same given name; a year-only birth date; sex unknown.
    thin = pid(known, family="Lopez", given="ANA", born="1970", sex="U")
    assert ack_code(await send(api, message("TL-1", thin))) == "AA"
    assert await search(api, "Task", code="identity-review") == []
    (patient,) = await search(api, "Patient", identifier="MRN-57")
    assert len(await search(api, "Observation", patient=patient["id"])) == 2


async def test_adt_may_correct_one_element_but_not_replace_the_person(api: httpx.AsyncClient) -> None:
    known = f"MRN-58^^^{AUTH}^MR"
    await send(api, message("C-0", pid(known), event="ADT^A08", facility="CITY HOSPITAL"))
    corrected = pid(known, born="19700110")  # a mistyped birth date, fixed by the hospital
    assert (
        ack_code(await send(api, message("C-1", corrected, event="ADT^A08", facility="CITY HOSPITAL")))
        == "AA"
    )
    (patient,) = await search(api, "Patient", identifier="MRN-58")
    assert patient["birthDate"] == "1970-01-10"
    someone_else = pid(known, family="Okafor", given="Ben", born="19551212", sex="M")
    ack = await send(api, message("C-2", someone_else, event="ADT^A08", facility="CITY HOSPITAL"))
    assert ack_code(ack) == "AE"
    (patient,) = await search(api, "Patient", identifier="MRN-58")
    assert patient["name"][0]["family"] == "Rivera"


async def test_identifiers_pointing_at_two_patients_are_a_conflict(api: httpx.AsyncClient) -> None:
    await send(api, message("TW-1", pid(f"MRN-60^^^{AUTH}^MR")))
    await send(api, message("TW-2", pid(f"MRN-61^^^{AUTH}^MR", family="Okafor", given="Ben", sex="M")))
    both = pid(f"MRN-60^^^{AUTH}^MR~MRN-61^^^{AUTH}^MR")
    ack = await send(api, message("TW-3", both))
    assert ack_code(ack) == "AE"
    (task,) = await search(api, "Task", code="identity-review")
    assert "identifier" in task["reasonCode"]["text"]


async def test_an_identity_conflict_fires_its_topic(gateway: Gateway, api: httpx.AsyncClient) -> None:
    sub_id = await subscribe(api, "patient-identity-conflict")
    known = f"MRN-59^^^{AUTH}^MR"
    first: Result = await gateway.pipeline.submit(message("E-0", pid(known)), Source("http"))
    assert first.code == "AA"
    conflict = pid(known, family="Okafor", given="Ben", born="19551212", sex="M")
    await gateway.pipeline.submit(message("E-1", conflict), Source("http"))
    await gateway.pipeline.submit(message("E-2", conflict, value="2.0"), Source("http"))
    fired = await events(api, sub_id)
    assert [e["focus"].split("/")[0] for e in fired] == ["Task", "Task"]  # opened, then a second message
    assert fired[0]["focus"] == fired[1]["focus"]
