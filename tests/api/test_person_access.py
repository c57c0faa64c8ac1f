"""Who sees what with a person's token, route by route, on both backends.

Two pharmacists, each with a patient on their CareTeam; a third patient on nobody's; an Observation in
the first patient's record that also names the second patient (as performer); a prior-authorization Task
for the second patient. The first pharmacist's token (what a SMART app gets for them) must reach exactly
the first patient's record through every route that takes a person's token, and the routes that serve
only clients refuse it."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest_asyncio
from sqlalchemy import update

from gateway.auth.tokens import issue_user_access_token
from gateway.pa.lifecycle import BUSINESS_STATUS_SYSTEM
from gateway.service.access import apps as app_service
from gateway.service.access import users as user_service
from gateway.service.access.clients import ISSUER
from gateway.service.gateway import Gateway
from gateway.store.tables import app_user
from gateway.transports.http.app import create_app
from tests import factories as f
from tests.conftest import TEST_PASSWORD_HASH_COST, TEST_SECRET_HASH_COST

PASSWORD = "clozapine-anc-1500"
TASK_TYPE = "https://specialty-gateway.org/fhir/CodeSystem/task-type"


@dataclass
class World:
    a: str  # the first pharmacist's patient
    b: str  # the second pharmacist's patient (with a PA Task)
    c: str  # nobody's patient
    obs_a: str
    obs_b: str
    obs_cross: str  # in A's record, naming B as performer
    team_a: str
    team_b: str
    pa_task_b: str
    ph1: str  # Practitioner ids
    ph2: str
    app: str  # a registered SMART app's client id


async def _make(api: httpx.AsyncClient, resource: dict[str, Any]) -> str:
    answer = await api.post(f"/fhir/{resource['resourceType']}", json=resource)
    assert answer.status_code == 201, answer.text
    return str(answer.json()["id"])


def _team(patient: str, practitioner: str) -> dict[str, Any]:
    return f.care_team(patient, f"Practitioner/{practitioner}")


@pytest_asyncio.fixture
async def world(gateway: Gateway, api: httpx.AsyncClient) -> World:
    ph1 = await _make(api, {"resourceType": "Practitioner", "name": [{"family": "One"}]})
    ph2 = await _make(api, {"resourceType": "Practitioner", "name": [{"family": "Two"}]})
    a, b, c = [await _make(api, f.patient()) for _ in range(3)]
    obs_a = await _make(api, f.lab_observation(a, code="751-8", value=1.2, unit="10*3/uL"))
    obs_b = await _make(api, f.lab_observation(b, code="751-8", value=3.4, unit="10*3/uL"))
    cross = f.lab_observation(a, code="718-7", value=11.0, unit="g/dL")
    cross["performer"] = [{"reference": f"Patient/{b}"}]
    obs_cross = await _make(api, cross)
    await _make(api, f.lab_observation(c, code="751-8", value=2.0, unit="10*3/uL"))
    team_a = await _make(api, _team(a, ph1))
    team_b = await _make(api, _team(b, ph2))
    order_b = await _make(
        api,
        {
            "resourceType": "MedicationRequest",
            "status": "active",
            "intent": "order",
            "medicationCodeableConcept": {"text": "clozapine 100 mg tablet"},
            "subject": {"reference": f"Patient/{b}"},
        },
    )
    pa_task_b = await _make(
        api,
        {
            "resourceType": "Task",
            "status": "requested",
            "intent": "order",
            "code": {"coding": [{"system": TASK_TYPE, "code": "prior-authorization"}]},
            "businessStatus": {"coding": [{"system": BUSINESS_STATUS_SYSTEM, "code": "submitted"}]},
            "focus": {"reference": f"MedicationRequest/{order_b}"},
            "for": {"reference": f"Patient/{b}"},
        },
    )
    new = await app_service.add_app(
        gateway.db, f"app-{uuid.uuid4().hex[:8]}", ["http://127.0.0.1:8765/cb"],
        "openid fhirUser user/*.rs", confidential=False, cost=TEST_SECRET_HASH_COST,
    )  # fmt: skip
    return World(a, b, c, obs_a, obs_b, obs_cross, team_a, team_b, pa_task_b, ph1, ph2, new.record.client_id)


@pytest_asyncio.fixture
async def person(gateway: Gateway) -> AsyncIterator[Any]:
    """Makes an HTTP client holding a person's token (as a SMART app would after a launch)."""
    app = create_app(gateway.settings, gateway)
    opened: list[httpx.AsyncClient] = []

    async def make(
        world: World, role: str, practitioner: str | None = None, scope: str = "user/*.rs", **claims: Any
    ) -> httpx.AsyncClient:
        name = f"user-{uuid.uuid4().hex[:8]}"
        ref = f"Practitioner/{practitioner}" if practitioner else None
        cost = TEST_PASSWORD_HASH_COST
        user = await user_service.add_user(gateway.db, name, role, ref, PASSWORD, cost=cost)
        kid, key = await gateway.auth.signing_key()
        token = issue_user_access_token(
            key=key, kid=kid, issuer=ISSUER, client_id=world.app, user_id=user.id, scope=scope,
            fhir_user=ref, ttl_seconds=300, now=int(time.time()), **claims,
        )  # fmt: skip
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway.test")
        client.headers["Authorization"] = f"Bearer {token}"
        client.headers["X-User-Id"] = user.id  # for the test only (the gateway ignores it)
        opened.append(client)
        return client

    yield make
    for client in opened:
        await client.aclose()


