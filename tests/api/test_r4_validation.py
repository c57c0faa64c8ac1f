"""Base R4 validation on every write: required bindings, invariants, ele-1, uri format, contained resources.

Each bad resource must get 422 with every one of its problems listed (each with its FHIRPath expression)
and leave nothing stored; good resources of every served type must still be accepted.
"""

from __future__ import annotations

import copy
from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy import select

from gateway.fhir.searchparams import RESOURCE_TYPES
from gateway.service.gateway import Gateway
from gateway.service.hl7.pipeline import Source
from gateway.store.tables import resource as resource_table
from gateway.store.tables import resource_version
from tests import factories as f
from tests.conftest import CORPUS

DIV = '<div xmlns="http://www.w3.org/1999/xhtml">Summary</div>'
EXT = "http://example.org/fhir/StructureDefinition/note"


def patient(**extra: Any) -> dict[str, Any]:
    return {"resourceType": "Patient", "name": [{"family": "Doe", "given": ["Ann"]}], **extra}


def observation(**extra: Any) -> dict[str, Any]:
    return {"resourceType": "Observation", "status": "final", "code": {"text": "Weight"}, **extra}


def org(org_id: str = "o1", **extra: Any) -> dict[str, Any]:
    return {"resourceType": "Organization", "id": org_id, "name": "Clinic", **extra}


def claim(**extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Claim",
        "status": "active",
        "type": {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/claim-type", "code": "pharmacy"}]
        },
        "use": "preauthorization",
        "patient": {"reference": "Patient/p1"},
        "created": "2024-03-01",
        "provider": {"reference": "Organization/o1"},
        "priority": {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/processpriority", "code": "normal"}]
        },
        "insurance": [{"sequence": 1, "focal": True, "coverage": {"reference": "Coverage/c1"}}],
        **extra,
    }


def coverage(**extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Coverage",
        "status": "active",
        "beneficiary": {"reference": "Patient/p1"},
        "payor": [{"reference": "Organization/o1"}],
        **extra,
    }


def dispense(**extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "MedicationDispense",
        "status": "completed",
        "medicationCodeableConcept": {"text": "clozapine 100 MG Oral Tablet"},
        **extra,
    }


def task(**extra: Any) -> dict[str, Any]:
    return {"resourceType": "Task", "status": "draft", "intent": "order", **extra}


def medication_request(**extra: Any) -> dict[str, Any]:
    return f.medication_request("p1", **extra)


def service_request(**extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "ServiceRequest",
        "status": "active",
        "intent": "order",
        "subject": {"reference": "Patient/p1"},
        **extra,
    }


def claim_response(**extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "ClaimResponse",
        "status": "active",
        "type": {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/claim-type", "code": "pharmacy"}]
        },
        "use": "preauthorization",
        "patient": {"reference": "Patient/p1"},
        "created": "2024-03-02T10:00:00Z",
        "insurer": {"reference": "Organization/o1"},
        "outcome": "complete",
        **extra,
    }


def provenance(**extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Provenance",
        "target": [{"reference": "Patient/p1"}],
        "recorded": "2024-03-01T10:00:00Z",
        "agent": [{"who": {"reference": "Organization/o1"}}],
        **extra,
    }


def bad_quantity(**quantity: Any) -> dict[str, Any]:
    return observation(valueQuantity={"value": 1.5, **quantity})


