"""What a payer's decision leaves on the PA Task: readable item decisions, reasons with their meaning."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from gateway.pa import tasks
from gateway.pa.decision import (
    REVIEW_REASON_SYSTEM,
    Correlation,
    ItemDecision,
    PayerDecision,
    Reason,
    named_reasons,
)

NOW = datetime(2026, 3, 1, tzinfo=UTC)
NDC = "http://hl7.org/fhir/sid/ndc"


def task() -> dict[str, Any]:
    request = {"id": "rx1", "subject": {"reference": "Patient/p1"}}
    return tasks.new_task("t1", medication_request=request, business_status="submitted", now=NOW)


def item_decisions(updated: dict[str, Any]) -> list[dict[str, Any]]:
    return [o for o in updated["output"] if o["type"]["coding"][0]["code"] == "item-decision"]


def test_an_item_decision_is_a_sentence_not_a_python_dict() -> None:
    detail = {
        "quantity": {"value": 15, "unit": "tablet"},
        "productOrServiceCode": {
            "coding": [{"system": NDC, "code": "0777-3105-02", "display": "Drug X 10 mg"}]
        },
        "unitPrice": {"value": 12.5, "currency": "USD"},
        "servicedPeriod": {"start": "2026-03-01", "end": "2026-05-31"},
    }
    item = ItemDecision(1, "A6", authorization_number="AUTH-1", authorized_detail=detail)
    decision = PayerDecision("pas-response", Correlation(), items=(item,))
    updated = tasks.decided(task(), decision, "approved-modified", "cr1", NOW)
    [output] = item_decisions(updated)
    line = output["valueString"]
    assert "{" not in line and "'" not in line, line
    assert line == (
        "item 1: A6 Modified, authorization AUTH-1, authorized quantity 15 tablet, product Drug X 10 mg"
        " (0777-3105-02), unit price 12.5 USD, service period 2026-03-01 to 2026-05-31"
    )


def test_authorized_detail_of_an_unexpected_shape_is_still_words() -> None:
    detail = {"factor": 0.5, "modifier": [{"text": "left side"}], "bodySite": {"coding": [{"code": "123"}]}}
    line = tasks.describe_item(ItemDecision(2, "A2", authorized_detail=detail))
    assert line == "item 2: A2 Certified - partial, authorized factor 0.5, modifier left side, body site 123"


def test_a_reason_code_gets_its_meaning_from_the_table_and_unknown_codes_get_none() -> None:
    known = Reason("35", REVIEW_REASON_SYSTEM)
    unknown = Reason("ZZ", REVIEW_REASON_SYSTEM)
    payers_own = Reason("35", REVIEW_REASON_SYSTEM, "the payer's own words")
    other_system = Reason("35", "http://payer.example/reasons")
    items = (ItemDecision(1, "A3", reasons=(known, unknown, payers_own, other_system)),)
    decision = named_reasons(PayerDecision("x12-278", Correlation(), items=items), {"35": "Meaning of 35"})
    assert [r.display for r in decision.items[0].reasons] == [
        "Meaning of 35",
        None,  # not in the table: no made-up display
        "the payer's own words",  # the payer's display is kept
        None,  # another code system: the X12 table says nothing about it
    ]


def test_a_denial_carries_each_reason_code_with_its_display_in_status_reason_and_item_decision() -> None:
    reasons = (Reason("35", REVIEW_REASON_SYSTEM), Reason("ZZ", REVIEW_REASON_SYSTEM))
    decision = named_reasons(
        PayerDecision("x12-278", Correlation(), items=(ItemDecision(1, "A3", reasons=reasons),)),
        {"35": "Meaning of 35"},
    )
    updated = tasks.decided(task(), decision, "denied", "cr1", NOW)
    assert updated["statusReason"]["coding"] == [
        {"system": REVIEW_REASON_SYSTEM, "code": "35", "display": "Meaning of 35"},
        {"system": REVIEW_REASON_SYSTEM, "code": "ZZ"},
    ]
    assert updated["statusReason"]["text"] == "Meaning of 35 (35); reason code ZZ"
    [output] = item_decisions(updated)
    assert output["valueString"] == "item 1: A3 Not certified, reason Meaning of 35 (35); reason code ZZ"
