"""Coverage rules at work, both backends: an HL7 v2 order whose payer requires PA opens one PA Task with the
lab linked (a re-send opens none), auto_submit submits once, and CDS Hooks order-sign answers with cards."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio

from gateway.pa.coverage import CoverageRules, load_coverage_rules
from gateway.pa.tasks import is_pa_task
from gateway.service.gateway import Gateway
from gateway.service.priorauth.coverage import pa_task_id
from tests import factories as f
from tests.api.conftest import standin_payers
from tests.api.test_hl7_pipeline import send
from tests.conftest import ClientFactory
from tests.hl7_messages import anc_oru, rde
from tests.payer_standin import PayerStandIn

BUSINESS = "https://specialty-gateway.org/fhir/CodeSystem/pa-business-status"
CDS_SCOPE = "system/Patient.rs system/Coverage.rs system/Observation.rs system/MedicationRequest.rs"
# The ORU's result is from 2024: a look-back of ten years keeps it on file whenever the tests run.
RULE = """
rules:
  - id: standin-clozapine
    payer: standin
    drug: {class: antipsychotic}
    pa_required: true
    labs: [{code: 751-8, within_days: 3650, display: ANC}]
    documents: [REMS enrollment]
    auto_submit: AUTO
"""


@pytest.fixture
def payer() -> Iterator[PayerStandIn]:
    with PayerStandIn() as standin:
        yield standin


def use_rules(gateway: Gateway, tmp_path: Path, auto_submit: bool) -> CoverageRules:
    (tmp_path / "rules.yaml").write_text(RULE.replace("AUTO", str(auto_submit).lower()), encoding="utf-8")
    previous = gateway.coverage.rules
    gateway.coverage.rules = load_coverage_rules(tmp_path)
    return previous


@pytest_asyncio.fixture
async def insured(
    gateway: Gateway, api: httpx.AsyncClient, payer: PayerStandIn
) -> AsyncIterator[dict[str, str]]:
    """An insurer configured as the `standin` payer, and a prescriber the HL7 orders name (ORC-12)."""
    insurer = await create(api, {"resourceType": "Organization", "name": "Stand-in Health Plan"})
    await create(
        api,
        {
            "resourceType": "Practitioner",
            # ORC-12's id with its type NPI and no assigning authority: the HL7 v2 mapping's system
            "identifier": [{"system": "urn:hl7v2:authority:NPI", "value": "1234567893"}],
            "name": [{"family": "Prescriber"}],
        },
    )
    previous = gateway.priorauth.payers
    gateway.priorauth.payers = standin_payers(payer, insurer, timeout_seconds=2.0)
    yield {"insurer": insurer}
    gateway.priorauth.payers = previous


async def create(api: httpx.AsyncClient, resource: dict[str, Any]) -> str:
    answer = await api.post(f"/fhir/{resource['resourceType']}", json=resource)
    assert answer.status_code == 201, answer.text
    return str(answer.json()["id"])


async def covered(api: httpx.AsyncClient, patient: str, insurer: str) -> str:
    return await create(
        api,
        {
            "resourceType": "Coverage",
            "status": "active",
            "beneficiary": {"reference": f"Patient/{patient}"},
            "payor": [{"reference": f"Organization/{insurer}"}],
        },
    )


async def pa_tasks(api: httpx.AsyncClient) -> list[dict[str, Any]]:
    bundle = (await api.get("/fhir/Task", params={"_count": "50"})).json()
    found = [e["resource"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"]
    return [t for t in found if is_pa_task(t)]  # not the unassigned-patient work item, say


async def hl7_patient_with_anc(api: httpx.AsyncClient, insurer: str) -> tuple[str, str]:
    await send(api, anc_oru("C-ANC", "MRN-PA"))
    bundle = (await api.get("/fhir/Observation")).json()
    (anc,) = [e["resource"] for e in bundle["entry"]]
    patient = anc["subject"]["reference"].split("/", 1)[1]
    await covered(api, patient, insurer)
    return patient, anc["id"]


async def test_an_hl7_order_opens_one_pa_task_with_the_lab_linked(
    gateway: Gateway, api: httpx.AsyncClient, insured: dict[str, str], payer: PayerStandIn, tmp_path: Path
) -> None:
    previous = use_rules(gateway, tmp_path, auto_submit=False)
    try:
        patient, anc = await hl7_patient_with_anc(api, insured["insurer"])
        await send(api, rde("C-RDE-1", "MRN-PA"))
        (task,) = await pa_tasks(api)
        order = task["focus"]["reference"]
        assert task["id"] == pa_task_id(order.split("/", 1)[1])
        assert (task["status"], task["businessStatus"]["coding"][0]["code"]) == ("draft", "pa-required")
        assert task["for"] == {"reference": f"Patient/{patient}"}
        linked = [i["valueReference"]["reference"] for i in task["input"]]
        assert f"Observation/{anc}" in linked and any(r.startswith("Coverage/") for r in linked)
        assert "REMS enrollment" in task["note"][0]["text"]
        await send(api, rde("C-RDE-2", "MRN-PA"))  # the same order re-sent (a new control id)
        assert [t["id"] for t in await pa_tasks(api)] == [task["id"]]
        assert payer.on("$submit") == []  # auto_submit is false
    finally:
        gateway.coverage.rules = previous


async def test_auto_submit_submits_once_after_the_order_commits(
    gateway: Gateway, api: httpx.AsyncClient, insured: dict[str, str], payer: PayerStandIn, tmp_path: Path
) -> None:
    previous = use_rules(gateway, tmp_path, auto_submit=True)
    try:
        _, anc = await hl7_patient_with_anc(api, insured["insurer"])
        await send(api, rde("C-RDE-1", "MRN-PA"))
        await gateway.coverage.drain()
        await send(api, rde("C-RDE-2", "MRN-PA"))
        await gateway.coverage.drain()
        (submitted,) = payer.on("$submit")
        entries = submitted.body["entry"]
        assert any(e["resource"].get("id") == anc for e in entries)  # the lab went as supportingInfo
        (task,) = await pa_tasks(api)
        assert task["businessStatus"]["coding"][0]["code"] != "pa-required"
    finally:
        gateway.coverage.rules = previous


async def test_an_order_with_no_rule_opens_nothing(
    gateway: Gateway, api: httpx.AsyncClient, insured: dict[str, str], tmp_path: Path
) -> None:
    previous = use_rules(gateway, tmp_path, auto_submit=False)
    try:
        patient = await create(api, f.patient())
        await covered(api, patient, insured["insurer"])
        ordinary = f.medication_request(patient, rxnorm="197361")
        ordinary["medicationCodeableConcept"]["text"] = "amlodipine 5 MG Oral Tablet"
        await create(api, ordinary)
        assert await pa_tasks(api) == []
    finally:
        gateway.coverage.rules = previous


# -- CDS Hooks ---------------------------------------------------------------------------------------------


def order_sign(patient: str, *orders: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "hook": "order-sign",
        "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
        "context": {
            "userId": "Practitioner/example",
            "patientId": patient,
            "draftOrders": {
                "resourceType": "Bundle",
                "type": "collection",
                "entry": [{"resource": o} for o in orders],
            },
        },
        **extra,
    }


async def test_discovery_lists_the_order_sign_service(api: httpx.AsyncClient) -> None:
    anonymous = httpx.AsyncClient(transport=api._transport, base_url=str(api.base_url))
    async with anonymous:  # discovery says what exists, nothing about anyone: no token needed
        answer = await anonymous.get("/cds-services")
    assert answer.status_code == 200
    (service,) = answer.json()["services"]
    assert (service["hook"], service["id"]) == ("order-sign", "specialty-pa")
    assert set(service["prefetch"]) == {"patient", "coverage"}


async def test_order_sign_says_pa_required_and_what_is_missing(
    gateway: Gateway,
    api: httpx.AsyncClient,
    client_factory: ClientFactory,
    insured: dict[str, str],
    tmp_path: Path,
) -> None:
    previous = use_rules(gateway, tmp_path, auto_submit=False)
    try:
        patient = await create(api, f.patient())
        await covered(api, patient, insured["insurer"])
        cds = await client_factory(CDS_SCOPE)
        draft = {**f.medication_request(patient), "id": "draft-1", "status": "draft"}
        answer = await cds.post("/cds-services/specialty-pa", json=order_sign(patient, draft))
        assert answer.status_code == 200, answer.text
        required, missing = answer.json()["cards"]
        assert required["summary"].startswith("Prior authorization required by Stand-in Health Plan")
        assert required["indicator"] == "warning"
        (action,) = required["suggestions"][0]["actions"]
        assert action["type"] == "create" and action["resource"]["focus"] == {
            "reference": "MedicationRequest/draft-1"
        }
        assert action["resource"]["businessStatus"]["coding"][0]["code"] == "pa-required"
        assert missing["indicator"] == "info"
        assert "ANC (751-8)" in missing["summary"] and "REMS enrollment" in missing["summary"]
        ordinary = {**draft, "medicationCodeableConcept": {"text": "amlodipine 5 MG Oral Tablet"}}
        answer = await cds.post("/cds-services/specialty-pa", json=order_sign(patient, ordinary))
        assert answer.json() == {"cards": []}
    finally:
        gateway.coverage.rules = previous


async def test_order_sign_uses_prefetched_coverage(
    gateway: Gateway, api: httpx.AsyncClient, insured: dict[str, str], tmp_path: Path
) -> None:
    previous = use_rules(gateway, tmp_path, auto_submit=False)
    try:
        patient = await create(api, f.patient())  # no Coverage stored: the EHR sends it
        coverage = {
            "resourceType": "Coverage",
            "id": "ehr-cov",
            "status": "active",
            "beneficiary": {"reference": f"Patient/{patient}"},
            "payor": [{"reference": f"Organization/{insured['insurer']}"}],
        }
        prefetch = {
            "coverage": {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": coverage}]}
        }
        draft = {**f.medication_request(patient), "id": "draft-1", "status": "draft"}
        answer = await api.post(
            "/cds-services/specialty-pa", json=order_sign(patient, draft, prefetch=prefetch)
        )
        assert len(answer.json()["cards"]) == 2
    finally:
        gateway.coverage.rules = previous


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b'{"hook": "patient-view", "hookInstance": "x", "context": {}}',  # another hook
        b'{"hook": "order-sign", "hookInstance": "x", "context": {"patientId": "p1"}}',  # no draftOrders
    ],
)
async def test_a_malformed_request_is_400(api: httpx.AsyncClient, body: bytes) -> None:
    answer = await api.post(
        "/cds-services/specialty-pa", content=body, headers={"Content-Type": "application/json"}
    )
    assert answer.status_code == 400


async def test_order_sign_needs_read_on_coverage(client_factory: ClientFactory) -> None:
    reader = await client_factory("system/Patient.rs")
    answer = await reader.post("/cds-services/specialty-pa", json=order_sign("p1"))
    assert answer.status_code == 403