# (case id, resource, the expressions of every error it must be refused with)
BAD: list[tuple[str, dict[str, Any], set[str]]] = [
    # -- what was seen: codes outside their required bindings
    ("gender-robot", patient(gender="robot"), {"Patient.gender"}),
    ("task-status", task(status="whatever"), {"Task.status"}),
    ("coverage-status", coverage(status="current"), {"Coverage.status"}),
    ("claim-use", claim(use="sometimes"), {"Claim.use"}),
    ("observation-status", observation(status="done"), {"Observation.status"}),
    ("dispense-status", dispense(status="handed-over"), {"MedicationDispense.status"}),
    (
        "care-plan-activity-status",
        {
            "resourceType": "CarePlan",
            "status": "active",
            "intent": "plan",
            "subject": {"reference": "Patient/p1"},
            "activity": [{"detail": {"status": "overdue"}}],
        },
        {"CarePlan.activity[0].detail.status"},
    ),
    ("telecom-system", patient(telecom=[{"system": "pigeon", "value": "x"}]), {"Patient.telecom[0].system"}),
    ("name-use", patient(name=[{"use": "nick", "family": "Doe"}]), {"Patient.name[0].use"}),
    ("quantity-comparator", bad_quantity(comparator="~"), {"Observation.valueQuantity.comparator"}),
    (
        "narrative-status",
        patient(text={"status": "draft", "div": DIV}),
        {"Patient.text.status"},
    ),
    # -- what was seen: invariants, empty and null values, uris with spaces, unknown contained types
    (
        "ext-1-both",
        patient(
            extension=[{"url": EXT, "valueString": "a", "extension": [{"url": "part", "valueString": "b"}]}]
        ),
        {"Patient.extension[0]"},
    ),
    ("ext-1-neither", patient(extension=[{"url": EXT}]), {"Patient.extension[0]"}),
    (
        "dom-2",
        patient(
            managingOrganization={"reference": "#o1"},
            contained=[org(contained=[org("o2")])],
        ),
        {"Patient.contained[0].contained"},
    ),
    (
        "dom-4",
        patient(managingOrganization={"reference": "#o1"}, contained=[org(meta={"versionId": "3"})]),
        {"Patient.contained[0].meta.versionId"},
    ),
    (
        "dom-4-last-updated",
        patient(
            managingOrganization={"reference": "#o1"},
            contained=[org(meta={"lastUpdated": "2024-03-01T10:00:00Z"})],
        ),
        {"Patient.contained[0].meta.lastUpdated"},
    ),
    ("pat-1", patient(contact=[{"relationship": [{"text": "friend"}]}]), {"Patient.contact[0]"}),
    ("coverage-payor-empty", coverage(payor=[]), {"Coverage.payor"}),
    ("name-empty-object", patient(name=[{}]), {"Patient.name[0]"}),
    ("gender-null", patient(gender=None), {"Patient.gender"}),
    (
        "uri-with-space",
        patient(identifier=[{"system": "http://example.org/my ids", "value": "1"}]),
        {"Patient.identifier[0].system"},
    ),
    (
        "contained-unknown-type",
        patient(
            managingOrganization={"reference": "#s1"}, contained=[{"resourceType": "Spaceship", "id": "s1"}]
        ),
        {"Patient.contained[0]"},
    ),
    (
        # found by fuzzing: a 500 (the validator's cache of shapes took the list for a type)
        "contained-type-not-a-string",
        patient(
            managingOrganization={"reference": "#o1"}, contained=[org() | {"resourceType": ["Organization"]}]
        ),
        {"Patient.contained[0]"},
    ),
    (
        # found by fuzzing: a 500 (the list was taken for a type, as above)
        "resource-type-list-in-a-datatype",
        patient(name=[{"family": "Doe", "resourceType": ["HumanName"]}]),
        {"Patient.name[0].resourceType"},
    ),
    (
        "contained-r4b-only-type",
        patient(
            contained=[
                {"resourceType": "SubscriptionTopic", "id": "t1", "url": "http://x", "status": "active"}
            ]
        ),
        {"Patient.contained[0]"},
    ),
    (
        "several-problems",
        patient(active="yes", gender="robot", shoeSize=42, telecom=[{"value": "555"}]),
        {"Patient.active", "Patient.gender", "Patient.shoeSize", "Patient.telecom[0]"},
    ),
    # -- every kind of required binding on a code element, in resources and in datatypes
    ("identifier-use", patient(identifier=[{"use": "main", "value": "1"}]), {"Patient.identifier[0].use"}),
    ("address-use", patient(address=[{"use": "holiday", "city": "X"}]), {"Patient.address[0].use"}),
    ("address-type", patient(address=[{"type": "boat", "city": "X"}]), {"Patient.address[0].type"}),
    (
        "contact-point-use",
        patient(telecom=[{"system": "phone", "use": "car", "value": "1"}]),
        {"Patient.telecom[0].use"},
    ),
    (
        "contact-gender",
        patient(contact=[{"name": {"family": "Roe"}, "gender": "m"}]),
        {"Patient.contact[0].gender"},
    ),
    (
        "link-type",
        patient(link=[{"other": {"reference": "Patient/p2"}, "type": "same"}]),
        {"Patient.link[0].type"},
    ),
    ("practitioner-gender", {"resourceType": "Practitioner", "gender": "F"}, {"Practitioner.gender"}),
    ("service-request-intent", service_request(intent="wish"), {"ServiceRequest.intent"}),
    ("service-request-priority", service_request(priority="whenever"), {"ServiceRequest.priority"}),
    ("specimen-status", {"resourceType": "Specimen", "status": "lost"}, {"Specimen.status"}),
    (
        "report-status",
        {"resourceType": "DiagnosticReport", "status": "done", "code": {"text": "CBC"}},
        {"DiagnosticReport.status"},
    ),
    ("medication-status", {"resourceType": "Medication", "status": "on-shelf"}, {"Medication.status"}),
    ("medication-request-intent", medication_request(intent="wish"), {"MedicationRequest.intent"}),
    (
        "timing-period-unit",
        medication_request(
            dosageInstruction=[{"timing": {"repeat": {"frequency": 1, "period": 1, "periodUnit": "day"}}}]
        ),
        {"MedicationRequest.dosageInstruction[0].timing.repeat.periodUnit"},
    ),
    (
        "subscription-status",
        {**f.subscription("abnormal-lab-result", "http://127.0.0.1:9/hook"), "status": "paused"},
        {"Subscription.status"},
    ),
    ("claim-response-outcome", claim_response(outcome="approved"), {"ClaimResponse.outcome"}),
    (
        "provenance-entity-role",
        provenance(entity=[{"role": "copy", "what": {"reference": "Patient/p1"}}]),
        {"Provenance.entity[0].role"},
    ),
    (
        "days-of-week",
        {"resourceType": "PractitionerRole", "availableTime": [{"daysOfWeek": ["mon", "funday"]}]},
        {"PractitionerRole.availableTime[0].daysOfWeek[1]"},
    ),
    ("money-currency", claim(total={"value": 10, "currency": "dollars"}), {"Claim.total.currency"}),
    (
        "attachment-content-type",
        patient(photo=[{"contentType": "a picture", "url": "http://example.org/p.png"}]),
        {"Patient.photo[0].contentType"},
    ),
    # -- invariants of the base resources and datatypes
    (
        "dom-3",
        patient(contained=[org()]),
        {"Patient.contained[0]"},
    ),
    (
        "dom-5",
        patient(
            managingOrganization={"reference": "#o1"},
            contained=[
                org(
                    meta={
                        "security": [
                            {
                                "system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality",
                                "code": "R",
                            }
                        ]
                    }
                )
            ],
        ),
        {"Patient.contained[0].meta.security"},
    ),
    ("ref-1", patient(managingOrganization={"reference": "#nowhere"}), {"Patient.managingOrganization"}),
    (
        "per-1",
        patient(name=[{"family": "Doe", "period": {"start": "2024-03-05", "end": "2024-03-01T10:00:00Z"}}]),
        {"Patient.name[0].period"},
    ),
    ("obs-6", observation(valueString="12", dataAbsentReason={"text": "not done"}), {"Observation"}),
    (
        "obs-3",
        observation(referenceRange=[{"appliesTo": [{"text": "adults"}]}]),
        {"Observation.referenceRange[0]"},
    ),
    ("qty-3", bad_quantity(code="kg"), {"Observation.valueQuantity"}),
    (
        "sqty-1",
        observation(referenceRange=[{"low": {"value": 1, "comparator": "<"}}]),
        {"Observation.referenceRange[0].low"},
    ),
    ("cpt-2", patient(telecom=[{"value": "555-0100"}]), {"Patient.telecom[0]"}),
    ("org-1", {"resourceType": "Organization", "active": True}, {"Organization"}),
    ("org-3", org(telecom=[{"system": "phone", "value": "1", "use": "home"}]), {"Organization.telecom[0]"}),
    (
        "mdd-1",
        dispense(whenPrepared="2024-03-02T10:00:00Z", whenHandedOver="2024-03-02T09:00:00Z"),
        {"MedicationDispense"},
    ),
    (
        "inv-1",
        task(authoredOn="2024-03-02T10:00:00+01:00", lastModified="2024-03-02T08:59:00Z"),
        {"Task"},
    ),
    (
        "cpl-3",
        {
            "resourceType": "CarePlan",
            "status": "active",
            "intent": "plan",
            "subject": {"reference": "Patient/p1"},
            "activity": [
                {"reference": {"reference": "ServiceRequest/s1"}, "detail": {"status": "scheduled"}}
            ],
        },
        {"CarePlan.activity[0]"},
    ),
    # -- ele-1 everywhere
    ("null-in-list", patient(name=[{"family": "Doe", "given": ["Ann", None]}]), {"Patient.name[0].given[1]"}),
    ("empty-object", patient(maritalStatus={}), {"Patient.maritalStatus"}),
    ("empty-array-nested", patient(name=[{"family": "Doe", "given": []}]), {"Patient.name[0].given"}),
    (
        "empty-extension-value",
        patient(extension=[{"url": EXT, "valueCodeableConcept": {}}]),
        {"Patient.extension[0].valueCodeableConcept"},
    ),
]


