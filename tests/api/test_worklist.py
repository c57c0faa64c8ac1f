"""`GET /fhir/Task/$worklist`: a pharmacist's work ranked with its reasons, on both backends.

The data is written through the API as the gateway's writers shape it (alert and lab-overdue Tasks as in
`gateway.pharmacist.vocabulary`, PA Tasks as in `gateway.pa.tasks`, the pharmacist-assignment CareTeam as
`$match-pharmacist` writes it).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from gateway.pa.lifecycle import TASK_STATUS, TASK_TYPE_SYSTEM
from gateway.pa.tasks import DUE_EXTENSION
from gateway.pharmacist import vocabulary as v
from gateway.service.gateway import Gateway
from gateway.service.pharmacist.matching import CARE_TEAM_CATEGORY, PHARMACIST_ASSIGNMENT
from tests import factories as f
from tests.conftest import ClientFactory

pytestmark = pytest.mark.asyncio

SNOMED = "http://snomed.info/sct"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
UCUM = "http://unitsofmeasure.org"
# Everything the worklist may read, and nothing else.
READER = (
    "system/Task.r system/CareTeam.r system/Practitioner.r system/PractitionerRole.r"
    " system/MedicationDispense.r system/MedicationRequest.r system/Medication.r"
)


def at(days: float = 0) -> str:
    """An instant `days` from now (negative: in the past)."""
    moment = datetime.now(UTC) + timedelta(days=days)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def day(days: float = 0) -> str:
    return at(days)[:10]


async def create(api: httpx.AsyncClient, resource: dict[str, Any]) -> str:
    answer = await api.post(f"/fhir/{resource['resourceType']}", json=resource)
    assert answer.status_code == 201, answer.text
    return str(answer.json()["id"])


async def pharmacist(api: httpx.AsyncClient, family: str) -> tuple[str, str]:
    """A Practitioner and their pharmacist PractitionerRole: their ids."""
    practitioner = await create(api, {"resourceType": "Practitioner", "name": [{"family": family}]})
    role = await create(
        api,
        {
            "resourceType": "PractitionerRole",
            "active": True,
            "practitioner": {"reference": f"Practitioner/{practitioner}"},
            "code": [{"coding": [{"system": SNOMED, "code": "46255001"}]}],
        },
    )
    return practitioner, role


async def assign(api: httpx.AsyncClient, patient: str, role: str, *, ended: bool = False) -> str:
    """The patient's pharmacist-assignment CareTeam with the role as participant (ended: a past one)."""
    period = {"start": at(-60), **({"end": at(-1)} if ended else {})}
    return await create(
        api,
        {
            "resourceType": "CareTeam",
            "status": "active",
            "category": [{"coding": [{"system": CARE_TEAM_CATEGORY, "code": PHARMACIST_ASSIGNMENT}]}],
            "subject": {"reference": f"Patient/{patient}"},
            "participant": [
                {
                    "role": [{"coding": [{"system": SNOMED, "code": "46255001"}]}],
                    "member": {"reference": f"PractitionerRole/{role}"},
                    "period": period,
                }
            ],
        },
    )


async def alert(
    api: httpx.AsyncClient,
    patient: str,
    severity: str,
    *,
    authored: str | None = None,
    observation: str | None = None,
    rule: str = "clozapine-anc",
    owner: str | None = None,
    status: str = "ready",
    description: str | None = None,
) -> str:
    """An alert work item as `vocabulary` shapes it (no result value in the Task)."""
    task: dict[str, Any] = {
        "resourceType": "Task",
        "status": status,
        "intent": "order",
        "priority": v.PRIORITY_OF[severity],
        "code": {"coding": [{"system": v.WORK_ITEM_TYPE, "code": v.ALERT}]},
        "for": {"reference": f"Patient/{patient}"},
        "authoredOn": authored or at(-1),
        "reasonCode": {"coding": [{"system": v.ALERT_RULE, "code": rule}]},
    }
    if observation:
        task["focus"] = {"reference": f"Observation/{observation}"}
    if owner:
        task["owner"] = {"reference": owner}
    if description:
        task["description"] = description
    return await create(api, task)


