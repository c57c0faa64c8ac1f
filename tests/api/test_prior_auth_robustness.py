"""Prior authorization when things go wrong: processes dying mid-send, requests racing each other,
answers arriving for Task versions that moved on, malformed payer content, and attempts to get round
the lifecycle. Both backends."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy import update

from gateway.fhir import dates
from gateway.service.gateway import Gateway
from gateway.service.priorauth.payer_client import Failed
from gateway.store import priorauth as pa_store
from gateway.store import resources as store
from gateway.store.tables import pa_submission
from tests.api.conftest import Order
from tests.api.test_prior_auth import (
    business,
    certification,
    client_id_of,
    outputs_input,
    parameters,
    request_pa,
)
from tests.conftest import ClientFactory
from tests.payer_standin import PayerStandIn

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def stored_task(gateway: Gateway, task_id: str) -> dict[str, Any]:
    async with gateway.db.read() as conn:
        stored = await store.current(conn, "Task", task_id)
    assert stored is not None and stored.content is not None
    return dict(orjson.loads(stored.content))


async def submission(gateway: Gateway, sub_id: str) -> pa_store.Submission:
    async with gateway.db.read() as conn:
        row = await pa_store.submission(conn, sub_id)
    assert row is not None
    return row


async def test_a_request_whose_sender_died_is_not_sent_again_but_retried_as_a_new_version(
    gateway: Gateway, order: Order, payer: PayerStandIn
) -> None:
    pa = gateway.priorauth
    sub_id = await pa.prepare_request(pa.internal, order.request, parameters(order))
    task_id = sub_id.split("/", 1)[0]
    async with gateway.db.write() as conn:  # another process claimed it, maybe sent it, and died
        await conn.execute(
            update(pa_submission)
            .where(pa_submission.c.id == sub_id)
            .values(state="sending", claim_token="dead", lease_until_us=dates.now_us() - 1)
        )
    await gateway.payer_worker.send(sub_id)  # someone who read it while it was pending
    await gateway.payer_worker.run_once()
    assert payer.on("$submit") == []  # the payer may have it: never the same key twice
    row = await submission(gateway, sub_id)
    assert row.state == "failed" and "unknown" in (row.error or "")
    assert business(await stored_task(gateway, task_id)) == "submission-error"
    await gateway.payer_worker.run_once(dates.now_us() + 61_000_000)
    sent = payer.on("$submit")
    assert len(sent) == 1 and sent[0].headers["idempotency-key"] != sub_id
    assert business(await stored_task(gateway, task_id)) == "approved"


async def test_a_request_not_yet_sent_when_withdrawn_never_goes_out(
    gateway: Gateway, order: Order, payer: PayerStandIn
) -> None:
    pa = gateway.priorauth
    sub_id = await pa.prepare_request(pa.internal, order.request, parameters(order))
    task_id = sub_id.split("/", 1)[0]
    await gateway.pa_ops.cancel(pa.internal, task_id, b"")  # before the request went out (a crash, say)
    await gateway.payer_worker.run_once()
    assert [certification(r.body) for r in payer.on("$submit")] == ["3"]  # the cancellation only
    assert (await submission(gateway, sub_id)).state == "superseded"
    assert business(await stored_task(gateway, task_id)) == "cancelled"


async def test_a_failure_of_an_older_version_leaves_a_newer_state_alone(
    gateway: Gateway, order: Order, payer: PayerStandIn
) -> None:
    pa = gateway.priorauth
    sub_id = await pa.prepare_request(pa.internal, order.request, parameters(order))
    task_id = sub_id.split("/", 1)[0]
    async with gateway.db.write() as conn:
        assert await pa_store.claim_submission(conn, sub_id, dates.now_us(), 60_000_000, "mine")
    row = await submission(gateway, sub_id)
    # While the request is in flight the payer asks for more information (a file, a notification).
    await gateway.pa_ops.payer_file(f"task_id,decision,reason\n{task_id},info-requested,send labs\n")
    await gateway.payer_worker._record(row, "mine", pa.payers.by_name(row.payer), Failed("timeout", None, 0))
    assert business(await stored_task(gateway, task_id)) == "info-requested"
    assert (await submission(gateway, sub_id)).state == "failed"


async def test_only_the_claimant_records_an_outcome(
    gateway: Gateway, order: Order, payer: PayerStandIn
) -> None:
    pa = gateway.priorauth
    sub_id = await pa.prepare_request(pa.internal, order.request, parameters(order))
    async with gateway.db.write() as conn:
        assert await pa_store.claim_submission(conn, sub_id, dates.now_us(), 60_000_000, "mine")
        assert not await pa_store.claim_submission(conn, sub_id, dates.now_us(), 60_000_000, "theirs")
        assert not await pa_store.finish_submission(
            conn, sub_id, "theirs", state="sent", sent_us=1, duration_us=1, http_status=200, error=None
        )
        assert await pa_store.finish_submission(
            conn, sub_id, "mine", state="sent", sent_us=1, duration_us=1, http_status=200, error=None
        )


async def test_two_requests_for_one_order_at_once_send_one(
    api: httpx.AsyncClient, order: Order, payer: PayerStandIn
) -> None:
    payer.scenarios.extend(["pended", "pended"])
    answers = await asyncio.gather(
        *(
            api.post(f"/fhir/MedicationRequest/{order.request}/$request-prior-auth", json=parameters(order))
            for _ in range(2)
        )
    )
    assert sorted(a.status_code for a in answers) == [200, 409]
    assert len(payer.on("$submit")) == 1


@pytest.mark.parametrize(
    "mutation", ["item-extension-not-a-list", "additem-sequence-scalar", "error-coding-int"]
)
async def test_malformed_payer_content_is_a_400_not_a_crash(
    client_factory: ClientFactory, api: httpx.AsyncClient, order: Order, payer: PayerStandIn, mutation: str
) -> None:
    payer.scenarios.append("pended")
    task = await request_pa(api, order)
    claim_id = outputs_input(task, "claim").split("/")[1]
    response = copy.deepcopy(payer.decide(claim_id, "approved")["entry"][0]["resource"])
    if mutation == "item-extension-not-a-list":
        response["item"][0]["extension"] = 1
    elif mutation == "additem-sequence-scalar":
        response["addItem"] = [{"itemSequence": 1, "productOrService": {"text": "x"}}]
    else:
        response["error"] = [{"code": {"coding": 1}}]
    payer_client = await client_factory("system/ClaimResponse.c")
    answer = await payer_client.post("/payer/pas/notifications", json=response)
    assert answer.status_code == 400, answer.text
    assert answer.json()["resourceType"] == "OperationOutcome"
    assert business((await api.get(f"/fhir/Task/{task['id']}")).json()) == "pended"


async def test_a_malformed_synchronous_answer_is_a_failed_attempt(
    gateway: Gateway, api: httpx.AsyncClient, order: Order, payer: PayerStandIn
) -> None:
    unusable = {"resourceType": "ClaimResponse", "use": "preauthorization", "item": [{"extension": 1}]}
    payer.canned.append({"resourceType": "Bundle", "type": "collection", "entry": [{"resource": unusable}]})
    task = await request_pa(api, order)
    assert business(task) == "submission-error"
    assert "could not be used" in task["statusReason"]["text"]


async def test_one_appeal_at_a_time(api: httpx.AsyncClient, order: Order, payer: PayerStandIn) -> None:
    payer.scenarios.extend(["denied", "pended", "pended"])
    denied = await request_pa(api, order)
    first = await api.post(f"/fhir/Task/{denied['id']}/$appeal")
    assert first.status_code == 200 and business(first.json()) == "pended"
    second = await api.post(f"/fhir/Task/{denied['id']}/$appeal")
    assert second.status_code == 409
    assert "already has an appeal that is pended" in second.json()["issue"][0]["diagnostics"]
    assert len(payer.on("$submit")) == 2


async def test_the_lifecycle_cannot_be_dodged_by_dropping_the_task_code(
    api: httpx.AsyncClient, order: Order, payer: PayerStandIn
) -> None:
    payer.scenarios.append("denied")
    task = await request_pa(api, order)
    plain = {k: v for k, v in task.items() if k not in ("code", "meta")}
    answer = await api.put(f"/fhir/Task/{task['id']}", json=plain)
    assert answer.status_code == 422
    assert answer.json()["issue"][0]["expression"] == ["Task.code"]


async def test_a_withdrawal_is_not_a_payer_decision(
    gateway: Gateway, api: httpx.AsyncClient, order: Order, payer: PayerStandIn
) -> None:
    payer.scenarios.append("pended")
    task = await request_pa(api, order)
    assert (await api.post(f"/fhir/Task/{task['id']}/$cancel")).status_code == 200
    (row,) = await gateway.payer_worker.compute_turnaround()
    assert (row.decided, row.pending) == (0, 0)


async def test_bad_operation_parameters_are_a_400(api: httpx.AsyncClient, order: Order) -> None:
    for body in ({"resourceType": "Parameters", "parameter": 5}, {"resourceType": "Patient"}):
        answer = await api.post(f"/fhir/MedicationRequest/{order.request}/$request-prior-auth", json=body)
        assert answer.status_code == 400, answer.text
    unknown = {"resourceType": "Parameters", "parameter": [{"name": "color", "valueCode": "blue"}]}
    answer = await api.post(f"/fhir/MedicationRequest/{order.request}/$request-prior-auth", json=unknown)
    assert answer.status_code == 400 and "color" in answer.json()["issue"][0]["diagnostics"]


async def test_a_client_bound_to_a_payer_answers_only_that_payers_requests(
    gateway: Gateway, api: httpx.AsyncClient, client_factory: ClientFactory, order: Order, payer: PayerStandIn
) -> None:
    from gateway.pa.payers import parse_payers

    payer.scenarios.extend(["pended", "pended"])
    task = await request_pa(api, order)
    ours = await client_factory("system/ClaimResponse.c")
    theirs = await client_factory("system/ClaimResponse.c")
    standin = gateway.priorauth.payers.payers[0].model_dump()
    other = {
        "name": "other-plan",
        "base_url": "https://other.example/fhir",
        "insurers": ["Organization/none"],
    }
    gateway.priorauth.payers = parse_payers(
        {
            "payers": [
                {**standin, "clients": [client_id_of(ours)]},
                {**other, "clients": [client_id_of(theirs)]},
            ]
        }
    )
    row = f"task_id,decision,authorization_number\n{task['id']},approved,A-1\n"
    refused = await theirs.post("/payer/files", content=row.encode())
    assert refused.status_code == 403
    assert "not a request to other-plan" in refused.json()["issue"][0]["diagnostics"]
    assert business((await api.get(f"/fhir/Task/{task['id']}")).json()) == "pended"
    accepted = await ours.post("/payer/files", content=row.encode())
    assert accepted.status_code == 200, accepted.text
    assert business((await api.get(f"/fhir/Task/{task['id']}")).json()) == "approved"