def _error_expressions(body: dict[str, Any]) -> list[str]:
    return [e for i in body["issue"] if i["severity"] in ("error", "fatal") for e in i.get("expression", [])]


async def _count(api: httpx.AsyncClient, rtype: str) -> int:
    return int((await api.get(f"/fhir/{rtype}", params={"_summary": "count"})).json()["total"])


@pytest.mark.parametrize(("resource", "expected"), [(r, e) for _, r, e in BAD], ids=[c for c, _, _ in BAD])
async def test_invalid_resources_are_422_with_every_problem(
    api: httpx.AsyncClient, resource: dict[str, Any], expected: set[str]
) -> None:
    rtype = resource["resourceType"]
    answer = await api.post(f"/fhir/{rtype}", json=resource)
    assert answer.status_code == 422, answer.text[:1000]
    body = answer.json()
    assert body["resourceType"] == "OperationOutcome"
    errors = [i for i in body["issue"] if i["severity"] == "error"]
    assert errors and all(i.get("expression") and i["diagnostics"] for i in errors), body
    assert set(_error_expressions(body)) == expected, body
    assert await _count(api, rtype) == 0


@pytest.mark.parametrize(
    ("resource", "expected"),
    [(r, e) for c, r, e in BAD if c in ("gender-robot", "dom-2", "several-problems", "pat-1")],
    ids=["gender-robot", "dom-2", "several-problems", "pat-1"],
)
async def test_an_update_is_checked_the_same_and_changes_nothing(
    api: httpx.AsyncClient, resource: dict[str, Any], expected: set[str]
) -> None:
    created = await api.post("/fhir/Patient", json=patient(gender="female"))
    assert created.status_code == 201, created.text
    pid = created.json()["id"]
    answer = await api.put(f"/fhir/Patient/{pid}", json={**resource, "id": pid})
    assert answer.status_code == 422, answer.text[:1000]
    assert set(_error_expressions(answer.json())) == expected
    stored = (await api.get(f"/fhir/Patient/{pid}")).json()
    assert stored["meta"]["versionId"] == "1" and stored["gender"] == "female"


