"""HL7 v2 through POST /hl7v2 and the pipeline, both backends: resources, ACKs, idempotency, traceability."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import httpx
import orjson

from gateway.adapters.hl7v2.identity import stable_id
from gateway.service.gateway import Gateway
from gateway.service.hl7.pipeline import Source
from tests.conftest import CORPUS, ClientFactory, settings_for
from tests.hl7_messages import AUTHORITY, a40, ack_code, anc_oru, compound_rde, msh, obx, oru, pid, rde

ER7 = {"Content-Type": "x-application/hl7-v2+er7"}
PATIENT_SYSTEM = "urn:oid:2.16.840.1.113883.19.5"


async def send(api: httpx.AsyncClient, message: str) -> str:
    answer = await api.post("/hl7v2", content=message.encode(), headers=ER7)
    assert answer.status_code == 200, answer.text
    return answer.text


async def search(api: httpx.AsyncClient, path: str, **params: str) -> list[dict[str, Any]]:
    bundle = (await api.get(f"/fhir/{path}", params=params)).json()
    return [e["resource"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"]


async def log_entries(api: httpx.AsyncClient, **params: str) -> list[dict[str, Any]]:
    return list((await api.get("/hl7v2/messages", params=params)).json()["messages"])


async def test_oru_becomes_patient_report_and_observation_with_provenance(api: httpx.AsyncClient) -> None:
    ack = await send(api, anc_oru("C1", "MRN-1"))
    assert ack_code(ack) == "AA"
    assert "MSA|AA|C1" in ack
    (patient,) = await search(api, "Patient", identifier=f"{PATIENT_SYSTEM}|MRN-1")
    (observation,) = await search(api, "Observation", patient=patient["id"])
    assert observation["code"]["coding"][0]["code"] == "751-8"
    assert observation["valueQuantity"]["value"] == 1.2
    assert observation["interpretation"][0]["coding"][0]["code"] == "L"
    assert observation["referenceRange"][0]["low"]["value"] == 1.5
    (report,) = await search(api, "DiagnosticReport", patient=patient["id"])
    assert report["result"] == [{"reference": f"Observation/{observation['id']}"}]
    (provenance,) = await search(api, "Provenance", target=f"Observation/{observation['id']}")
    targets = {t["reference"].split("/_history")[0] for t in provenance["target"]}
    assert {
        f"Patient/{patient['id']}",
        f"Observation/{observation['id']}",
        f"DiagnosticReport/{report['id']}",
    } <= targets
    (entry,) = await log_entries(api)
    assert entry["status"] == "accepted" and entry["controlId"] == "C1"
    assert provenance["entity"][0]["what"]["identifier"]["value"] == entry["id"]
    assert "OBR#4" not in entry["unusedSegments"] and "OBX#5" not in entry["unusedSegments"]


async def test_an_unchanged_resend_with_a_new_control_id_makes_no_new_versions(
    api: httpx.AsyncClient,
) -> None:
    await send(api, anc_oru("R-1", "MRN-3"))
    await send(api, anc_oru("R-2", "MRN-3"))
    (observation,) = await search(api, "Observation", code="751-8")
    assert observation["meta"]["versionId"] == "1"
    assert len(await log_entries(api)) == 2


async def test_a_corrected_result_updates_the_same_observation(api: httpx.AsyncClient) -> None:
    await send(api, anc_oru("F-1", "MRN-4", value="1.2", status="F"))
    await send(api, anc_oru("F-2", "MRN-4", value="1.4", status="C"))
    (observation,) = await search(api, "Observation", code="751-8")
    assert observation["status"] == "corrected"
    assert observation["valueQuantity"]["value"] == 1.4
    assert observation["meta"]["versionId"] == "2"
    history = (await api.get(f"/fhir/Observation/{observation['id']}/_history")).json()
    assert [e["resource"]["valueQuantity"]["value"] for e in history["entry"]] == [1.4, 1.2]


async def test_the_same_mrn_and_authority_from_two_senders_is_one_patient(api: httpx.AsyncClient) -> None:
    await send(api, anc_oru("S-1", "MRN-5", facility="CITY LAB"))
    await send(api, rde("S-2", "MRN-5"))
    patients = await search(api, "Patient", identifier="MRN-5")
    assert len(patients) == 1
    assert patients[0]["id"] == stable_id("Patient", PATIENT_SYSTEM, "MRN-5")
    (order,) = await search(api, "MedicationRequest", patient=patients[0]["id"])
    assert order["status"] == "active" and order["intent"] == "filler-order"
    assert order["dispenseRequest"]["numberOfRepeatsAllowed"] == 2
    assert order["dosageInstruction"][0]["text"] == "Take one tablet by mouth twice daily"


UCUM = "http://unitsofmeasure.org"


async def test_an_rde_with_tq1_times_dose_route_and_components_is_stored(api: httpx.AsyncClient) -> None:
    """TQ1 TID at three times, a dose in mg, a route without a coding system and two RXC components."""
    ack = await send(api, compound_rde("CX-1", "MRN-20"))
    assert ack_code(ack) == "AA", ack
    # found through its Medication (a chained search): the order itself carries no code
    (order,) = await search(api, "MedicationRequest", **{"medication.code": "CMPD-101"})
    (dosage,) = order["dosageInstruction"]
    assert dosage["timing"] == {
        "code": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/v3-GTSAbbreviation",
                    "code": "TID",
                    "display": "three times a day",
                }
            ]
        },
        "repeat": {
            "frequency": 3,
            "period": 1,
            "periodUnit": "d",
            "timeOfDay": ["08:00:00", "14:00:00", "20:00:00"],
            "boundsPeriod": {"start": "2024-03-01T09:00:00-05:00"},
        },
    }
    assert dosage["doseAndRate"] == [
        {"doseQuantity": {"value": 50, "unit": "mg", "system": UCUM, "code": "mg"}}
    ]
    assert dosage["route"] == {
        "coding": [
            {"system": "http://terminology.hl7.org/CodeSystem/v2-0162", "code": "PO", "display": "Oral"}
        ]
    }
    assert dosage["text"] == "50 mg Oral TID at 08:00:00, 14:00:00, 20:00:00"
    assert order["priority"] == "routine"
    assert "medicationCodeableConcept" not in order
    medication = (await api.get(f"/fhir/{order['medicationReference']['reference']}")).json()
    assert medication["resourceType"] == "Medication"
    assert medication["id"] == stable_id("Medication", "EHR", "RX6001")
    assert medication["code"] == {
        "coding": [{"code": "CMPD-101", "display": "Compounded oral suspension 25 mg/mL"}]
    }
    assert medication["form"] == {"coding": [{"code": "SUSP", "display": "Suspension"}]}
    vehicle, clozapine = medication["ingredient"]
    assert vehicle == {
        "itemCodeableConcept": {"coding": [{"code": "ORAPLUS", "display": "oral suspending vehicle"}]},
        "isActive": False,
        "strength": {
            "numerator": {"value": 100, "unit": "milliliter", "system": UCUM, "code": "mL"},
            "denominator": {"value": 1},
        },
    }
    assert clozapine == {
        "itemCodeableConcept": {
            "coding": [
                {
                    "system": "http://www.nlm.nih.gov/research/umls/rxnorm",
                    "code": "2626",
                    "display": "clozapine",
                }
            ]
        },
        "isActive": True,
        "strength": {
            "numerator": {"value": 2500, "unit": "milligram", "system": UCUM, "code": "mg"},
            "denominator": {"value": 100, "unit": "milliliter", "system": UCUM, "code": "mL"},
        },
    }
    (entry,) = await log_entries(api)
    assert entry["problems"] == [] and entry["unusedSegments"] == []
    assert f"Medication/{medication['id']}/_history/1" in entry["resources"]
    # The same order again (a new control id) changes neither the order nor its Medication.
    await send(api, compound_rde("CX-2", "MRN-20"))
    again = (await api.get(f"/fhir/Medication/{medication['id']}")).json()
    assert again["meta"]["versionId"] == "1"
    assert (await api.get(f"/fhir/MedicationRequest/{order['id']}")).json()["meta"]["versionId"] == "1"


async def test_a_status_only_message_keeps_one_medication_choice(api: httpx.AsyncClient) -> None:
    await send(api, compound_rde("SO-1", "MRN-30"))
    # The pharmacy reports a status change (SC: status only) and does not repeat the components.
    lines = compound_rde("SO-2", "MRN-30").split("\r")
    status_only = "\r".join(line for line in lines if not line.startswith("RXC")).replace(
        "ORC|NW|", "ORC|SC|"
    )
    assert ack_code(await send(api, status_only)) == "AA"
    (order,) = await search(api, "MedicationRequest", **{"medication.code": "CMPD-101"})
    assert [key for key in order if key.startswith("medication")] == ["medicationReference"]


async def test_order_control_codes_drive_medication_request_status(api: httpx.AsyncClient) -> None:
    await send(api, rde("O-1", "MRN-6", control="NW"))
    await send(api, rde("O-2", "MRN-6", control="HD"))
    (order,) = await search(api, "MedicationRequest", code="2555")
    assert order["status"] == "on-hold"
    await send(api, rde("O-3", "MRN-6", control="DC"))
    (order,) = await search(api, "MedicationRequest", code="2555")
    assert order["status"] == "stopped"
    assert order["meta"]["versionId"] == "3"


async def test_unsupported_message_types_are_rejected_with_a_reason(api: httpx.AsyncClient) -> None:
    vxu = (CORPUS / "hl7v2" / "FHIR-Converter" / "VXU-V04-01.hl7").read_text(encoding="utf-8")
    ack = await send(api, vxu)
    assert ack_code(ack) == "AR"
    assert "VXU\\S\\V04 is not supported" in ack  # "^" escaped, as ER7 requires
    assert "200" in next(line for line in ack.split("\r\n") if line.startswith("ERR"))
    (entry,) = await log_entries(api, status="rejected")
    assert entry["messageType"] == "VXU^V04"
    assert await search(api, "Patient") == []


async def test_input_that_is_not_hl7_gets_a_nak_and_is_logged(api: httpx.AsyncClient) -> None:
    ack = await send(api, "this is not an HL7 message")
    assert ack_code(ack) == "AR"
    assert ack.startswith("MSH|")
    (entry,) = await log_entries(api, status="rejected")
    assert entry["errors"][0]["code"] == "100"


async def test_a_message_the_mappings_cannot_handle_gets_ae_and_stays_logged(api: httpx.AsyncClient) -> None:
    orphan = "\r".join([msh("ORU^R01", "E-1"), "OBR|1|X1^EHR||57021-8^CBC^LN", obx(1, "751-8", "1.0")]) + "\r"
    ack = await send(api, orphan)  # results without a PID: whose are they?
    assert ack_code(ack) == "AE"
    (entry,) = await log_entries(api, status="error")
    assert "PID" in entry["errors"][0]["text"]
    detail = (await api.get(f"/hl7v2/messages/{entry['id']}")).json()
    assert detail["raw"] == orphan  # nothing accepted is lost: the message is kept as received
    assert await search(api, "Observation") == []


async def test_unused_segments_and_unknown_z_segments_are_listed(api: httpx.AsyncClient) -> None:
    message = anc_oru("Z-1", "MRN-7", extra=["PV1|1|O", "ZXY|1|site specific"])
    assert ack_code(await send(api, message)) == "AA"
    (entry,) = await log_entries(api)
    assert {"PV1#3", "ZXY#4"} <= set(entry["unusedSegments"])


async def test_a_site_override_changes_the_code_without_code_changes(api: httpx.AsyncClient) -> None:
    local = oru(
        "X-1",
        "MRN-8",
        [obx(1, "GLU-S", "182", units="mg/dL", range_="70-99", flag="HIGH", system="L")],
        facility="EXAMPLE LAB",
        extra=["ZPB|1|GOLD-PLAN-7"],
    )
    assert ack_code(await send(api, local)) == "AA"
    (observation,) = await search(api, "Observation", code="http://loinc.org|2345-7")
    assert observation["code"]["coding"][0] == {
        "system": "http://loinc.org",
        "code": "2345-7",
        "display": "Glucose [Mass/volume] in Serum or Plasma",
    }
    assert observation["code"]["coding"][1]["code"] == "GLU-S"  # the local code is kept
    assert observation["interpretation"][0]["coding"][0]["code"] == "H"  # the lab's own OBX-8 value
    (patient,) = await search(api, "Patient", identifier="MRN-8")
    assert patient["extension"][0]["valueString"] == "GOLD-PLAN-7"
    # The same message from another lab keeps its local code.
    await send(api, local.replace("EXAMPLE LAB", "OTHER LAB").replace("X-1", "X-2"))
    assert len(await search(api, "Observation", code="GLU-S")) == 1


async def test_a40_merge_links_patients_and_moves_references(api: httpx.AsyncClient) -> None:
    await send(api, anc_oru("M-1", "OLD-1"))
    await send(api, rde("M-2", "NEW-1"))
    ack = await send(api, a40("M-3", survivor_mrn="NEW-1", prior_mrn="OLD-1"))
    assert ack_code(ack) == "AA"
    old_id, new_id = (
        stable_id("Patient", PATIENT_SYSTEM, "OLD-1"),
        stable_id("Patient", PATIENT_SYSTEM, "NEW-1"),
    )
    old = (await api.get(f"/fhir/Patient/{old_id}")).json()
    assert old["active"] is False
    assert old["link"] == [{"other": {"reference": f"Patient/{new_id}"}, "type": "replaced-by"}]
    survivor = (await api.get(f"/fhir/Patient/{new_id}")).json()
    assert {"other": {"reference": f"Patient/{old_id}"}, "type": "replaces"} in survivor["link"]
    assert await search(api, "Observation", patient=old_id) == []
    assert len(await search(api, "Observation", patient=new_id)) == 1
    assert len(await search(api, "DiagnosticReport", patient=new_id)) == 1


async def test_hl7_over_http_needs_a_token_and_write_scopes(client_factory: ClientFactory) -> None:
    reader = await client_factory("system/Observation.rs")
    answer = await reader.post("/hl7v2", content=anc_oru("P-1", "MRN-9").encode(), headers=ER7)
    assert answer.status_code == 403
    del reader.headers["Authorization"]
    assert (await reader.post("/hl7v2", content=b"MSH|", headers=ER7)).status_code == 401


async def test_a_failed_message_is_reprocessed_after_its_mapping_is_fixed(
    gateway: Gateway, api: httpx.AsyncClient, tmp_path: Path
) -> None:
    broken = tmp_path / "mappings"
    shutil.copytree(gateway.settings.mappings_dir, broken)
    rules = broken / "hl7v2" / "resources" / "observation.yaml"
    rules.write_text(
        rules.read_text().replace(
            "code: {from: OBX-3, with: CodeableConcept}", "code: {from: OBX-4, with: CodeableConcept}"
        )
    )
    misconfigured = await Gateway.start(settings_for(gateway.settings.database_url, mappings_dir=broken))
    try:
        result = await misconfigured.pipeline.submit(anc_oru("RP-1", "MRN-10"), Source("file", "test"))
    finally:
        await misconfigured.close()
    assert result.code == "AE"
    assert any("code" in e for e in result.errors)
    reprocessed = (await api.post(f"/hl7v2/messages/{result.log_id}/$reprocess")).json()
    assert reprocessed["ackCode"] == "AA"
    assert reprocessed["id"] == result.log_id
    (entry,) = await log_entries(api)
    assert entry["status"] == "accepted" and entry["attempts"] == 2
    assert len(await search(api, "Observation", code="751-8")) == 1


async def test_patient_identifiers_of_an_orus_pid_are_added_not_replaced(api: httpx.AsyncClient) -> None:
    adt = (
        "\r".join(
            [
                msh("ADT^A08", "A-1", application="ADT", facility="CITY HOSPITAL"),
                "EVN|A08",
                pid("MRN-11", family="Rivera") + "|||123 Main St^^Springfield^IL^62701",
            ]
        )
        + "\r"
    )
    assert ack_code(await send(api, adt)) == "AA"
    thin = anc_oru("A-2", "MRN-11").replace(pid("MRN-11"), f"PID|1||MRN-11^^^{AUTHORITY}^MR||Rivera^A")
    assert ack_code(await send(api, thin)) == "AA"
    (patient,) = await search(api, "Patient", identifier="MRN-11")
    assert patient["address"][0]["city"] == "Springfield"  # the lab's thin PID did not erase it
    assert orjson.loads(orjson.dumps(patient["name"]))[0]["family"] == "Rivera"


async def test_results_join_a_patient_registered_over_the_fhir_api(api: httpx.AsyncClient) -> None:
    registered = (
        await api.post(
            "/fhir/Patient",
            json={"resourceType": "Patient", "identifier": [{"system": PATIENT_SYSTEM, "value": "MRN-12"}]},
        )
    ).json()
    assert ack_code(await send(api, anc_oru("J-1", "MRN-12"))) == "AA"
    assert len(await search(api, "Patient", identifier="MRN-12")) == 1  # no duplicate Patient
    (observation,) = await search(api, "Observation", patient=registered["id"])
    assert observation["code"]["coding"][0]["code"] == "751-8"


async def test_metrics_count_hl7_messages_by_ack_code(api: httpx.AsyncClient) -> None:
    before = (await api.get("/metrics")).text
    await send(api, anc_oru("MT-1", "MRN-13"))
    await send(api, "junk")
    after = (await api.get("/metrics")).text

    def count(text: str, ack: str) -> float:
        line = next(
            (
                row
                for row in text.splitlines()
                if row.startswith(f'gateway_hl7v2_messages_total{{ack="{ack}"}}')
            ),
            None,
        )
        return float(line.split()[-1]) if line else 0.0

    assert count(after, "AA") == count(before, "AA") + 1
    assert count(after, "AR") == count(before, "AR") + 1
    assert "MRN-13" not in after


async def test_a_message_and_the_alerts_it_raises_read_the_subscription_generation_once(
    gateway: Gateway,
) -> None:
    """The message's resources and its alert Tasks are written in one transaction: whether another process
    changed the subscriptions is asked once for it, not once per write."""
    from sqlalchemy import event, select

    from gateway.store.tables import resource

    reads: list[str] = []

    def statement(_conn: object, _cursor: object, sql: str, *_: object) -> None:
        if "FROM subscription_generation" in sql and sql.lstrip().upper().startswith("SELECT"):
            reads.append(sql)

    engine = gateway.db.writer.sync_engine
    event.listen(engine, "before_cursor_execute", statement)
    try:
        result = await gateway.pipeline.submit(anc_oru("GEN-ONCE-1", "GEN-ONCE-MRN"), Source("file"))
        assert result.code == "AA"
    finally:
        event.remove(engine, "before_cursor_execute", statement)
    async with gateway.db.read() as conn:
        tasks = (await conn.execute(select(resource.c.res_id).where(resource.c.res_type == "Task"))).all()
    assert tasks  # a low ANC: its alert Task was written in the same transaction
    assert len(reads) == 1
