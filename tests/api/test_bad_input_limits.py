"""Every bad input is a 4xx OperationOutcome on both backends, never a 500: queries past the search
limits, offsets beyond SQL's integers, NUL characters (U+0000: PostgreSQL cannot hold them in text) in
search values, URLs, headers and resources, and what a quick fuzz of the search API turned up."""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from sqlalchemy import text

from gateway.service.gateway import Gateway
from gateway.settings import Settings
from gateway.store import search as store_search
from gateway.store.database import Database
from tests.factories import lab_observation, patient

DEFAULTS = Settings()
MAX_PARAMETERS = DEFAULTS.search_max_parameters
MAX_VALUES = DEFAULTS.search_max_values
MAX_TOTAL = DEFAULTS.search_max_total_values
FORM = {"Content-Type": "application/x-www-form-urlencoded"}

Params = list[tuple[str, str]]


def ored(count: int, make: str = "{}") -> str:
    return ",".join(make.format(i) for i in range(count))


# (case, resource type, parameters, words the diagnostics must hold)
REFUSED: list[tuple[str, str, Params, str]] = [
    ("offset at 2^63", "Observation", [("_offset", str(2**63))], "_offset"),
    ("offset at 2^64", "Observation", [("_offset", str(2**64))], "_offset"),
    ("offset past the limit", "Observation", [("_offset", str(DEFAULTS.search_max_offset + 1))], "_offset"),
    ("negative offset", "Observation", [("_offset", "-1")], "_offset"),
    ("count that is no number", "Observation", [("_count", "1e3")], "_count"),
    # A form of more than 1000 fields is refused by the form parser already, with its own words.
    ("10,000 ANDed parameters", "Observation", [("code", str(i)) for i in range(10_000)], ""),
    ("1,000 ANDed parameters", "Observation", [("code", str(i)) for i in range(1000)], "parameters"),
    (
        "one parameter too many",
        "Observation",
        [("code", str(i)) for i in range(MAX_PARAMETERS + 1)],
        "parameters",
    ),
    ("1,200 ORed codes", "Observation", [("code", ored(1200))], "values"),
    ("one ORed value too many", "Observation", [("code", ored(MAX_VALUES + 1))], "values"),
    ("1,200 ORed dates", "Observation", [("date", ored(1200, "ge2024-01-01"))], "values"),
    ("1,200 ORed _lastUpdated", "Observation", [("_lastUpdated", ored(1200, "ge2024-01-01"))], "values"),
    ("40,000 ids", "Observation", [("_id", ored(40_000, "id{}"))], "values"),
    (
        "1,200 ORed chained identifiers",
        "Observation",
        [("subject:Patient.identifier", ored(1200, "urn:sys|{}"))],
        "values",
    ),
    (
        "too many values in all",
        "Observation",
        [("code", ored(MAX_VALUES))] * (MAX_TOTAL // MAX_VALUES + 1),
        "in all",
    ),
    ("NUL in a token", "Observation", [("code", "718-7\x00")], "NUL"),
    ("NUL in a string", "Patient", [("name", "Te\x00st")], "NUL"),
    ("NUL in a chained value", "Observation", [("subject:Patient.name", "Te\x00st")], "NUL"),
    ("NUL in an id", "Observation", [("_id", "a\x00")], "NUL"),
    ("NUL in a reference", "Observation", [("patient", "Patient/a\x00")], "NUL"),
    ("NUL in a date", "Observation", [("date", "2024\x00")], "NUL"),
    ("NUL in a parameter name", "Observation", [("code\x00", "x")], "NUL"),
    ("NUL in _sort", "Observation", [("_sort", "date\x00")], "NUL"),
    ("NUL in _include", "Observation", [("_include", "Observation:subject\x00")], "NUL"),
]


def assert_outcome(answer: httpx.Response, status: int | None = None) -> str:
    """The answer is a 4xx (or exactly `status`) OperationOutcome; its diagnostics."""
    if status is None:
        assert 400 <= answer.status_code < 500, answer.text[:300]
    else:
        assert answer.status_code == status, answer.text[:300]
    body = answer.json()
    assert body["resourceType"] == "OperationOutcome", answer.text[:300]
    assert body["issue"][0]["severity"] == "error"
    return " ".join(str(i.get("diagnostics", "")) for i in body["issue"])


@pytest.mark.parametrize(
    ("resource_type", "params", "words"), [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED]
)
async def test_searches_past_the_limits_are_400_before_any_sql(
    api: httpx.AsyncClient, resource_type: str, params: Params, words: str
) -> None:
    """POSTed as a form (a URL would be too long for some), and as a URL when it is short."""
    answer = await api.post(f"/fhir/{resource_type}/_search", content=urlencode(params), headers=FORM)
    assert words in assert_outcome(answer, 400)
    if len(urlencode(params)) < 4000:
        answer = await api.get(f"/fhir/{resource_type}", params=params)
        assert words in assert_outcome(answer, 400)


async def test_a_search_at_every_limit_runs_on_both_backends(api: httpx.AsyncClient) -> None:
    """The largest query the defaults let through, with the values that need the most SQL variables."""
    chained = MAX_TOTAL // MAX_VALUES - 1
    params: Params = [
        ("subject:Patient.identifier", ored(MAX_VALUES, "urn:sys:" + str(p) + "|{}")) for p in range(chained)
    ]
    rest = MAX_PARAMETERS - chained
    per_date = (MAX_TOTAL - chained * MAX_VALUES) // rest
    dates = ",".join(f"ne2024-01-{day % 28 + 1:02d}" for day in range(per_date))
    params += [("date", dates)] * rest
    answer = await api.post("/fhir/Observation/_search", content=urlencode(params), headers=FORM)
    assert answer.status_code == 200, answer.text[:300]
    assert answer.json()["total"] == 0


async def test_history_offsets_beyond_the_limit_are_400(api: httpx.AsyncClient) -> None:
    for raw in (str(2**63), str(DEFAULTS.search_max_offset + 1)):
        assert "_offset" in assert_outcome(
            await api.get("/fhir/Observation/_history", params={"_offset": raw}), 400
        )


async def test_message_log_offsets_beyond_the_limit_are_400(api: httpx.AsyncClient) -> None:
    """Found by fuzzing: an offset past 64 bits was a 500 on PostgreSQL."""
    for raw in (str(2**93), str(DEFAULTS.search_max_offset + 1)):
        assert "offset" in assert_outcome(await api.get("/hl7v2/messages", params={"offset": raw}), 400)
    assert (
        await api.get("/hl7v2/messages", params={"offset": DEFAULTS.search_max_offset})
    ).status_code == 200


async def test_a_version_beyond_sql_integers_is_404(api: httpx.AsyncClient) -> None:
    created = (await api.post("/fhir/Patient", json=patient())).json()
    assert_outcome(await api.get(f"/fhir/Patient/{created['id']}/_history/{2**64}"), 404)


async def test_nul_in_header_derived_criteria_is_400(api: httpx.AsyncClient) -> None:
    created = await api.post("/fhir/Patient", json=patient(), headers={"If-None-Exist": "identifier=a%00b"})
    assert "NUL" in assert_outcome(created, 400)
    updated = await api.put("/fhir/Patient", params={"identifier": "a\x00b"}, json=patient())
    assert "NUL" in assert_outcome(updated, 400)
    deleted = await api.delete("/fhir/Patient", params={"identifier": "a\x00b"})
    assert "NUL" in assert_outcome(deleted, 400)
    batch = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": patient(),
                "request": {"method": "POST", "url": "Patient", "ifNoneExist": "identifier=a%00b"},
            }
        ],
    }
    assert "NUL" in assert_outcome(await api.post("/fhir", json=batch))