async def lab_overdue(api: httpx.AsyncClient, patient: str, *, priority: str, due: str) -> str:
    return await create(
        api,
        {
            "resourceType": "Task",
            "status": "ready",
            "intent": "order",
            "priority": priority,
            "code": {"coding": [{"system": v.WORK_ITEM_TYPE, "code": v.LAB_OVERDUE}]},
            "for": {"reference": f"Patient/{patient}"},
            "authoredOn": at(-2),
            "reasonCode": {"coding": [{"system": v.ALERT_RULE, "code": "clozapine-anc"}]},
            "input": [
                {"type": {"text": "lab"}, "valueCodeableConcept": {"text": "ANC"}},
                {"type": {"text": "due"}, "valueDate": due},
            ],
        },
    )


async def order(api: httpx.AsyncClient, patient: str) -> str:
    return await create(api, f.medication_request(patient))


async def pa(
    api: httpx.AsyncClient,
    patient: str,
    request: str,
    business_status: str,
    *,
    due: str | None = None,
    period_end: str | None = None,
    modified: str | None = None,
    reason: str | None = None,
    **extra: Any,
) -> str:
    task = f.pa_task(
        patient,
        request,
        status=TASK_STATUS[business_status],
        business_status=business_status,
        authoredOn=at(-200),
        lastModified=modified or at(-1),
        owner={"reference": "Organization/payer-1"},
        **extra,
    )
    if due:
        task["extension"] = [{"url": DUE_EXTENSION, "valueDateTime": due}]
    if period_end:
        task["restriction"] = {"period": {"start": day(-300), "end": period_end}}
    if reason:
        task["statusReason"] = {"text": reason}
    return await create(api, task)


async def dispense(api: httpx.AsyncClient, patient: str, handed_over: str, days_supply: int = 30) -> str:
    return await create(
        api,
        {
            "resourceType": "MedicationDispense",
            "status": "completed",
            "medicationCodeableConcept": {
                "coding": [{"system": RXNORM, "code": "2555"}],
                "text": "clozapine 100 MG Oral Tablet",
            },
            "subject": {"reference": f"Patient/{patient}"},
            "whenHandedOver": handed_over,
            "daysSupply": {"value": days_supply, "unit": "days", "system": UCUM, "code": "d"},
        },
    )


async def worklist(client: httpx.AsyncClient, **params: str) -> dict[str, Any]:
    answer = await client.get("/fhir/Task/$worklist", params=params)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = answer.json()
    return body


def tasks(body: dict[str, Any]) -> list[str]:
    return [row["task"] for row in body["rows"]]


def reasons(row: dict[str, Any]) -> dict[str, str]:
    return {r["code"]: r["text"] for r in row["patientRisk"]["reasons"]}


async def test_critical_alert_outranks_moderate_and_each_row_says_why(api: httpx.AsyncClient) -> None:
    practitioner, role = await pharmacist(api, "Garcia")
    patient = await create(api, f.patient())
    team = await assign(api, patient, role)
    moderate = await alert(api, patient, "moderate", authored=at(-5))
    critical = await alert(api, patient, "critical", authored=at(-1))

    body = await worklist(api, owner=f"Practitioner/{practitioner}")

    assert tasks(body) == [f"Task/{critical}", f"Task/{moderate}"]
    assert body["owner"] == f"Practitioner/{practitioner}" and body["total"] == 2 and body["next"] is None
    first, second = body["rows"]
    assert first["rank"] == 1 and second["rank"] == 2
    assert first["kind"] == "alert" and first["severity"] == "critical"
    assert first["patient"] == f"Patient/{patient}"
    assert first["why"].startswith("open critical alert: ")
    assert f"pharmacist is PractitionerRole/{role} (CareTeam/{team})" in first["why"]
    assert first["via"] == {
        "code": "care-team",
        "text": f"Patient/{patient}'s pharmacist is PractitionerRole/{role} (CareTeam/{team})",
        "reference": f"CareTeam/{team}",
    }
    assert first["rankReason"].startswith("critical severity; no deadline; patient risk ")
    assert second["rankReason"].startswith("moderate severity")
    assert first["summary"]["rule"] == "clozapine-anc" and first["summary"]["drug"] == "clozapine"
    assert first["summary"]["text"] == "monitoring result out of band on clozapine (rule clozapine-anc)"