def ids(bundle: dict[str, Any], resource_type: str | None = None) -> set[str]:
    return {
        f"{e['resource']['resourceType']}/{e['resource']['id']}"
        for e in bundle.get("entry", [])
        if "resource" in e
        and e["resource"]["resourceType"] != "OperationOutcome"
        and (resource_type is None or e["resource"]["resourceType"] == resource_type)
    }


async def get_json(client: httpx.AsyncClient, path: str, **params: str) -> dict[str, Any]:
    answer = await client.get(path, params=params)
    assert answer.status_code == 200, (path, answer.text)
    body: dict[str, Any] = answer.json()
    return body


async def test_a_pharmacist_reads_and_searches_only_their_patients(world: World, person: Any) -> None:
    ph1 = await person(world, "pharmacist", world.ph1)
    w = world
    assert ids(await get_json(ph1, "/fhir/Patient")) == {f"Patient/{w.a}"}
    assert (await ph1.get(f"/fhir/Patient/{w.a}")).status_code == 200
    for path in (f"/fhir/Patient/{w.b}", f"/fhir/Patient/{w.c}", f"/fhir/Observation/{w.obs_b}",
                 f"/fhir/Observation/{w.obs_cross}", f"/fhir/CareTeam/{w.team_b}",
                 f"/fhir/Task/{w.pa_task_b}", f"/fhir/Observation/{w.obs_b}/_history/1",
                 f"/fhir/Observation/{w.obs_b}/_history", f"/fhir/Patient/{w.b}/_history"):  # fmt: skip
        answer = await ph1.get(path)
        assert answer.status_code == 404, (path, answer.status_code)
        assert w.b not in answer.text or path.endswith(w.b) or w.b in path, path
    assert ids(await get_json(ph1, "/fhir/Observation")) == {f"Observation/{w.obs_a}"}
    assert ids(await get_json(ph1, "/fhir/Observation", subject=f"Patient/{w.b}")) == set()
    assert ids(await get_json(ph1, "/fhir/Patient", _id=f"{w.a},{w.b},{w.c}")) == {f"Patient/{w.a}"}
    assert ids(await get_json(ph1, "/fhir/CareTeam")) == {f"CareTeam/{w.team_a}"}
    assert ids(await get_json(ph1, "/fhir/Task")) == set()
    total = await get_json(ph1, "/fhir/Observation", _summary="count")
    assert total["total"] == 1
    # a chained criterion only narrows what may be seen
    chained = await get_json(ph1, "/fhir/Observation", **{"subject:Patient._id": w.b})
    assert ids(chained) == set()
    # shared, patient-free types are readable as the scopes say
    assert f"Practitioner/{w.ph2}" in ids(await get_json(ph1, "/fhir/Practitioner"))


