"""The pharmacist's measures (gateway.pharmacist.measures) with the hand calculations written out, and the
MeasureReport they make (gateway.pharmacist.measure_report).

The PDC period is 2024-01-01 .. 2024-04-09, 100 days, as in test_pdc.py: "day n" is 2024-01-01 + (n - 1),
so day 31 = Jan 31, day 60 = Feb 29 (leap year), day 75 = Mar 15, day 100 = Apr 9.
"""

from __future__ import annotations

import importlib
import json
import pathlib
from datetime import date
from fractions import Fraction
from typing import Any

import pytest

from gateway.fhir import dates
from gateway.pa.turnaround import Clock, summarize
from gateway.pharmacist import vocabulary as vocab
from gateway.pharmacist.dispenses import fills_from_dispenses
from gateway.pharmacist.measure_report import measure_report
from gateway.pharmacist.measures import (
    AlertTally,
    FirstDoseTally,
    MonitoringTally,
    PdcTally,
    Period,
    TaskVersion,
    TurnaroundTally,
    alert_response,
    first_doses,
    monitoring_activities,
    outcome_references,
    patient_adherence,
)

PROFILES = pathlib.Path(__file__).resolve().parents[2] / "profiles"
PERIOD = Period(date(2024, 1, 1), date(2024, 4, 9))
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
HOUR_US = 3_600_000_000


def dispense(
    ident: str, handed_over: str, days: int, name: str, *, status: str = "completed"
) -> dict[str, Any]:
    return {
        "resourceType": "MedicationDispense",
        "id": ident,
        "status": status,
        "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": "1", "display": name}]},
        "whenHandedOver": handed_over,
        "daysSupply": {"value": days, "unit": "day", "system": "http://unitsofmeasure.org", "code": "d"},
    }


CLOZAPINE_100 = "clozapine 100 MG Oral Tablet"
CLOZAPINE_200 = "clozapine 200 MG Oral Tablet [Clozaril]"
LITHIUM = "lithium carbonate 300 MG Oral Capsule"

# Overlapping fills, a strength switch and a gap, one drug (clozapine):
#   d1 day 1 (Jan 1), 30 days, 100 MG              -> days 1..30
#   d2 day 25 (Jan 25), 30 days, 200 MG (a switch)  -> same drug, overlaps d1: shifted to days 31..60
#   (gap: days 61..74, 14 days)
#   d3 day 75 (Mar 15), 30 days                     -> days 75..104, 26 of them up to day 100
#   not counted: a cancelled dispense (day 61) and one handed over before the period (Dec 20).
# Covered: 30 + 30 + 26 = 86 of 100 days -> PDC 0.86, adherent (>= 0.80).
CLOZAPINE_FILLS = [
    dispense("d1", "2024-01-01", 30, CLOZAPINE_100),
    dispense("d2", "2024-01-25T10:00:00-05:00", 30, CLOZAPINE_200),
    dispense("d3", "2024-03-15", 30, CLOZAPINE_200),
    dispense("d4", "2024-03-01", 30, CLOZAPINE_200, status="cancelled"),
    dispense("d0", "2023-12-20", 30, CLOZAPINE_100),
]
# Lithium: day 1, 30 days -> 1..30; day 41 (Feb 10), 30 days -> 41..70. 60 of 100 -> 0.60, not adherent.
LITHIUM_FILLS = [dispense("l1", "2024-01-01", 30, LITHIUM), dispense("l2", "2024-02-10", 30, LITHIUM)]


def adherence(dispenses: list[dict[str, Any]]) -> Any:
    return patient_adherence(fills_from_dispenses(dispenses).fills, PERIOD)


def test_pdc_with_overlap_strength_switch_and_gap_matches_the_hand_calculation() -> None:
    extracted = fills_from_dispenses(CLOZAPINE_FILLS)
    assert [s.reference for s in extracted.skipped] == ["MedicationDispense/d4"]
    patient = patient_adherence(extracted.fills, PERIOD)
    (drug,) = patient.drugs
    assert drug.drug == "clozapine" and drug.qualifies
    assert (drug.result.index_date, drug.result.days_in_period, drug.result.days_covered) == (
        date(2024, 1, 1),
        100,
        86,
    )
    assert [(c.fill.source, c.start, c.end, c.counted) for c in drug.result.fills] == [
        ("MedicationDispense/d0", None, None, 0),  # before the period
        ("MedicationDispense/d1", date(2024, 1, 1), date(2024, 1, 30), 30),
        ("MedicationDispense/d2", date(2024, 1, 31), date(2024, 2, 29), 30),
        ("MedicationDispense/d3", date(2024, 3, 15), date(2024, 4, 13), 26),
    ]
    assert patient.pdc == Fraction(86, 100) and patient.adherent and patient.in_denominator