async def test_overdue_pa_ranks_by_due_date(api: httpx.AsyncClient) -> None:
    practitioner, role = await pharmacist(api, "Nguyen")
    patient = await create(api, f.patient())
    await assign(api, patient, role)
    request = await order(api, patient)
    late = await pa(api, patient, request, "pended", due=at(-1))
    later = await pa(api, patient, request, "submitted", due=at(-3))
    await pa(api, patient, request, "pended", due=at(2))  # not due yet: not on the list

    body = await worklist(api, owner=f"Practitioner/{practitioner}", kind="pa")

    assert tasks(body) == [f"Task/{later}", f"Task/{late}"]  # the longest overdue first
    first = body["rows"][0]
    assert first["state"] == "overdue" and first["severity"] == "moderate"
    assert first["why"].startswith("the payer's prior-authorization decision is overdue")
    assert "moderate severity; due 3 d ago; patient risk" in first["rankReason"]
    assert first["summary"]["drug"] == "clozapine 100 MG Oral Tablet"
    assert first["summary"]["text"].startswith("PA clozapine 100 MG Oral Tablet; decision due ")
    assert "payer Organization/payer-1" in first["summary"]["text"]


async def test_pa_states_that_need_the_pharmacist(api: httpx.AsyncClient) -> None:
    practitioner, role = await pharmacist(api, "Okafor")
    patient = await create(api, f.patient())
    await assign(api, patient, role)
    request = await order(api, patient)
    info = await pa(api, patient, request, "info-requested", due=at(2), reason="Send the last ANC")
    denied = await pa(api, patient, request, "denied", reason="Step therapy not met")
    appealed = await pa(api, patient, request, "denied", reason="Not covered")
    await pa(api, patient, request, "appeal-submitted", due=at(5), partOf=[{"reference": f"Task/{appealed}"}])
    await pa(api, patient, request, "denied", modified=at(-90), reason="Late")  # appeal window closed
    expiring = await pa(api, patient, request, "approved", period_end=day(10))
    await pa(api, patient, request, "approved", period_end=day(100))  # not ending soon
    renewed = await pa(api, patient, request, "approved", period_end=day(5))
    renewal = f.pa_task(
        patient,
        request,
        status="requested",
        business_status="submitted",
        basedOn=[{"reference": f"Task/{renewed}"}],
        extension=[{"url": DUE_EXTENSION, "valueDateTime": at(6)}],
    )
    renewal["code"] = {"coding": [{"system": TASK_TYPE_SYSTEM, "code": "prior-authorization-renewal"}]}
    await create(api, renewal)

    body = await worklist(api, owner=f"Practitioner/{practitioner}", kind="pa")

    states = {row["task"]: row["state"] for row in body["rows"]}
    assert states == {
        f"Task/{info}": "info-requested",
        f"Task/{denied}": "denied-appealable",
        f"Task/{expiring}": "expiring",
    }
    by_task = {row["task"]: row for row in body["rows"]}
    assert by_task[f"Task/{info}"]["summary"]["what"] == "payer asks: Send the last ANC"
    assert by_task[f"Task/{denied}"]["summary"]["what"] == "denied: Step therapy not met"
    assert by_task[f"Task/{expiring}"]["summary"]["what"] == f"authorization ends {day(10)}"
    assert by_task[f"Task/{expiring}"]["due"] == f"{day(10)}T00:00:00Z"
    # info-requested and denied rank high, before the moderate expiring one; both with a deadline
    assert tasks(body)[-1] == f"Task/{expiring}"
    assert {r["severity"] for r in body["rows"][:2]} == {"high"}
    # A denied or expiring PA is patient risk.
    assert reasons(body["rows"][0])["pa-at-risk"] == "PA denied or expiring"


