"""Bounds on a search, checked before any SQL is built: each excess is a 400 naming the bound."""

from __future__ import annotations

import pytest
from sqlalchemy.dialects import postgresql, sqlite

from gateway.exceptions import BadRequest
from gateway.fhir.query import QueryParser, SearchLimits, parse_offset
from gateway.store.search import page_select

LIMITS = SearchLimits(max_parameters=5, max_values=3, max_total_values=8, max_offset=1000)
PARSER = QueryParser(limits=LIMITS)


def refused(params: list[tuple[str, str]], resource_type: str = "Observation") -> str:
    with pytest.raises(BadRequest) as caught:
        PARSER.parse(resource_type, params)
    return caught.value.issues[0].diagnostics


def test_the_defaults_are_those_documented() -> None:
    assert SearchLimits() == SearchLimits(
        max_parameters=50, max_values=100, max_total_values=1000, max_offset=1_000_000
    )


def test_parameters_up_to_the_limit_pass_and_one_more_is_refused() -> None:
    PARSER.parse("Observation", [("code", str(i)) for i in range(5)])
    assert "at most 5 parameters" in refused([("code", str(i)) for i in range(6)])


def test_ored_values_up_to_the_limit_pass_and_one_more_is_refused() -> None:
    PARSER.parse("Observation", [("code", "a,b,c")])
    assert "at most 3 values" in refused([("code", "a,b,c,d")])
    assert "code" in refused([("code", "a,b,c,d")])


def test_escaped_commas_count_towards_the_bound() -> None:
    """The bound is on commas, escaped or not: it is checked before values are split, and it only needs
    to be an upper bound of what the SQL will hold."""
    assert "at most 3 values" in refused([("code", r"a\,b\,c\,d")])


def test_the_total_of_values_is_bounded_across_parameters() -> None:
    PARSER.parse("Observation", [("code", "a,b,c"), ("code", "d,e,f"), ("status", "final,amended")])
    assert "at most 8 values in all" in refused(
        [("code", "a,b,c"), ("code", "d,e,f"), ("status", "final,amended,cancelled")]
    )


@pytest.mark.parametrize(
    "params",
    [
        [("code", "a\x00")],
        [("code\x00", "a")],
        [("subject:Patient.name", "Te\x00st")],
        [("_id", "\x00")],
        [("_sort", "date\x00")],
        [("_include", "Observation:subject\x00")],
        [("_count", "1\x00")],
        [("_format", "json\x00")],
    ],
)
def test_a_nul_character_anywhere_is_refused(params: list[tuple[str, str]]) -> None:
    assert "NUL" in refused(params)


@pytest.mark.parametrize("raw", [str(2**63), str(2**64), "1001", "-1", "1e3", "١٢", "1_000", " 5"])
def test_offsets_outside_the_range_or_not_plain_digits_are_refused(raw: str) -> None:
    with pytest.raises(BadRequest):
        parse_offset(raw, 1000)
    assert "_offset" in refused([("_offset", raw)])


def test_offsets_within_the_range_are_taken() -> None:
    assert parse_offset("0", 1000) == 0
    assert parse_offset("1000", 1000) == 1000
    assert PARSER.parse("Observation", [("_offset", "1000")]).offset == 1000


@pytest.mark.parametrize("raw", [str(2**63), "99999999999999999999999"])
def test_huge_counts_are_capped_at_the_page_size_limit(raw: str) -> None:
    assert QueryParser(max_count=1000).parse("Observation", [("_count", raw)]).count == 1000


def test_a_query_at_every_default_limit_stays_far_below_the_sql_variable_limits() -> None:
    """The most variables per value (two: a date range, a system and code, a chained identifier) in as
    many parameters and values as the defaults allow: well inside SQLite's smallest default variable limit
    in current releases (32766) and asyncpg's 32767 arguments."""
    limits = SearchLimits()
    per_chain = limits.max_values
    chained = limits.max_total_values // per_chain - 1  # parameters of max_values chained identifiers
    rest = limits.max_parameters - chained
    left = limits.max_total_values - chained * per_chain
    params = [
        (
            "subject:Patient.identifier",
            ",".join(f"urn:sys:{p}|{v}" for v in range(per_chain)),
        )
        for p in range(chained)
    ]
    dates = [("date", ",".join(f"ne2024-01-{d % 28 + 1:02d}" for d in range(left // rest)))] * rest
    params += dates
    query = QueryParser(limits=limits).parse("Observation", params)
    assert len(params) == limits.max_parameters
    for dialect in (sqlite.dialect(), postgresql.dialect()):
        compiled = page_select(query).compile(dialect=dialect, compile_kwargs={"render_postcompile": True})
        assert len(compiled.params) < 32766
