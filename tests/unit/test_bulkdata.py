"""Bulk Data `$export` without I/O (gateway/fhir/bulkdata.py): parameters, manifests, ndjson lines and
limits, Group members; and the puller's choices for a first load (gateway/service/ehrpull/bulkload.py)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from gateway.ehr.upstreams import UpstreamConfig
from gateway.fhir.bulkdata import (
    BulkDataError,
    LineTooLong,
    NdjsonLines,
    OutputFile,
    group_members,
    manifest,
    output_format_ok,
    parse_line,
    parse_types,
    read_manifest,
)
from gateway.service.ehrpull.bulkload import kick_off_path, wanted
from gateway.service.ehrpull.poller import first_page

NOW = datetime(2027, 1, 15, 12, 0, tzinfo=UTC)
BASE = "https://ehr.example/fhir"


def test_output_formats_and_types() -> None:
    assert all(output_format_ok(v) for v in ("application/fhir+ndjson", "application/ndjson", "ndjson"))
    assert not any(output_format_ok(v) for v in ("application/fhir+json", "text/csv", ""))
    assert parse_types(["Patient,Observation", " Observation ,Claim", ""]) == [
        "Patient",
        "Observation",
        "Claim",
    ]
    with pytest.raises(BulkDataError, match="not a resource type"):
        parse_types(["Patient,observation"])


def test_a_manifest_is_built_and_read_back() -> None:
    built = manifest(
        transaction_time="2027-01-15T12:00:00.000Z",
        request=f"{BASE}/$export?_type=Patient",
        outputs=[OutputFile("Patient", f"{BASE}/f/1", 2)],
    )
    assert built == {
        "transactionTime": "2027-01-15T12:00:00.000Z",
        "request": f"{BASE}/$export?_type=Patient",
        "requiresAccessToken": True,
        "output": [{"type": "Patient", "url": f"{BASE}/f/1", "count": 2}],
        "error": [],
    }
    read = read_manifest(built)
    assert (read.transaction_time, read.requires_access_token, read.errors) == (
        built["transactionTime"],
        True,
        0,
    )
    assert read.outputs == [OutputFile("Patient", f"{BASE}/f/1", 2)]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([], "not a JSON object"),
        ({"output": []}, "no transactionTime"),
        ({"transactionTime": "yesterday"}, "not an instant"),
        ({"transactionTime": "2027-01-15T12:00:00"}, "no time zone"),
        ({"transactionTime": "2027-01-15T12:00:00Z", "output": [{"type": "Patient"}]}, "type or url"),
    ],
)
def test_a_bad_manifest_is_named(body: Any, message: str) -> None:
    with pytest.raises(BulkDataError, match=message):
        read_manifest(body)


def test_errors_in_a_manifest_are_counted() -> None:
    read = read_manifest(
        {"transactionTime": "2027-01-15T12:00:00Z", "error": [{"type": "OperationOutcome", "url": "x"}]}
    )
    assert read.errors == 1 and read.outputs == []


def test_lines_come_out_whole_whatever_the_chunks() -> None:
    splitter = NdjsonLines(max_bytes=20)
    stream = [b'{"a":1}\n{"b"', b":2}\n\n", b'{"c":3}']
    lines = [line for chunk in stream for line in splitter.feed(chunk)]
    lines += list(splitter.close())
    assert lines == [b'{"a":1}', b'{"b":2}', b'{"c":3}']  # blank lines skipped, the last without newline kept


def test_a_line_over_the_limit_is_refused_before_it_is_whole() -> None:
    splitter = NdjsonLines(max_bytes=10)
    assert list(splitter.feed(b"0123456789\n")) == [b"0123456789"]  # exactly at the limit
    with pytest.raises(LineTooLong):
        list(splitter.feed(b"x" * 11))  # no newline yet: refused as soon as it is too long
    with pytest.raises(LineTooLong):
        list(NdjsonLines(max_bytes=10).feed(b"01234\n" + b"y" * 11 + b"\n"))


def test_each_line_is_one_resource_of_the_files_type() -> None:
    assert parse_line(b'{"resourceType":"Patient","id":"p1"}', "Patient")["id"] == "p1"
    for line, message in (
        (b"{oops", "not JSON"),
        (b"[1]", "not a JSON object"),
        (b'{"resourceType":"Observation","id":"o1"}', "not a Patient"),
        (b'{"resourceType":"Patient"}', "no id"),
    ):
        with pytest.raises(BulkDataError, match=message):
            parse_line(line, "Patient")


def test_group_members_are_the_current_patients() -> None:
    group = {
        "resourceType": "Group",
        "member": [
            {"entity": {"reference": "Patient/a"}},
            {"entity": {"reference": "Patient/b"}, "inactive": True},
            {"entity": {"reference": "Patient/c"}, "period": {"end": "2026-12-31"}},
            {"entity": {"reference": "Patient/d"}, "period": {"start": "2026-01-01", "end": "2027-06-30"}},
            {"entity": {"reference": f"{BASE}/Patient/e"}},
            {"entity": {"reference": "https://elsewhere.example/fhir/Patient/f"}},
            {"entity": {"reference": "Practitioner/g"}},
            {"entity": {"reference": "Patient/a"}},
            {"entity": {"display": "no reference"}},
        ],
    }
    assert group_members(group, NOW, BASE) == ["a", "d", "e"]
    assert group_members(group, NOW) == ["a", "d"]  # absolute references only with a base


def upstream(**extra: Any) -> UpstreamConfig:
    return UpstreamConfig.model_validate(
        {"name": "ehr", "base_url": BASE, "resources": ["Patient", "Observation"], **extra}
    )


def test_the_kick_off_level_follows_the_configuration() -> None:
    assert kick_off_path(upstream()) == "$export"
    assert kick_off_path(upstream(patients=["p1"])) == "Patient/$export"
    assert kick_off_path(upstream(group="g1")) == "Group/g1/$export"


def test_with_patients_only_their_compartments_are_kept() -> None:
    chosen = upstream(patients=["p1"])
    assert wanted(chosen, {"resourceType": "Patient", "id": "p1"})
    assert not wanted(chosen, {"resourceType": "Patient", "id": "p2"})
    assert wanted(chosen, {"resourceType": "Observation", "subject": {"reference": f"{BASE}/Patient/p1"}})
    assert not wanted(chosen, {"resourceType": "Observation", "subject": {"reference": "Patient/p2"}})
    assert wanted(chosen, {"resourceType": "Organization", "id": "o1"})  # outside every compartment
    assert wanted(upstream(), {"resourceType": "Patient", "id": "p2"})


def test_a_groups_members_take_the_place_of_the_patients_in_the_search() -> None:
    params = dict(first_page(upstream(group="g1"), "Observation", None, ["a", "b"]))
    assert params["patient"] == "a,b"
    assert dict(first_page(upstream(group="g1"), "Patient", None, ["a"]))["_id"] == "a"