@pytest.mark.parametrize("kind", ["transaction", "batch"])
async def test_bundle_entries_are_checked_with_their_entry_expression(
    api: httpx.AsyncClient, kind: str
) -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": kind,
        "entry": [
            {"resource": patient(gender="female"), "request": {"method": "POST", "url": "Patient"}},
            {
                "resource": patient(gender="robot", contact=[{}]),
                "request": {"method": "POST", "url": "Patient"},
            },
        ],
    }
    answer = await api.post("/fhir", json=bundle)
    if kind == "transaction":
        assert answer.status_code == 422, answer.text[:1000]
        assert set(_error_expressions(answer.json())) == {
            "Bundle.entry[1].resource.gender",
            "Bundle.entry[1].resource.contact[0]",
        }
        assert await _count(api, "Patient") == 0
    else:
        assert answer.status_code == 200, answer.text[:1000]
        second = answer.json()["entry"][1]["response"]
        assert second["status"].startswith("422")
        assert set(_error_expressions(second["outcome"])) == {
            "Bundle.entry[1].resource.gender",
            "Bundle.entry[1].resource.contact[0]",
        }
        assert await _count(api, "Patient") == 1


# One valid resource of every served type, using the rules above the right way round.
GOOD: dict[str, dict[str, Any]] = {
    "Patient": patient(
        text={"status": "generated", "div": DIV},
        gender="other",
        identifier=[{"use": "usual", "system": "urn:oid:2.16.840.1.113883.19.5", "value": "12345"}],
        name=[
            {
                "use": "official",
                "family": "Doe",
                "given": ["Ann", "Marie"],
                "_given": [None, {"extension": [{"url": EXT, "valueString": "second name"}]}],
                "period": {"start": "2020-01-01", "end": "2020-01-01T10:00:00Z"},
            }
        ],
        telecom=[{"system": "phone", "value": "555-0100", "use": "mobile"}],
        address=[{"use": "home", "type": "physical", "city": "Springfield"}],
        contact=[{"name": {"family": "Roe"}, "gender": "male"}],
        managingOrganization={"reference": "#o1"},
        contained=[org(meta={"tag": [{"code": "local"}]})],
        extension=[{"url": EXT, "extension": [{"url": "part", "valueString": "a"}]}],
        photo=[{"contentType": "image/png; charset=binary", "url": "http://example.org/p.png"}],
    ),
    "Observation": observation(
        category=[{"coding": [{"system": f.OBS_CATEGORY, "code": "vital-signs"}]}],
        valueQuantity={
            "value": 70.5,
            "comparator": ">=",
            "unit": "kg",
            "system": "http://unitsofmeasure.org",
            "code": "kg",
        },
        referenceRange=[{"low": {"value": 50, "unit": "kg"}, "text": "adult"}],
        effectivePeriod={"start": "2024-03-01T08:00:00-05:00", "end": "2024-03-01T13:30:00Z"},
    ),
    "DiagnosticReport": {"resourceType": "DiagnosticReport", "status": "final", "code": {"text": "CBC"}},
    "ServiceRequest": service_request(
        priority="urgent", code={"text": "CBC"}, orderDetail=[{"text": "fasting"}]
    ),
    "Specimen": {"resourceType": "Specimen", "status": "available", "type": {"text": "blood"}},
    "MedicationRequest": medication_request(
        medicationReference={"reference": "#m1"},
        medicationCodeableConcept=None,
        contained=[
            {"resourceType": "Medication", "id": "m1", "status": "active", "code": {"text": "clozapine"}}
        ],
        dosageInstruction=[{"timing": {"repeat": {"frequency": 1, "period": 1, "periodUnit": "d"}}}],
    ),
    "MedicationDispense": dispense(
        whenPrepared="2024-03-02T10:00:00+02:00", whenHandedOver="2024-03-02T08:30:00Z"
    ),
    "Task": task(
        priority="routine",
        authoredOn="2024-03-02T10:00:00+01:00",
        lastModified="2024-03-02T09:30:00Z",
        executionPeriod={"start": "2024-03-02"},
    ),
    "Coverage": coverage(period={"start": "2024-01-01", "end": "2024-12-31"}),
    "Claim": claim(total={"value": 10.5, "currency": "USD"}),
    "ClaimResponse": claim_response(),
    "Provenance": provenance(entity=[{"role": "source", "what": {"reference": "Patient/p1"}}]),
    "Organization": {
        "resourceType": "Organization",
        "identifier": [{"system": "http://hl7.org/fhir/sid/us-npi", "value": "1234567893"}],
        "telecom": [{"system": "phone", "value": "1", "use": "work"}],
    },
    "Practitioner": {"resourceType": "Practitioner", "name": [{"family": "Smith"}], "gender": "unknown"},
    "PractitionerRole": {
        "resourceType": "PractitionerRole",
        "availableTime": [{"daysOfWeek": ["mon", "fri"]}],
    },
    "Group": {
        "resourceType": "Group",
        "type": "person",
        "actual": True,
        "member": [{"entity": {"reference": "Patient/p1"}, "period": {"start": "2024-01-01"}}],
    },
    "Medication": {"resourceType": "Medication", "status": "active", "code": {"text": "clozapine"}},
    "Communication": {
        "resourceType": "Communication",
        "status": "completed",
        "subject": {"reference": "Patient/p1"},
        "sent": "2026-01-01T10:00:00Z",
        "payload": [{"contentString": "called the patient"}],
    },
    "CarePlan": {
        "resourceType": "CarePlan",
        "status": "active",
        "intent": "plan",
        "subject": {"reference": "Patient/p1"},
        "activity": [
            {
                "detail": {
                    "kind": "ServiceRequest",
                    "code": {"coding": [{"system": "http://loinc.org", "code": "751-8"}]},
                    "status": "scheduled",
                    "scheduledPeriod": {"start": "2026-03-01", "end": "2026-03-04"},
                }
            }
        ],
    },
    "CareTeam": {
        "resourceType": "CareTeam",
        "status": "active",
        "subject": {"reference": "Patient/p1"},
        "participant": [{"member": {"reference": "PractitionerRole/r1"}, "period": {"start": "2026-01-01"}}],
    },
    "Subscription": f.subscription("abnormal-lab-result", "http://127.0.0.1:9/hook"),
}


