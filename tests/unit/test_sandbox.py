"""`gateway sandbox run` against mocked FHIR servers (respx): a faithful one, one that drops a field, one
that answers 201 without a body and HAPI-style Location headers; the round-trip comparison; the CLI's
JSON and exit status."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl

import httpx
import orjson
import pytest
import respx
from click.testing import CliRunner

from gateway.cli import main
from gateway.sandbox import Server, run
from gateway.sandbox.client import location_id
from gateway.sandbox.compare import differences

BASE = "http://fhir.test/baseR4"
NOW = datetime(2026, 3, 9, 15, 30, tzinfo=UTC)


class FakeFhir:
    """A small in-memory FHIR server: create, read, delete, search by identifier, patient and code."""

    def __init__(self, *, drop: tuple[str, str] | None = None, minimal: bool = False) -> None:
        self.drop = drop  # (resource type, element) the server silently does not keep
        self.minimal = minimal  # answer creates with 201 and no body, as Prefer: return=minimal does
        self.stored: dict[tuple[str, str], dict[str, Any]] = {}
        self.deleted: set[tuple[str, str]] = set()
        self.ids = itertools.count(1000)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        parts = request.url.path.removeprefix("/baseR4/").split("/")
        if parts == ["metadata"]:
            return httpx.Response(200, json={"resourceType": "CapabilityStatement", "fhirVersion": "4.0.1"})
        if request.method == "POST" and len(parts) == 1:
            return self.create(parts[0], orjson.loads(request.content))
        if len(parts) == 2:
            key = (parts[0], parts[1])
            if request.method == "DELETE":
                self.stored.pop(key, None)
                self.deleted.add(key)
                return httpx.Response(204)
            if key in self.stored:
                return httpx.Response(200, json=self.stored[key])
            return httpx.Response(410 if key in self.deleted else 404)
        return self.search(parts[0], dict(parse_qsl(request.url.query.decode())))

    def create(self, rtype: str, resource: dict[str, Any]) -> httpx.Response:
        resource = {**resource, "id": str(next(self.ids)), "meta": {"versionId": "1"}}
        if self.drop and self.drop[0] == rtype:
            resource.pop(self.drop[1], None)
        self.stored[(rtype, resource["id"])] = resource
        location = f"{BASE}/{rtype}/{resource['id']}/_history/1"  # as HAPI writes it
        if self.minimal:
            return httpx.Response(201, headers={"location": location})
        return httpx.Response(201, headers={"location": location}, json=resource)

    def search(self, rtype: str, params: dict[str, str]) -> httpx.Response:
        def matches(r: dict[str, Any]) -> bool:
            if "identifier" in params:
                system, _, value = params["identifier"].partition("|")
                if {"system": system, "value": value} not in r.get("identifier", []):
                    return False
            subject = (r.get("subject") or r.get("for") or {}).get("reference")
            if "patient" in params and subject != params["patient"]:
                return False
            if "code" in params:
                codes = [
                    c.get("code")
                    for c in (r.get("code") or r.get("medicationCodeableConcept", {})).get("coding", [])
                ]
                if params["code"].rpartition("|")[2] not in codes:
                    return False
            return True

        hits = [r for (t, _), r in self.stored.items() if t == rtype and matches(r)]
        entries = [{"resource": r, "search": {"mode": "match"}} for r in hits]
        return httpx.Response(200, json={"resourceType": "Bundle", "type": "searchset", "entry": entries})


def run_against(fake: FakeFhir) -> Any:
    with respx.mock(assert_all_called=False) as mock:
        mock.route(url__startswith=BASE).mock(side_effect=fake)
        with Server(BASE) as server:
            return run(server, run_id="gw-sandbox-test", now=NOW)


def test_a_faithful_server_passes_every_step_and_keeps_nothing() -> None:
    fake = FakeFhir()
    report = run_against(fake)
    assert report.passed, [s for s in report.steps if s.result != "pass"]
    assert fake.stored == {} and len(fake.deleted) == 5


def test_a_server_that_drops_a_field_fails_the_steps_naming_it() -> None:
    report = run_against(FakeFhir(drop=("MedicationRequest", "dosageInstruction")))
    failed = {s.name: s.detail for s in report.steps if s.result == "fail"}
    assert not report.passed
    assert "dosageInstruction: dropped" in failed["create MedicationRequest clozapine"]
    assert "dosageInstruction: dropped" in failed["read MedicationRequest clozapine"]
    assert "read Patient" not in failed  # only the resource that lost something fails
    assert all(s.result == "pass" for s in report.steps if s.name.startswith("delete"))


def test_201_without_a_body_takes_the_id_from_a_hapi_location_header() -> None:
    fake = FakeFhir(minimal=True)
    report = run_against(fake)
    assert report.passed
    create = next(s for s in report.steps if s.name == "create Patient")
    assert "no body" in create.detail and "Patient/1000" in create.detail


def test_cleanup_runs_after_a_refused_create() -> None:
    fake = FakeFhir()

    def refuse_tasks(request: httpx.Request) -> httpx.Response:
        if request.method == "POST" and request.url.path.endswith("/Task"):
            return httpx.Response(
                422, json={"resourceType": "OperationOutcome", "issue": [{"diagnostics": "no"}]}
            )
        return fake(request)

    with respx.mock() as mock:
        mock.route(url__startswith=BASE).mock(side_effect=refuse_tasks)
        with Server(BASE) as server:
            report = run(server, run_id="gw-sandbox-test", now=NOW)
    assert [s.name for s in report.steps if s.result == "fail"] == ["create Task prior-authorization"]
    assert fake.stored == {} and len(fake.deleted) == 4


@pytest.mark.parametrize(
    ("location", "expected"),
    [
        ("http://hapi.fhir.org/baseR4/Patient/5921/_history/1", "5921"),  # HAPI: absolute, versioned
        ("Patient/abc-1", "abc-1"),  # relative, no version
        ("http://x/fhir/Observation/1/_history/1", None),  # another type
        (None, None),
    ],
)
def test_location_id(location: str | None, expected: str | None) -> None:
    assert location_id(location, "Patient") == expected


def test_differences_name_each_dropped_or_changed_field_and_ignore_what_the_server_owns() -> None:
    sent = {
        "id": "a",
        "status": "final",
        "valueQuantity": {"value": 1.2, "unit": "10*3/uL"},
        "note": [{"text": "x"}],
    }
    back = {"id": "b", "meta": {"versionId": "1"}, "status": "amended", "valueQuantity": {"value": 1.20}}
    assert differences(sent, back) == [
        "status: changed 'final' -> 'amended'",
        "valueQuantity.unit: dropped",
        "note: dropped",
    ]


def test_cli_json_shape_and_nonzero_exit_on_failure() -> None:
    fake = FakeFhir(drop=("Observation", "referenceRange"))
    with respx.mock() as mock:
        mock.route(url__startswith=BASE).mock(side_effect=fake)
        done = CliRunner().invoke(main, ["sandbox", "run", "--base-url", BASE, "--json"])
    assert done.exit_code == 1
    report = orjson.loads(done.stdout)
    assert set(report) == {"base_url", "run", "passed", "steps"} and report["passed"] is False
    assert set(report["steps"][0]) == {"step", "result", "detail", "seconds"}
    failed = [s for s in report["steps"] if s["result"] == "fail"]
    assert failed and all("referenceRange: dropped" in s["detail"] for s in failed)
    assert fake.stored == {}


def test_cli_table_and_zero_exit_on_success() -> None:
    with respx.mock() as mock:
        mock.route(url__startswith=BASE).mock(side_effect=FakeFhir())
        done = CliRunner().invoke(main, ["sandbox", "run", "--base-url", BASE])
    assert done.exit_code == 0, done.output
    assert done.stdout.splitlines()[2].split() == ["step", "result", "detail", "time"]
    assert "failed: PASS" in done.stdout