def test_a_patient_on_two_drugs_is_as_adherent_as_the_worse_one() -> None:
    patient = adherence(CLOZAPINE_FILLS + LITHIUM_FILLS)
    assert {d.drug: d.result.pdc for d in patient.drugs} == {
        "clozapine": Fraction(86, 100),
        "lithium carbonate": Fraction(60, 100),
    }
    assert patient.pdc == Fraction(3, 5) and not patient.adherent


def test_one_fill_puts_a_patient_in_the_initial_population_only() -> None:
    patient = adherence([dispense("x", "2024-02-01", 30, LITHIUM)])
    assert patient.in_initial_population and not patient.in_denominator and patient.pdc is None
    assert not patient.adherent
    assert not adherence([dispense("y", "2023-06-01", 30, LITHIUM)]).in_initial_population


def test_a_single_fill_drug_does_not_lower_a_patients_pdc() -> None:
    patient = adherence([*CLOZAPINE_FILLS, dispense("z", "2024-04-01", 7, LITHIUM)])
    assert patient.pdc == Fraction(86, 100) and patient.adherent


def test_the_pdc_tally_counts_patients_and_averages_their_pdc() -> None:
    # A: clozapine 0.86 (adherent). B: clozapine 0.86 and lithium 0.60 -> 0.60 (not adherent). C: one fill.
    # Initial population 3, denominator 2, numerator 1 -> 0.5; mean PDC (0.86 + 0.60) / 2 = 0.73.
    tally = PdcTally()
    for patient in (
        CLOZAPINE_FILLS,
        CLOZAPINE_FILLS + LITHIUM_FILLS,
        [dispense("x", "2024-02-01", 30, LITHIUM)],
    ):
        tally.add(adherence(patient))
    adherent, pdc_group = tally.groups()
    assert adherent.populations == (("initial-population", 3), ("denominator", 2), ("numerator", 1))
    assert adherent.score == 0.5
    assert pdc_group.score == tally.mean == 0.73
    assert [(s.value, s.score, dict(s.populations)["measure-population"]) for s in pdc_group.strata] == [
        ("clozapine", 0.86, 2),
        ("lithium carbonate", 0.6, 1),
    ]


def test_an_empty_pdc_tally_has_no_score() -> None:
    adherent, pdc_group = PdcTally().groups()
    assert adherent.score is None and pdc_group.score is None and PdcTally().mean is None


# -- time to first dose -------------------------------------------------------------------------------


def order(ident: str, authored: str, *, status: str = "active", intent: str = "order") -> dict[str, Any]:
    return {
        "resourceType": "MedicationRequest",
        "id": ident,
        "status": status,
        "intent": intent,
        "authoredOn": authored,
    }


def dispensed(ident: str, request: str, handed_over: str, status: str = "completed") -> dict[str, Any]:
    return {
        "resourceType": "MedicationDispense",
        "id": ident,
        "status": status,
        "authorizingPrescription": [{"reference": f"MedicationRequest/{request}"}],
        "whenHandedOver": handed_over,
    }


def test_time_to_first_dose_takes_the_earliest_completed_dispense_of_each_order() -> None:
    # o1 authored Feb 1 09:00Z; dispenses Feb 3 09:00Z (48 h) and Feb 2 21:00Z (36 h): the first is 36 h;
    #    a cancelled one on Feb 1 does not count.
    # o2 authored Feb 10 (a day), nothing dispensed: waiting.
    # o5 authored Mar 1 (a day: 00:00Z), dispensed Mar 1 10:00-05:00 = 15:00Z: 15 h.
    # Not counted: o3 authored before the period, o4 entered in error, o6 a proposal.
    # Median of 36 h and 15 h: 25.5 h.
    orders = [
        order("o1", "2024-02-01T09:00:00Z"),
        order("o2", "2024-02-10"),
        order("o3", "2023-12-31"),
        order("o4", "2024-02-01", status="entered-in-error"),
        order("o5", "2024-03-01"),
        order("o6", "2024-03-01", intent="proposal"),
    ]
    dispenses = [
        dispensed("a", "o1", "2024-02-03T09:00:00Z"),
        dispensed("b", "o1", "2024-02-02T21:00:00Z"),
        dispensed("c", "o1", "2024-02-01T10:00:00Z", status="cancelled"),
        dispensed("d", "o5", "2024-03-01T10:00:00-05:00"),
        dispensed("e", "o3", "2024-01-02"),
    ]
    doses = {d.request: d for d in first_doses(orders, dispenses, PERIOD)}
    assert sorted(doses) == ["MedicationRequest/o1", "MedicationRequest/o2", "MedicationRequest/o5"]
    assert doses["MedicationRequest/o1"].dispense == "MedicationDispense/b"
    assert doses["MedicationRequest/o1"].seconds == 36 * 3600
    assert doses["MedicationRequest/o2"].seconds is None
    assert doses["MedicationRequest/o5"].seconds == 15 * 3600
    tally = FirstDoseTally()
    for dose in doses.values():
        tally.add(dose)
    (group,) = tally.groups()
    assert dict(group.populations) == {
        "initial-population": 3,
        "measure-population": 3,
        "measure-population-exclusion": 1,
        "measure-observation": 2,
    }
    assert (group.score, group.unit) == (25.5, "h")
    assert tally.durations.mean == 25.5 * 3600


