"""X12 278 (005010X217) responses into PayerDecisions: decisions, correlation, envelope checks, no PHI.

The responses are written here from the X12 structure with a small builder: segments are written with
`*` elements and `:` components and translated to the delimiters a test wants; the ISA is built to its
fixed widths and every SE count is computed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from gateway.adapters.payer.x12_278 import (
    HCR_REASON_SYSTEM,
    REJECT_REASON_SYSTEM,
    X12Error,
    looks_like_x12,
    parse_278_response,
    read_delimiters,
)
from gateway.pa.decision import ItemDecision, PayerDecision, Reason

LAST, FIRST = "QUINTRELLA", "ZEBEDIAH"  # the patient's name: must never come out
PATIENT = f"NM1*IL*1*{LAST}*{FIRST}****MI*MEM-4471"
TRACE = "TRN*2*GW-7f3a*9GATEWAY01"


# ------------------------------------------------------------------------------------------- builder


@dataclass
class Event:
    """A 2000E patient event and its 2000F services, each a list of segments after its HL."""

    segments: list[str]
    services: list[list[str]] = field(default_factory=list)


def hierarchy(*events: Event, umo: Sequence[str] = (), subscriber: Sequence[str] = ()) -> list[str]:
    """BHT and the HL levels 2000A (payer) > 2000B (requester) > 2000C (subscriber) > 2000E > 2000F."""
    segments = [
        "BHT*0007*11*REF-2211*20250301*1015",
        "HL*1**20*1",
        *umo,
        "NM1*X3*2*ACME HEALTH PLAN*****PI*77001",
        "HL*2*1*21*1",
        "NM1*1P*2*RIVERSIDE CLINIC*****XX*1234567893",
        f"HL*3*2*22*{1 if events else 0}",
        PATIENT,
        *subscriber,
    ]
    number = 3
    for event in events:
        number += 1
        event_id = number
        segments += [f"HL*{event_id}*3*EV*{1 if event.services else 0}", *event.segments]
        for service in event.services:
            number += 1
            segments += [f"HL*{number}*{event_id}*SS*0", *service]
    return segments


def transaction(body: list[str], *, control: str = "0001", st01: str = "278", st03: str = "005010X217",
                se_count: int | None = None, se02: str | None = None) -> list[str]:  # fmt: skip
    segments = [f"ST*{st01}*{control}*{st03}", *body]
    count = len(segments) + 1 if se_count is None else se_count
    return [*segments, f"SE*{count}*{se02 or control}"]


def isa(control: str, element: str, repetition: str, component: str) -> str:
    fields = ["00", " " * 10, "00", " " * 10, "ZZ", "ACMEHEALTH".ljust(15), "ZZ", "GATEWAY".ljust(15),
              "250301", "1015", repetition, "00501", control, "0", "P", component]  # fmt: skip
    header = element.join(["ISA", *fields])
    assert len(header) == 105  # 106 with the segment terminator
    return header


def interchange(
    *transactions: list[str],
    element: str = "*",
    component: str = ":",
    repetition: str = "^",
    terminator: str = "~",
    after: str = "",
    gs08: str = "005010X217",
    isa13: str = "000000905",
    iea02: str | None = None,
    gs06: str = "905",
    ge02: str | None = None,
    drop: str | None = None,
) -> str:
    """The 278 text; `after` follows every terminator (newlines), `drop` leaves out one trailer."""
    inner = [
        f"GS*HI*ACMEHEALTH*GATEWAY*20250301*1015*{gs06}*X*{gs08}",
        *[segment for t in transactions for segment in t],
        f"GE*{len(transactions)}*{ge02 or gs06}",
        f"IEA*1*{iea02 or isa13}",
    ]
    inner = [s for s in inner if s.split("*")[0] != drop]
    converted = [s.replace("*", element).replace(":", component) for s in inner]
    segments = [isa(isa13, element, repetition, component), *converted]
    return "".join(segment + terminator + after for segment in segments)


def response(*events: Event, umo: Sequence[str] = (), subscriber: Sequence[str] = (), **options: Any) -> str:
    """One transaction set around the events; `options` go to `interchange`."""
    return interchange(transaction(hierarchy(*events, umo=umo, subscriber=subscriber)), **options)


def parse_one(text: str) -> PayerDecision:
    decisions = parse_278_response(text)
    assert len(decisions) == 1
    assert LAST not in repr(decisions) and FIRST not in repr(decisions)
    return decisions[0]


def error_of(text: str) -> X12Error:
    with pytest.raises(X12Error) as caught:
        parse_278_response(text)
    message = str(caught.value)
    assert LAST not in message and FIRST not in message and LAST[:3] not in message
    return caught.value


APPROVED = Event([TRACE, "UM*HS*I*3", "HCR*A1", "REF*BB*AUTH-777", "DTP*AAH*RD8*20250301-20250531"])


# ----------------------------------------------------------------------------------------- decisions


def test_a1_with_ref_bb_number_and_aah_period() -> None:
    decision = parse_one(response(APPROVED))
    assert decision.source == "x12-278"
    assert decision.items == (
        ItemDecision(
            sequence=None,
            action="A1",
            authorization_number="AUTH-777",
            period_start="2025-03-01",
            period_end="2025-05-31",
        ),
    )
    assert decision.errors == ()
    assert decision.decided_at == "2025-03-01"
    assert decision.correlation.trace_numbers == ("GW-7f3a",)
    assert decision.correlation.payer_references == ("AUTH-777",)
    assert decision.extra == {
        "request_category": "HS",
        "certification_type": "I",
        "member_id": "MEM-4471",
        "reference_id": "REF-2211",
    }


def test_hcr02_wins_over_ref_bb_and_both_are_payer_references() -> None:
    decision = parse_one(response(Event([TRACE, "HCR*A1*CERT-1", "REF*BB*AUTH-2"])))
    assert decision.items[0].authorization_number == "CERT-1"
    assert decision.correlation.payer_references == ("CERT-1", "AUTH-2")


def test_a3_denial_with_reason_code() -> None:
    decision = parse_one(response(Event([TRACE, "UM*SC*I", "HCR*A3**35"])))
    (item,) = decision.items
    assert item.action == "A3"
    assert item.reasons == (Reason(code="35", system=HCR_REASON_SYSTEM),)
    assert item.authorization_number is None and item.period_start is None
    assert decision.extra["request_category"] == "SC"


def test_a4_pended_with_administrative_reference() -> None:
    decision = parse_one(response(Event([TRACE, "HCR*A4", "REF*NT*ADMIN-42"])))
    (item,) = decision.items
    assert (item.action, item.administration_reference, item.authorization_number) == ("A4", "ADMIN-42", None)
    assert decision.correlation.payer_references == ("ADMIN-42",)


def test_service_level_decisions_differ_per_item_and_inherit_from_the_event() -> None:
    event = Event(
        [TRACE, "UM*HS*I", "HCR*A1*AUTH-E", "DTP*AAH*RD8*20250301-20250630"],
        services=[
            ["TRN*2*GW-SVC-1*9GATEWAY01", "HCR*A6*AUTH-1", "DTP*AAH*D8*20250315"],
            ["HCR*A2*AUTH-2"],
            ["REF*NT*ADMIN-3"],  # no HCR: the event's decision applies
        ],
    )
    decision = parse_one(response(event))
    assert [(i.sequence, i.action, i.authorization_number) for i in decision.items] == [
        (1, "A6", "AUTH-1"),
        (2, "A2", "AUTH-2"),
        (3, "A1", "AUTH-E"),
    ]
    assert [(i.period_start, i.period_end) for i in decision.items] == [
        ("2025-03-15", "2025-03-15"),
        ("2025-03-01", "2025-06-30"),
        ("2025-03-01", "2025-06-30"),
    ]
    assert decision.items[2].administration_reference == "ADMIN-3"
    assert decision.correlation.trace_numbers == ("GW-7f3a", "GW-SVC-1")
    assert decision.correlation.payer_references == ("AUTH-E", "AUTH-1", "AUTH-2", "ADMIN-3")


def test_service_number_falls_back_on_the_event_only_for_certifications() -> None:
    event = Event([TRACE, "HCR*A1*AUTH-E"], services=[["HCR*A1"], ["HCR*A3**35"]])
    decision = parse_one(response(event))
    assert [(i.action, i.authorization_number) for i in decision.items] == [("A1", "AUTH-E"), ("A3", None)]


def test_event_without_hcr_keeps_only_the_decided_services() -> None:
    event = Event([TRACE], services=[["HCR*A1*AUTH-1"], ["TRN*1*PAYER-SVC-2*1ACMEHEALT"]])
    decision = parse_one(response(event))
    assert [(i.sequence, i.action) for i in decision.items] == [(1, "A1")]


def test_contact_payer() -> None:
    decision = parse_one(response(Event([TRACE, "HCR*CT"])))
    assert [i.action for i in decision.items] == ["CT"]
    assert decision.errors == ()


@pytest.mark.parametrize("action", ["A2", "A6", "C", "NA"])
def test_other_review_actions_pass_through(action: str) -> None:
    assert parse_one(response(Event([TRACE, f"HCR*{action}"]))).items[0].action == action


def test_d8_period_is_a_single_day() -> None:
    decision = parse_one(response(Event([TRACE, "HCR*A1*X1", "DTP*AAH*D8*20250704"])))
    assert (decision.items[0].period_start, decision.items[0].period_end) == ("2025-07-04", "2025-07-04")


def test_certification_effective_and_expiration_dates_without_aah() -> None:
    event = Event([TRACE, "HCR*A1*X1", "DTP*007*D8*20250401", "DTP*036*D8*20250930"])
    item = parse_one(response(event)).items[0]
    assert (item.period_start, item.period_end) == ("2025-04-01", "2025-09-30")


def test_trace_numbers_are_bare_deduplicated_and_include_the_payers_own() -> None:
    event = Event(
        [TRACE, "TRN*1*PAYER-99*1ACMEHEALT", "HCR*A4"],
        services=[[TRACE, "HCR*A4"], ["TRN*2*GW-SVC-2*9GATEWAY01"]],
    )
    decision = parse_one(response(event))
    assert decision.correlation.trace_numbers == ("GW-7f3a", "PAYER-99", "GW-SVC-2")


def test_each_patient_event_is_its_own_decision() -> None:
    first = Event(["TRN*2*GW-1*9GATEWAY01", "HCR*A1*AUTH-1"])
    second = Event(["TRN*2*GW-2*9GATEWAY01", "HCR*A3**35"])
    decisions = parse_278_response(response(first, second))
    assert [(d.correlation.trace_numbers, d.items[0].action) for d in decisions] == [
        (("GW-1",), "A1"),
        (("GW-2",), "A3"),
    ]


def test_transactions_in_one_interchange_follow_file_order() -> None:
    one = transaction(hierarchy(Event(["TRN*2*GW-1*9GATEWAY01", "HCR*A1*AUTH-1"])), control="0001")
    two = transaction(hierarchy(Event(["TRN*2*GW-2*9GATEWAY01", "HCR*A4"])), control="0002")
    decisions = parse_278_response(interchange(one, two))
    assert [d.items[0].action for d in decisions] == ["A1", "A4"]


def test_dependent_level_between_subscriber_and_event() -> None:
    body = hierarchy()
    body[-2] = "HL*3*2*22*1"  # the subscriber now has a child
    body += ["HL*4*3*23*1", "NM1*QC*1*" + LAST + "*" + FIRST, "HL*5*4*EV*0", TRACE, "HCR*A1*AUTH-D"]
    decision = parse_one(interchange(transaction(body)))
    assert decision.items[0].authorization_number == "AUTH-D"
    assert decision.extra["member_id"] == "MEM-4471"


# ---------------------------------------------------------------------------------------- rejections


def test_aaa_at_subscriber_without_event_is_one_rejected_decision() -> None:
    text = response(subscriber=["AAA*N**75*C", TRACE])
    decision = parse_one(text)
    assert decision.items == ()
    assert decision.errors == (
        Reason(code="75", system=REJECT_REASON_SYSTEM, display="Subscriber/insured not found"),
    )
    assert decision.correlation.trace_numbers == ("GW-7f3a",)
    assert decision.extra["follow_up_actions"] == ["C"]
    assert decision.extra["member_id"] == "MEM-4471"


def test_aaa_at_subscriber_applies_to_the_events_below() -> None:
    text = response(Event([TRACE]), subscriber=["AAA*N**72*C"])
    decision = parse_one(text)
    assert decision.items == ()
    assert [(e.code, e.display) for e in decision.errors] == [("72", "Invalid/missing subscriber/insured ID")]
    assert decision.correlation.trace_numbers == ("GW-7f3a",)


def test_aaa_at_payer_level_applies_to_every_event() -> None:
    first, second = Event(["TRN*2*GW-1*9GATEWAY01"]), Event(["TRN*2*GW-2*9GATEWAY01"])
    decisions = parse_278_response(response(first, second, umo=["AAA*Y**42*R"]))
    assert [[e.code for e in d.errors] for d in decisions] == [["42"], ["42"]]
    assert [d.correlation.trace_numbers for d in decisions] == [("GW-1",), ("GW-2",)]


def test_aaa_at_event_level() -> None:
    decision = parse_one(response(Event([TRACE, "AAA*N**57*C"])))
    assert decision.items == ()
    assert decision.errors[0].display == "Invalid/missing date(s) of service"
    assert decision.errors[0].system == REJECT_REASON_SYSTEM


def test_aaa_at_service_level_with_an_unlisted_code_has_no_display() -> None:
    event = Event([TRACE], services=[["HCR*A1*AUTH-1"], ["AAA*N**ZZ*C"]])
    decision = parse_one(response(event))
    assert [i.sequence for i in decision.items] == [1]
    assert decision.errors == (Reason(code="ZZ", system=REJECT_REASON_SYSTEM, display=None),)


# -------------------------------------------------------------------------------------- tolerance


def test_newlines_after_segment_terminators() -> None:
    decision = parse_one(response(APPROVED, after="\r\n"))
    assert decision.items[0].authorization_number == "AUTH-777"
    assert decision == parse_one(response(APPROVED))


def test_other_delimiters_and_newline_terminator() -> None:
    text = response(APPROVED, element="|", component="^", repetition="{", terminator="\n")
    assert read_delimiters(text).element == "|"
    assert read_delimiters(text).segment == "\n"
    assert parse_one(text) == parse_one(response(APPROVED))


def test_bom_leading_whitespace_and_unterminated_iea() -> None:
    text = "\ufeff \r\n" + response(APPROVED).removesuffix("~")
    assert parse_one(text).items[0].authorization_number == "AUTH-777"


def test_version_in_st03_only_or_gs08_only() -> None:
    body = hierarchy(APPROVED)
    assert parse_one(interchange(transaction(body), gs08="005010")).items[0].action == "A1"
    assert parse_one(interchange(transaction(body, st03=""))).items[0].action == "A1"


def test_looks_like_x12() -> None:
    assert looks_like_x12(response(APPROVED))
    assert looks_like_x12(b"\xef\xbb\xbf\r\n  " + response(APPROVED).encode())
    assert not looks_like_x12(b"task_id,status\nT1,approved\n")
    assert not looks_like_x12("ISAAC,approved")
    assert not looks_like_x12(b"")


# -------------------------------------------------------------------------------------- malformed


def test_garbage_is_not_x12() -> None:
    assert not looks_like_x12("<Bundle xmlns='http://hl7.org/fhir'/>")
    assert "does not start with an ISA" in str(error_of("<Bundle xmlns='http://hl7.org/fhir'/>"))


def test_missing_iea() -> None:
    error = error_of(response(APPROVED, drop="IEA"))
    assert error.segment_id == "IEA"
    assert "no IEA trailer" in str(error)


def test_missing_ge() -> None:
    error = error_of(response(APPROVED, drop="GE"))
    assert error.segment_id == "GE"


def test_wrong_se_count() -> None:
    text = interchange(transaction(hierarchy(APPROVED), se_count=99))
    error = error_of(text)
    assert error.segment_id == "SE"
    assert "SE01 says 99 segments from ST to SE, found 15" in str(error)


def test_missing_se() -> None:
    body = transaction(hierarchy(APPROVED))[:-1]
    assert error_of(interchange(body)).segment_id == "SE"


def test_st01_must_be_278() -> None:
    error = error_of(interchange(transaction(hierarchy(APPROVED), st01="271")))
    assert error.segment_id == "ST"
    assert "'271'" in str(error) and "278" in str(error)


def test_other_version_is_refused() -> None:
    text = interchange(transaction(hierarchy(APPROVED), st03="005010X215"), gs08="005010X215")
    error = error_of(text)
    assert "'005010X215'" in str(error) and "005010X217" in str(error)


def test_conflicting_versions_are_refused() -> None:
    text = interchange(transaction(hierarchy(APPROVED), st03="005010X216"))
    assert "disagree" in str(error_of(text))


def test_truncated_mid_segment() -> None:
    full = response(APPROVED)
    error = error_of(full[: full.index(LAST) + 4])
    assert error.segment_id == "NM1"
    assert "truncated" in str(error)
    assert error.segment_index == 10


def test_truncated_inside_the_isa() -> None:
    assert error_of(response(APPROVED)[:60]).segment_id == "ISA"


@pytest.mark.parametrize(
    ("options", "segment_id", "names"),
    [
        ({"iea02": "000000999"}, "IEA", "IEA02"),
        ({"ge02": "906"}, "GE", "GE02"),
    ],
)
def test_envelope_control_number_mismatch(options: dict[str, str], segment_id: str, names: str) -> None:
    error = error_of(response(APPROVED, **options))
    assert error.segment_id == segment_id
    assert names in str(error) and "does not match" in str(error)


def test_transaction_control_number_mismatch() -> None:
    error = error_of(interchange(transaction(hierarchy(APPROVED), se02="0002")))
    assert error.segment_id == "SE"
    assert "SE02 control number '0002' does not match ST02 '0001'" in str(error)


def test_hl_with_unknown_parent() -> None:
    body = hierarchy(APPROVED)
    body[body.index("HL*4*3*EV*0")] = "HL*4*9*EV*0"
    error = error_of(interchange(transaction(body)))
    assert error.segment_id == "HL"
    assert "parent '9'" in str(error)


def test_service_directly_under_subscriber_is_refused() -> None:
    body = hierarchy(APPROVED)
    body[body.index("HL*4*3*EV*0")] = "HL*4*3*SS*0"
    assert "parent level must be EV" in str(error_of(interchange(transaction(body))))


def test_request_instead_of_response_is_refused() -> None:
    body = hierarchy(APPROVED)
    body[0] = "BHT*0007*13*REF-2211*20250301*1015"
    assert "BHT02 is '13'" in str(error_of(interchange(transaction(body))))


def test_unknown_review_action_is_refused() -> None:
    error = error_of(response(Event([TRACE, "HCR*ZZ"])))
    assert error.segment_id == "HCR" and "HCR01 'ZZ'" in str(error)


def test_a_name_in_a_code_element_is_not_echoed() -> None:
    error = error_of(response(Event([TRACE, f"HCR*{LAST}"])))
    assert "HCR01 a value that is not a code" in str(error)


def test_event_without_any_decision_is_refused() -> None:
    assert "no HCR decision" in str(error_of(response(Event([TRACE, "UM*HS*I"]))))


def test_invalid_period_date_is_refused_without_echoing_it() -> None:
    error = error_of(response(Event([TRACE, "HCR*A1", "DTP*AAH*RD8*20250231-20250301"])))
    assert error.segment_id == "DTP" and "20250231" not in str(error)


def test_isa_that_is_not_fixed_width() -> None:
    text = response(APPROVED).replace("ACMEHEALTH     ", "ACMEHEALTH", 1)
    assert "fixed width" in str(error_of(text))


def test_names_in_a_bad_segment_are_not_echoed() -> None:
    text = response(APPROVED).replace(PATIENT, f"{LAST}*{FIRST}")  # a name where a segment id belongs
    error = error_of(text)
    assert error.segment_index == 10 and error.segment_id is None