async def test_patient_risk_breaks_ties_and_names_its_reasons(api: httpx.AsyncClient) -> None:
    practitioner, role = await pharmacist(api, "Haddad")
    calm = await create(api, f.patient())
    risky = await create(api, f.patient())
    await assign(api, calm, role)
    await assign(api, risky, role)
    calm_alert = await alert(api, calm, "moderate", authored=at(-4))  # older: would win on age alone
    risky_alert = await alert(api, risky, "moderate", authored=at(-1))
    await order(api, risky)  # clozapine: a specialty drug
    await dispense(api, risky, day(-170))
    await dispense(api, risky, day(-100))  # 60 of 171 days covered
    await lab_overdue(api, risky, priority="routine", due=day(-3))
    # A critical ANC: the gateway opens a critical alert of its own for it (gateway.pharmacist.alerts).
    await create(api, f.lab_observation(risky, code="751-8", value=300, unit="/uL", effective=at(-2)))

    body = await worklist(api, owner=f"Practitioner/{practitioner}", kind="alert", _count="10")

    opened, first, second = body["rows"]
    assert opened["severity"] == "critical" and opened["patient"] == f"Patient/{risky}"
    assert opened["task"].startswith("Task/alert-") and opened["summary"]["rule"] == "clozapine-anc"
    assert opened["via"] == {  # the gateway made the patient's pharmacist its owner
        "code": "owner",
        "text": f"the Task's owner is PractitionerRole/{role}",
        "reference": f"PractitionerRole/{role}",
    }
    assert [first["task"], second["task"]] == [f"Task/{risky_alert}", f"Task/{calm_alert}"]
    assert reasons(first) == {
        "low-pdc": "PDC 35 % < 80 %",
        "overdue-labs": "1 overdue lab",
        "critical-results": "1 critical result in 30 d",
        "specialty-drugs": "1 specialty drug",
    }
    assert first["patientRisk"]["score"] == 3 + 2 + 3 + 1
    assert second["patientRisk"] == {"score": 0, "reasons": []}
    assert "patient risk 9 (PDC 35 % < 80 %, 1 overdue lab, 1 critical result in 30 d" in first["rankReason"]
    assert body["riskNotAssessed"] == []


async def test_a_token_without_observation_read_learns_nothing_of_observations(
    api: httpx.AsyncClient, client_factory: ClientFactory
) -> None:
    practitioner, role = await pharmacist(api, "Kowalski")
    patient = await create(api, f.patient())
    await assign(api, patient, role)
    await order(api, patient)  # clozapine: the ANC below is a drug-lab alert
    # The gateway opens the alert for this result (gateway.pharmacist.alerts); the value is not in the Task.
    anc = await create(api, f.lab_observation(patient, code="751-8", value=300, unit="/uL", effective=at(-1)))
    mine = await alert(api, patient, "low", observation=anc, description="ANC needs a look")

    full = await worklist(api, owner=f"Practitioner/{practitioner}")
    narrow = await worklist(await client_factory(READER), owner=f"Practitioner/{practitioner}")

    assert tasks(full) == tasks(narrow) and len(tasks(full)) == 2 and tasks(full)[1] == f"Task/{mine}"
    opened = full["rows"][0]
    assert opened["severity"] == "critical" and opened["summary"]["rule"] == "clozapine-anc"
    assert opened["summary"]["what"].startswith("751-8 300 /uL")  # quoted from the Observation
    assert "critical-results" in reasons(opened)
    assert full["rows"][1]["summary"]["text"].startswith("751-8 300 /uL")
    for row in narrow["rows"]:
        assert "critical-results" not in reasons(row)
        assert " 300 " not in str(row) and "751-8" not in str(row)
        assert f"Observation/{anc}" not in str(row)
    assert narrow["rows"][0]["summary"]["what"].startswith(
        "clozapine monitoring (clozapine-anc) - rule band < 500 /uL"
    )
    assert narrow["rows"][1]["summary"]["text"] == "ANC needs a look on clozapine (rule clozapine-anc)"
    assert narrow["riskNotAssessed"] == [
        {"code": "critical-results", "text": "not assessed: needs system/Observation.r"}
    ]


async def test_a_token_without_order_or_dispense_read_gets_no_drug_facts(
    api: httpx.AsyncClient, client_factory: ClientFactory
) -> None:
    practitioner, role = await pharmacist(api, "Lindqvist")
    patient = await create(api, f.patient())
    await assign(api, patient, role)
    request = await order(api, patient)
    await dispense(api, patient, day(-170))
    await dispense(api, patient, day(-100))
    denied = await pa(api, patient, request, "denied", reason="Not on formulary")
    narrow = await client_factory(
        "system/Task.r system/CareTeam.r system/Practitioner.r system/PractitionerRole.r"
    )

    full = await worklist(api, owner=f"Practitioner/{practitioner}")
    body = await worklist(narrow, owner=f"Practitioner/{practitioner}")

    assert tasks(full) == tasks(body) == [f"Task/{denied}"]
    assert set(reasons(full["rows"][0])) == {"low-pdc", "pa-at-risk", "specialty-drugs"}
    row = body["rows"][0]
    assert reasons(row) == {"pa-at-risk": "PA denied or expiring"}
    assert row["summary"]["drug"] is None and "clozapine" not in str(row)
    assert [g["code"] for g in body["riskNotAssessed"]] == ["low-pdc", "critical-results", "specialty-drugs"]


