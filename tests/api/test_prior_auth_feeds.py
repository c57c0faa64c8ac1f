"""Payer answers that arrive later: X12 278 response files, CSV status files and PAS notifications,
each correlated to the right PA Task; and a pharmacist's `pa-status-changed` subscription hearing every
change in order. Both backends."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from gateway.service.gateway import Gateway
from tests import factories as f
from tests.api.conftest import Order
from tests.api.test_prior_auth import business, outputs, request_pa
from tests.api.test_subscriptions import subscribe, wait_active
from tests.conftest import ClientFactory
from tests.payer_standin import PayerStandIn
from tests.receiver import Receiver
from tests.unit.test_payer_x12_278 import Event, hierarchy, interchange, response, transaction

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def pended_orders(
    api: httpx.AsyncClient, order: Order, payer: PayerStandIn, count: int
) -> list[dict[str, Any]]:
    """`count` PA Tasks for the same patient, each pended at the payer."""
    found = []
    for n in range(count):
        request_id = order.request
        if n:
            answer = await api.post(
                "/fhir/MedicationRequest",
                json=f.medication_request(
                    order.patient,
                    rxnorm=str(2555 + n),
                    requester={"reference": f"Practitioner/{order.prescriber}"},
                ),
            )
            request_id = answer.json()["id"]
        payer.scenarios.append("pended")
        task = await request_pa(api, Order({**order.ids, "request": request_id}))
        assert business(task) == "pended"
        found.append(task)
    return found


def trace(task: dict[str, Any]) -> str:
    return str(next(i["value"] for i in task["identifier"] if i["system"].endswith("pa-trace-number")))


async def current(api: httpx.AsyncClient, task: dict[str, Any]) -> dict[str, Any]:
    return dict((await api.get(f"/fhir/Task/{task['id']}")).json())


async def test_an_x12_278_response_updates_each_task_it_names(
    gateway: Gateway,
    api: httpx.AsyncClient,
    client_factory: ClientFactory,
    order: Order,
    payer: PayerStandIn,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The site's table of X12 886 reason meanings (mappings/tables/x12-review-decision-reasons.yaml).
    monkeypatch.setattr(gateway.priorauth, "reason_displays", {"35": "Meaning of 35 from the site table"})
    approved, denied, pended, rejected = await pended_orders(api, order, payer, 4)
    text = response(
        Event([f"TRN*2*{trace(approved)}*9GATEWAY01", "HCR*A1*X12-AUTH-1", "DTP*AAH*RD8*20260101-20260630"]),
        Event([f"TRN*2*{trace(denied)}*9GATEWAY01", "HCR*A3**35"]),
        Event([f"TRN*2*{trace(pended)}*9GATEWAY01", "HCR*A4", "REF*NT*CASE-88"]),
        Event([f"TRN*2*{trace(rejected)}*9GATEWAY01", "AAA*N**15*C"]),
    )
    payer_client = await client_factory("system/ClaimResponse.c")
    answer = await payer_client.post("/payer/files", content=text.encode())
    assert answer.status_code == 200, answer.text
    named = {"approved": approved, "denied": denied, "pended": pended, "rejected": rejected}
    after = {name: await current(api, t) for name, t in named.items()}
    assert business(after["approved"]) == "approved"
    assert outputs(after["approved"], "authorization-number") == ["X12-AUTH-1"]
    assert after["approved"]["restriction"]["period"] == {"start": "2026-01-01", "end": "2026-06-30"}
    assert business(after["denied"]) == "denied"
    assert after["denied"]["statusReason"]["coding"] == [
        {
            "system": "https://codesystem.x12.org/external/886",
            "code": "35",
            "display": "Meaning of 35 from the site table",
        }
    ]
    assert after["denied"]["statusReason"]["text"] == "Meaning of 35 from the site table (35)"
    assert outputs(after["denied"], "item-decision") == [
        "item 1: A3 Not certified, reason Meaning of 35 from the site table (35)"
    ]
    response_ref = outputs(after["denied"], "claim-response")[0]["reference"]
    stored = (await api.get(f"/fhir/{response_ref}")).json()
    review = stored["item"][0]["adjudication"][0]["extension"][0]["extension"]
    reason = next(r["valueCodeableConcept"] for r in review if r["url"] == "reasonCode")
    assert reason["coding"][0]["display"] == "Meaning of 35 from the site table"
    assert business(after["pended"]) == "pended"
    assert business(after["rejected"]) == "rejected-by-payer" and after["rejected"]["status"] == "rejected"
    assert (
        "15" in after["rejected"]["statusReason"]["text"]
        or "Required" in after["rejected"]["statusReason"]["text"]
    )
    # The pended Task's new payer reference now finds it too: a later CSV row can use it.
    csv = "payer_reference,decision,authorization_number,period_start,period_end\n" \
          "CASE-88,approved,CSV-AUTH-9,2026-02-01,2026-07-31\n"  # fmt: skip
    assert (await payer_client.post("/payer/files", content=csv.encode())).status_code == 200
    finally_approved = await current(api, pended)
    assert business(finally_approved) == "approved"
    assert outputs(finally_approved, "authorization-number") == ["CSV-AUTH-9"]


async def test_a_malformed_278_is_refused_and_changes_nothing(
    api: httpx.AsyncClient, client_factory: ClientFactory, order: Order, payer: PayerStandIn
) -> None:
    (task,) = await pended_orders(api, order, payer, 1)
    good = [f"TRN*2*{trace(task)}*9GATEWAY01", "HCR*A1*X-1"]
    broken = interchange(transaction(hierarchy(Event(good)), se_count=99))
    payer_client = await client_factory("system/ClaimResponse.c")
    answer = await payer_client.post("/payer/files", content=broken.encode())
    assert answer.status_code == 400
    assert "SE01" in answer.json()["issue"][0]["diagnostics"]
    unknown = response(Event(["TRN*2*NOT-OURS*9GATEWAY01", "HCR*A1*X-2"]), Event(good))
    answer = await payer_client.post("/payer/files", content=unknown.encode())
    assert answer.status_code == 422  # one answer matches nothing: none of the file is applied
    after = await current(api, task)
    assert after["meta"]["versionId"] == task["meta"]["versionId"] and business(after) == "pended"


async def test_a_csv_status_file_applies_good_rows_and_reports_bad_ones(
    gateway: Gateway, api: httpx.AsyncClient, order: Order, payer: PayerStandIn
) -> None:
    (task,) = await pended_orders(api, order, payer, 1)
    text = (
        "task_id,decision,authorization_number,period_start,period_end,reason\n"
        f"{task['id']},approved,CSV-1,2026-03-01,2026-08-31,\n"
        f"{task['id']},maybe,,,,\n"
    )
    report = await gateway.pa_ops.payer_file(text)
    assert [a.business_status for a in report.applied] == ["approved"]
    assert len(report.problems) == 1 and "line 3" in report.problems[0]
    assert business(await current(api, task)) == "approved"


async def test_pended_then_approved_by_notification_reaches_the_pharmacist_in_order(
    delivering: Gateway,
    api: httpx.AsyncClient,
    client_factory: ClientFactory,
    order: Order,
    payer: PayerStandIn,
    receiver: Receiver,
) -> None:
    sub_id = await subscribe(
        api,
        f.subscription(
            "pa-status-changed", receiver.url("/pa"), filters=(f"patient=Patient/{order.patient}",)
        ),
    )
    await wait_active(api, sub_id)
    payer.scenarios.append("pended")
    task = await request_pa(api, order)
    assert business(task) == "pended"
    claim_id = next(
        i["valueReference"]["reference"] for i in task["input"] if i["type"]["coding"][0]["code"] == "claim"
    ).split("/")[1]
    notification = payer.notification(claim_id, "approved")
    payer_client = await client_factory("system/ClaimResponse.c")
    answer = await payer_client.post("/payer/pas/notifications", json=notification)
    assert answer.status_code == 200, answer.text
    again = await payer_client.post("/payer/pas/notifications", json=notification)  # a re-sent notification
    assert "unchanged" in again.json()["issue"][0]["diagnostics"]
    after = await current(api, task)
    assert business(after) == "approved" and after["status"] == "completed"

    def statuses() -> list[str]:
        seen = []
        for note in receiver.events("/pa"):
            for entry in note.json["entry"][1:]:
                resource = entry.get("resource") or {}
                if resource.get("resourceType") == "Task":
                    seen.append(business(resource))
        return seen

    await receiver.until(lambda: statuses()[-1:] == ["approved"], timeout=10)
    numbers = [n for r in receiver.events("/pa") for n in r.event_numbers]
    assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers)
    assert statuses() == ["submitted", "pended", "approved"]  # every change, in order, once each
