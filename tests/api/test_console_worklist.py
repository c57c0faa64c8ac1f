"""The console's worklist on both backends, in-process with a browser's cookies: the pharmacist sees the
alert of their patient, acts on it (claim, acknowledge, resolve with a note, escalate), records an
interaction; CSRF is checked on every action; another pharmacist can neither see nor move it."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest

from gateway.service.gateway import Gateway
from gateway.transports.http.app import create_app
from tests import factories as f
from tests.api.conftest import Person
from tests.api.test_alerts import alerts, clozapine_patient, create
from tests.api.test_patient_timeline import anc

Browser = Callable[[str], Awaitable[httpx.AsyncClient]]


@pytest.fixture
def browser(person: Person) -> Browser:
    """A logged-in browser (tests/api/conftest.py `person`) for a new pharmacist acting as a Practitioner."""

    async def make(practitioner: str) -> httpx.AsyncClient:
        return await person("pharmacist", practitioner)

    return make


def csrf_of(page: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert found is not None
    return found.group(1)


async def setup(api: httpx.AsyncClient) -> tuple[str, str, str]:
    """A clozapine patient on Practitioner ph1's CareTeam with a low-ANC alert; (patient, ph1, task)."""
    ph1 = await create(api, {"resourceType": "Practitioner", "name": [{"family": "One"}]})
    patient, _ = await clozapine_patient(api)
    await create(api, f.care_team(patient, f"Practitioner/{ph1}"))
    await create(api, anc(patient, 1.2, "2024-03-01T08:00:00Z", "L"))
    (task,) = await alerts(api, patient)
    return patient, f"Practitioner/{ph1}", str(task["id"])


async def task_of(api: httpx.AsyncClient, task_id: str) -> dict[str, Any]:
    answer = await api.get(f"/fhir/Task/{task_id}")
    assert answer.status_code == 200
    body: dict[str, Any] = answer.json()
    return body


async def test_the_pharmacist_sees_and_works_the_alert(api: httpx.AsyncClient, browser: Browser) -> None:
    patient, ph1, task_id = await setup(api)
    me = await browser(ph1)
    page = await me.get("/console")
    assert page.status_code == 200, page.text
    assert f'data-task="Task/{task_id}"' in page.text and "clozapine" in page.text
    assert page.headers["cache-control"] == "no-store"
    assert "script-src 'self'" in page.headers["content-security-policy"]
    csrf = csrf_of(page.text)

    refused = await me.post(f"/console/tasks/{task_id}/claim", data={"csrf_token": "wrong"})
    assert refused.status_code == 403
    assert (await task_of(api, task_id))["status"] == "ready"

    claimed = await me.post(f"/console/tasks/{task_id}/claim", data={"csrf_token": csrf})
    assert claimed.status_code == 303 and claimed.headers["location"] == "/console?done=claim"
    task = await task_of(api, task_id)
    assert task["status"] == "accepted" and task["owner"] == {"reference": ph1}

    acked = await me.post(f"/console/tasks/{task_id}/acknowledge", data={"csrf_token": csrf})
    assert acked.status_code == 303
    assert (await task_of(api, task_id))["status"] == "in-progress"

    no_note = await me.post(f"/console/tasks/{task_id}/resolve", data={"csrf_token": csrf, "note": " "})
    assert no_note.status_code == 400 and "needs a note" in no_note.text
    escalated = await me.post(
        f"/console/tasks/{task_id}/escalate",
        data={"csrf_token": csrf, "role": "prescriber", "note": "ANC falling two weeks in a row"},
    )
    assert escalated.status_code == 303, escalated.text
    task = await task_of(api, task_id)
    assert task["businessStatus"]["coding"][0]["code"] == "escalated"
    assert task["statusReason"]["text"] == "ANC falling two weeks in a row"
    resolved = await me.post(
        f"/console/tasks/{task_id}/resolve", data={"csrf_token": csrf, "note": "Called; ANC thrice weekly"}
    )
    assert resolved.status_code == 303
    task = await task_of(api, task_id)
    assert task["status"] == "completed" and task["note"][-1]["text"] == "Called; ANC thrice weekly"
    assert task["note"][-1]["authorReference"] == {"reference": ph1}

    recorded = await me.post(
        f"/console/patients/{patient}/interactions",
        data={
            "csrf_token": csrf,
            "kind": "call",
            "text": "Went over fever as a reason to call",
            "about": f"Task/{task_id}",
        },
    )
    assert recorded.status_code == 303, recorded.text
    calls = (await api.get("/fhir/Communication", params={"subject": f"Patient/{patient}"})).json()
    (call,) = [e["resource"] for e in calls["entry"]]
    assert call["sender"] == {"reference": ph1} and call["about"] == [{"reference": f"Task/{task_id}"}]


