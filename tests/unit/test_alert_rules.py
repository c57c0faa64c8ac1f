"""The pure rules of alert work items: which findings become alerts, what a changed result does to one,
and the moves a person may make."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.pharmacist import alerts
from gateway.pharmacist.alerts import Finding
from gateway.pharmacist.vocabulary import ALERT_MARK

NOW = "2026-12-07T10:00:00Z"
ANC = Finding(
    "clozapine-anc", "clozapine: ANC monitoring", "moderate", "Mild neutropenia.", "< 1500 /uL", order="rx1"
)
CRITICAL = Finding("critical-value", "Critical value", "critical")
ABNORMAL = Finding("abnormal-result", "Abnormal result", "low")


def task(**changes: Any) -> dict[str, Any]:
    base = alerts.new_alert("alert-1", ANC, "Observation/o1", "Patient/p1", None, "2026-12-01T10:00:00Z")
    return {**base, **changes}


def test_the_id_depends_on_the_result_and_the_rule_only() -> None:
    first = alerts.alert_id("o1", "clozapine-anc", "rx1")
    assert first == alerts.alert_id("o1", "clozapine-anc", "rx1")
    assert len({first, alerts.alert_id("o2", "clozapine-anc", "rx1"), alerts.alert_id("o1", "x", "rx1")}) == 3
    assert first.startswith("alert-") and len(first) <= 64


def test_drug_rules_win_then_critical_then_abnormal() -> None:
    assert alerts.strongest([ABNORMAL, CRITICAL, ANC]) == [ANC]
    assert alerts.strongest([ABNORMAL, CRITICAL]) == [CRITICAL]
    assert alerts.strongest([ABNORMAL]) == [ABNORMAL]
    assert alerts.strongest([]) == []


def test_a_new_alert_has_the_work_item_shape_and_no_value() -> None:
    made = alerts.new_alert("alert-1", ANC, "Observation/o1", "Patient/p1", "PractitionerRole/r1", NOW)
    assert made["status"] == "ready" and made["priority"] == "urgent"
    assert made["basedOn"] == [{"reference": "MedicationRequest/rx1"}]
    assert made["owner"] == {"reference": "PractitionerRole/r1"}
    assert alerts.is_alert(made) and alerts.rule_of(made) == "clozapine-anc"
    assert "< 1500 /uL" in made["description"]


def test_a_correction_updates_an_open_alert_and_reopens_a_closed_one() -> None:
    worse = Finding(
        "clozapine-anc", "clozapine: ANC monitoring", "critical", "Severe.", "< 500 /uL", order="rx1"
    )
    updated = alerts.corrected(task(), worse, "corrected", NOW)
    assert updated["priority"] == "stat" and updated["status"] == "ready"
    assert alerts.mark_of(updated) == "corrected" and updated["note"][-1]["text"].startswith(
        "Result corrected"
    )
    closed = task(status="completed", owner={"reference": "Practitioner/a"})
    reopened = alerts.corrected(closed, worse, "amended", NOW)
    assert reopened["status"] == "ready" and reopened["note"][-1]["text"].startswith("Reopened")


def test_back_to_normal_marks_only_open_alerts_once() -> None:
    marked = alerts.back_to_normal(task(), "back", NOW)
    assert marked is not None and alerts.mark_of(marked) == "back-to-normal" and marked["status"] == "ready"
    assert alerts.back_to_normal(marked, "back", NOW) is None
    assert alerts.back_to_normal(task(status="completed"), "back", NOW) is None
    assert "withdrawn" in alerts.withdrawn_or_normal("entered-in-error")


def test_superseded_points_at_the_new_alert() -> None:
    moved = alerts.superseded(task(), ["alert-2"], NOW)
    assert moved is not None and "Task/alert-2" in moved["note"][-1]["text"]
    assert alerts.superseded(moved, ["alert-2"], NOW) is None


def mark(code: str) -> dict[str, Any]:
    return {"coding": [{"system": ALERT_MARK, "code": code}]}


OWNER = {"reference": "Practitioner/a"}
NOTE = [{"text": "done"}]


@pytest.mark.parametrize(
    ("before", "after", "problem"),
    [
        ({}, {"status": "accepted", "owner": OWNER}, None),
        ({}, {"status": "accepted"}, "Task.owner"),
        ({}, {"status": "in-progress", "owner": OWNER}, None),
        ({}, {"status": "completed", "owner": OWNER}, "Task.note"),
        ({}, {"status": "completed", "owner": OWNER, "note": NOTE}, None),
        ({"status": "completed", "owner": OWNER}, {"status": "ready"}, "Task.status"),
        ({"status": "completed", "owner": OWNER}, {"status": "entered-in-error"}, None),
        ({}, {"focus": {"reference": "Observation/x"}}, "Task.focus"),
        ({}, {"reasonCode": {"text": "other"}}, "Task.reasonCode"),
        ({}, {"code": {"text": "not an alert"}}, "Task.code"),
        ({}, {"businessStatus": mark("corrected")}, "Task.businessStatus"),
        ({}, {"businessStatus": mark("escalated")}, "Task.performerType"),
        (
            {},
            {"businessStatus": mark("escalated"), "performerType": [{"text": "prescriber"}]},
            "Task.statusReason",
        ),
        (
            {},
            {
                "businessStatus": mark("escalated"),
                "performerType": [{"text": "prescriber"}],
                "statusReason": {"text": "r"},
            },
            None,
        ),
    ],
)
def test_moves_people_make(before: dict[str, Any], after: dict[str, Any], problem: str | None) -> None:
    previous = task(**before)
    found = alerts.move_problems(previous, {**previous, **after})
    if problem is None:
        assert found == []
    else:
        assert problem in [where for _, where in found], found


def test_a_person_may_open_an_alert_for_a_patient_only() -> None:
    assert alerts.move_problems(None, task()) == []
    assert [w for _, w in alerts.move_problems(None, {**task(), "for": None})] == ["Task.for"]


def test_the_alert_task_is_valid_r4() -> None:
    from pathlib import Path

    from gateway.fhir.profiles import ProfileSet
    from gateway.fhir.validation import Validator

    root = Path(__file__).resolve().parents[2]
    made = alerts.new_alert("alert-1", ANC, "Observation/o1", "Patient/p1", "PractitionerRole/r1", NOW)
    issues = Validator(ProfileSet.load(root / "profiles")).validate(made)
    assert [i for i in issues if i.is_error] == []
