"""Builders for test resources that satisfy the gateway's profiles unless told otherwise."""

from __future__ import annotations

import uuid
from typing import Any

LOINC = "http://loinc.org"
OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
GATEWAY = "https://specialty-gateway.org/fhir"
MRN_SYSTEM = "urn:oid:2.16.840.1.113883.19.5"


def patient(mrn: str | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "identifier": [{"system": MRN_SYSTEM, "value": mrn or uuid.uuid4().hex[:10]}],
        "name": [{"family": "Testperson", "given": ["Alex"]}],
        "gender": "female",
        "birthDate": "1980-02-03",
        **extra,
    }


def lab_observation(
    patient_id: str,
    *,
    code: str = "718-7",
    value: float = 13.5,
    unit: str = "g/dL",
    effective: str = "2024-03-01T08:30:00Z",
    status: str = "final",
    **extra: Any,
) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": status,
        "category": [{"coding": [{"system": OBS_CATEGORY, "code": "laboratory"}]}],
        "code": {"coding": [{"system": LOINC, "code": code}]},
        "subject": {"reference": f"Patient/{patient_id}"},
        "effectiveDateTime": effective,
        "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit},
        **extra,
    }


def medication_request(
    patient_id: str, *, status: str = "active", rxnorm: str = "2555", **extra: Any
) -> dict[str, Any]:
    return {
        "resourceType": "MedicationRequest",
        "status": status,
        "intent": "order",
        "medicationCodeableConcept": {
            "coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": rxnorm}],
            "text": "clozapine 100 MG Oral Tablet",
        },
        "subject": {"reference": f"Patient/{patient_id}"},
        "authoredOn": "2024-02-01",
        **extra,
    }


def pa_task(
    patient_id: str,
    request_id: str,
    *,
    status: str = "requested",
    business_status: str = "submitted",
    **extra: Any,
) -> dict[str, Any]:
    return {
        "resourceType": "Task",
        "status": status,
        "intent": "order",
        "code": {"coding": [{"system": f"{GATEWAY}/CodeSystem/task-type", "code": "prior-authorization"}]},
        "businessStatus": {
            "coding": [{"system": f"{GATEWAY}/CodeSystem/pa-business-status", "code": business_status}]
        },
        "focus": {"reference": f"MedicationRequest/{request_id}"},
        "for": {"reference": f"Patient/{patient_id}"},
        "authoredOn": "2024-02-02T10:00:00Z",
        **extra,
    }


BACKPORT = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition"
SECRET = "test-secret-0123456789abcdef"


def topic_url(topic_id: str) -> str:
    return f"{GATEWAY}/SubscriptionTopic/{topic_id}"


def subscription(
    topic_id: str,
    endpoint: str | None,
    *,
    filters: tuple[str, ...] = (),
    content: str = "full-resource",
    channel: str = "rest-hook",
    status: str = "requested",
    heartbeat: int | None = None,
    max_count: int | None = None,
    headers: tuple[str, ...] = (),
    secret: str | None = SECRET,
) -> dict[str, Any]:
    channel_element: dict[str, Any] = {
        "type": channel,
        "payload": "application/fhir+json",
        "_payload": {"extension": [{"url": f"{BACKPORT}/backport-payload-content", "valueCode": content}]},
    }
    if endpoint is not None:
        channel_element["endpoint"] = endpoint
    extensions = []
    if heartbeat is not None:
        extensions.append({"url": f"{BACKPORT}/backport-heartbeat-period", "valueUnsignedInt": heartbeat})
    if max_count is not None:
        extensions.append({"url": f"{BACKPORT}/backport-max-count", "valuePositiveInt": max_count})
    if extensions:
        channel_element["extension"] = extensions
    if headers:
        channel_element["header"] = list(headers)
    resource: dict[str, Any] = {
        "resourceType": "Subscription",
        "meta": {"profile": [f"{BACKPORT}/backport-subscription"]},
        "status": status,
        "reason": "test",
        "criteria": topic_url(topic_id),
        "channel": channel_element,
    }
    if filters:
        resource["_criteria"] = {
            "extension": [{"url": f"{BACKPORT}/backport-filter-criteria", "valueString": f} for f in filters]
        }
    if secret is not None:
        resource["extension"] = [
            {"url": f"{GATEWAY}/StructureDefinition/subscription-secret", "valueString": secret}
        ]
    return resource


CARE_TEAM_CATEGORY = f"{GATEWAY}/CodeSystem/care-team-category"


def care_team(patient_id: str, member: str) -> dict[str, Any]:
    """An active pharmacist-assignment CareTeam: `member` (Practitioner/ID or PractitionerRole/ID) cares
    for the patient."""
    return {
        "resourceType": "CareTeam",
        "status": "active",
        "category": [
            {
                "coding": [
                    {"system": f"{GATEWAY}/CodeSystem/care-team-category", "code": "pharmacist-assignment"}
                ]
            }
        ],
        "subject": {"reference": f"Patient/{patient_id}"},
        "participant": [{"member": {"reference": member}}],
    }
