"""The monitoring calendar, both backends: the CarePlan a specialty order gets, results completing its
activities, the sweep's lab-overdue Tasks and topic (on a simulated clock), and order changes."""

from __future__ import annotations

import itertools
from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx

from gateway.service.gateway import Gateway
from tests import factories as f
from tests.api.test_subscription_topics import events, subscribe

GATEWAY = "https://specialty-gateway.org/fhir"
CALENDARS = {"category": f"{GATEWAY}/CodeSystem/care-plan-category|monitoring-calendar"}
OVERDUE = {"code": f"{GATEWAY}/CodeSystem/work-item-type|lab-overdue"}


def today() -> date:
    return datetime.now(UTC).date()


async def create(api: httpx.AsyncClient, resource: dict[str, Any]) -> str:
    answer = await api.post(f"/fhir/{resource['resourceType']}", json=resource)
    assert answer.status_code == 201, answer.text
    return str(answer.json()["id"])


async def found(api: httpx.AsyncClient, rtype: str, **params: str) -> list[dict[str, Any]]:
    bundle = (await api.get(f"/fhir/{rtype}", params=params)).json()
    return [e["resource"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"]


async def calendar(api: httpx.AsyncClient, patient: str) -> dict[str, Any]:
    (plan,) = await found(api, "CarePlan", patient=patient, **CALENDARS)
    return plan


def anc(patient: str, day: date, value: float = 2.5) -> dict[str, Any]:
    return f.lab_observation(
        patient, code="751-8", value=value, unit="10*3/uL", effective=f"{day.isoformat()}T08:00:00Z"
    )


def due(plan: dict[str, Any]) -> list[tuple[str, str]]:
    return [(a["detail"]["scheduledPeriod"]["start"], a["detail"]["status"]) for a in plan["activity"]]


async def clozapine(api: httpx.AsyncClient, start: date | None = None) -> tuple[str, str]:
    patient = await create(api, f.patient())
    order = await create(api, f.medication_request(patient, authoredOn=(start or today()).isoformat()))
    return patient, order


async def set_status(api: httpx.AsyncClient, order: str, status: str, **changes: Any) -> None:
    request = (await api.get(f"/fhir/MedicationRequest/{order}")).json()
    answer = await api.put(f"/fhir/MedicationRequest/{order}", json={**request, "status": status, **changes})
    assert answer.status_code == 200, answer.text


async def test_an_active_clozapine_order_gets_its_calendar(api: httpx.AsyncClient) -> None:
    start = today()
    patient, order = await clozapine(api, start)
    plan = await calendar(api, patient)
    assert plan["status"] == "active" and plan["supportingInfo"] == [
        {"reference": f"MedicationRequest/{order}"}
    ]
    dates = [d for d, _ in due(plan)]
    assert dates[0] == start.isoformat()  # the baseline ANC
    assert dates[1] == (start + timedelta(days=7)).isoformat()  # weekly for the first 6 months
    gaps = {(date.fromisoformat(b) - date.fromisoformat(a)).days for a, b in itertools.pairwise(dates[1:26])}
    assert gaps == {7}
    later = date.fromisoformat(dates[-1]) - date.fromisoformat(dates[-2])
    assert later.days == 14  # every 2 weeks to month 12 (12 months: the order's calendar)
    first = plan["activity"][0]["detail"]
    assert first["code"]["coding"][0]["code"] == "751-8" and first["status"] == "scheduled"
    assert first["scheduledPeriod"]["end"] == (start + timedelta(days=2)).isoformat()  # 2 days' grace


async def test_a_result_completes_its_activity_and_a_baseline_drawn_before_counts(
    api: httpx.AsyncClient,
) -> None:
    start = today()
    patient = await create(api, f.patient())
    drawn = await create(api, anc(patient, start - timedelta(days=3)))  # before the order
    await create(api, f.medication_request(patient, authoredOn=start.isoformat()))
    plan = await calendar(api, patient)
    assert plan["activity"][0]["detail"]["status"] == "completed"
    assert plan["activity"][0]["outcomeReference"] == [{"reference": f"Observation/{drawn}"}]
    week = await create(api, anc(patient, start + timedelta(days=6)))
    plan = await calendar(api, patient)
    assert (
        due(plan)[1][1] == "completed"
        and plan["activity"][1]["outcomeReference"][0]["reference"] == f"Observation/{week}"
    )
    assert due(plan)[2][1] == "scheduled"


async def test_a_missed_weekly_anc_opens_one_overdue_alert_heard_once_and_the_next_result_completes(
    api: httpx.AsyncClient, gateway: Gateway
) -> None:
    start = today()
    patient, order = await clozapine(api, start)
    sub_id = await subscribe(api, "monitoring-overdue", f"Task?patient=Patient/{patient}")
    await create(api, anc(patient, start))  # the baseline, on time
    assert (
        await gateway.monitoring.sweep(start + timedelta(days=10)) == 1
    )  # week 1: due day 7, counts to day 9
    assert (
        await gateway.monitoring.sweep(start + timedelta(days=11)) == 0
    )  # the same miss is not opened twice
    (task,) = await found(api, "Task", patient=patient, **OVERDUE)
    assert task["status"] == "ready" and task["priority"] == "urgent"
    assert task["basedOn"] == [{"reference": f"MedicationRequest/{order}"}]
    assert task["focus"]["reference"].startswith("CarePlan/")
    assert {"type": {"text": "due"}, "valueDate": (start + timedelta(days=7)).isoformat()} in task["input"]
    fired = await events(api, sub_id)
    assert [e["focus"] for e in fired] == [f"Task/{task['id']}"]

    late = await create(api, anc(patient, start + timedelta(days=10)))
    plan = await calendar(api, patient)
    assert [s for _, s in due(plan)[:3]] == ["completed", "scheduled", "completed"]  # week 1 stays missed
    assert plan["activity"][2]["outcomeReference"][0]["reference"] == f"Observation/{late}"
    (closed,) = await found(api, "Task", patient=patient, **OVERDUE)
    assert closed["status"] == "completed" and f"Observation/{late}" in closed["note"][-1]["text"]
    assert len(await events(api, sub_id)) == 1  # closing it is not a new miss


async def test_a_held_order_owes_nothing_until_resumed(api: httpx.AsyncClient, gateway: Gateway) -> None:
    start = today()
    patient, order = await clozapine(api, start)
    await set_status(api, order, "on-hold")
    plan = await calendar(api, patient)
    assert plan["status"] == "on-hold" and {s for _, s in due(plan)} == {"on-hold"}
    assert await gateway.monitoring.sweep(start + timedelta(days=30)) == 0
    await set_status(api, order, "active")
    plan = await calendar(api, patient)
    assert plan["status"] == "active" and {s for _, s in due(plan)} == {"scheduled"}


async def test_a_stopped_order_cancels_what_is_left_and_its_overdue_alerts(
    api: httpx.AsyncClient, gateway: Gateway
) -> None:
    start = today()
    patient, order = await clozapine(api, start)
    await create(api, anc(patient, start))
    assert await gateway.monitoring.sweep(start + timedelta(days=10)) == 1
    await set_status(api, order, "stopped")
    plan = await calendar(api, patient)
    assert plan["status"] == "revoked"
    assert [s for _, s in due(plan)][:3] == ["completed", "cancelled", "cancelled"]
    (task,) = await found(api, "Task", patient=patient, **OVERDUE)
    assert task["status"] == "cancelled"
    assert await gateway.monitoring.sweep(start + timedelta(days=60)) == 0


async def test_a_result_touches_only_the_patients_active_calendars(api: httpx.AsyncClient) -> None:
    """The patient's other CarePlans (a revoked calendar, an active plan of another category) and another
    patient's calendar are not the result's to complete."""
    start = today()
    patient, _ = await clozapine(api, start)
    active = await calendar(api, patient)
    copy = {k: v for k, v in active.items() if k not in ("id", "meta")}
    revoked = await create(api, {**copy, "status": "revoked"})
    other_category = await create(
        api,
        {**copy, "category": [{"coding": [{"system": "http://hl7.org/fhir/us/core/CodeSystem/careplan-category",
                                            "code": "assess-plan"}]}]},
    )  # fmt: skip
    neighbour, _ = await clozapine(api, start)
    await create(api, anc(patient, start))
    (now,) = await found(api, "CarePlan", patient=patient, status="active", **CALENDARS)
    assert now["id"] == active["id"] and due(now)[0][1] == "completed"
    for untouched in (revoked, other_category):
        kept = (await api.get(f"/fhir/CarePlan/{untouched}")).json()
        assert kept["meta"]["versionId"] == "1" and due(kept)[0][1] == "scheduled"
    assert due(await calendar(api, neighbour))[0][1] == "scheduled"


async def test_a_dose_change_brings_the_next_lab_forward(api: httpx.AsyncClient) -> None:
    start = today()
    patient, order = await clozapine(api, start)
    await create(api, anc(patient, start))
    await set_status(api, order, "active", dosageInstruction=[{"text": "200 mg twice daily"}])
    plan = await calendar(api, patient)
    assert due(plan)[1] == (start.isoformat(), "scheduled")
    assert due(plan)[2][0] == (start + timedelta(days=14)).isoformat()


async def test_a_renewal_continues_the_therapy_rather_than_starting_over(api: httpx.AsyncClient) -> None:
    first = today() - timedelta(days=300)
    patient = await create(api, f.patient())
    old = await create(api, f.medication_request(patient, status="completed", authoredOn=first.isoformat()))
    renewal = await create(api, f.medication_request(patient, authoredOn=today().isoformat()))
    plans = await found(api, "CarePlan", patient=patient, **CALENDARS)
    assert [p["supportingInfo"][0]["reference"] for p in plans] == [f"MedicationRequest/{renewal}"]
    (plan,) = plans
    assert plan["period"]["start"] == first.isoformat() and old != renewal
    dates = [date.fromisoformat(d) for d, _ in due(plan)]
    assert dates[0] >= today() and (dates[1] - dates[0]).days == 14  # month 10 of therapy: every 2 weeks


async def test_the_timeline_shows_the_labs_owed_in_the_next_month(api: httpx.AsyncClient) -> None:
    start = today()
    patient, _ = await clozapine(api, start)
    await create(api, anc(patient, start))
    body = (await api.get(f"/fhir/Patient/{patient}/$timeline", params={"_count": "100"})).json()
    due_entries = [e for e in body["entries"] if e["kind"] == "monitoring-due"]
    # The baseline (done) and the weekly labs up to 31 days ahead: days 0, 7, 14, 21, 28.
    assert [e["time"] for e in due_entries] == [
        (start + timedelta(days=d)).isoformat() for d in (0, 7, 14, 21, 28)
    ]
    assert due_entries[0]["summary"] == "Lab due: clozapine monitoring lab baseline (completed)"
    assert due_entries[1]["summary"] == "Lab due: clozapine monitoring lab #1 (scheduled)"
    assert due_entries[0]["source"] == {"system": "specialty-gateway", "kind": "gateway"}
    assert due_entries[0]["id"].startswith("CarePlan/") and due_entries[0]["id"].endswith("/activity/0")