async def test_a_deleted_owner_is_gone(api: httpx.AsyncClient) -> None:
    practitioner, role = await pharmacist(api, "Moreau")
    assert (await api.delete(f"/fhir/PractitionerRole/{role}")).status_code in (200, 204)
    answer = await api.get("/fhir/Task/$worklist", params={"owner": f"PractitionerRole/{role}"})
    assert answer.status_code == 410, answer.text
    assert (await worklist(api, owner=f"Practitioner/{practitioner}"))["rows"] == []


async def test_scopes_checked_before_anything_is_read(
    api: httpx.AsyncClient, client_factory: ClientFactory
) -> None:
    practitioner, _ = await pharmacist(api, "Ito")
    no_care_team = await client_factory("system/Task.r system/Practitioner.r system/PractitionerRole.r")
    answer = await no_care_team.get("/fhir/Task/$worklist", params={"owner": f"Practitioner/{practitioner}"})
    assert answer.status_code == 403
    assert "system/CareTeam.r" in answer.json()["issue"][0]["diagnostics"]
    no_task = await client_factory("system/CareTeam.r")
    answer = await no_task.get("/fhir/Task/$worklist", params={"unassigned": "true"})
    assert answer.status_code == 403 and "system/Task.r" in answer.text


async def test_other_pharmacists_patients_do_not_appear(api: httpx.AsyncClient) -> None:
    mine, my_role = await pharmacist(api, "Adams")
    theirs, their_role = await pharmacist(api, "Baker")
    my_patient = await create(api, f.patient())
    their_patient = await create(api, f.patient())
    former = await create(api, f.patient())
    await assign(api, my_patient, my_role)
    await assign(api, their_patient, their_role)
    await assign(api, former, my_role, ended=True)  # my part in that team has ended
    my_alert = await alert(api, my_patient, "high")
    their_alert = await alert(api, their_patient, "critical")
    await alert(api, former, "critical")
    covering = await alert(api, their_patient, "low", owner=f"PractitionerRole/{my_role}")
    closed = await alert(api, my_patient, "critical", status="cancelled")

    body = await worklist(api, owner=f"Practitioner/{mine}")

    assert tasks(body) == [f"Task/{my_alert}", f"Task/{covering}"]
    assert f"Task/{closed}" not in tasks(body)
    assert body["rows"][1]["via"] == {
        "code": "owner",
        "text": f"the Task's owner is PractitionerRole/{my_role}",
        "reference": f"PractitionerRole/{my_role}",
    }
    theirs_body = await worklist(api, owner=f"Practitioner/{theirs}")
    assert tasks(theirs_body) == [f"Task/{their_alert}", f"Task/{covering}"]


async def test_owner_may_be_a_role_or_a_care_team(api: httpx.AsyncClient) -> None:
    practitioner, role = await pharmacist(api, "Chen")
    patient = await create(api, f.patient())
    team = await assign(api, patient, role)
    task = await alert(api, patient, "high")
    pool = await create(
        api,
        {
            "resourceType": "CareTeam",
            "status": "active",
            "name": "Oncology pharmacists",
            "participant": [{"member": {"reference": f"Practitioner/{practitioner}"}}],
        },
    )

    by_role = await worklist(api, owner=f"PractitionerRole/{role}")
    by_pool = await worklist(api, owner=f"CareTeam/{pool}")
    by_team = await worklist(api, owner=f"CareTeam/{team}")

    assert tasks(by_role) == tasks(by_pool) == tasks(by_team) == [f"Task/{task}"]
    assert by_team["rows"][0]["via"]["code"] == "care-team"