def test_there_is_a_good_example_of_every_served_type() -> None:
    assert sorted(GOOD) == sorted(RESOURCE_TYPES)


@pytest.mark.parametrize("rtype", sorted(GOOD))
async def test_valid_resources_of_every_served_type_are_accepted(api: httpx.AsyncClient, rtype: str) -> None:
    resource = {k: v for k, v in copy.deepcopy(GOOD[rtype]).items() if v is not None}
    answer = await api.post(f"/fhir/{rtype}", json=resource, headers={"Prefer": "return=OperationOutcome"})
    assert answer.status_code == 201, answer.text[:1000]
    assert not _error_expressions(answer.json())
    assert await _count(api, rtype) == 1


@pytest.mark.slow
async def test_everything_the_hl7_corpus_stores_is_valid_r4(gateway: Gateway) -> None:
    """What the pipeline writes (translated resources, Provenance, identity-review Tasks) passes the same
    validation as a client's write."""
    paths = sorted((CORPUS / "hl7v2").glob("*/*.hl7"))
    assert len(paths) >= 40
    for path in paths:
        await gateway.pipeline.submit(path.read_text(encoding="utf-8"), Source("file", path.name))
    async with gateway.db.read() as conn:
        rows = await conn.execute(
            select(resource_version.c.content)
            .join(resource_table, resource_version.c.rid == resource_table.c.rid)
            .where(resource_version.c.content.is_not(None))
        )
        stored = [orjson.loads(row.content) for row in rows]
    assert len(stored) >= 200 and {r["resourceType"] for r in stored} >= {"Provenance", "Observation"}
    errors = [
        (r["resourceType"], e, i.diagnostics)
        for r in stored
        for i in gateway.fhir.validator.validate(r)
        if i.is_error
        for e in i.expression
    ]
    assert errors == []
