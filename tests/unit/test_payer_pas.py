"""Da Vinci PAS answers into PayerDecisions: the IG's published examples, built cases, and the way back."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from gateway.adapters.payer.pas import (
    PasError,
    claim_response_for,
    decisions_from_any,
    decisions_from_notification,
    decisions_from_response,
)
from gateway.fhir.validation import validate_structure
from gateway.pa.decision import ItemDecision, PayerDecision, Reason
from tests.conftest import CORPUS

PAS_DIR = CORPUS / "pas" / "davinci-pas-ig-2.2.1"
CDEX_DIR = CORPUS / "pas" / "davinci-cdex"
PAS = "http://hl7.org/fhir/us/davinci-pas/StructureDefinition/"
X12_306 = "https://codesystem.x12.org/005010/306"
TRACE = "http://example.org/PATIENT_EVENT_TRACE_NUMBER|111099"
SUBMITTER = "http://example.org/SUBMITTER_TRANSACTION_IDENTIFIER|A12345"


def _read(directory: Any, name: str) -> dict[str, Any]:
    path = directory / name
    assert path.is_file(), f"corpus file missing: {path} (set GATEWAY_CORPUS_DIR)"
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def _pas(name: str) -> dict[str, Any]:
    return _read(PAS_DIR, name)


def _only(decisions: list[PayerDecision]) -> PayerDecision:
    assert len(decisions) == 1, decisions
    return decisions[0]


# ---------------------------------------------------------------------------------------- built inputs


def _review(code: str, number: str | None = None, reasons: tuple[str, ...] = ()) -> dict[str, Any]:
    subs: list[dict[str, Any]] = [
        {
            "url": PAS + "extension-reviewActionCode",
            "valueCodeableConcept": {"coding": [{"system": X12_306, "code": code}]},
        }
    ]
    if number:
        subs.append({"url": "number", "valueString": number})
    subs += [
        {
            "url": "reasonCode",
            "valueCodeableConcept": {
                "coding": [{"system": "https://codesystem.x12.org/external/886", "code": r}]
            },
        }
        for r in reasons
    ]
    return {"url": PAS + "extension-reviewAction", "extension": subs}


def _item(sequence: int, code: str | None, **kwargs: Any) -> dict[str, Any]:
    adjudication: dict[str, Any] = {"category": {"coding": [{"code": "submitted"}]}}
    if code:
        adjudication["extension"] = [_review(code, kwargs.pop("number", None), kwargs.pop("reasons", ()))]
    item: dict[str, Any] = {"itemSequence": sequence, "adjudication": [adjudication]}
    item.update(kwargs)
    return item


def _claim_response(items: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
    response: dict[str, Any] = {
        "resourceType": "ClaimResponse",
        "id": "cr1",
        "status": "active",
        "type": {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/claim-type", "code": "pharmacy"}]
        },
        "use": "preauthorization",
        "patient": {"reference": "Patient/p1"},
        "created": "2025-03-01T10:00:00Z",
        "insurer": {"reference": "Organization/payer"},
        "request": {"reference": "Claim/claim-1"},
        "outcome": "complete",
        "item": items,
    }
    response.update(fields)
    return response


def _bundle(*resources: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": r} for r in resources]}


def _notification(kind: str, *resources: dict[str, Any]) -> dict[str, Any]:
    status = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "subscription", "valueReference": {"reference": "Subscription/s1"}},
            {"name": "type", "valueCode": kind},
        ],
    }
    return {
        "resourceType": "Bundle",
        "type": "history",
        "entry": [{"resource": r} for r in (status, *resources)],
    }


# ------------------------------------------------------------------------------------ the IG's examples


def test_approved_example() -> None:
    bundle = _pas("Bundle-ReferralAuthorizationResponseBundleExample.json")
    decision = _only(decisions_from_response(bundle))
    assert decision.source == "pas-response"
    (item,) = decision.items
    assert (item.sequence, item.action, item.authorization_number) == (1, "A1", "AUTH0001")
    assert (item.period_start, item.period_end) == ("2005-05-02", "2005-06-02")
    assert item.reasons == ()
    assert item.authorized_detail is not None
    assert item.authorized_detail["quantity"] == {"value": 1}
    assert item.authorized_detail["unitPrice"] == {"value": 100, "currency": "USD"}
    assert "ReferralAuthorizationExample" in decision.correlation.claim_ids
    assert TRACE in decision.correlation.payer_references
    assert "AUTH0001" in decision.correlation.payer_references
    assert SUBMITTER in decision.correlation.trace_numbers
    assert decision.errors == ()
    assert decision.info_requested is None
    assert decision.decided_at == "2005-05-02T11:02:00+05:00"
    assert decision.claim_response == bundle["entry"][0]["resource"]


def test_the_kept_claim_response_is_a_copy() -> None:
    bundle = _pas("Bundle-ReferralAuthorizationResponseBundleExample.json")
    decision = _only(decisions_from_response(bundle))
    assert decision.claim_response is not None
    decision.claim_response["outcome"] = "changed"
    assert bundle["entry"][0]["resource"]["outcome"] == "complete"


def test_pended_example_is_a4_with_the_administration_reference() -> None:
    decision = _only(
        decisions_from_response(_pas("Bundle-ReferralPendingAuthorizationResponseBundleExample.json"))
    )
    (item,) = decision.items
    assert item.action == "A4"
    assert item.administration_reference == "PEND0001"
    assert item.authorization_number is None
    assert "PEND0001" in decision.correlation.payer_references
    assert decision.extra["outcome"] == "complete"  # pended is never signalled by outcome


def test_denied_example_is_a3_without_reasons_and_uses_the_included_claim() -> None:
    bundle = _pas("Bundle-RejectionResponseBundleExample.json")
    decision = _only(decisions_from_response(bundle))
    (item,) = decision.items
    assert item.action == "A3"
    assert item.reasons == ()  # the example carries neither a reasonCode nor a disposition
    assert decision.errors == ()
    # The Bundle includes the Claim the ClaimResponse answers: its identifier is a trace number.
    assert "urn:trnorg:9012345678|111099" in decision.correlation.trace_numbers


def test_a_denial_without_reason_codes_falls_back_to_the_disposition() -> None:
    bundle = _pas("Bundle-RejectionResponseBundleExample.json")
    bundle["entry"][0]["resource"]["disposition"] = "Not medically necessary"
    (item,) = _only(decisions_from_response(bundle)).items
    assert item.reasons == (Reason(None, display="Not medically necessary"),)


def test_subscription_notification_example_carries_the_approval() -> None:
    decision = _only(decisions_from_notification(_pas("Bundle-PASSubscriptionNotification.json")))
    approved = _only(decisions_from_response(_pas("Bundle-ReferralAuthorizationResponseBundleExample.json")))
    assert decision.source == "pas-notification"
    assert decision.items == approved.items
    assert decision.correlation == approved.correlation
    assert decision.extra["subscription"] == "Subscription/PASSubscriptionExample"


def test_decisions_from_any_dispatches_the_notification() -> None:
    decision = _only(decisions_from_any(_pas("Bundle-PASSubscriptionNotification.json")))
    assert decision.source == "pas-notification"
    assert decision.items[0].authorization_number == "AUTH0001"


@pytest.mark.parametrize(
    "name", ["Bundle-PASClaimInquiryBundleExample.json", "Bundle-ReferralAuthorizationBundleExample.json"]
)
def test_request_bundles_are_not_answers(name: str) -> None:
    with pytest.raises(PasError) as caught:
        decisions_from_any(_pas(name))
    assert caught.value.expression == "Bundle.entry[0].resource"
    assert "Claim" in str(caught.value)


# --------------------------------------------------------------------------------------- notifications


@pytest.mark.parametrize("kind", ["handshake", "heartbeat"])
def test_handshakes_and_heartbeats_carry_no_decision(kind: str) -> None:
    assert decisions_from_notification(_notification(kind)) == []
    assert decisions_from_any(_notification(kind)) == []


def test_a_notification_may_carry_a_bare_claim_response() -> None:
    notification = _notification("event-notification", _claim_response([_item(1, "A1", number="N-1")]))
    decision = _only(decisions_from_any(notification))
    assert decision.source == "pas-notification"
    assert decision.items[0].authorization_number == "N-1"
    assert decision.correlation.claim_ids == ("claim-1",)


def test_a_history_bundle_must_start_with_the_subscription_status() -> None:
    notification = _notification("event-notification")
    notification["entry"][0]["resource"] = _claim_response([_item(1, "A1")])
    with pytest.raises(PasError) as caught:
        decisions_from_notification(notification)
    assert caught.value.expression == "Bundle.entry[0].resource"


def test_errors_inside_a_notifications_bundle_say_where() -> None:
    inner = _bundle(_claim_response([_item(1, "A1")], use="claim"))
    with pytest.raises(PasError) as caught:
        decisions_from_notification(_notification("event-notification", inner))
    assert caught.value.expression == "Bundle.entry[1].resource.entry[0].resource.use"


# ---------------------------------------------------------------------------------------- rejections


def test_not_a_bundle() -> None:
    with pytest.raises(PasError):
        decisions_from_response({"resourceType": "Patient", "id": "p"})
    with pytest.raises(PasError) as caught:
        decisions_from_any({"resourceType": "Patient", "id": "p"})
    assert caught.value.expression == "resourceType"


def test_a_transaction_bundle_is_neither_answer_nor_notification() -> None:
    bundle = _bundle(_claim_response([_item(1, "A1")]))
    bundle["type"] = "transaction"
    with pytest.raises(PasError) as caught:
        decisions_from_any(bundle)
    assert caught.value.expression == "Bundle.type"


def test_use_must_be_preauthorization() -> None:
    with pytest.raises(PasError) as caught:
        decisions_from_response(_bundle(_claim_response([_item(1, "A1")], use="claim")))
    assert caught.value.expression == "Bundle.entry[0].resource.use"


def test_a_lone_claim_response_is_read_as_if_wrapped() -> None:
    decision = _only(decisions_from_any(_claim_response([_item(2, "A1", number="X9")])))
    assert decision.source == "pas-response"
    assert decision.items[0].sequence == 2
    with pytest.raises(PasError) as caught:
        decisions_from_any(_claim_response([_item(1, None)], use="claim"))
    assert caught.value.expression == "ClaimResponse.use"


def test_a_review_action_without_a_code_is_an_error() -> None:
    item = _item(1, None)
    item["adjudication"][0]["extension"] = [{"url": PAS + "extension-reviewAction", "extension": []}]
    with pytest.raises(PasError) as caught:
        decisions_from_response(_bundle(_claim_response([item])))
    assert caught.value.expression == "Bundle.entry[0].resource.item[0].adjudication[0].extension[0]"


# ------------------------------------------------------------------------------------ built decisions


def test_modified_and_partial_items_take_their_authorized_detail_from_add_item() -> None:
    add_items = [
        {"itemSequence": [1], "productOrService": {"text": "drug 30 tablets"}, "quantity": {"value": 30}},
        {"itemSequence": [2], "quantity": {"value": 5}, "unitPrice": {"value": 12.5, "currency": "USD"}},
        {"itemSequence": [9], "quantity": {"value": 99}},  # names no item: nothing to attach to
    ]
    response = _claim_response(
        [_item(1, "A6", number="M1"), _item(2, "A2", number="P2"), _item(3, "A1", number="C3")],
        addItem=add_items,
    )
    modified, partial, certified = _only(decisions_from_response(_bundle(response))).items
    assert modified.action == "A6"
    assert modified.authorized_detail == {
        "productOrServiceCode": {"text": "drug 30 tablets"},
        "quantity": {"value": 30},
    }
    assert partial.action == "A2"
    assert partial.authorized_detail == {
        "quantity": {"value": 5},
        "unitPrice": {"value": 12.5, "currency": "USD"},
    }
    assert certified.authorized_detail is None
    assert [i.sequence for i in (modified, partial, certified)] == [1, 2, 3]


def test_mixed_items_with_reasons_and_an_undecided_item() -> None:
    items = [
        _item(1, "A1", number="OK1"),
        _item(2, "A3", reasons=("N1",)),
        _item(3, None),  # no reviewAction yet
    ]
    items[1]["adjudication"][0]["reason"] = {"text": "step therapy not tried"}
    decision = _only(decisions_from_response(_bundle(_claim_response(items, disposition="partly denied"))))
    assert [(i.sequence, i.action) for i in decision.items] == [(1, "A1"), (2, "A3")]
    denied = decision.items[1]
    assert denied.reasons == (
        Reason("N1", "https://codesystem.x12.org/external/886"),
        Reason(None, display="step therapy not tried"),
    )
    assert decision.items[0].reasons == ()
    assert decision.disposition == "partly denied"


def test_the_review_action_is_found_among_other_adjudications_and_extensions() -> None:
    item = _item(1, "A2", number="PART-1")
    other = {"url": "http://example.org/other-extension", "valueString": "not a review"}
    item["adjudication"][0]["extension"].insert(0, other)
    item["adjudication"].insert(0, {"category": {"coding": [{"code": "eligible"}]}, "extension": [other]})
    (decided,) = _only(decisions_from_response(_bundle(_claim_response([item])))).items
    assert (decided.action, decided.authorization_number) == ("A2", "PART-1")


def test_no_reviewed_item_means_received_not_decided() -> None:
    decision = _only(decisions_from_response(_bundle(_claim_response([_item(1, None), _item(2, None)]))))
    assert decision.items == ()
    assert decision.errors == ()


def test_pre_auth_ref_and_period_are_fallbacks_for_the_item() -> None:
    period = {"start": "2025-03-01", "end": "2025-09-01"}
    own = {"url": PAS + "extension-itemPreAuthPeriod", "valuePeriod": {"start": "2025-04-01"}}
    items = [_item(1, "A1"), _item(2, "A1", number="OWN", extension=[own])]
    response = _claim_response(items, preAuthRef="REF-77", preAuthPeriod=period)
    first, second = _only(decisions_from_response(_bundle(response))).items
    assert (first.authorization_number, first.period_start, first.period_end) == (
        "REF-77",
        "2025-03-01",
        "2025-09-01",
    )
    assert (second.authorization_number, second.period_start, second.period_end) == (
        "OWN",
        "2025-04-01",
        None,
    )


def test_denied_and_pended_items_do_not_inherit_the_authorization() -> None:
    period = {"start": "2025-03-01", "end": "2025-09-01"}
    response = _claim_response([_item(1, "A3"), _item(2, "A4")], preAuthRef="REF-77", preAuthPeriod=period)
    decision = _only(decisions_from_response(_bundle(response)))
    assert [(i.authorization_number, i.period_start) for i in decision.items] == [(None, None), (None, None)]
    assert "REF-77" in decision.correlation.payer_references


def test_claim_response_errors_are_errors() -> None:
    error = {
        "code": {
            "coding": [{"system": "https://codesystem.x12.org/005010/901", "code": "15", "display": "x"}]
        }
    }
    response = _claim_response([], outcome="error", error=[error])
    decision = _only(decisions_from_response(_bundle(response)))
    assert decision.errors == (Reason("15", "https://codesystem.x12.org/005010/901", "x"),)
    assert decision.items == ()


@pytest.mark.parametrize(("disposition", "text"), [("member not found", "member not found"), (None, None)])
def test_outcome_error_without_error_elements(disposition: str | None, text: str | None) -> None:
    fields: dict[str, Any] = {"outcome": "error"}
    if disposition:
        fields["disposition"] = disposition
    decision = _only(decisions_from_response(_bundle(_claim_response([], **fields))))
    assert decision.errors == (Reason(None, display=text or "rejected by payer"),)


def test_correlation_from_request_identifier_and_absolute_claim_url() -> None:
    request = {
        "reference": "https://gw.example.org/fhir/Claim/claim-9/_history/2",
        "identifier": {"system": "urn:trace", "value": "T-1"},
    }
    response = _claim_response(
        [_item(1, "A4")],
        request=request,
        identifier=[{"system": "urn:payer", "value": "P-1"}],
        preAuthRef="R1",
    )
    bundle = _bundle(response)
    bundle["identifier"] = {"value": "B-1"}
    correlation = _only(decisions_from_response(bundle)).correlation
    assert correlation.claim_ids == ("claim-9",)
    assert correlation.trace_numbers == ("urn:trace|T-1", "B-1")
    assert correlation.payer_references == ("urn:payer|P-1", "R1")


def test_claimresponse_identifiers_are_also_looked_up_as_echoed_trace_numbers() -> None:
    """A payer that names the request only by echoing the submitter's trace number in
    ClaimResponse.identifier: those identifiers are tried as trace numbers, after the others."""
    response = _claim_response(
        [_item(1, "A1")],
        identifier=[{"system": "urn:trace", "value": "T-1"}, {"value": "T-2"}],
    )
    correlation = _only(decisions_from_response(_bundle(response))).correlation
    assert correlation.echoed_traces == ("urn:trace|T-1", "T-2")
    assert ("trace", "urn:trace|T-1") in correlation.lookups()
    assert ("trace", "T-2") in correlation.lookups()
    assert ("trace", "T-1") not in correlation.lookups()  # with a system given, only system|value


def test_cdex_attachment_request_sets_info_requested() -> None:
    task = _read(CDEX_DIR, "cdex-task-example20.json")
    decision = _only(decisions_from_response(_bundle(_claim_response([_item(1, "A4")]), task)))
    assert decision.info_requested == "attachments needed: Progress note"
    assert decision.items[0].action == "A4"


def test_pas_task_without_displays_names_the_code() -> None:
    task = _pas("Task-AdditionalInformationTaskExample.json")
    task["reasonReference"] = {"reference": "Claim/claim-1"}
    decision = _only(decisions_from_response(_bundle(_claim_response([_item(1, "A4")]), task)))
    assert decision.info_requested == "attachments needed: 28570-0"


def test_a_completed_attachment_request_is_not_a_request() -> None:
    task = _read(CDEX_DIR, "cdex-task-example24.json")
    assert task["status"] == "completed"
    decision = _only(decisions_from_response(_bundle(_claim_response([_item(1, "A4")]), task)))
    assert decision.info_requested is None


def test_communication_request_sets_info_requested() -> None:
    request = {"resourceType": "CommunicationRequest", "status": "active"}
    decision = _only(decisions_from_response(_bundle(_claim_response([]), request)))
    assert decision.info_requested == "additional information requested"
    assert decision.items == ()


def test_one_decision_per_claim_response_and_info_requests_follow_their_claim() -> None:
    original = _claim_response([_item(1, "A1", number="A")])
    update = _claim_response([_item(1, "A4")], id="cr2", request={"reference": "Claim/claim-2"})
    task = {
        "resourceType": "Task",
        "status": "requested",
        "intent": "order",
        "code": {"coding": [{"code": "attachment-request-code"}]},
        "reasonReference": {"reference": "Claim/claim-2"},
    }
    first, second = decisions_from_response(_bundle(original, update, task))
    assert first.correlation.claim_ids == ("claim-1",)
    assert second.correlation.claim_ids == ("claim-2",)
    assert first.info_requested is None
    assert second.info_requested == "additional information requested"


# --------------------------------------------------------------------------------------- the way back


def _build(decision: PayerDecision, **overrides: Any) -> dict[str, Any]:
    arguments: dict[str, Any] = {
        "claim_id": "claim-7",
        "patient_ref": "Patient/p7",
        "insurer_ref": "Organization/payer",
        "requestor_ref": "Organization/clinic",
        "created": "2025-03-02T08:00:00Z",
    }
    arguments.update(overrides)
    return claim_response_for(decision, **arguments)


def _facts(item: ItemDecision) -> tuple[Any, ...]:
    return (
        item.sequence,
        item.action,
        item.authorization_number,
        item.period_start,
        item.period_end,
        item.reasons,
        item.administration_reference,
        item.authorized_detail,
    )


BUILT = PayerDecision(
    source="x12-278",
    correlation=_only(decisions_from_any(_claim_response([]))).correlation,
    items=(
        ItemDecision(1, "A1", "AUTH-1", "2025-03-01", "2025-08-31"),
        ItemDecision(2, "A3", reasons=(Reason("N1", "https://codesystem.x12.org/external/886", "step"),)),
        ItemDecision(3, "A6", "AUTH-3", authorized_detail={"quantity": {"value": 30}}),
        ItemDecision(4, "A4", administration_reference="ADM-4"),
        ItemDecision(5, "A3", reasons=(Reason(None, display="free text reason"),)),
    ),
    disposition="mixed",
)


def test_claim_response_for_is_valid_r4() -> None:
    response = _build(BUILT)
    assert validate_structure(response) == []
    assert response["request"] == {"reference": "Claim/claim-7"}
    assert response["outcome"] == "complete"
    assert response["preAuthRef"] == "AUTH-1"
    assert response["type"]["coding"][0]["code"] == "pharmacy"
    assert response["requestor"] == {"reference": "Organization/clinic"}


def test_claim_response_for_round_trips_the_items() -> None:
    response = _build(BUILT)
    decision = _only(decisions_from_response(_bundle(response)))
    assert [_facts(i) for i in decision.items] == [_facts(i) for i in BUILT.items]
    assert decision.correlation.claim_ids == ("claim-7",)
    assert decision.disposition == "mixed"


def test_claim_response_for_round_trips_the_corpus_approval() -> None:
    approved = _only(decisions_from_response(_pas("Bundle-ReferralAuthorizationResponseBundleExample.json")))
    response = _build(approved)
    assert validate_structure(response) == []
    again = _only(decisions_from_response(_bundle(response)))
    assert [_facts(i) for i in again.items] == [_facts(i) for i in approved.items]


def test_claim_response_for_errors_and_unknown_payer() -> None:
    decision = PayerDecision(
        source="x12-278",
        correlation=BUILT.correlation,
        errors=(Reason("72", "https://codesystem.x12.org/005010/901", "Invalid member ID"), Reason(None)),
    )
    response = _build(decision, insurer_ref=None, requestor_ref=None)
    assert validate_structure(response) == []
    assert response["outcome"] == "error"
    assert response["insurer"] == {"display": "unknown payer"}
    assert "requestor" not in response and "item" not in response
    back = _only(decisions_from_response(_bundle(response)))
    assert back.errors[0] == Reason("72", "https://codesystem.x12.org/005010/901", "Invalid member ID")
    assert len(back.errors) == 2


def test_an_item_without_sequence_becomes_item_one() -> None:
    decision = PayerDecision(
        source="csv", correlation=BUILT.correlation, items=(ItemDecision(None, "A1", "CSV-1", "2025-01-01"),)
    )
    response = _build(decision)
    assert validate_structure(response) == []
    assert response["item"][0]["itemSequence"] == 1
    (item,) = _only(decisions_from_response(_bundle(copy.deepcopy(response)))).items
    assert (item.sequence, item.authorization_number, item.period_start, item.period_end) == (
        1,
        "CSV-1",
        "2025-01-01",
        None,
    )
