"""Parsing search parameters."""

from __future__ import annotations

import pytest

from gateway.exceptions import BadRequest
from gateway.fhir.query import QueryParser, ReferenceValue, TokenValue, parse_token, split_values
from gateway.fhir.searchparams import ParamType

PARSER = QueryParser(local_bases=("https://gw.example/fhir",))


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("http://loinc.org|718-7", TokenValue("http://loinc.org", "718-7")),
        ("718-7", TokenValue(None, "718-7")),
        ("|718-7", TokenValue(None, "718-7", system_absent=True)),
        ("http://loinc.org|", TokenValue("http://loinc.org", None)),
    ],
)
def test_token_forms(raw: str, expected: TokenValue) -> None:
    assert parse_token(raw) == expected


def test_commas_separate_alternatives_unless_escaped() -> None:
    assert split_values(r"a,b\,c") == ["a", "b,c"]


def test_repeated_parameters_are_anded_and_commas_ored() -> None:
    query = PARSER.parse("Observation", [("code", "a,b"), ("status", "final")])
    assert [f.name for f in query.filters] == ["code", "status"]
    assert len(query.filters[0].values) == 2


def test_reference_values_accept_every_form() -> None:
    for raw in ("Patient/p1", "p1", "https://gw.example/fhir/Patient/p1"):
        (value,) = PARSER.parse("Observation", [("patient", raw)]).filters[0].values
        assert isinstance(value, ReferenceValue) and value.id == "p1"


def test_unknown_parameters_are_collected() -> None:
    query = PARSER.parse("Patient", [("shoe-size", "42"), ("_elements", "id")])
    assert query.unknown == ["shoe-size", "_elements"]
    assert query.filters == []


def test_result_parameters() -> None:
    query = PARSER.parse(
        "Observation",
        [
            ("_count", "5000"),
            ("_offset", "10"),
            ("_sort", "-date,_id"),
            ("_include", "Observation:patient"),
            ("_total", "none"),
        ],
    )
    assert query.count == 1000  # capped
    assert query.offset == 10
    assert query.sort == [("date", True), ("_id", False)]
    assert query.includes[0].param.name == "patient"
    assert query.total == "none"


def test_chained_parameter_targets_the_single_allowed_type() -> None:
    (f,) = PARSER.parse("Observation", [("patient.identifier", "urn:x|1")]).filters
    assert f.chain is not None and f.chain.target_type == "Patient"
    assert f.chain.inner.kind is ParamType.TOKEN


@pytest.mark.parametrize(
    "params",
    [
        [("date", "2024-99")],
        [("_count", "-1")],
        [("code:above", "x")],
        [("_sort", "code")],
        [("_include", "Observation:status")],
        [("subject.identifier", "x")],  # subject may point at many types: a type modifier is needed
        [("status:missing", "maybe")],
        [("date", "ap2024")],
    ],
)
def test_malformed_queries_are_refused(params: list[tuple[str, str]]) -> None:
    with pytest.raises(BadRequest):
        PARSER.parse("Observation", params)