async def test_includes_history_and_bundles_leak_nothing(world: World, person: Any) -> None:
    ph1 = await person(world, "pharmacist", world.ph1)
    w = world
    included = await get_json(ph1, "/fhir/Observation", _include="Observation:performer")
    assert f"Patient/{w.b}" not in ids(included)
    reverse = await get_json(ph1, "/fhir/Practitioner", _revinclude="CareTeam:participant")
    assert ids(reverse, "CareTeam") == {f"CareTeam/{w.team_a}"}
    patients = await get_json(ph1, "/fhir/Patient", _revinclude="Observation:subject")
    assert ids(patients, "Observation") == {f"Observation/{w.obs_a}"}
    refused = await ph1.get("/fhir/Observation/_history")
    assert refused.status_code == 403 and w.b not in refused.text
    own = await get_json(ph1, f"/fhir/Observation/{w.obs_a}/_history")
    assert len(own["entry"]) == 1
    batch = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"request": {"method": "GET", "url": f"Patient/{w.a}"}},
            {"request": {"method": "GET", "url": f"Patient/{w.b}"}},
            {"request": {"method": "GET", "url": "Observation?code=751-8"}},
        ],
    }
    answer = await ph1.post("/fhir", json=batch)
    assert answer.status_code == 200, answer.text
    statuses = [e["response"]["status"] for e in answer.json()["entry"]]
    assert statuses[0].startswith("200") and statuses[1].startswith("404"), statuses
    searched = answer.json()["entry"][2]["resource"]
    assert ids(searched) == {f"Observation/{w.obs_a}"}


async def test_patient_operations_answer_only_for_the_persons_patients(world: World, person: Any) -> None:
    ph1 = await person(world, "pharmacist", world.ph1)
    w = world
    for operation in ("$everything", "$timeline"):
        assert (await ph1.get(f"/fhir/Patient/{w.b}/{operation}")).status_code == 404
        assert (await ph1.get(f"/fhir/Patient/{w.c}/{operation}")).status_code == 404
    stream = await ph1.get(f"/fhir/Patient/{w.b}/$timeline", params={"_stream": "true"})
    assert stream.status_code == 404
    everything = await get_json(ph1, f"/fhir/Patient/{w.a}/$everything", _count="100")
    found = ids(everything)
    assert f"Observation/{w.obs_a}" in found and f"CareTeam/{w.team_a}" in found
    assert f"Observation/{w.obs_cross}" not in found  # also in B's record
    assert not any(w.b in i or w.c in i for i in found)
    timeline = await get_json(ph1, f"/fhir/Patient/{w.a}/$timeline")
    assert w.obs_cross not in str(timeline) and w.b not in str(timeline)
    own = await ph1.get("/fhir/Task/$worklist", params={"owner": f"Practitioner/{w.ph1}"})
    assert own.status_code == 200, own.text
    other = await ph1.get("/fhir/Task/$worklist", params={"owner": f"Practitioner/{w.ph2}"})
    assert other.status_code == 403


async def test_client_only_routes_and_types_out_of_reach_are_refused(world: World, person: Any) -> None:
    ph1 = await person(world, "pharmacist", world.ph1, scope="user/*.cruds")
    w = world
    for method, path in (("GET", "/fhir/Subscription"), ("GET", "/fhir/AuditEvent"),
                         ("GET", "/hl7v2/messages"), ("POST", "/hl7v2"),
                         ("POST", f"/fhir/Patient/{w.a}/$match-pharmacist"),
                         ("GET", "/fhir/Subscription/$status")):  # fmt: skip
        answer = await ph1.request(method, path)
        assert answer.status_code == 403, (path, answer.status_code, answer.text)
    # writes only within reach, before and after
    foreign = f.lab_observation(w.b, code="751-8", value=0.9, unit="10*3/uL")
    assert (await ph1.post("/fhir/Observation", json=foreign)).status_code == 403
    moved = (await ph1.get(f"/fhir/Observation/{w.obs_a}")).json()
    moved["subject"] = {"reference": f"Patient/{w.b}"}
    assert (await ph1.put(f"/fhir/Observation/{w.obs_a}", json=moved)).status_code == 403
    theirs = f.lab_observation(w.b, code="751-8", value=3.4, unit="10*3/uL")
    theirs["id"] = w.obs_b
    assert (await ph1.put(f"/fhir/Observation/{w.obs_b}", json=theirs)).status_code == 404
    assert (await ph1.delete(f"/fhir/Observation/{w.obs_b}")).status_code == 404
    mine = f.lab_observation(w.a, code="751-8", value=1.0, unit="10*3/uL")
    assert (await ph1.post("/fhir/Observation", json=mine)).status_code == 201