def test_a_dispense_dated_before_its_order_counts_as_no_wait() -> None:
    # A day-only order starts at 00:00Z; a hand-over at 18:00-05:00 the evening before is 23:00Z: 0, not -1 h.
    (dose,) = first_doses(
        [order("o", "2024-02-01")], [dispensed("d", "o", "2024-01-31T18:00:00-05:00")], PERIOD
    )
    assert dose.seconds == 0
    (dose,) = first_doses([order("o", "2024-02-01T12:00:00Z")], [dispensed("d", "o", "2024-02-01")], PERIOD)
    assert dose.seconds == 0


# -- prior-authorization turnaround --------------------------------------------------------------------


def test_pa_turnaround_counts_decisions_within_the_cms_limit() -> None:
    # Standard requests due 72 h after submission at t0 (hours below are after t0):
    #   decided at 48 h (on time); decided at 100 h (late); waiting, due at 72 h, now 200 h (overdue: late);
    #   waiting, due at 300 h (within the deadline: excluded); ended without a decision (excluded).
    # On time 1 of the 3 whose deadline outcome is known: 0.3333. Median hours of 48 and 100: 74.
    now = 200 * HOUR_US
    tally = TurnaroundTally(now)
    for clock in (
        Clock(0, 48 * HOUR_US, 72 * HOUR_US, False),
        Clock(0, 100 * HOUR_US, 72 * HOUR_US, False),
        Clock(0, None, 72 * HOUR_US, True),
        Clock(0, None, 300 * HOUR_US, True),
        Clock(0, None, 72 * HOUR_US, False),
    ):
        tally.add(clock)
    on_time, hours = tally.groups()
    assert dict(on_time.populations) == {
        "initial-population": 5,
        "denominator": 5,
        "denominator-exclusion": 2,
        "numerator": 1,
    }
    assert on_time.score == 0.3333
    assert dict(hours.populations)["measure-population-exclusion"] == 3
    assert (hours.score, hours.unit) == (74.0, "h")
    figures = summarize(tally.clocks, now)
    assert (figures.decided, figures.pending, figures.overdue, figures.median_hours) == (2, 2, 1, 74.0)


# -- alert response -----------------------------------------------------------------------------------

ALERT_CODE = {"coding": [{"system": vocab.WORK_ITEM_TYPE, "code": vocab.ALERT}]}
T0 = dates.date_range("2024-02-01T08:00:00Z")[0]


def task(
    status: str, *, code: dict[str, Any] | None = None, authored: str | None = "2024-02-01T08:00:00Z"
) -> Any:
    found: dict[str, Any] = {
        "resourceType": "Task",
        "status": status,
        "intent": "order",
        "code": code or ALERT_CODE,
    }
    if authored:
        found["authoredOn"] = authored
    return found


def versions(*steps: tuple[float, str]) -> list[TaskVersion]:
    """(hours after T0 the store took it, status) per version."""
    return [TaskVersion(n + 1, T0 + int(h * HOUR_US), task(status)) for n, (h, status) in enumerate(steps)]


def test_alert_acknowledge_and_resolve_times_come_from_the_task_history() -> None:
    # ready at 0 h (authoredOn), accepted at 2 h, in progress at 3 h, completed at 5 h.
    response = alert_response(
        "a1", versions((0.01, "ready"), (2, "accepted"), (3, "in-progress"), (5, "completed"))
    )
    assert response is not None
    assert (response.acknowledge_seconds, response.resolve_seconds) == (2 * 3600, 5 * 3600)
    assert response.raised_day == date(2024, 2, 1) and response.kind == "alert"


