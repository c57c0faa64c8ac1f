"""The PA board's shaping (gateway/pa/board.py): columns in lifecycle order, breach, expiry, actions."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.fhir import dates
from gateway.pa import board
from gateway.pa.lifecycle import BUSINESS_STATUS_SYSTEM, TASK_STATUS, TASK_TYPE_SYSTEM
from gateway.pa.tasks import DUE_EXTENSION, PARAMETER_SYSTEM

NOW = dates.date_range("2026-03-10T12:00:00Z")[0]


def task(task_id: str, status: str, **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Task",
        "id": task_id,
        "status": TASK_STATUS[status],
        "code": {"coding": [{"system": TASK_TYPE_SYSTEM, "code": extra.pop("code", "prior-authorization")}]},
        "businessStatus": {"coding": [{"system": BUSINESS_STATUS_SYSTEM, "code": status}]},
        "focus": {"reference": "MedicationRequest/mr1"},
        "for": {"reference": "Patient/p1"},
        "owner": {"reference": "Organization/payer"},
        **extra,
    }


def due(when: str) -> list[dict[str, str]]:
    return [{"url": DUE_EXTENSION, "valueDateTime": when}]


ORDERS = {"MedicationRequest/mr1": {"medicationCodeableConcept": {"text": "adalimumab 40 MG"}}}


def test_columns_follow_the_lifecycle_and_breached_cards_come_first() -> None:
    found = [
        task("a", "denied"),
        task("b", "submitted", extension=due("2026-03-12T00:00:00Z")),
        task("c", "submitted", extension=due("2026-03-09T00:00:00Z")),
        task("d", "pa-required"),
    ]
    columns = board.board(found, ORDERS, NOW)
    assert [c.business_status for c in columns] == ["pa-required", "submitted", "denied"]
    assert [c.task_id for c in columns[1].cards] == ["c", "b"]
    assert [c.breached for c in columns[1].cards] == [True, False]


@pytest.mark.parametrize(
    ("status", "breached"),
    [
        ("submitted", True),  # waiting on the payer past the due date
        ("info-requested", True),  # the clock runs while the payer waits for answers too
        ("approved", False),  # decided: a late decision is no longer a breach to act on
        ("cancelled", False),
    ],
)
def test_a_breach_is_waiting_on_the_payer_past_the_due_date(status: str, breached: bool) -> None:
    found = board.card(task("t", status, extension=due("2026-03-10T11:59:59Z")), ORDERS, NOW)
    assert found.breached is breached


def test_the_card_names_drug_payer_submission_answer_and_expiry() -> None:
    approved = task(
        "t",
        "approved",
        priority="urgent",
        extension=due("2026-03-04T09:00:00Z"),
        restriction={"period": {"start": "2026-03-01", "end": "2026-03-25"}},
        statusReason={"text": "Approved for 3 months"},
        output=[
            {
                "type": {"coding": [{"system": PARAMETER_SYSTEM, "code": "claim-response"}]},
                "valueReference": {"reference": "ClaimResponse/cr1"},
            },
            {
                "type": {"coding": [{"system": PARAMETER_SYSTEM, "code": "item-decision"}]},
                "valueString": "item 1: A1 certified",
            },
        ],
    )
    found = board.card(approved, ORDERS, NOW)
    assert (found.drug, found.payer, found.patient) == (
        "adalimumab 40 MG",
        "Organization/payer",
        "Patient/p1",
    )
    assert found.submitted == "2026-03-01T09:00:00Z"  # urgent: due 72 hours after submission
    assert found.answer == ("Approved for 3 months", "item 1: A1 certified")
    assert found.claim_response == "ClaimResponse/cr1"
    assert (found.expires, found.days_left) == ("2026-03-25", 15)
    assert not found.can_appeal and not found.can_withdraw


def test_a_denial_is_appealable_until_an_appeal_is_under_way() -> None:
    denied = task("d", "denied")
    appeal = task(
        "ap", "appeal-submitted", code="prior-authorization-appeal", partOf=[{"reference": "Task/d"}]
    )
    assert board.board([denied], {}, NOW)[0].cards[0].can_appeal
    columns = board.board([denied, appeal], {}, NOW)
    assert not next(c for col in columns for c in col.cards if c.task_id == "d").can_appeal
    withdrawn = {**appeal, **task("ap", "cancelled", code="prior-authorization-appeal")}
    columns = board.board([denied, withdrawn], {}, NOW)
    assert next(c for col in columns for c in col.cards if c.task_id == "d").can_appeal


@pytest.mark.parametrize(
    ("status", "withdrawable"),
    [("pa-required", True), ("submitted", True), ("pended", True), ("approved", False), ("denied", False)],
)
def test_only_undecided_requests_are_withdrawn(status: str, withdrawable: bool) -> None:
    assert board.card(task("t", status), {}, NOW).can_withdraw is withdrawable