async def test_another_pharmacist_neither_sees_nor_moves_the_alert(
    api: httpx.AsyncClient, browser: Browser
) -> None:
    patient, _, task_id = await setup(api)
    ph2 = await create(api, {"resourceType": "Practitioner", "name": [{"family": "Two"}]})
    other = await browser(f"Practitioner/{ph2}")
    page = await other.get("/console")
    assert page.status_code == 200 and task_id not in page.text
    csrf = csrf_of(page.text)
    moved = await other.post(f"/console/tasks/{task_id}/claim", data={"csrf_token": csrf})
    assert moved.status_code == 404
    assert (await task_of(api, task_id))["status"] == "ready"
    call = await other.post(
        f"/console/patients/{patient}/interactions",
        data={"csrf_token": csrf, "kind": "call", "text": "hello"},
    )
    assert call.status_code == 403
    calls = (await api.get("/fhir/Communication", params={"subject": f"Patient/{patient}"})).json()
    assert calls.get("total", 0) == 0


async def test_without_a_session_pages_go_to_the_login_and_actions_change_nothing(
    gateway: Gateway, api: httpx.AsyncClient
) -> None:
    _, _, task_id = await setup(api)
    app = create_app(gateway.settings, gateway)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://gateway.test"
    ) as anon:
        page = await anon.get("/console/worklist/rows")
        assert page.status_code == 303 and page.headers["location"].startswith("/console/login?next=")
        action = await anon.post(f"/console/tasks/{task_id}/claim", data={"csrf_token": "x"})
        assert action.status_code == 303 and action.headers["location"].startswith("/console/login")
        assert (await anon.get("/console/static/console.css")).status_code == 200
        assert (await anon.get("/console/static/..%2Fsession.py")).status_code == 404
    assert (await task_of(api, task_id))["status"] == "ready"


async def test_the_patient_page_charts_the_lab_against_the_threshold_and_is_audited(
    gateway: Gateway, api: httpx.AsyncClient, browser: Browser, client_factory: Any
) -> None:
    patient, ph1, _ = await setup(api)
    await create(api, anc(patient, 2.1, "2024-02-15T08:00:00Z", None))
    me = await browser(ph1)
    page = await me.get(f"/console/patients/{patient}")
    assert page.status_code == 200, page.text
    assert 'data-rule="clozapine-anc"' in page.text
    # the 1.2 (10*3/uL) result is marked below the 1500 /uL threshold; the 2.1 one is not
    assert page.text.count('class="point below-threshold') == 1
    assert 'data-value="1500"' in page.text and "clozapine" in page.text
    ph2 = await create(api, {"resourceType": "Practitioner", "name": [{"family": "Two"}]})
    other = await browser(f"Practitioner/{ph2}")
    refused = await other.get(f"/console/patients/{patient}")
    assert refused.status_code == 404 and "clozapine" not in refused.text
    await gateway.audit.flush()
    auditor = await client_factory("audit/events.read")
    found = (
        await auditor.get("/fhir/AuditEvent", params={"patient": f"Patient/{patient}", "agent": ph1})
    ).json()
    # the page's request is one AuditEvent: the pharmacist's Practitioner as agent, the Patient as entity
    opened = [e["resource"] for e in found.get("entry", [])]
    assert len(opened) == 1, [e.get("subtype") for e in opened]
    event = opened[0]
    assert event["agent"][0]["who"] == {"reference": ph1}
    assert any(e.get("what", {}).get("reference") == f"Patient/{patient}" for e in event["entity"])