@pytest.mark.parametrize(
    "url",
    [
        "/hl7v2/messages?status=%00",
        "/hl7v2/senders/LAB%00SYS/coverage",
        "/hl7v2/messages/a%00b",
        "/fhir/Patient/a%00b",
        "/fhir/Observation?code=%00",
        "/fhir/Task/$pa-turnaround?payer=%00",
    ],
)
async def test_nul_anywhere_in_the_url_is_400(api: httpx.AsyncClient, url: str) -> None:
    assert "NUL" in assert_outcome(await api.get(url), 400)


async def test_nul_in_a_header_is_400(api: httpx.AsyncClient) -> None:
    answer = await api.get("/fhir/Patient", headers={"Prefer": "handling=strict\x00"})
    assert "NUL" in assert_outcome(answer, 400)


# (case, resource, expression of the element holding the NUL)
NUL_RESOURCES = [
    ("name", patient(name=[{"family": "Te\x00st"}]), "Patient.name[0].family"),
    ("identifier", patient(mrn="MRN\x001"), "Patient.identifier[0].value"),
    (
        "extension",
        patient(extension=[{"url": "https://specialty-gateway.org/fhir/x", "valueString": "a\x00"}]),
        "Patient.extension[0].valueString",
    ),
    ("code", lab_observation("p1", code="718\x00-7"), "Observation.code.coding[0].code"),
    ("note", lab_observation("p1", note=[{"text": "see \x00 below"}]), "Observation.note[0].text"),
    (
        "narrative",
        patient(text={"status": "generated", "div": '<div xmlns="http://www.w3.org/1999/xhtml">a\x00</div>'}),
        "Patient.text.div",
    ),
    (
        "contained",
        patient(contained=[{"resourceType": "Organization", "id": "o", "name": "Cl\x00inic"}]),
        "Patient.contained[0].name",
    ),
]


