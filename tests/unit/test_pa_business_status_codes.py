"""The PA business statuses the code uses are the ones `profiles/CodeSystem-pa-business-status.json`
defines, and what the definitions say a payer's HTTP answer means is what the payer client does with it."""

from __future__ import annotations

import asyncio
import json
import pathlib
import re

import httpx
import pytest

from gateway.pa.lifecycle import TASK_STATUS
from gateway.pa.payers import PayerConfig
from gateway.service.priorauth.payer_client import Accepted, Answered, Failed, Outcome, PayerClient, Refused

ROOT = pathlib.Path(__file__).resolve().parents[2]
CODE_SYSTEM = json.loads((ROOT / "profiles" / "CodeSystem-pa-business-status.json").read_text())
DEFINITIONS = {c["code"]: c["definition"] for c in CODE_SYSTEM["concept"]}
PAYER = PayerConfig(name="p", base_url="https://payer.example/fhir", insurers=["Organization/x"])
# What the worker makes of each kind of answer to a $submit.
BUSINESS_STATUS = {Refused: "rejected-by-payer", Failed: "submission-error", Accepted: "payer-received"}


def test_every_business_status_is_defined_with_its_task_status() -> None:
    assert set(DEFINITIONS) == set(TASK_STATUS)
    assert CODE_SYSTEM["count"] == len(CODE_SYSTEM["concept"])
    for code, task_status in TASK_STATUS.items():
        named = re.match(r"Task\.status = ([a-z-]+)\b", DEFINITIONS[code])
        assert named and named[1] == task_status, code


def answer(status: int, body: object = None) -> Outcome:
    def reply(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json=body) if body is not None else httpx.Response(status)

    client = PayerClient(httpx.AsyncClient(transport=httpx.MockTransport(reply)))
    return asyncio.run(client.submit(PAYER, b"{}", "key"))


def issue(severity: str, code: str) -> dict[str, object]:
    return {"resourceType": "OperationOutcome", "issue": [{"severity": severity, "code": code}]}


@pytest.mark.parametrize("status", [400, 401, 403, 404, 408, 409, 422, 429, 500, 502, 503])
def test_what_the_code_system_says_an_http_status_means_is_what_the_client_does(status: int) -> None:
    outcome = answer(status, issue("error", "invalid"))
    business = BUSINESS_STATUS[type(outcome)]
    definition = DEFINITIONS[business]
    if business == "submission-error":
        assert str(status) in definition or (status >= 500 and "5xx" in definition), definition
    else:
        assert business == "rejected-by-payer" and 400 <= status < 500
        assert "4xx" in definition and str(status) not in definition, definition
        assert "not retried" in definition


def test_the_definitions_of_answers_without_a_decision_match_the_client() -> None:
    assert isinstance(answer(202), Accepted) and isinstance(answer(200), Accepted)
    assert isinstance(answer(200, issue("warning", "informational")), Accepted)
    assert isinstance(answer(200, issue("error", "required")), Refused)
    assert isinstance(answer(200, issue("error", "throttled")), Failed)
    assert isinstance(answer(200, {"resourceType": "Bundle", "type": "collection"}), Answered)
    assert "OperationOutcome" in DEFINITIONS["payer-received"]
    assert "OperationOutcome" in DEFINITIONS["rejected-by-payer"]
    assert "transient" in DEFINITIONS["submission-error"]


def test_the_readme_lifecycle_table_says_the_same_about_http_answers() -> None:
    readme = (ROOT / "README.md").read_text()
    rows = {
        code: signal
        for code, _, signal in re.findall(r"^\| `([a-z-]+)` \| ([a-z-]+) \| (.*) \|$", readme, re.M)
    }
    assert "401, 408 and 429" in rows["rejected-by-payer"] and "not retried" in rows["rejected-by-payer"]
    assert "408" in rows["submission-error"] and "429" in rows["submission-error"]
    assert "retried" in rows["submission-error"]
    assert "OperationOutcome" in rows["payer-received"]
