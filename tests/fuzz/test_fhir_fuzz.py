"""Fuzzing FHIR JSON with mutations of valid resources (the tests' builders and the shared corpus's PAS and
CDex examples): parsing and validation (pure), and create, update and transaction over HTTP on both
backends.

Properties: parsing gives a resource or `BadRequest`, validation gives issues, never an exception; over
HTTP every answer is below 500 and is the resource (its type) or an OperationOutcome.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from gateway.exceptions import FhirError, NotFound
from gateway.fhir import jsonio
from gateway.fhir.profiles import ProfileSet
from gateway.fhir.validation import Validator
from gateway.service.fhirapi.interactions import parse_resource
from tests import factories
from tests.fuzz.conftest import HANG_SECONDS, fuzz
from tests.fuzz.mutations import corpus_json, json_text, mutated_json

ROOT = Path(__file__).resolve().parents[2]
PATIENT_ID = "fuzz-patient"
SEEDS: list[dict[str, Any]] = [
    factories.patient("MRN-FUZZ"),
    factories.lab_observation(PATIENT_ID),
    factories.medication_request(PATIENT_ID),
    factories.pa_task(PATIENT_ID, "fuzz-order"),
    {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": "urn:uuid:5f0c3b3e-0000-4000-8000-000000000001",
                "resource": factories.patient("MRN-FUZZ-TX"),
                "request": {"method": "POST", "url": "Patient"},
            },
            {
                "resource": factories.lab_observation("x")
                | {"subject": {"reference": "urn:uuid:5f0c3b3e-0000-4000-8000-000000000001"}},
                "request": {"method": "POST", "url": "Observation"},
            },
        ],
    },
    *corpus_json("pas/davinci-pas-ig-2.2.1", "pas/davinci-cdex"),
]


@pytest.fixture(scope="module")
def validator() -> Validator:
    return Validator(ProfileSet.load(ROOT / "profiles"))


def resources_in(body: bytes) -> list[dict[str, Any]]:
    """What a write would validate: the resource, or the resources in a Bundle's entries (as the
    transaction and batch interactions take them one by one). Raises FhirError as they would."""
    try:
        return [parse_resource(body)]
    except NotFound:
        document = jsonio.loads(body)
        if document.get("resourceType") != "Bundle" or not isinstance(document.get("entry"), list):
            raise
    found = []
    for entry in document["entry"]:
        if isinstance(entry, dict) and isinstance(entry.get("resource"), dict):
            with contextlib.suppress(FhirError):
                found.append(parse_resource(entry["resource"]))
    return found


@fuzz(small=80, long=5000)
@given(data=st.data())
def test_parsing_and_validation_give_a_resource_or_issues(validator: Validator, data: st.DataObject) -> None:
    body = data.draw(json_text(data.draw(mutated_json(SEEDS))))
    try:
        resources = resources_in(body)
    except FhirError as exc:
        event(f"refused: {exc.status}")
        return
    for resource in resources:
        issues = validator.validate(resource)
        event(f"validated, errors: {any(i.is_error for i in issues)}")


def _answer_of(answer: httpx.Response, expected: set[str]) -> None:
    assert answer.status_code < 500, answer.text[:2000]
    event(str(answer.status_code))
    if answer.status_code == 204 or not answer.content:
        return
    kind = orjson.loads(answer.content).get("resourceType")
    assert kind in expected | {"OperationOutcome"}, answer.text[:2000]


@fuzz(small=15)
@given(data=st.data())
async def test_writes_answer_a_resource_or_an_operation_outcome(
    api: httpx.AsyncClient, data: st.DataObject
) -> None:
    document = data.draw(mutated_json(SEEDS))
    body = data.draw(json_text(document))
    kind = document.get("resourceType") if isinstance(document, dict) else None
    kind = kind if isinstance(kind, str) and kind.isalpha() else "Patient"
    how = data.draw(st.sampled_from(["create", "update", "transaction"]))
    headers = {"Content-Type": "application/fhir+json"}
    if how == "create":
        sent = api.post(f"/fhir/{kind}", content=body, headers=headers)
    elif how == "update":
        sent = api.put(f"/fhir/{kind}/fuzz-1", content=body, headers=headers)
    else:
        sent = api.post("/fhir", content=body, headers=headers)
        kind = "Bundle"
    _answer_of(await asyncio.wait_for(sent, HANG_SECONDS), {kind})
