"""Fuzzing the payer file readers with mutated files: X12 278 responses and CSV status files.

Properties: a file gives decisions or its reader's own error (`X12Error`, `CsvStatusError`), never another
exception, and neither names the patient; through `POST /payer/files` (both backends) the answer is never
a server error.
"""

from __future__ import annotations

import asyncio

import httpx
from hypothesis import event, given
from hypothesis import strategies as st

from gateway.adapters.payer.csv_status import CsvStatusError, parse_status_csv
from gateway.adapters.payer.x12_278 import X12Error, parse_278_response
from tests.conftest import ClientFactory
from tests.fuzz.conftest import HANG_SECONDS, fuzz
from tests.fuzz.mutations import mutated_records
from tests.unit.test_payer_x12_278 import FIRST, LAST, PATIENT, TRACE, Event, response

APPROVED = Event([TRACE, "UM*HS*I*3", "HCR*A1", "REF*BB*AUTH-777", "DTP*AAH*RD8*20250301-20250531"])
DENIED = Event([TRACE, "UM*HS*I*3", "HCR*A3**35", "AAA*N**15*C", PATIENT])
SERVICES = Event(
    [TRACE, "UM*HS*I*3", "HCR*A4", "DTP*472*D8*20250301"],
    services=[["SV1*HC:J0135*2*UN*1", "HCR*A1*S-1"], ["SV1*HC:J0136*1*UN*1", "HCR*A3**35", "HSD*VS*12"]],
)
X12_SEEDS = [
    response(APPROVED),
    response(DENIED, subscriber=[PATIENT]),
    response(SERVICES, APPROVED, umo=["NM1*X3*2*ACME HEALTH*****PI*12345"]),
    response(APPROVED, element="|", component="^", repetition="{", terminator="\n", after=""),
    response(DENIED, after="\r\n"),
]
CSV_SEEDS = [
    "task_id,decision,authorization_number,period_start,period_end,decided_at,payer\n"
    "task-1,approved,AUTH-77,2024-03-01,2024-08-31,2024-02-28T14:05:00Z,Acme Health\n",
    "\ufefftrace_number;decision;item;authorized_quantity;reason_code;reason;note\r\n"
    'GW-1;partial;1;2.5;AB;"reduced, per policy";first\r\n'
    "GW-1;denied;2;;35;Not covered;\r\n"
    "# a comment\r\n"
    "\r\n",
    "Task ID\tDecision\tPayer Reference\tPeriod Start\tPeriod End\n"
    "task-2\tApproved Modified\tCASE-9\t03/01/2024\t20240831\n"
    "task-3\trejected\t\t\t\n"
    'task-4\tpended\t"CASE\n10"\t\t\n',
]


def assert_no_patient(text: str) -> None:
    assert LAST not in text and FIRST not in text, text


@fuzz(small=120, long=5000)
@given(text=mutated_records(X12_SEEDS, "~", "*"))
def test_the_278_reader_gives_decisions_or_its_own_error(text: str) -> None:
    try:
        decisions = parse_278_response(text)
    except X12Error as exc:
        event("X12Error")
        assert_no_patient(str(exc))
        return
    event("decisions")
    assert_no_patient(repr(decisions))


@fuzz(small=120, long=5000)
@given(text=mutated_records(CSV_SEEDS, "\n", ","))
def test_the_csv_reader_gives_decisions_or_its_own_error(text: str) -> None:
    try:
        result = parse_status_csv(text)
    except CsvStatusError:
        event("CsvStatusError")
        return
    event(f"decisions: {bool(result.decisions)}, problems: {bool(result.problems)}")


@fuzz(small=6)
@given(text=st.one_of(mutated_records(X12_SEEDS, "~", "*"), mutated_records(CSV_SEEDS, "\n", ",")))
async def test_payer_files_never_get_a_server_error(client_factory: ClientFactory, text: str) -> None:
    payer: httpx.AsyncClient = await client_factory("system/ClaimResponse.c")
    sent = payer.post("/payer/files", content=text.encode("utf-8", "surrogatepass"))
    answer = await asyncio.wait_for(sent, HANG_SECONDS)
    event(str(answer.status_code))
    assert answer.status_code < 500, answer.text
