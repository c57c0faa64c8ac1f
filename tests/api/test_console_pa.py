"""The console's prior-authorization board on both backends: a coordinator sees the PA Tasks with their
state, due date and breach, withdraws an open request; CSRF is checked; a Task out of reach is a 404; a
pharmacist (no PA work in their role) sees none of it."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests import factories as f
from tests.api.conftest import Person
from tests.api.test_console_worklist import csrf_of
from tests.api.test_worklist import at, create, day, order, pa

pytestmark = pytest.mark.asyncio


async def task_of(api: httpx.AsyncClient, task_id: str) -> dict[str, Any]:
    answer = await api.get(f"/fhir/Task/{task_id}")
    assert answer.status_code == 200
    body: dict[str, Any] = answer.json()
    return body


def row_of(page: str, task_id: str) -> str:
    start = page.index(f'data-task="Task/{task_id}"')
    return page[start : page.index("</tr>", start)]


async def seeded(api: httpx.AsyncClient) -> dict[str, str]:
    """A patient with an overdue submitted request, a denied one and an approval ending in 20 days."""
    patient = await create(api, f.patient())
    overdue = await pa(api, patient, await order(api, patient), "submitted", due=at(-1))
    denied = await pa(api, patient, await order(api, patient), "denied", reason="Step therapy not tried")
    approved = await pa(api, patient, await order(api, patient), "approved", period_end=day(20))
    return {"patient": patient, "overdue": overdue, "denied": denied, "approved": approved}


async def test_the_coordinator_sees_state_due_date_breach_and_expiry(
    api: httpx.AsyncClient, person: Person
) -> None:
    seen = await seeded(api)
    me = await person("coordinator")
    page = await me.get("/console/pa")
    assert page.status_code == 200, page.text
    assert page.headers["cache-control"] == "no-store"
    text = page.text
    # Lifecycle order: submitted before approved before denied.
    assert text.index('data-status="submitted"') < text.index('data-status="approved"')
    assert text.index('data-status="approved"') < text.index('data-status="denied"')
    overdue = row_of(text, seen["overdue"])
    assert 'data-breached="true"' in overdue and "SLA breached" in overdue
    assert "clozapine 100 MG Oral Tablet" in overdue and "Organization/payer-1" in overdue
    assert f"/console/patients/{seen['patient']}" in overdue
    assert "Withdraw" in overdue and "Appeal" not in overdue
    denied = row_of(text, seen["denied"])
    assert "Step therapy not tried" in denied and "Appeal" in denied and "Withdraw" not in denied
    approved = row_of(text, seen["approved"])
    assert "20 days left" in approved and "SLA breached" not in approved


async def test_withdrawing_needs_the_forms_token_and_cancels_the_task(
    api: httpx.AsyncClient, person: Person
) -> None:
    seen = await seeded(api)
    me = await person("coordinator")
    csrf = csrf_of((await me.get("/console/pa")).text)
    target = f"/console/pa/{seen['overdue']}/withdraw"
    refused = await me.post(target, data={"csrf_token": "forged", "reason": "no longer needed"})
    assert refused.status_code == 403
    assert (await task_of(api, seen["overdue"]))["status"] == "requested"

    done = await me.post(target, data={"csrf_token": csrf, "reason": "Therapy stopped"})
    assert done.status_code == 303 and done.headers["location"] == "/console/pa?done=withdraw"
    task = await task_of(api, seen["overdue"])
    assert task["status"] == "cancelled"
    assert task["businessStatus"]["coding"][0]["code"] == "cancelled"
    assert task["statusReason"]["text"] == "Therapy stopped"
    page = await me.get("/console/pa?done=withdraw")
    assert "Request withdrawn." in page.text and 'data-status="cancelled"' in page.text


async def test_a_refused_move_is_shown_and_changes_nothing(api: httpx.AsyncClient, person: Person) -> None:
    seen = await seeded(api)
    me = await person("coordinator")
    csrf = csrf_of((await me.get("/console/pa")).text)
    answer = await me.post(f"/console/pa/{seen['denied']}/withdraw", data={"csrf_token": csrf})
    assert answer.status_code == 409 and "cannot go from denied to cancelled" in answer.text
    assert (await task_of(api, seen["denied"]))["businessStatus"]["coding"][0]["code"] == "denied"


async def test_a_task_out_of_reach_is_not_found_and_not_moved(api: httpx.AsyncClient, person: Person) -> None:
    # An alert Task of a patient without prior authorizations: outside a coordinator's reach.
    other = await create(api, f.patient())
    alert = await create(
        api,
        {
            "resourceType": "Task",
            "status": "ready",
            "intent": "order",
            "for": {"reference": f"Patient/{other}"},
            "authoredOn": at(-1),
        },
    )
    me = await person("coordinator")
    csrf = csrf_of((await me.get("/console/pa")).text)
    for action in ("withdraw", "appeal"):
        answer = await me.post(f"/console/pa/{alert}/{action}", data={"csrf_token": csrf})
        assert answer.status_code == 404, answer.text
    assert (await me.post("/console/pa/no-such-task/withdraw", data={"csrf_token": csrf})).status_code == 404
    assert (await task_of(api, alert))["status"] == "ready"


async def test_a_pharmacist_sees_no_prior_authorizations(api: httpx.AsyncClient, person: Person) -> None:
    seen = await seeded(api)
    practitioner = await create(api, {"resourceType": "Practitioner", "name": [{"family": "Other"}]})
    me = await person("pharmacist", f"Practitioner/{practitioner}")
    page = await me.get("/console/pa")
    assert page.status_code == 403 and seen["overdue"] not in page.text
    assert 'href="/console/pa"' not in (await me.get("/console")).text
    csrf = csrf_of(page.text)
    moved = await me.post(f"/console/pa/{seen['overdue']}/withdraw", data={"csrf_token": csrf})
    assert moved.status_code == 403
    assert (await task_of(api, seen["overdue"]))["status"] == "requested"


async def test_an_appeal_goes_to_the_operation_and_its_refusal_is_shown(
    api: httpx.AsyncClient, person: Person
) -> None:
    seen = await seeded(api)
    me = await person("coordinator")
    csrf = csrf_of((await me.get("/console/pa")).text)
    answer = await me.post(f"/console/pa/{seen['overdue']}/appeal", data={"csrf_token": csrf})
    assert answer.status_code == 409 and "Only a denied prior authorization can be appealed" in answer.text
    assert "The action was refused" in answer.text and 'data-status="submitted"' in answer.text
    assert (await task_of(api, seen["overdue"]))["status"] == "requested"
