"""One authorization decision for every criterion and result, both backends.

Each test failed on the gateway before: a token with only `system/Observation.rs` rebuilt Patients'
names and birth dates through chained searches and conditional references; another client read, replayed,
upgraded and bound a client's Subscription and saw its secrets; the HL7 v2 log needed only Patient.r and
any token could add rows to it.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from gateway.service.gateway import Gateway
from tests import factories as f
from tests.conftest import ClientFactory
from tests.hl7_messages import anc_oru

ER7 = {"Content-Type": "x-application/hl7-v2+er7"}
SECRET_URL = "https://specialty-gateway.org/fhir/StructureDefinition/subscription-secret"


async def _patient_with_result(api: httpx.AsyncClient) -> tuple[str, str]:
    patient = (await api.post("/fhir/Patient", json=f.patient(birthDate="1970-01-01"))).json()["id"]
    observation = (await api.post("/fhir/Observation", json=f.lab_observation(patient))).json()["id"]
    return patient, observation


# -- a type the token may not search is never a criterion ------------------------------------------

# Every route that runs criteria against Patients, for a token without Patient search.
PATIENT_CRITERIA = [
    ("GET", "/fhir/Observation?patient.birthdate=1970-01-01", None),
    ("GET", "/fhir/Observation?patient.family=Testperson", None),
    ("GET", "/fhir/Observation?subject:Patient.name=Alex", None),
    ("POST", "/fhir/Observation/_search", {"patient.birthdate": "1970-01-01"}),
    ("DELETE", "/fhir/Observation?patient.birthdate=1970-01-01", None),
]


@pytest.mark.parametrize(("method", "url", "form"), PATIENT_CRITERIA, ids=[u for _, u, _ in PATIENT_CRITERIA])
async def test_a_chained_criterion_needs_search_on_the_type_it_looks_into(
    api: httpx.AsyncClient, client_factory: ClientFactory, method: str, url: str, form: Any
) -> None:
    await _patient_with_result(api)
    reader = await client_factory("system/Observation.rds")
    answer = await reader.request(method, url, data=form)
    assert answer.status_code == 403, answer.text
    assert "Patient" in answer.json()["issue"][0]["diagnostics"]
    allowed = await client_factory("system/Observation.rs system/Patient.s")
    if method == "GET":
        assert (await allowed.get(url)).status_code == 200


async def test_conditional_references_and_operations_need_search_on_their_type(
    api: httpx.AsyncClient, client_factory: ClientFactory
) -> None:
    patient, _ = await _patient_with_result(api)
    writer = await client_factory("system/Observation.cruds")
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": {
                    **f.lab_observation(patient),
                    "subject": {"reference": "Patient?family=Testperson&birthdate=1970-01-01"},
                },
                "request": {"method": "POST", "url": "Observation"},
            }
        ],
    }
    answer = await writer.post("/fhir", json=bundle)
    assert answer.status_code == 403 and patient not in answer.text  # the id is never revealed
    # Conditional create and update with criteria that look into Patients.
    created = await writer.post(
        "/fhir/Observation",
        json=f.lab_observation(patient),
        headers={"If-None-Exist": "patient.birthdate=1970-01-01"},
    )
    assert created.status_code == 403
    updated = await writer.put("/fhir/Observation?patient.family=Testperson", json=f.lab_observation(patient))
    assert updated.status_code == 403


async def test_includes_leave_out_what_the_token_may_not_read(
    api: httpx.AsyncClient, client_factory: ClientFactory
) -> None:
    _, observation = await _patient_with_result(api)
    await api.post(
        "/fhir/Provenance",
        json={
            "resourceType": "Provenance",
            "target": [{"reference": f"Observation/{observation}"}],
            "recorded": "2024-03-01T00:00:00Z",
            "agent": [{"who": {"display": "test"}}],
        },
    )
    reader = await client_factory("system/Observation.rs")
    bundle = (
        await reader.get(
            "/fhir/Observation",
            params={"_include": "Observation:patient", "_revinclude": "Provenance:target"},
        )
    ).json()
    assert {e["resource"]["resourceType"] for e in bundle["entry"]} == {"Observation"}
    assert all(e["search"]["mode"] == "match" for e in bundle["entry"])


# -- Subscriptions belong to their creator ---------------------------------------------------------


async def _subscription(client: httpx.AsyncClient, content: str = "id-only") -> str:
    resource = f.subscription(
        "abnormal-lab-result",
        "http://127.0.0.1:9/unused",  # allow-listed in the tests; nobody listens
        content=content,
        headers=("Authorization: Bearer endpoint-credential",),
    )
    answer = await client.post("/fhir/Subscription", json=resource)
    assert answer.status_code == 201, answer.text
    return str(answer.json()["id"])


SUBSCRIPTION_ROUTES = [
    ("GET", "/fhir/Subscription/{id}"),
    ("GET", "/fhir/Subscription/{id}/_history"),
    ("GET", "/fhir/Subscription/{id}/_history/1"),
    ("GET", "/fhir/Subscription/{id}/$status"),
    ("GET", "/fhir/Subscription/{id}/$events"),
    ("GET", "/fhir/Subscription/{id}/$delivery-log"),
    ("GET", "/fhir/Subscription/{id}/$get-ws-binding-token"),
    ("DELETE", "/fhir/Subscription/{id}"),
]


async def test_another_clients_subscription_cannot_be_read_replayed_or_bound(
    gateway: Gateway, client_factory: ClientFactory
) -> None:
    owner = await client_factory("system/Subscription.cruds system/Observation.rs")
    other = await client_factory("system/Subscription.cruds system/*.rs")
    sub_id = await _subscription(owner)
    for method, template in SUBSCRIPTION_ROUTES:
        answer = await other.request(method, template.format(id=sub_id))
        assert answer.status_code == 404, (method, template, answer.text)
    listed = (await other.get("/fhir/Subscription")).json()
    assert listed["total"] == 0
    status = (await other.get("/fhir/Subscription/$status")).json()
    assert status["total"] == 0
    assert (await other.get("/fhir/Subscription/_history")).status_code == 403
    replaced = await other.put(
        f"/fhir/Subscription/{sub_id}",
        json={**f.subscription("abnormal-lab-result", "http://127.0.0.1:9/other"), "id": sub_id},
    )
    assert replaced.status_code == 404
    # The owner still has it, unchanged, and so does an administrator.
    assert (await owner.get(f"/fhir/Subscription/{sub_id}")).status_code == 200
    admin = await client_factory("system/Subscription.rs subscriptions/admin")
    assert (await admin.get(f"/fhir/Subscription/{sub_id}/$status")).status_code == 200
    assert (await admin.get("/fhir/Subscription")).json()["total"] == 1


async def test_secrets_are_write_only_and_survive_an_update_that_leaves_them_out(
    client_factory: ClientFactory,
) -> None:
    owner = await client_factory("system/Subscription.cruds system/Observation.rs")
    sub_id = await _subscription(owner)
    shown = (await owner.get(f"/fhir/Subscription/{sub_id}")).json()
    assert not any(e["url"] == SECRET_URL for e in shown.get("extension", []))
    assert shown["channel"]["header"] == ["Authorization: [hidden]"]
    searched = (await owner.get("/fhir/Subscription")).text
    assert "endpoint-credential" not in searched and f.SECRET not in searched
    # Read, change the reason, write back: the stored secret and header stay.
    changed = await owner.put(f"/fhir/Subscription/{sub_id}", json={**shown, "reason": "renamed"})
    assert changed.status_code == 200, changed.text
    assert "endpoint-credential" not in changed.text


async def test_an_administrator_replays_no_more_than_both_may_read(
    api: httpx.AsyncClient, client_factory: ClientFactory
) -> None:
    owner = await client_factory("system/Subscription.cruds system/Observation.rs system/Patient.rs")
    sub_id = await _subscription(owner, content="full-resource")
    patient, _ = await _patient_with_result(api)
    high = {**f.lab_observation(patient, value=30.0), "interpretation": [{"coding": [{"code": "H"}]}]}
    await api.post("/fhir/Observation", json=high)
    admin = await client_factory("system/Subscription.rs subscriptions/admin")
    replay = (await admin.get(f"/fhir/Subscription/{sub_id}/$events")).json()
    assert all("resource" not in e for e in replay["entry"][1:])  # the admin may not read Observations
    own = (await owner.get(f"/fhir/Subscription/{sub_id}/$events")).json()
    assert own["entry"][1]["resource"]["resourceType"] == "Observation"


# -- the HL7 v2 message log has its own scopes ------------------------------------------------------


async def test_the_hl7_log_needs_its_own_scope_and_masks_content_for_non_clinical_readers(
    api: httpx.AsyncClient, client_factory: ClientFactory
) -> None:
    answer = await api.post("/hl7v2", content=anc_oru("AZ-1", "MRN-AZ").encode(), headers=ER7)
    assert answer.status_code == 200
    patient_reader = await client_factory("system/Patient.rs")  # enough before: now it is not
    assert (await patient_reader.get("/hl7v2/messages")).status_code == 403
    analyst = await client_factory("hl7v2/messages.read")
    (entry,) = (await analyst.get("/hl7v2/messages")).json()["messages"]
    detail = (await analyst.get(f"/hl7v2/messages/{entry['id']}")).json()
    assert detail["rawMasked"] is True
    assert "MRN-AZ" not in detail["raw"] and "Testperson" not in detail["raw"]
    assert detail["raw"].startswith("MSH|")
    clinician = await client_factory("hl7v2/messages.read system/*.rs")
    assert "MRN-AZ" in (await clinician.get(f"/hl7v2/messages/{entry['id']}")).json()["raw"]
    # Reprocessing is its own right too.
    assert (await clinician.post(f"/hl7v2/messages/{entry['id']}/$reprocess")).status_code == 403


async def test_posting_hl7_needs_write_rights_before_anything_is_logged(
    api: httpx.AsyncClient, client_factory: ClientFactory
) -> None:
    reader = await client_factory("system/Observation.rs")
    for body in (b"junk that is no message", anc_oru("NW-1", "MRN-NW").encode()):
        assert (await reader.post("/hl7v2", content=body, headers=ER7)).status_code == 403
    assert (await api.get("/hl7v2/messages")).json()["total"] == 0


async def test_a_stored_message_is_never_replaced(api: httpx.AsyncClient) -> None:
    # A message that fails (no PID) is logged; the same message again with other line endings is the same
    # message (same content hash): its outcome is recorded again, its raw text stays as first received.
    failing = "\r".join(anc_oru("RR-1", "MRN-RR").split("\r")[:1] + anc_oru("RR-1", "MRN-RR").split("\r")[2:])
    await api.post("/hl7v2", content=failing.encode(), headers=ER7)
    await api.post("/hl7v2", content=failing.replace("\r", "\n").encode(), headers=ER7)
    (entry,) = (await api.get("/hl7v2/messages")).json()["messages"]
    assert entry["attempts"] == 2
    detail = (await api.get(f"/hl7v2/messages/{entry['id']}")).json()
    assert detail["raw"] == failing
