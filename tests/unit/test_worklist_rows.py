"""Worklist rows from Tasks (`gateway.pharmacist.worklist`): kinds, PA states and deadlines, summaries that
quote an Observation only when one was handed in, adherence, and cursors that follow the ranking."""

from __future__ import annotations

import random
from datetime import UTC, date, datetime, timedelta
from fractions import Fraction
from typing import Any

import pytest

from gateway.fhir import dates
from gateway.mapping.monitoring import DrugLabRule, MonitoringRules
from gateway.pa.lifecycle import BUSINESS_STATUS_SYSTEM, TASK_TYPE_SYSTEM
from gateway.pa.tasks import DUE_EXTENSION
from gateway.pharmacist import vocabulary as v
from gateway.pharmacist import worklist as wl
from gateway.pharmacist.ranking import RiskInput, rank_worklist

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
NOW_US = dates.to_us(NOW)
WINDOWS = wl.PaWindows(NOW_US, expiring_days=30, appeal_days=60)
NOTHING = wl.Lookups({}, {})
RULES = MonitoringRules(
    drug_lab=(DrugLabRule("clozapine-anc", "clozapine", (), ("clozapine",), (), ()),),
)


def at(days: float) -> str:
    return (NOW + timedelta(days=days)).isoformat().replace("+00:00", "Z")


def pa(status: str, **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Task",
        "id": "pa-1",
        "status": "requested",
        "code": {"coding": [{"system": TASK_TYPE_SYSTEM, "code": "prior-authorization"}]},
        "businessStatus": {"coding": [{"system": BUSINESS_STATUS_SYSTEM, "code": status}]},
        "for": {"reference": "Patient/p1"},
        "focus": {"reference": "MedicationRequest/rx-1"},
        "authoredOn": at(-30),
        **extra,
    }


def due(days: float) -> list[dict[str, Any]]:
    return [{"url": DUE_EXTENSION, "valueDateTime": at(days)}]


def period_end(text: str) -> dict[str, Any]:
    return {"period": {"start": "2025-01-01", "end": text}}


def work(code: str, **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Task",
        "id": "t-1",
        "status": "ready",
        "code": {"coding": [{"system": v.WORK_ITEM_TYPE, "code": code}]},
        "for": {"reference": "Patient/p1"},
        "authoredOn": at(-1),
        **extra,
    }


def state(task: dict[str, Any], **flags: bool) -> tuple[str, str | None] | None:
    found = wl.pa_state(task, WINDOWS, decided_us=wl.decided_us(task, NOW_US), **flags)
    if found is None:
        return None
    if found[1] is None:
        return found[0], None
    return found[0], dates.from_us(found[1]).isoformat().replace("+00:00", "Z")


# ---------------------------------------------------------------------------------------------- PA states


@pytest.mark.parametrize(
    ("task", "flags", "expected"),
    [
        # the payer asked: listed whatever the clock says, due at the decision due date
        (pa("info-requested", extension=due(2)), {}, ("info-requested", at(2))),
        # waiting on the payer past its due date: overdue; before it: nothing to do
        (pa("pended", extension=due(-1)), {}, ("overdue", at(-1))),
        (pa("submitted", extension=due(1)), {}, None),
        (pa("payer-received"), {}, None),  # no due date: never overdue
        # denied: appealable for 60 days from the denial (lastModified), unless appealed
        (pa("denied", lastModified=at(-10)), {}, ("denied-appealable", at(50))),
        (pa("denied", lastModified=at(-10)), {"appealed": True}, None),
        (pa("denied", lastModified=at(-61)), {}, None),
        # approved: expiring when the period ends within 30 days, unless a renewal was submitted
        (pa("approved", restriction=period_end("2026-03-20")), {}, ("expiring", "2026-03-20T00:00:00Z")),
        (
            pa("approved-modified", restriction=period_end("2026-03-01")),
            {},
            ("expiring", "2026-03-01T00:00:00Z"),
        ),
        (pa("approved", restriction=period_end("2026-03-20")), {"renewed": True}, None),
        (pa("approved", restriction=period_end("2026-05-01")), {}, None),
        (pa("approved", restriction=period_end("2026-02-28")), {}, None),  # already ended
        (pa("approved"), {}, None),  # no period: nothing to expire
        # finished or not yet sent: nothing for the pharmacist here
        (pa("cancelled"), {}, None),
        (pa("expired"), {}, None),
        (pa("pa-required"), {}, None),
    ],
)
def test_pa_state_and_deadline(task: dict[str, Any], flags: dict[str, bool], expected: Any) -> None:
    assert state(task, **flags) == expected


