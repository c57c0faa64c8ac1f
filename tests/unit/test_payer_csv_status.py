"""Unit tests for gateway.adapters.payer.csv_status: payers' CSV status files into PayerDecisions."""

from __future__ import annotations

import pytest

from gateway.adapters.payer.csv_status import (
    MAX_COLUMNS,
    CsvProblem,
    CsvStatusError,
    looks_like_status_csv,
    parse_status_csv,
)
from gateway.pa.decision import (
    CANCELLED,
    CERTIFIED,
    CONTACT_PAYER,
    MODIFIED,
    NOT_CERTIFIED,
    PARTIAL,
    PENDED,
    Correlation,
    ItemDecision,
    PayerDecision,
    Reason,
)


def only_decision(text: str) -> PayerDecision:
    result = parse_status_csv(text)
    assert result.problems == []
    [decision] = result.decisions
    return decision


def only_item(text: str) -> ItemDecision:
    [item] = only_decision(text).items
    return item


# --- one row per decision -----------------------------------------------------------------------------------


def test_approved_row_with_number_and_period() -> None:
    decision = only_decision(
        "task_id,decision,authorization_number,period_start,period_end,decided_at,payer\n"
        "task-1,approved,AUTH-77,2024-03-01,2024-08-31,2024-02-28T14:05:00Z,Acme Health\n"
    )
    assert decision.source == "csv"
    assert decision.correlation == Correlation(task_id="task-1", payer_references=("AUTH-77",))
    assert decision.items == (
        ItemDecision(
            sequence=None,
            action=CERTIFIED,
            authorization_number="AUTH-77",
            period_start="2024-03-01",
            period_end="2024-08-31",
        ),
    )
    assert decision.errors == ()
    assert decision.decided_at == "2024-02-28T14:05:00Z"
    assert decision.extra == {"lines": [2], "payer": "Acme Health"}


def test_denied_row_with_reason() -> None:
    decision = only_decision(
        "trace_number,decision,reason_code,reason,note\n"
        "TRN-9,Denied,NMN,Not medically necessary,appeal within 30 days\n"
    )
    assert decision.correlation == Correlation(trace_numbers=("TRN-9",))
    [item] = decision.items
    assert item.action == NOT_CERTIFIED
    assert item.authorization_number is None
    assert item.reasons == (Reason(code="NMN", display="Not medically necessary"),)
    assert decision.disposition == "appeal within 30 days"


def test_denied_row_without_reason_is_fine() -> None:
    item = only_item("task_id,decision,reason\nt1,denied,\n")
    assert item.action == NOT_CERTIFIED
    assert item.reasons == ()


def test_pended_row() -> None:
    decision = only_decision("payer_reference,decision,decided_at\nCASE-5,pending,03/07/2024\n")
    assert decision.correlation == Correlation(payer_references=("CASE-5",))
    assert [i.action for i in decision.items] == [PENDED]
    assert decision.decided_at == "2024-03-07"


@pytest.mark.parametrize(
    ("value", "action"),
    [
        ("approved", CERTIFIED),
        ("Approved Modified", MODIFIED),
        ("modified", MODIFIED),
        ("partially_approved", PARTIAL),
        ("PARTIAL", PARTIAL),
        ("pended", PENDED),
        ("info-requested", CONTACT_PAYER),
        ("more info", CONTACT_PAYER),
        ("cancelled", CANCELLED),
    ],
)
def test_decision_words(value: str, action: str) -> None:
    assert only_item(f"task_id,decision\nt1,{value}\n").action == action


@pytest.mark.parametrize("code", ["A1", "a2", "A3", "A4", "A6", "C", "ct", "NA"])
def test_x12_codes_directly(code: str) -> None:
    assert only_item(f"task_id,decision\nt1,{code}\n").action == code.upper()


def test_modified_with_quantity() -> None:
    item = only_item("task_id,decision,authorized_quantity\nt1,approved-modified,30\n")
    assert item.action == MODIFIED
    assert item.authorized_detail == {"quantity": {"value": 30}}
    assert only_item("task_id,decision,authorized_quantity\nt1,A6,2.5\n").authorized_detail == {
        "quantity": {"value": 2.5}
    }


def test_partial_with_two_items_is_one_decision() -> None:
    decision = only_decision(
        "task_id,item,decision,authorization_number,reason_code\n"
        "task-2,1,approved,AUTH-1,\n"
        "task-2,2,denied,,NOTCOV\n"
    )
    assert decision.correlation == Correlation(task_id="task-2", payer_references=("AUTH-1",))
    assert [(i.sequence, i.action, i.authorization_number) for i in decision.items] == [
        (1, CERTIFIED, "AUTH-1"),
        (2, NOT_CERTIFIED, None),
    ]
    assert decision.items[1].reasons == (Reason(code="NOTCOV"),)
    assert decision.extra["lines"] == [2, 3]


