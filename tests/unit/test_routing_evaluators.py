"""Topic evaluators: whether a change fires a topic, and what the event carries, against the real rules."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from gateway.fhir.dates import date_range, to_us
from gateway.fhir.extract import extract
from gateway.mapping.monitoring import load_monitoring
from gateway.routing.evaluators import (
    EVALUATORS,
    Change,
    EvaluationContext,
    Fired,
    abnormal_lab_result,
    authorization_end_us,
    critical_lab_result,
    is_pa_task,
    medication_monitoring,
    medication_order,
    pa_expiring,
    pa_status_changed,
)
from gateway.types import JSON
from tests.factories import lab_observation, medication_request, pa_task

ROOT = Path(__file__).resolve().parents[2]
RULES = load_monitoring(ROOT / "mappings")
CONTEXT = EvaluationContext(RULES)
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
V3 = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
DAY_US = 86_400_000_000
NOW = to_us(datetime(2024, 6, 1, 12, 0, tzinfo=UTC))


def change(
    previous: JSON | None, current: JSON | None, *, type: str = "Observation", version: int = 1
) -> Change:
    resource = current or previous
    assert resource is not None
    return Change(type, "r1", version, previous, current, extract(resource))


def observation(value: float = 4.0, *, code: str = "2823-3", unit: str = "mmol/L", **extra: Any) -> JSON:
    """A potassium result with a 3.5-5.1 reference range unless told otherwise."""
    resource = lab_observation("p1", code=code, value=value, unit=unit)
    resource["referenceRange"] = [
        {
            "low": {"value": 3.5, "unit": unit, "code": unit},
            "high": {"value": 5.1, "unit": unit, "code": unit},
        }
    ]
    return resource | extra


def flagged(code: str) -> list[JSON]:
    return [{"coding": [{"system": V3, "code": code}]}]


def test_every_topic_evaluator_is_registered() -> None:
    assert set(EVALUATORS) == {
        "alert-changed",
        "monitoring-overdue",
        "abnormal-lab-result",
        "critical-lab-result",
        "medication-monitoring",
        "medication-order",
        "pa-status-changed",
        "pa-expiring",
        "pa-overdue",
        "patient-identity-conflict",
        "resource-written",  # the forwarding topics' (gateway/service/ehrpull/forwarding.py)
    }
    assert EVALUATORS["pa-expiring"] is pa_expiring


def test_change_interaction_and_patient() -> None:
    assert change(None, observation()).interaction == "create"
    assert change(observation(), observation()).interaction == "update"
    assert change(observation(), None).interaction == "delete"
    assert change(None, observation()).patient == "Patient/p1"
    assert Change("Observation", "r1", 1, None, observation()).patient is None  # no index at hand


# --- abnormal-lab-result ------------------------------------------------------------------------------


def test_abnormal_on_create_fires() -> None:
    assert abnormal_lab_result(change(None, observation(5.6)), CONTEXT) == [Fired()]


def test_normal_on_create_does_not_fire() -> None:
    assert abnormal_lab_result(change(None, observation(4.2)), CONTEXT) == []


def test_normal_to_abnormal_fires() -> None:
    assert abnormal_lab_result(change(observation(4.2), observation(3.1)), CONTEXT) == [Fired()]


def test_abnormal_to_abnormal_does_not_fire() -> None:
    assert abnormal_lab_result(change(observation(5.6), observation(5.9)), CONTEXT) == []


def test_abnormal_to_normal_does_not_fire() -> None:
    assert abnormal_lab_result(change(observation(5.6), observation(4.4)), CONTEXT) == []


def test_deleting_an_abnormal_result_does_not_fire() -> None:
    assert abnormal_lab_result(change(observation(5.6), None), CONTEXT) == []


def test_abnormal_by_flag_alone() -> None:
    assert abnormal_lab_result(change(None, observation(4.0, interpretation=flagged("H"))), CONTEXT) == [
        Fired()
    ]


# --- critical-lab-result ------------------------------------------------------------------------------


def test_critical_hh_fires_with_the_reason() -> None:
    (fired,) = critical_lab_result(change(None, observation(4.0, interpretation=flagged("HH"))), CONTEXT)
    assert fired.details == {"reason": "interpretation HH"}
    assert fired.keys == frozenset()


def test_critical_threshold_fires() -> None:
    (fired,) = critical_lab_result(change(observation(5.0), observation(7.1)), CONTEXT)
    assert fired.details == {"reason": "2823-3 7.1 mmol/L above critical 6.5"}


def test_critical_reasons_are_joined() -> None:
    (fired,) = critical_lab_result(change(None, observation(7.1, interpretation=flagged("HH"))), CONTEXT)
    assert fired.details == {"reason": "interpretation HH; 2823-3 7.1 mmol/L above critical 6.5"}


def test_already_critical_does_not_fire() -> None:
    assert critical_lab_result(change(observation(7.1), observation(7.4)), CONTEXT) == []
    assert (
        critical_lab_result(change(observation(4.0, interpretation=flagged("HH")), observation(7.1)), CONTEXT)
        == []
    )


def test_not_critical_does_not_fire() -> None:
    assert critical_lab_result(change(None, observation(5.6)), CONTEXT) == []  # abnormal, not critical
    assert critical_lab_result(change(observation(7.1), None), CONTEXT) == []  # deletion


# --- medication-order ---------------------------------------------------------------------------------


def test_order_created_fires_with_medication_keys() -> None:
    (fired,) = medication_order(change(None, medication_request("p1"), type="MedicationRequest"), CONTEXT)
    assert fired.details == {"status": "active", "previousStatus": None}
    assert fired.keys == frozenset({f"medication={RXNORM}|2555", "medication=*|2555"})


def test_order_status_change_fires() -> None:
    previous, current = medication_request("p1", status="draft"), medication_request("p1", status="active")
    (fired,) = medication_order(change(previous, current, type="MedicationRequest", version=2), CONTEXT)
    assert fired.details == {"status": "active", "previousStatus": "draft"}


def test_order_same_status_does_not_fire() -> None:
    previous = medication_request("p1")
    current = medication_request("p1", note=[{"text": "take with food"}])
    assert medication_order(change(previous, current, type="MedicationRequest"), CONTEXT) == []


def test_order_deleted_does_not_fire() -> None:
    assert medication_order(change(medication_request("p1"), None, type="MedicationRequest"), CONTEXT) == []


def test_order_with_medication_reference_keys() -> None:
    request = medication_request("p1", status="on-hold")
    del request["medicationCodeableConcept"]
    request["medicationReference"] = {"reference": "Medication/m1"}
    (fired,) = medication_order(change(None, request, type="MedicationRequest"), CONTEXT)
    assert fired.keys == frozenset({"medication=Medication/m1"})
    assert fired.details == {"status": "on-hold", "previousStatus": None}


# --- pa-status-changed --------------------------------------------------------------------------------


def test_is_pa_task() -> None:
    assert is_pa_task(pa_task("p1", "mr1"))
    other = pa_task(
        "p1",
        "mr1",
        code={"coding": [{"system": "http://hl7.org/fhir/CodeSystem/task-code", "code": "fulfill"}]},
    )
    assert not is_pa_task(other)
    assert not is_pa_task({"resourceType": "Task"})


def test_non_pa_task_is_ignored() -> None:
    other = pa_task("p1", "mr1", code={"text": "call the patient"})
    assert pa_status_changed(change(None, other, type="Task"), CONTEXT) == []


def test_pa_created_fires() -> None:
    (fired,) = pa_status_changed(change(None, pa_task("p1", "mr1"), type="Task"), CONTEXT)
    assert fired.details == {
        "status": "requested",
        "businessStatus": "submitted",
        "previousStatus": None,
        "previousBusinessStatus": None,
    }
    assert fired.keys == frozenset()  # the MedicationRequest is not at hand


def test_pa_status_change_fires_with_the_medication_keys() -> None:
    previous = pa_task("p1", "mr1", status="requested", business_status="submitted")
    current = pa_task("p1", "mr1", status="in-progress", business_status="submitted")
    context = EvaluationContext(
        RULES, medications={"MedicationRequest/mr1": medication_request("p1", rxnorm="2626")}
    )
    (fired,) = pa_status_changed(change(previous, current, type="Task"), context)
    assert fired.details == {
        "status": "in-progress",
        "businessStatus": "submitted",
        "previousStatus": "requested",
        "previousBusinessStatus": "submitted",
    }
    assert fired.keys == frozenset({f"medication={RXNORM}|2626", "medication=*|2626"})


def test_pa_business_status_change_fires() -> None:
    previous = pa_task("p1", "mr1", status="in-progress", business_status="pended")
    current = pa_task("p1", "mr1", status="in-progress", business_status="approved")
    (fired,) = pa_status_changed(change(previous, current, type="Task"), CONTEXT)
    assert fired.details is not None
    assert (fired.details["businessStatus"], fired.details["previousBusinessStatus"]) == (
        "approved",
        "pended",
    )


def test_pa_unchanged_does_not_fire() -> None:
    previous = pa_task("p1", "mr1", status="in-progress", business_status="pended")
    current = pa_task("p1", "mr1", status="in-progress", business_status="pended", note=[{"text": "called"}])
    assert pa_status_changed(change(previous, current, type="Task"), CONTEXT) == []


def test_pa_deleted_does_not_fire() -> None:
    assert pa_status_changed(change(pa_task("p1", "mr1"), None, type="Task"), CONTEXT) == []


# --- pa-expiring --------------------------------------------------------------------------------------


def approved(end: str, business_status: str = "approved") -> JSON:
    return pa_task(
        "p1",
        "mr1",
        status="completed",
        business_status=business_status,
        restriction={"period": {"start": "2024-01-01", "end": end}},
    )


def expiring(task: JSON, context: EvaluationContext) -> list[Fired]:
    return pa_expiring(Change("Task", "t1", 3, task, task, extract(task)), context)


WINDOW = EvaluationContext(RULES, now_us=NOW, window_us=30 * DAY_US)


def test_authorization_end_is_the_last_moment_covered() -> None:
    assert authorization_end_us(approved("2024-06-10")) == date_range("2024-06-10")[1]
    assert authorization_end_us(approved("2024-06-10")) == to_us(datetime(2024, 6, 11, tzinfo=UTC)) - 1
    assert authorization_end_us(pa_task("p1", "mr1")) is None
    assert authorization_end_us(approved("not a date")) is None


def test_expiring_inside_the_window_fires() -> None:
    (fired,) = expiring(approved("2024-06-10"), WINDOW)
    assert fired.details == {
        "businessStatus": "approved",
        "periodEnd": "2024-06-10T23:59:59.999999Z",
        "daysLeft": 9,  # 9 days and 12 hours: whole days
    }


def test_expiring_today_has_zero_days_left() -> None:
    (fired,) = expiring(approved("2024-06-01"), WINDOW)
    assert fired.details is not None and fired.details["daysLeft"] == 0


@pytest.mark.parametrize("business_status", ["approved-modified", "partially-approved"])
def test_other_approvals_expire_too(business_status: str) -> None:
    assert len(expiring(approved("2024-06-20", business_status), WINDOW)) == 1


def test_expiring_with_the_medication_keys() -> None:
    context = EvaluationContext(
        RULES,
        medications={"MedicationRequest/mr1": medication_request("p1", rxnorm="2626")},
        now_us=NOW,
        window_us=30 * DAY_US,
    )
    (fired,) = expiring(approved("2024-06-10"), context)
    assert fired.keys == frozenset({f"medication={RXNORM}|2626", "medication=*|2626"})


def test_outside_the_window_does_not_fire() -> None:
    assert expiring(approved("2024-07-01"), WINDOW) == []  # ends at the end of that day: 30.5 days ahead
    assert expiring(approved("2024-07-01T12:00:00Z"), WINDOW) == []  # 30 days and 999999 us
    (fired,) = expiring(approved("2024-07-01T11:59:59Z"), WINDOW)  # the last second inside the window
    assert fired.details is not None and fired.details["daysLeft"] == 29
    assert len(expiring(approved("2024-06-30"), WINDOW)) == 1


def test_already_expired_does_not_fire() -> None:
    assert expiring(approved("2024-05-31"), WINDOW) == []


@pytest.mark.parametrize("business_status", ["submitted", "pended", "denied", "cancelled"])
def test_not_approved_does_not_fire(business_status: str) -> None:
    assert expiring(approved("2024-06-10", business_status), WINDOW) == []


def test_expiring_needs_a_time_and_a_pa_task() -> None:
    assert expiring(approved("2024-06-10"), EvaluationContext(RULES, window_us=30 * DAY_US)) == []
    assert expiring(pa_task("p1", "mr1", business_status="approved"), WINDOW) == []  # no period end
    not_pa = approved("2024-06-10")
    not_pa["code"] = {"text": "something else"}
    assert expiring(not_pa, WINDOW) == []


# --- medication-monitoring ----------------------------------------------------------------------------


def clozapine_order() -> JSON:
    return {"id": "mr-clz", **medication_request("p1", rxnorm="2555")}  # text: clozapine 100 MG Oral Tablet


def anc(value: float) -> JSON:
    return lab_observation("p1", code="751-8", value=value, unit="/uL")


MONITORING = EvaluationContext(RULES, active_requests={"Patient/p1": [clozapine_order()]})


def test_clozapine_anc_900_fires() -> None:
    (fired,) = medication_monitoring(change(None, anc(900)), MONITORING)
    assert fired.details is not None
    details = fired.details
    assert (details["rule"], details["drug"], details["lab"]) == ("clozapine-anc", "clozapine", "751-8")
    assert (details["value"], details["unit"]) == (900, "/uL")
    assert (details["band"], details["severity"]) == ("< 1000 /uL", "high")
    assert "interrupt clozapine" in details["action"]
    assert "clozapine" in details["source"]
    assert details["context"] == ["MedicationRequest/mr-clz"]
    assert fired.keys == frozenset(
        {"medication=*|clozapine-anc", f"medication={RXNORM}|2555", "medication=*|2555"}
    )


def test_monitoring_value_changed_on_update_fires() -> None:
    (fired,) = medication_monitoring(change(anc(1200), anc(900), version=2), MONITORING)
    assert fired.details is not None and fired.details["severity"] == "high"


def test_monitoring_value_unchanged_on_update_does_not_fire() -> None:
    previous, current = anc(900), anc(900)
    current["note"] = [{"text": "verified"}]  # not a value element
    assert medication_monitoring(change(previous, current, version=2), MONITORING) == []


def test_monitoring_needs_an_active_order_for_the_patient() -> None:
    assert medication_monitoring(change(None, anc(900)), CONTEXT) == []
    other = EvaluationContext(RULES, active_requests={"Patient/p2": [clozapine_order()]})
    assert medication_monitoring(change(None, anc(900)), other) == []
    no_index = Change("Observation", "r1", 1, None, anc(900))  # no index: no patient
    assert medication_monitoring(no_index, MONITORING) == []


def test_monitoring_normal_value_does_not_fire() -> None:
    assert medication_monitoring(change(None, anc(2000)), MONITORING) == []


def test_monitoring_deletion_does_not_fire() -> None:
    assert medication_monitoring(change(anc(900), None), MONITORING) == []