# ------------------------------------------------------------------------------------------------ kinds


def test_kinds_by_code_and_other_tasks_are_not_rows() -> None:
    assert wl.kind_of(work(v.ALERT)) == "alert"
    assert wl.kind_of(work(v.LAB_OVERDUE)) == "lab-overdue"
    assert wl.kind_of(work("unassigned-patient")) == "unassigned-patient"
    assert wl.kind_of(pa("submitted")) == "pa"
    assert wl.kind_of(work("identity-review")) is None
    assert wl.kind_of({"resourceType": "Task", "code": {"text": "call the patient"}}) is None


def candidate(task: dict[str, Any], lookups: wl.Lookups = NOTHING) -> wl.Candidate | None:
    return wl.candidate(task, updated_us=NOW_US, windows=WINDOWS, rules=RULES, lookups=lookups)


@pytest.mark.parametrize(
    ("priority", "severity"),
    [("stat", "critical"), ("asap", "high"), ("urgent", "moderate"), ("routine", "low"), (None, "moderate")],
)
def test_alert_severity_comes_from_the_priority(priority: str | None, severity: str) -> None:
    task = work(v.ALERT, **({"priority": priority} if priority else {}))
    found = candidate(task)
    assert found is not None and found.item.effective_severity() == severity


def test_closed_or_patientless_work_items_are_not_rows() -> None:
    assert candidate(work(v.ALERT, status="completed")) is None
    assert candidate(work(v.ALERT, status="cancelled")) is None
    assert candidate(work(v.ALERT, **{"for": {"reference": "Group/g1"}})) is None
    assert candidate(work(v.ALERT, status="on-hold")) is not None


def test_alert_summary_quotes_the_observation_only_when_handed_in() -> None:
    task = work(
        v.ALERT,
        priority="stat",
        focus={"reference": "Observation/o1"},
        reasonCode={"coding": [{"system": v.ALERT_RULE, "code": "clozapine-anc"}]},
    )
    observation = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "ANC"},
        "valueQuantity": {"value": 300, "unit": "/uL"},
        "interpretation": [{"coding": [{"code": "LL"}]}],
    }
    blind = candidate(task)
    seeing = candidate(task, wl.Lookups({"Observation/o1": observation}, {}))
    assert blind is not None and seeing is not None
    assert blind.summary.to_json() == {
        "text": "monitoring result out of band on clozapine (rule clozapine-anc)",
        "drug": "clozapine",
        "rule": "clozapine-anc",
        "what": "monitoring result out of band",
    }
    assert seeing.summary.text.startswith("ANC 300 /uL") and seeing.summary.text.endswith(
        "on clozapine (rule clozapine-anc)"
    )
    described = candidate({**task, "description": "Severe neutropenia: interrupt clozapine"})
    assert described is not None and described.summary.what == "Severe neutropenia: interrupt clozapine"
    critical = candidate(
        {**task, "reasonCode": {"coding": [{"system": v.ALERT_RULE, "code": "critical-value"}]}}
    )
    assert critical is not None and critical.summary.text == "critical value (rule critical-value)"


def test_lab_overdue_row_is_due_at_its_lab_date_with_its_urgency() -> None:
    task = work(
        v.LAB_OVERDUE,
        priority="asap",
        reasonCode={"coding": [{"system": v.ALERT_RULE, "code": "clozapine-anc"}]},
        input=[
            {"type": {"text": "lab"}, "valueCodeableConcept": {"text": "ANC"}},
            {"type": {"text": "due"}, "valueDate": "2026-02-25"},
        ],
    )
    found = candidate(task)
    assert found is not None
    assert found.item.effective_severity() == "high"
    assert found.item.due == datetime(2026, 2, 25, tzinfo=UTC)
    assert found.summary.text == "ANC due 2026-02-25 for clozapine (rule clozapine-anc)"
    later = candidate({**task, "restriction": {"period": {"end": "2026-03-02"}}})
    assert later is not None and later.item.due == datetime(2026, 3, 2, tzinfo=UTC)  # restriction first