def test_different_requests_are_different_decisions() -> None:
    result = parse_status_csv("task_id,decision\nt1,approved\nt2,denied\nt1-b,pended\n")
    assert [d.correlation.task_id for d in result.decisions] == ["t1", "t2", "t1-b"]


def test_authorization_number_alone_names_the_request() -> None:
    result = parse_status_csv("authorization_number,item,decision\nA-1,1,approved\nA-1,2,A3\nA-2,1,A1\n")
    assert result.problems == []
    assert [(d.correlation.payer_references, len(d.items)) for d in result.decisions] == [
        (("A-1",), 2),
        (("A-2",), 1),
    ]


def test_rejected_gives_errors_not_items() -> None:
    decision = only_decision(
        "task_id,payer_reference,decision,reason_code,reason\nt9,REF-1,rejected,15,Missing member id\n"
    )
    assert decision.items == ()
    assert decision.errors == (Reason(code="15", display="Missing member id"),)
    assert decision.correlation.payer_references == ("REF-1",)


def test_rejected_without_reason_still_has_an_error() -> None:
    [error] = only_decision("task_id,decision\nt9,REJECTED\n").errors
    assert error.text() != ""


# --- file shape ---------------------------------------------------------------------------------------------


def test_semicolon_file_with_bom_and_crlf() -> None:
    text = (
        "\ufeffTask ID;Decision;Period-Start;PERIOD END;Authorized Quantity\r\n"
        't1;approved;01/15/2024;20240715;"1,5"\r\n'
        "t2;denied;;;\r\n"
    )
    result = parse_status_csv(text)
    assert result.unknown_columns == []
    # "1,5" is not a decimal: a problem on line 2, not a guessed 1.5 or 15.
    assert result.problems == [CsvProblem(2, "authorized_quantity", "authorized_quantity is not a number")]
    [decision] = result.decisions
    assert decision.correlation.task_id == "t2"
    fixed = parse_status_csv(text.replace('"1,5"', "15"))
    assert fixed.problems == []
    first = fixed.decisions[0].items[0]
    assert (first.period_start, first.period_end) == ("2024-01-15", "2024-07-15")
    assert first.authorized_detail == {"quantity": {"value": 15}}


def test_tab_separated_file() -> None:
    item = only_item("task_id\tdecision\tauthorization_number\nt1\tapproved\tAUTH,WITH,COMMAS\n")
    assert item.authorization_number == "AUTH,WITH,COMMAS"


def test_comment_and_blank_lines_are_skipped_and_lines_counted() -> None:
    text = (
        "# exported 2024-03-01\n"
        "\n"
        "task_id,decision,item\n"
        "# first batch\n"
        "t1,approved,1\n"
        "   \n"
        ",,\n"
        "t1,approved,x\n"
    )
    result = parse_status_csv(text)
    assert [d.extra["lines"] for d in result.decisions] == [[5]]
    assert result.problems == [CsvProblem(8, "item", "item 'x' is not a positive integer")]


def test_quoted_cell_over_two_lines_keeps_line_numbers() -> None:
    text = 'task_id,decision,note\nt1,approved,"line one\n# not a comment"\nt2,bogus,\n'
    result = parse_status_csv(text)
    assert result.decisions[0].disposition == "line one\n# not a comment"
    assert [(p.line, p.column) for p in result.problems] == [(4, "decision")]


def test_unknown_columns_are_reported_not_fatal() -> None:
    result = parse_status_csv("Member Name,task_id,decision,Extra Col,\nx,t1,approved,y,\n")
    assert result.unknown_columns == ["Member Name", "Extra Col"]
    assert [d.correlation.task_id for d in result.decisions] == ["t1"]


# --- problems -----------------------------------------------------------------------------------------------