def test_an_alert_completed_at_once_was_acknowledged_then_too() -> None:
    response = alert_response("a", versions((0, "ready"), (1, "completed")))
    assert response is not None and response.acknowledge_seconds == response.resolve_seconds == 3600


def test_alerts_entered_in_error_deleted_or_of_another_kind_are_not_counted() -> None:
    assert alert_response("a", versions((0, "ready"), (1, "entered-in-error"))) is None
    assert alert_response("a", [*versions((0, "ready")), TaskVersion(2, T0 + HOUR_US, None)]) is None
    other = {"coding": [{"system": vocab.WORK_ITEM_TYPE, "code": "unassigned-patient"}]}
    assert alert_response("a", [TaskVersion(1, T0, task("ready", code=other))]) is None
    lab = {"coding": [{"system": vocab.WORK_ITEM_TYPE, "code": vocab.LAB_OVERDUE}]}
    found = alert_response("a", [TaskVersion(1, T0, task("ready", code=lab))])
    assert found is not None and found.kind == "lab-overdue"


def test_an_alert_without_authored_on_is_raised_when_first_stored() -> None:
    history = [
        TaskVersion(1, T0, task("ready", authored=None)),
        TaskVersion(2, T0 + HOUR_US, task("accepted", authored=None)),
    ]
    response = alert_response("a", history)
    assert response is not None and response.raised_us == T0 and response.acknowledge_seconds == 3600


def test_the_alert_tally_gives_median_hours() -> None:
    # Acknowledged at 2 h and 1 h (median 1.5 h); resolved at 5 h and 1 h (median 3 h); one still open.
    tally = AlertTally()
    for history in (
        versions((0, "ready"), (2, "accepted"), (5, "completed")),
        versions((0, "ready"), (1, "completed")),
        versions((0, "ready")),
    ):
        response = alert_response("a", history)
        assert response is not None
        tally.add(response)
    acknowledge, resolve = tally.groups()
    assert (acknowledge.score, resolve.score) == (1.5, 3.0)
    assert dict(acknowledge.populations)["measure-population-exclusion"] == 1
    assert dict(resolve.populations)["measure-observation"] == 2


# -- monitoring adherence -----------------------------------------------------------------------------

CATEGORY = [{"coding": [{"system": vocab.CARE_PLAN_CATEGORY, "code": vocab.MONITORING_CALENDAR}]}]


def activity(start: str, end: str, status: str, result: str | None = None) -> dict[str, Any]:
    found: dict[str, Any] = {
        "detail": {
            "kind": "ServiceRequest",
            "status": status,
            "scheduledPeriod": {"start": start, "end": end},
        }
    }
    if result:
        found["outcomeReference"] = [{"reference": f"Observation/{result}"}]
    return found


def test_monitoring_activities_on_time_late_missed_excluded_and_still_open() -> None:
    # Period March 2024, today Mar 25:
    #   a1 window ends Mar 5, completed by a result of Mar 4          -> on time
    #   a2 ends Mar 10, completed by a result of Mar 12               -> late
    #   a3 ends Mar 15, still scheduled                               -> missed
    #   a4 ends Mar 20, cancelled                                     -> excluded
    #   a5 ends Apr 5                                                 -> not in the period
    #   a6 ends Mar 28, scheduled                                     -> still open: not in the denominator
    # Initial population 5, denominator 4, exclusion 1, numerator 1: 1 / 3 = 0.3333.
    plan = {
        "resourceType": "CarePlan",
        "id": "cp",
        "status": "active",
        "intent": "plan",
        "category": CATEGORY,
        "activity": [
            activity("2024-03-01", "2024-03-05", "completed", "r1"),
            activity("2024-03-06", "2024-03-10", "completed", "r2"),
            activity("2024-03-11", "2024-03-15", "scheduled"),
            activity("2024-03-16", "2024-03-20", "cancelled"),
            activity("2024-04-01", "2024-04-05", "scheduled"),
            activity("2024-03-21", "2024-03-28", "scheduled"),
        ],
    }
    assert outcome_references(plan) == {"Observation/r1", "Observation/r2"}
    observations = {
        "Observation/r1": {"effectiveDateTime": "2024-03-04T23:30:00-05:00"},  # Mar 4 as written
        "Observation/r2": {"effectivePeriod": {"start": "2024-03-12"}},
    }
    found = monitoring_activities(
        plan, observations, Period(date(2024, 3, 1), date(2024, 3, 31)), date(2024, 3, 25)
    )
    assert [(a.index, a.on_time, a.in_denominator, a.excluded) for a in found] == [
        (0, True, True, False),
        (1, False, True, False),
        (2, False, True, False),
        (3, False, True, True),
        (5, False, False, False),
    ]
    tally = MonitoringTally()
    for item in found:
        tally.add(item)
    (group,) = tally.groups()
    assert group.populations == (
        ("initial-population", 5),
        ("denominator", 4),
        ("denominator-exclusion", 1),
        ("numerator", 1),
    )
    assert group.score == tally.score == 0.3333


