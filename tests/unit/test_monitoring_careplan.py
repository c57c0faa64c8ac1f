"""The monitoring calendar written as a CarePlan and read back: every date, status and outcome survives, and
a CarePlan edited into nonsense is read as owing nothing."""

from __future__ import annotations

from dataclasses import replace
from datetime import date
from pathlib import Path

import pytest

from gateway.fhir.profiles import ProfileSet
from gateway.fhir.validation import Validator
from gateway.mapping.monitoring import Code, DrugLabRule, load_monitoring
from gateway.pharmacist import calendar
from gateway.pharmacist.schedule import hold, plan, record_result

ROOT = Path(__file__).resolve().parents[2]
ANC = Code("http://loinc.org", "751-8")
START = date(2024, 1, 1)


@pytest.fixture(scope="module")
def clozapine() -> DrugLabRule:
    return next(r for r in load_monitoring(ROOT / "mappings").drug_lab if r.id == "clozapine-anc")


def test_a_calendar_round_trips(clozapine: DrugLabRule) -> None:
    activities = plan(clozapine, START, months=3)
    activities, done = record_result(activities, ANC, date(2024, 1, 1))
    assert done is not None
    activities = hold(activities, date(2024, 2, 1))
    resource = calendar.care_plan(
        "monitoring-1",
        clozapine,
        activities,
        patient="Patient/p1",
        request="MedicationRequest/rx1",
        start=START,
        status="on-hold",
        held_on=date(2024, 2, 1),
        outcomes={0: "Observation/o1"},
    )
    assert calendar.is_calendar(resource) and calendar.rule_of(resource) == "clozapine-anc"
    assert calendar.held_on(resource) == date(2024, 2, 1)
    assert calendar.request_of(resource) == "MedicationRequest/rx1"
    back, outcomes = calendar.read_activities(resource, clozapine)
    assert back == activities and outcomes == {0: "Observation/o1"}
    assert resource["activity"][1]["detail"]["scheduledPeriod"] == {
        "start": "2024-01-08",
        "end": "2024-01-10",
    }


def test_the_careplan_is_valid_r4(clozapine: DrugLabRule) -> None:
    resource = calendar.care_plan(
        "monitoring-1",
        clozapine,
        plan(clozapine, START, months=1),
        patient="Patient/p1",
        request="MedicationRequest/rx1",
        start=START,
    )
    issues = Validator(ProfileSet.load(ROOT / "profiles")).validate(resource)
    assert [i for i in issues if i.is_error] == []


def test_an_unreadable_activity_is_owed_nothing(clozapine: DrugLabRule) -> None:
    resource = calendar.care_plan(
        "monitoring-1",
        clozapine,
        plan(clozapine, START, months=1),
        patient="Patient/p1",
        request="MedicationRequest/rx1",
        start=START,
    )
    resource["activity"][1]["detail"]["scheduledPeriod"] = {"start": "soon"}
    resource["activity"][2]["detail"]["status"] = "whenever"
    back, _ = calendar.read_activities(resource, clozapine)
    assert [a.status for a in back[:4]] == ["scheduled", "cancelled", "cancelled", "scheduled"]
    assert replace(back[3], status="scheduled") == back[3]