async def test_reach_follows_the_care_team_and_the_role(
    gateway: Gateway, world: World, person: Any, api: httpx.AsyncClient
) -> None:
    ph1 = await person(world, "pharmacist", world.ph1)
    w = world
    coordinator = await person(world, "coordinator")
    assert ids(await get_json(coordinator, "/fhir/Patient")) == {f"Patient/{w.b}"}
    assert ids(await get_json(coordinator, "/fhir/Task")) == {f"Task/{w.pa_task_b}"}
    assert len(ids(await get_json(coordinator, "/fhir/MedicationRequest"))) == 1
    analyst = await person(world, "analyst")
    assert (await analyst.get("/fhir/Patient")).status_code == 403
    admin = await person(world, "admin")
    everyone = {f"Patient/{w.a}", f"Patient/{w.b}", f"Patient/{w.c}"}
    assert everyone <= ids(await get_json(admin, "/fhir/Patient"))
    # taken off the CareTeam: the patient is out of reach on the next request
    team = (await api.get(f"/fhir/CareTeam/{w.team_a}")).json()
    team["participant"][0]["period"] = {"end": "2020-01-01"}
    assert (await api.put(f"/fhir/CareTeam/{w.team_a}", json=team)).status_code == 200
    assert (await ph1.get(f"/fhir/Patient/{w.a}")).status_code == 404
    # a disabled user's token is dead at once
    admin_id = admin.headers["X-User-Id"]
    async with gateway.db.write() as conn:
        await conn.execute(update(app_user).where(app_user.c.id == admin_id).values(disabled=True))
    assert (await admin.get("/fhir/Patient")).status_code == 401


async def test_a_launch_patient_narrows_the_token_to_that_patient(world: World, person: Any) -> None:
    admin = await person(world, "admin", scope="patient/*.rs", patient=world.b)
    assert ids(await get_json(admin, "/fhir/Patient")) == {f"Patient/{world.b}"}
    assert (await admin.get(f"/fhir/Patient/{world.a}")).status_code == 404


async def test_records_opened_are_audited_under_the_persons_practitioner(
    gateway: Gateway, world: World, person: Any, client_factory: Any
) -> None:
    ph1 = await person(world, "pharmacist", world.ph1)
    assert (await ph1.get(f"/fhir/Patient/{world.a}")).status_code == 200
    assert (await ph1.get(f"/fhir/Patient/{world.a}/$everything")).status_code == 200
    await gateway.audit.flush()
    auditor = await client_factory("audit/events.read")
    found = await get_json(
        auditor, "/fhir/AuditEvent", patient=f"Patient/{world.a}", agent=f"Practitioner/{world.ph1}"
    )
    events = [e["resource"] for e in found.get("entry", [])]
    assert len(events) >= 2
    for event in events:
        assert event["agent"][0]["who"]["reference"] == f"Practitioner/{world.ph1}"
        assert any(e.get("what", {}).get("reference") == f"Patient/{world.a}" for e in event["entity"])


async def test_a_care_team_naming_the_pharmacists_role_counts(
    world: World, person: Any, api: httpx.AsyncClient
) -> None:
    """Pharmacist matching assigns a PractitionerRole (one site, one caseload): it is the pharmacist too."""
    role = await _make(
        api, {"resourceType": "PractitionerRole", "practitioner": {"reference": f"Practitioner/{world.ph2}"}}
    )
    team = _team(world.c, world.ph2)
    team["participant"] = [{"member": {"reference": f"PractitionerRole/{role}"}}]
    await _make(api, team)
    ph2 = await person(world, "pharmacist", world.ph2)
    assert ids(await get_json(ph2, "/fhir/Patient")) == {f"Patient/{world.b}", f"Patient/{world.c}"}


async def test_the_pa_operations_refuse_a_users_token(
    world: World, person: Any, api: httpx.AsyncClient
) -> None:
    # $appeal and $cancel read and write with the PA service's own context, without a person's reach:
    # a person reaches them only through the console, which reads the Task with their context first.
    ph1 = await person(world, "pharmacist", world.ph1, scope="user/*.cruds")
    for operation in ("$cancel", "$appeal"):
        answer = await ph1.post(f"/fhir/Task/{world.pa_task_b}/{operation}")
        assert answer.status_code == 403, (operation, answer.text)
    task = (await api.get(f"/fhir/Task/{world.pa_task_b}")).json()
    assert task["businessStatus"]["coding"][0]["code"] == "submitted"