async def test_unassigned_patients_and_their_work(api: httpx.AsyncClient) -> None:
    practitioner, role = await pharmacist(api, "Dubois")
    alone = await create(api, f.patient())
    looked_after = await create(api, f.patient())
    await assign(api, looked_after, role)
    unassigned_task = await create(
        api,
        {
            "resourceType": "Task",
            "status": "requested",
            "intent": "order",
            "priority": "routine",
            "code": {"coding": [{"system": v.WORK_ITEM_TYPE, "code": "unassigned-patient"}]},
            "focus": {"reference": f"Patient/{alone}"},
            "for": {"reference": f"Patient/{alone}"},
            "authoredOn": at(-3),
            "reasonCode": {"text": "none-eligible: no pharmacist licensed in TX"},
        },
    )
    stale = await create(
        api,
        {
            "resourceType": "Task",
            "status": "requested",
            "intent": "order",
            "code": {"coding": [{"system": v.WORK_ITEM_TYPE, "code": "unassigned-patient"}]},
            "for": {"reference": f"Patient/{looked_after}"},
            "owner": {"reference": f"PractitionerRole/{role}"},
        },
    )
    lonely_alert = await alert(api, alone, "high")
    await alert(api, looked_after, "critical")

    body = await worklist(api, unassigned="true")

    assert body["owner"] is None and body["unassigned"] is True
    assert tasks(body) == [f"Task/{lonely_alert}", f"Task/{unassigned_task}"]
    row = body["rows"][1]
    assert row["kind"] == "unassigned-patient" and row["severity"] == "low"
    assert row["summary"]["what"] == "none-eligible: no pharmacist licensed in TX"
    assert row["via"]["code"] == "no-pharmacist"
    mine = await worklist(api, owner=f"Practitioner/{practitioner}")
    assert f"Task/{stale}" not in tasks(mine)  # the patient has a pharmacist by now
    assert f"Task/{unassigned_task}" not in tasks(mine)


async def test_pages_follow_the_ranking_without_repeats(api: httpx.AsyncClient) -> None:
    practitioner, role = await pharmacist(api, "Evans")
    patient = await create(api, f.patient())
    await assign(api, patient, role)
    made = [await alert(api, patient, "moderate", authored=at(-10 + i)) for i in range(5)]

    seen: list[dict[str, Any]] = []
    body = await worklist(api, owner=f"Practitioner/{practitioner}", _count="2")
    while True:
        seen += body["rows"]
        assert body["total"] == 5
        if body["next"] is None:
            break
        answer = await api.get(body["next"].replace("http://gateway.test", ""))
        assert answer.status_code == 200, answer.text
        body = answer.json()

    assert [r["task"] for r in seen] == [f"Task/{t}" for t in made]  # same tier, no due: oldest first
    assert [r["rank"] for r in seen] == [1, 2, 3, 4, 5]
    assert "opened 10 d ago (older first)" in seen[0]["rankReason"]


async def test_filters_by_kind_and_patient(api: httpx.AsyncClient) -> None:
    practitioner, role = await pharmacist(api, "Fischer")
    one = await create(api, f.patient())
    two = await create(api, f.patient())
    await assign(api, one, role)
    await assign(api, two, role)
    a1 = await alert(api, one, "high")
    await alert(api, two, "high")
    lab = await lab_overdue(api, one, priority="stat", due=day(-2))

    owner = f"Practitioner/{practitioner}"
    assert tasks(await worklist(api, owner=owner, patient=f"Patient/{one}")) == [f"Task/{lab}", f"Task/{a1}"]
    labs = await worklist(api, owner=owner, kind="lab-overdue")
    assert tasks(labs) == [f"Task/{lab}"]
    row = labs["rows"][0]
    assert row["severity"] == "critical" and row["due"] == f"{day(-2)}T00:00:00Z"
    assert row["summary"]["text"] == f"ANC due {day(-2)} for clozapine (rule clozapine-anc)"
    both = await worklist(api, owner=owner, kind="alert,lab-overdue", patient=one)
    assert len(both["rows"]) == 2