@pytest.mark.parametrize(
    ("resource", "expression"), [c[1:] for c in NUL_RESOURCES], ids=[c[0] for c in NUL_RESOURCES]
)
async def test_nul_in_a_resource_is_422_naming_the_element(
    api: httpx.AsyncClient, resource: dict, expression: str
) -> None:
    rtype = resource["resourceType"]
    answer = await api.post(f"/fhir/{rtype}", json=resource)
    assert_outcome(answer, 422)
    expressions = [e for i in answer.json()["issue"] for e in i.get("expression", [])]
    assert expression in expressions
    updated = await api.put(f"/fhir/{rtype}/nul-test", json={**resource, "id": "nul-test"})
    assert_outcome(updated, 422)
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [{"resource": resource, "request": {"method": "POST", "url": rtype}}],
    }
    in_bundle = await api.post("/fhir", json=bundle)
    assert_outcome(in_bundle)
    assert any(
        expression.split(".", 1)[1] in e for i in in_bundle.json()["issue"] for e in i.get("expression", [])
    )
    assert (await api.get(f"/fhir/{rtype}", params={"_summary": "count"})).json()["total"] == 0


# What a quick fuzz of the search API tried: whatever the answer, it is not a 500, and a refusal is an
# OperationOutcome.
FUZZ: list[Params] = [
    [("name", "a" * 100_000)],
    [("identifier", "x|" + "y" * 50_000)],
    *(
        [("date", d)]
        for d in ("2024-13-45", "2024-02-30", "gt99999-01-01", "0000-01-01", "1-01-01", "ge", "")
    ),
    *(
        [("date", d)]
        for d in ("9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+14:00", "2024-01-01T25:00:00Z")
    ),
    [("_lastUpdated", "sa9999-12-31T23:59:59.999999-14:00")],
    [("subject:Patient.organization.name", "x")],
    [("subject.identifier.system", "x")],
    [("subject:Nonsense.identifier", "x")],
    [("subject:Patient.nonsense", "x")],
    [("_sort", "nonsense")],
    [("_sort", "-")],
    [("_sort", ",,,")],
    [("_include", "nonsense")],
    [("_include", "::")],
    [("_include", "Observation:subject:Nonsense")],
    [("_include:iterate", "Observation:subject")],
    [("_revinclude", "Nonsense:subject")],
    [("_count", "5")] * 40,
    [("_count", "5"), ("_count", "0"), ("_count", str(2**70))],
    [("_total", "x")],
    [("_summary", "x")],
    [("code:below", "x")],
    [("code:missing", "maybe")],
    [("_has:Observation:patient:code", "x")],
    [("code", "|")],
    [("code", ",,,,")],
    [("patient", "Patient/" + "x" * 500)],
    [("code:contains", "%_\\")],
]


@pytest.mark.parametrize("params", FUZZ, ids=range(len(FUZZ)))
async def test_fuzzed_searches_are_never_a_500(api: httpx.AsyncClient, params: Params) -> None:
    answer = await api.post("/fhir/Observation/_search", content=urlencode(params), headers=FORM)
    assert answer.status_code < 500, answer.text[:300]
    if answer.status_code >= 400:
        assert_outcome(answer)


async def test_a_search_past_the_statement_timeout_answers_503_and_stops_on_postgresql(
    gateway: Gateway, api: httpx.AsyncClient, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if backend != "postgresql":
        return  # SQLite runs in the process: nothing keeps running after the request
    slow = Database(gateway.settings.database_url, statement_timeout_s=0.2)
    original = gateway.fhir.db
    gateway.fhir.db = slow

    async def stuck(conn: Any, query: Any) -> Any:
        await conn.execute(text("SELECT pg_sleep(5)"))  # a query the database would run for long
        raise AssertionError("the statement timeout did not stop it")

    monkeypatch.setattr(store_search, "search", stuck)
    try:
        started = time.monotonic()
        answer = await api.get("/fhir/Observation", params={"code": "751-8"})
        assert answer.status_code == 503
        assert answer.json()["issue"][0]["code"] == "too-costly"
        assert time.monotonic() - started < 3
    finally:
        gateway.fhir.db = original
        await slow.dispose()