def test_a_completed_activity_whose_result_cannot_be_read_is_not_on_time() -> None:
    plan = {
        "resourceType": "CarePlan",
        "id": "cp",
        "status": "active",
        "intent": "plan",
        "category": CATEGORY,
        "activity": [activity("2024-03-01", "2024-03-05", "completed", "gone")],
    }
    (found,) = monitoring_activities(plan, {}, Period(date(2024, 3, 1), date(2024, 3, 31)), date(2024, 4, 1))
    assert found.in_denominator and not found.on_time


def test_care_plans_of_another_category_give_no_activities() -> None:
    plan = {
        "resourceType": "CarePlan",
        "id": "cp",
        "status": "active",
        "intent": "plan",
        "activity": [activity("2024-03-01", "2024-03-05", "scheduled")],
    }
    assert monitoring_activities(plan, {}, PERIOD, date(2024, 4, 1)) == []


def test_a_period_that_ends_before_it_starts_is_refused() -> None:
    with pytest.raises(ValueError):
        Period(date(2024, 2, 1), date(2024, 1, 31))


# -- the MeasureReport --------------------------------------------------------------------------------


def measure(measure_id: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((PROFILES / f"Measure-{measure_id}.json").read_text())
    return loaded


def populations_of(resource: dict[str, Any]) -> list[tuple[str, list[str]]]:
    """(group code, its population codes) of a Measure or MeasureReport."""
    return [
        (g["code"]["coding"][0]["code"], [p["code"]["coding"][0]["code"] for p in g["population"]])
        for g in resource["group"]
    ]


def test_an_individual_pdc_report_is_valid_r4_with_the_measures_group_codes() -> None:
    tally = PdcTally()
    tally.add(adherence(CLOZAPINE_FILLS))
    report = measure_report(
        measure("pdc"),
        report_type="individual",
        subject="Patient/p1",
        period=PERIOD,
        groups=tally.groups(),
        evaluated=["MedicationDispense/d1"],
        now_us=T0,
    )
    module = importlib.import_module("fhir.resources.R4B.measurereport")
    module.MeasureReport.model_validate(report)
    assert report["measure"] == "https://specialty-gateway.org/fhir/Measure/pdc"
    assert report["period"] == {"start": "2024-01-01", "end": "2024-04-09"}
    adherent, pdc_group = report["group"]
    assert adherent["code"]["coding"][0]["code"] == "adherent"
    assert [(p["code"]["coding"][0]["code"], p["count"]) for p in adherent["population"]] == [
        ("initial-population", 1),
        ("denominator", 1),
        ("numerator", 1),
    ]
    assert adherent["measureScore"] == {"value": 1.0}
    assert pdc_group["measureScore"] == {"value": 0.86}
    assert pdc_group["stratifier"][0]["code"][0]["coding"][0]["code"] == "drug"
    assert pdc_group["stratifier"][0]["stratum"][0]["value"] == {"text": "clozapine"}
    assert report["evaluatedResource"] == [{"reference": "MedicationDispense/d1"}]
    assert report["improvementNotation"]["coding"][0]["code"] == "increase"
    assert populations_of(report) == populations_of(measure("pdc"))


@pytest.mark.parametrize(
    ("measure_id", "tally"),
    [
        ("time-to-first-dose", FirstDoseTally()),
        ("pa-turnaround", TurnaroundTally(0)),
        ("alert-response", AlertTally()),
        ("monitoring-adherence", MonitoringTally()),
    ],
)
def test_every_measure_reports_each_of_its_groups_even_when_empty(measure_id: str, tally: Any) -> None:
    definition = measure(measure_id)
    report = measure_report(
        definition, report_type="summary", subject=None, period=PERIOD, groups=tally.groups()
    )
    importlib.import_module("fhir.resources.R4B.measurereport").MeasureReport.model_validate(report)
    assert populations_of(report) == populations_of(definition)  # every group and population, in order
    assert all("measureScore" not in g for g in report["group"])  # nothing to score
    assert "subject" not in report and report["type"] == "summary"