async def test_labs_the_monitoring_calendar_finds_overdue_are_rows(
    gateway: Gateway, api: httpx.AsyncClient
) -> None:
    practitioner, role = await pharmacist(api, "Schmidt")
    patient = await create(api, f.patient())
    await assign(api, patient, role)
    await create(api, f.medication_request(patient, authoredOn=day(-1)))  # clozapine: weekly ANC
    plans = (await api.get("/fhir/CarePlan", params={"patient": patient})).json()["entry"]
    first_lab = plans[0]["resource"]["activity"][0]["detail"]["scheduledPeriod"]
    # Two weeks on, no result has come: the sweep opens lab-overdue Tasks (gateway.pharmacist.calendar).
    later = datetime.fromisoformat(first_lab["end"]).date() + timedelta(days=8)
    assert await gateway.monitoring.sweep(later) == 2

    body = await worklist(api, owner=f"Practitioner/{practitioner}", kind="lab-overdue")

    rows = body["rows"]
    assert [r["kind"] for r in rows] == ["lab-overdue", "lab-overdue"]
    assert {r["severity"] for r in rows} == {"high"}  # ANC can be a critical value: urgent when missed
    first = rows[0]
    assert rows[0]["due"] < rows[1]["due"]  # the earliest deadline first
    assert first["summary"]["text"] == f"751-8 due {first_lab['start']} for clozapine (rule clozapine-anc)"
    assert first["due"] == f"{first_lab['end']}T00:00:00Z"  # the last day a result counted
    assert first["via"]["code"] == "owner"  # the sweep made the patient's pharmacist its owner
    assert reasons(first)["overdue-labs"] == "2 overdue labs"


@pytest.mark.parametrize(
    ("params", "status", "says"),
    [
        ({"owner": "Practitioner/x", "status": "ready"}, 400, "Unknown parameters for $worklist: status"),
        ({"owner": "Organization/x"}, 400, "owner must be a reference to a Practitioner"),
        ({"owner": "not a reference"}, 400, "owner must be a reference"),
        ({}, 400, "needs either owner="),
        ({"owner": "Practitioner/x", "unassigned": "true"}, 400, "needs either owner="),
        ({"unassigned": "yes"}, 400, "unassigned must be true or false"),
        ({"unassigned": "true", "kind": "chores"}, 400, "unknown kind chores"),
        ({"unassigned": "true", "_count": "-1"}, 400, "_count"),
        ({"unassigned": "true", "_cursor": "garbage!"}, 400, "_cursor is not valid"),
        ({"owner": "Practitioner/nobody"}, 404, "Practitioner/nobody is not known"),
    ],
)
async def test_bad_requests(api: httpx.AsyncClient, params: dict[str, str], status: int, says: str) -> None:
    answer = await api.get("/fhir/Task/$worklist", params=params)
    assert answer.status_code == status, answer.text
    outcome = answer.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert says in outcome["issue"][0]["diagnostics"]


async def test_audited_as_a_read_naming_the_tasks_returned(
    gateway: Gateway, api: httpx.AsyncClient, client_factory: ClientFactory
) -> None:
    practitioner, role = await pharmacist(api, "Gomez")
    patient = await create(api, f.patient())
    await assign(api, patient, role)
    task = await alert(api, patient, "high")
    await worklist(api, owner=f"Practitioner/{practitioner}")

    await gateway.audit.flush()
    auditor = await client_factory("audit/events.read")
    answer = await auditor.get("/fhir/AuditEvent", params={"entity": f"Task/{task}"})
    assert answer.status_code == 200, answer.text
    events = [e["resource"] for e in answer.json().get("entry", [])]
    reads = [e for e in events if e["action"] == "R"]
    assert len(reads) == 1
    assert reads[0]["subtype"][0]["code"] == "operation"
    entities = {e["what"]["reference"] for e in reads[0]["entity"] if "what" in e}
    assert entities == {f"Task/{task}", f"Patient/{patient}", f"Practitioner/{practitioner}"}
    descriptions = [e.get("description") for e in reads[0]["entity"]]
    assert f"$worklist?owner=Practitioner%2F{practitioner}; returned: alert" in descriptions


async def test_capability_statement_lists_the_operation(api: httpx.AsyncClient) -> None:
    statement = (await api.get("/fhir/metadata")).json()
    task = next(r for r in statement["rest"][0]["resource"] if r["type"] == "Task")
    definition = "https://specialty-gateway.org/fhir/OperationDefinition/worklist"
    assert {"name": "worklist", "definition": definition} in task["operation"]
