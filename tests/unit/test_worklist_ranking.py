"""Worklist ranking: severity, deadline, patient risk, age and id; each row says why and why there."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from gateway.pharmacist.ranking import RankedRow, RiskInput, Severity, WorkItem, patient_risk, rank_worklist

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)


def alert(item_id: str, severity: Severity, patient: str = "p1", summary: str = "") -> WorkItem:
    return WorkItem(item_id, "alert", patient, NOW - 3 * HOUR, severity=severity, summary=summary)


def ids(rows: list[RankedRow]) -> list[str]:
    return [row.item.id for row in rows]


# ------------------------------------------------------------------------------------------ patient risk


def test_patient_risk_adds_the_documented_points_with_reasons() -> None:
    risk = patient_risk(
        RiskInput(
            "p1",
            pdc=0.62,
            overdue_labs=1,
            critical_results_30d=2,
            pa_denied_or_expiring=True,
            specialty_drugs=2,
        )
    )
    assert risk.score == 3 + 2 + 3 + 2 + 2
    assert [r.code for r in risk.reasons] == [
        "low-pdc",
        "overdue-labs",
        "critical-results",
        "pa-at-risk",
        "specialty-drugs",
    ]
    assert risk.summary() == (
        "12 (PDC 62 % < 80 %, 1 overdue lab, 2 critical results in 30 d, PA denied or expiring, "
        "2 specialty drugs)"
    )


def test_patient_risk_caps_overdue_labs_and_specialty_drugs_and_ignores_good_or_unknown_pdc() -> None:
    assert patient_risk(RiskInput("p1", pdc=0.8, overdue_labs=7, specialty_drugs=5)).score == 6 + 3
    assert patient_risk(RiskInput("p1", pdc=None)).score == 0
    assert patient_risk(RiskInput("p1")).reasons == ()


# --------------------------------------------------------------------------------------------- ranking


def test_critical_clozapine_anc_alert_outranks_a_moderate_alert_and_an_expiring_pa() -> None:
    rows = rank_worklist(
        [
            WorkItem("pa-exp", "pa", "p2", NOW - 2 * DAY, state="expiring", due=NOW + 7 * DAY),
            alert("mod", "moderate", "p3", summary="ALT mildly raised on methotrexate"),
            alert("anc", "critical", "p1", summary="ANC 0.9 x10^3/uL on clozapine"),
        ],
        {"p1": RiskInput("p1", pdc=0.62, overdue_labs=1)},
        NOW,
    )
    assert ids(rows) == ["anc", "pa-exp", "mod"]  # within moderate: the row with a deadline first
    top = rows[0]
    assert top.rank == 1
    assert top.why == "open critical alert: ANC 0.9 x10^3/uL on clozapine"
    assert (
        top.rank_reason == "critical severity; no deadline; patient risk 5 (PDC 62 % < 80 %, 1 overdue lab)"
    )
    assert rows[1].why == "an approved prior authorization is about to expire"
    assert rows[1].rank_reason == "moderate severity; due in 7 d; patient risk 0"


def test_overdue_comes_before_not_yet_due_within_a_tier() -> None:
    rows = rank_worklist(
        [
            WorkItem("later", "lab-overdue", "p1", NOW - DAY, due=NOW + 2 * HOUR, priority="urgent"),
            WorkItem("late", "pa", "p2", NOW - DAY, state="info-requested", due=NOW - 2 * HOUR),
            WorkItem("undated", "alert", "p3", NOW - 5 * DAY, severity="high"),
        ],
        {},
        NOW,
    )
    assert ids(rows) == ["late", "later", "undated"]
    assert rows[0].rank_reason.startswith("high severity; due 2 h ago;")
    assert rows[1].rank_reason.startswith("high severity; due in 2 h;")


def test_patient_risk_breaks_ties_of_severity_and_deadline() -> None:
    due = NOW + DAY
    rows = rank_worklist(
        [
            WorkItem("low-risk", "pa", "p1", NOW - DAY, state="denied-appealable", due=due),
            WorkItem("high-risk", "pa", "p2", NOW - DAY, state="denied-appealable", due=due),
        ],
        {"p2": RiskInput("p2", critical_results_30d=1, specialty_drugs=1)},
        NOW,
    )
    assert ids(rows) == ["high-risk", "low-risk"]
    assert "patient risk 4 (1 critical result in 30 d, 1 specialty drug)" in rows[0].rank_reason


def test_age_then_id_decide_full_ties_and_say_so() -> None:
    rows = rank_worklist(
        [
            WorkItem("u-b", "unassigned-patient", "p2", NOW - DAY),
            WorkItem("u-c", "unassigned-patient", "p3", NOW - 2 * DAY),
            WorkItem("u-a", "unassigned-patient", "p1", NOW - DAY),
        ],
        {},
        NOW,
    )
    assert ids(rows) == ["u-c", "u-a", "u-b"]
    assert rows[0].why == "no pharmacist is assigned to the patient"
    assert rows[0].rank_reason == "low severity; no deadline; patient risk 0; opened 2 d ago (older first)"
    assert rows[1].rank_reason.endswith("opened 24 h ago (older first); id u-a (same age: by id)")


def test_lab_priority_sets_the_tier_of_an_overdue_lab() -> None:
    rows = rank_worklist(
        [
            WorkItem("routine", "lab-overdue", "p1", NOW - DAY, due=NOW - DAY, priority="routine"),
            WorkItem("stat", "lab-overdue", "p1", NOW - HOUR, due=NOW - HOUR, priority="stat"),
        ],
        {},
        NOW,
    )
    assert [(row.item.id, row.severity) for row in rows] == [("stat", "critical"), ("routine", "moderate")]


def test_ranking_is_deterministic_whatever_the_input_order() -> None:
    items = [
        alert("a1", "critical", "p1"),
        alert("a2", "critical", "p2"),
        alert("a3", "moderate", "p3"),
        WorkItem("l1", "lab-overdue", "p1", NOW - DAY, due=NOW - 3 * HOUR),
        WorkItem("l2", "lab-overdue", "p2", NOW - DAY, due=NOW - 3 * HOUR),
        WorkItem("t1", "pa", "p3", NOW - DAY, state="overdue", due=NOW - DAY),
        WorkItem("t2", "pa", "p1", NOW - DAY, state="expiring", due=NOW + 3 * DAY),
        WorkItem("u1", "unassigned-patient", "p4", NOW - DAY),
        WorkItem("u2", "unassigned-patient", "p5", NOW - DAY),
    ]
    risks = {"p1": RiskInput("p1", pdc=0.5), "p2": RiskInput("p2", overdue_labs=2)}
    first = [row.to_json() for row in rank_worklist(items, risks, NOW)]
    for seed in range(20):
        shuffled = list(items)
        random.Random(seed).shuffle(shuffled)
        assert [row.to_json() for row in rank_worklist(shuffled, risks, NOW)] == first
    assert [row["id"] for row in first] == ["a2", "a1", "t1", "l2", "l1", "t2", "a3", "u1", "u2"]


def test_row_json_has_the_documented_shape() -> None:
    (row,) = rank_worklist(
        [
            WorkItem(
                "task-9",
                "pa",
                "p1",
                NOW - DAY,
                state="info-requested",
                due=NOW + 5 * HOUR,
                summary="adalimumab",
            )
        ],
        {"p1": RiskInput("p1", pdc=0.7)},
        NOW,
    )
    assert row.to_json() == {
        "rank": 1,
        "id": "task-9",
        "kind": "pa",
        "patient": "Patient/p1",
        "severity": "high",
        "state": "info-requested",
        "due": "2026-03-01T17:00:00Z",
        "created": "2026-02-28T12:00:00Z",
        "why": "the payer asked for more information on a prior authorization: adalimumab",
        "rankReason": "high severity; due in 5 h; patient risk 3 (PDC 70 % < 80 %)",
        "patientRisk": {"score": 3, "reasons": [{"code": "low-pdc", "text": "PDC 70 % < 80 %"}]},
    }


def test_rows_are_checked_when_built() -> None:
    with pytest.raises(ValueError, match="severity is required"):
        WorkItem("x", "alert", "p1", NOW)
    with pytest.raises(ValueError, match="state must be"):
        WorkItem("x", "pa", "p1", NOW)
    with pytest.raises(ValueError, match="time zone"):
        WorkItem("x", "unassigned-patient", "p1", datetime(2026, 3, 1))