def test_bad_rows_reported_with_line_numbers_and_good_rows_kept() -> None:
    text = (
        "task_id,trace_number,item,decision,period_start,period_end,decided_at\n"  # 1
        "t1,,1,approved,2024-01-01,2024-06-30,\n"  # 2 good
        "t2,,,maybe,,,\n"  # 3 unknown decision
        "t3,,,approved,2024-02-30,,\n"  # 4 no such day
        "t4,,,approved,2024-05-01,2024-04-01,\n"  # 5 period ends before it starts
        ",,,approved,,,\n"  # 6 nothing identifies the request
        "t5,,-1,approved,,,\n"  # 7 bad item
        "t6,,,,,,\n"  # 8 no decision
        "t7,,,approved,,,yesterday\n"  # 9 bad decided_at
        "t8,TRN-8,,denied,,,\n"  # 10 good
        "t1,,1,denied,,,\n"  # 11 item 1 of t1 again
        "t9,,,approved,,,,surplus\n"  # 12 more cells than the header
        't10,,,"approved"x,,,\n'  # 13 stray quote
    )
    result = parse_status_csv(text)
    assert [(p.line, p.column) for p in result.problems] == [
        (3, "decision"),
        (4, "period_start"),
        (5, "period_end"),
        (6, None),
        (7, "item"),
        (8, "decision"),
        (9, "decided_at"),
        (11, "item"),
        (12, None),
        (13, None),
    ]
    assert result.problems[0].message == "unknown decision 'maybe'"
    assert "line 2" in result.problems[7].message
    assert [d.correlation.task_id for d in result.decisions] == ["t1", "t8"]
    assert result.decisions[1].correlation.trace_numbers == ("TRN-8",)


def test_whole_request_and_items_do_not_mix() -> None:
    result = parse_status_csv("task_id,item,decision\nt1,,approved\nt1,2,denied\n")
    assert [(p.line, p.column) for p in result.problems] == [(3, "item")]
    assert [i.sequence for i in result.decisions[0].items] == [None]


def test_problem_messages_do_not_repeat_free_text() -> None:
    result = parse_status_csv(
        "task_id,item,decision,payer,authorized_quantity\n"
        "t1,1,approved,Acme,\n"
        "t1,2,approved,Other Payer,\n"
        "t2,,approved,,lots\n"
    )
    assert [(p.line, p.column) for p in result.problems] == [(3, "payer"), (4, "authorized_quantity")]
    assert all("lots" not in p.message and "Other Payer" not in p.message for p in result.problems)


def test_missing_decision_column_raises() -> None:
    with pytest.raises(CsvStatusError, match="decision"):
        parse_status_csv("task_id,status\nt1,approved\n")


def test_missing_identifying_column_raises() -> None:
    with pytest.raises(CsvStatusError, match="identifying"):
        parse_status_csv("member,decision\nx,approved\n")


def test_empty_file_and_duplicate_column_raise() -> None:
    with pytest.raises(CsvStatusError):
        parse_status_csv("# nothing here\n\n")
    with pytest.raises(CsvStatusError, match="twice"):
        parse_status_csv("task_id,decision,Task ID\nt1,approved,t2\n")


# --- detection ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "task_id,decision\nt1,approved\n",
        "\ufeff# from Acme\n\nTrace Number;Decision;Item\r\nTRN;A1;1\r\n",
        "authorization_number\tdecision\n",
    ],
)
def test_looks_like_status_csv(text: str) -> None:
    assert looks_like_status_csv(text)


@pytest.mark.parametrize(
    "text",
    [
        "MSH|^~\\&|PAYER|X|GW|Y|20240301||ORU^R01|1|P|2.5.1\rPID|1||123\r",
        "ISA*00*          *00*          *ZZ*PAYER          *ZZ*GW             *240301*1200*^*00501*1*0*P*:~",
        "member_id,name,status\n1,x,approved\n",
        "task_id,status\nt1,approved\n",
        "decision,comment\napproved,x\n",
        "",
    ],
)
def test_does_not_look_like_status_csv(text: str) -> None:
    assert not looks_like_status_csv(text)


# --- bounded work: hostile files are refused or reported, never computed at length ---------------------


@pytest.mark.parametrize("quantity", ["1e1000000", "1E+999999999", "9" * 5000])
def test_a_quantity_of_absurd_size_is_a_problem_not_a_computation(quantity: str) -> None:
    result = parse_status_csv(f"task_id,decision,authorized_quantity\nt1,approved,{quantity}\n")
    assert result.decisions == []
    [problem] = result.problems
    assert (problem.line, problem.column) == (2, "authorized_quantity")
    assert quantity not in problem.message  # the value is not echoed


def test_a_header_with_more_columns_than_the_cap_is_refused() -> None:
    header = "task_id,decision," + ",".join(f"c{n}" for n in range(100_000))
    with pytest.raises(CsvStatusError, match="columns"):
        parse_status_csv(header + "\nt1,approved\n")


def test_unknown_columns_are_listed_once_each_in_linear_time() -> None:
    """Many distinct unknown columns up to the cap are fine, each listed once in order."""
    names = [f"extra {n}" for n in range(MAX_COLUMNS - 3)]
    result = parse_status_csv("task_id,decision," + ",".join(names + names[:1]) + "\nt1,approved\n")
    assert result.unknown_columns == names
