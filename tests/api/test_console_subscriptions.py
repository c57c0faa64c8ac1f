"""The console's subscriptions page on both backends: every Subscription with its status, topic,
endpoint (never the secret or header values), owner and backlog; Reactivate re-requests one in `error`
or `off` (CSRF checked), for an analyst too, and a pharmacist is refused (403 page)."""

from __future__ import annotations

import httpx

from gateway.service.gateway import Gateway
from gateway.store import subscriptions as sub_store
from tests import factories as f
from tests.api.conftest import Person
from tests.api.test_console_worklist import csrf_of

HOOK_CREDENTIAL = "Authorization: Bearer hook-credential-xyz"


async def subscribed(api: httpx.AsyncClient, status: str = "off") -> str:
    resource = f.subscription(
        "abnormal-lab-result",
        "http://127.0.0.1:9/hooks/gw?token=t0p",
        status=status,
        headers=(HOOK_CREDENTIAL,),
    )
    answer = await api.post("/fhir/Subscription", json=resource)
    assert answer.status_code == 201, answer.text
    return str(answer.json()["id"])


async def test_the_page_lists_subscriptions_without_their_secrets(
    api: httpx.AsyncClient, person: Person
) -> None:
    sub_id = await subscribed(api)
    analyst = await person("analyst")
    page = await analyst.get("/console/subscriptions")
    assert page.status_code == 200, page.text
    assert f'data-subscription="Subscription/{sub_id}" data-status="off"' in page.text
    assert "abnormal-lab-result" in page.text and "http://127.0.0.1:9/hooks/gw" in page.text
    for secret in (f.SECRET, "hook-credential-xyz", "t0p"):
        assert secret not in page.text
    assert "Reactivate" in page.text


async def test_reactivate_checks_csrf_and_re_requests_the_subscription(
    gateway: Gateway, api: httpx.AsyncClient, person: Person
) -> None:
    sub_id = await subscribed(api, status="requested")
    # What the deliverer does when the endpoint keeps failing: the resource and its delivery row say error.
    await gateway.deliverer._set_status(sub_id, "error", "HTTP 503")
    analyst = await person("analyst")
    page = await analyst.get("/console/subscriptions")
    assert 'data-status="error"' in page.text and "HTTP 503" in page.text
    path = f"/console/subscriptions/{sub_id}/reactivate"
    refused = await analyst.post(path, data={"csrf_token": "wrong"})
    assert refused.status_code == 403
    async with gateway.db.read() as conn:
        state = await sub_store.state(conn, sub_id)
    assert state is not None and state.status == "error"
    done = await analyst.post(path, data={"csrf_token": csrf_of(page.text)})
    assert done.status_code == 303, done.text
    assert done.headers["location"] == "/console/subscriptions?done=reactivate"
    async with gateway.db.read() as conn:
        state = await sub_store.state(conn, sub_id)
    assert state is not None and state.status == "requested" and state.owner != ""
    stored = (await api.get(f"/fhir/Subscription/{sub_id}")).json()
    assert stored["status"] == "requested"
    # The owner's secret and header values were kept (the read hid them; the update restored them).
    assert state.secret == f.SECRET
    assert "Reactivation requested" in (await analyst.get(done.headers["location"])).text


async def test_an_active_subscription_is_not_reactivated(api: httpx.AsyncClient, person: Person) -> None:
    sub_id = await subscribed(api, status="requested")
    admin = await person("admin")
    page = await admin.get("/console/subscriptions")
    answer = await admin.post(
        f"/console/subscriptions/{sub_id}/reactivate", data={"csrf_token": csrf_of(page.text)}
    )
    assert answer.status_code == 409 and "is requested" in answer.text


async def test_a_pharmacist_is_refused(api: httpx.AsyncClient, person: Person) -> None:
    sub_id = await subscribed(api)
    practitioner = (await api.post("/fhir/Practitioner", json={"resourceType": "Practitioner"})).json()["id"]
    pharmacist = await person("pharmacist", f"Practitioner/{practitioner}")
    page = await pharmacist.get("/console/subscriptions")
    assert page.status_code == 403 and sub_id not in page.text
    action = await pharmacist.post(f"/console/subscriptions/{sub_id}/reactivate", data={"csrf_token": "x"})
    assert action.status_code == 403