def test_pa_summary_names_the_drug_only_from_a_readable_order() -> None:
    task = pa(
        "denied",
        lastModified=at(-1),
        statusReason={"text": "Step therapy"},
        owner={"reference": "Organization/o"},
    )
    order = {"resourceType": "MedicationRequest", "medicationCodeableConcept": {"text": "adalimumab 40 MG"}}
    blind = candidate(task)
    seeing = candidate(task, wl.Lookups({}, {"MedicationRequest/rx-1": order}))
    assert blind is not None and seeing is not None
    assert blind.summary.text == "PA; denied: Step therapy; payer Organization/o"
    assert seeing.summary.text == "PA adalimumab 40 MG; denied: Step therapy; payer Organization/o"
    assert seeing.item.state == "denied-appealable" and seeing.item.effective_severity() == "high"


# --------------------------------------------------------------------------------------------- adherence


def dispense(handed_over: str, days: int, drug: str = "clozapine 100 MG Oral Tablet") -> dict[str, Any]:
    return {
        "resourceType": "MedicationDispense",
        "status": "completed",
        "medicationCodeableConcept": {"text": drug},
        "whenHandedOver": handed_over,
        "daysSupply": {"value": days, "code": "d"},
    }


def test_lowest_pdc_over_the_look_back_among_drugs_filled_twice() -> None:
    today = date(2026, 3, 1)
    found = wl.lowest_pdc(
        [
            dispense("2025-09-13", 30),  # 169 days ago
            dispense("2025-11-21", 30),  # 100 days ago: 60 of 170 days covered
            dispense("2026-01-30", 30, "lithium carbonate 300 MG Oral Capsule"),
            dispense("2026-02-28", 30, "lithium carbonate 300 MG Oral Capsule"),
            dispense("2026-02-01", 10, "adalimumab 40 MG/0.4ML"),  # once only: no PDC (PQA)
        ],
        {},
        today,
    )
    assert found == wl.Adherence(Fraction(60, 170), "clozapine", date(2025, 9, 3), today)
    assert wl.lowest_pdc([dispense("2026-02-01", 10)], {}, today) is None
    assert wl.lowest_pdc([dispense("2025-01-01", 30), dispense("2025-02-01", 30)], {}, today) is None


# ---------------------------------------------------------------------------------------- keys, cursors


def test_row_keys_follow_the_ranking_and_cursors_round_trip() -> None:
    generator = random.Random(7)
    items = []
    for index in range(40):
        severity = generator.choice(["critical", "high", "moderate", "low"])
        task = work(
            v.ALERT, id=f"t{index}", priority=v.PRIORITY_OF[severity], authoredOn=at(-generator.randint(0, 3))
        )
        if generator.random() < 0.5:
            task["restriction"] = {"period": {"end": at(generator.randint(-3, 3))}}
        task["for"] = {"reference": f"Patient/p{generator.randint(1, 4)}"}
        found = candidate(task)
        assert found is not None
        items.append(found.item)
    risks = {f"p{i}": RiskInput(f"p{i}", overdue_labs=i) for i in range(1, 5)}
    rows = rank_worklist(items, risks, NOW)
    keys = [wl.row_key(row) for row in rows]
    assert keys == sorted(keys) and len(set(keys)) == len(keys)
    assert all(wl.decode_cursor(wl.encode_cursor(key)) == key for key in keys)


@pytest.mark.parametrize("text", ["", "garbage!", "WzEsMl0", "bnVsbA", "WzEsMiwzLDQsNSw2XQ"])
def test_cursors_not_written_here_are_refused(text: str) -> None:
    assert wl.decode_cursor(text) is None
