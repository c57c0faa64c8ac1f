"""When an EHR's pushed Observation and a lab's HL7 v2 one are the same result (pure), and the EHR client
mapping files (refused with the file and the reason)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.adapters.fhir.results import from_ehr_feed, merged_marks, result_key, same_result
from gateway.mapping.fhir_clients import FhirClientMappingError, load_fhir_clients


def obs(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "resourceType": "Observation",
        "subject": {"reference": "Patient/p1"},
        "code": {"coding": [{"system": "http://loinc.org", "code": "751-8"}]},
        "effectiveDateTime": "2024-03-01T08:00:00-05:00",
        "valueQuantity": {"value": 1.2, "code": "10*3/uL"},
    }
    base.update(over)
    return base


def key(**over: Any) -> Any:
    found = result_key(obs(**over))
    assert found is not None
    return found


def test_the_same_draw_from_two_feeds_is_one_result() -> None:
    lab = key()
    assert same_result(lab, key(effectiveDateTime="2024-03-01T13:00:00Z"))  # the same instant in UTC
    assert same_result(lab, key(valueQuantity={"value": "1.20", "code": "10*3/uL"}))  # written precision
    extra = {
        "coding": [{"system": "urn:local", "code": "ANC"}, {"system": "http://loinc.org", "code": "751-8"}]
    }
    assert same_result(lab, key(code=extra))


@pytest.mark.parametrize(
    "over",
    [
        {"subject": {"reference": "Patient/p2"}},
        {"effectiveDateTime": "2024-03-01T08:00:01-05:00"},
        {"valueQuantity": {"value": 1.3, "code": "10*3/uL"}},
        {"valueQuantity": {"value": 1200, "code": "/uL"}},  # another unit: not guessed equal
        {"code": {"coding": [{"system": "http://loinc.org", "code": "26499-4"}]}},
    ],
)
def test_anything_less_keeps_them_apart(over: dict[str, Any]) -> None:
    assert not same_result(key(), key(**over))


def test_what_cannot_be_told_is_never_merged() -> None:
    assert result_key(obs(subject={"reference": "Group/g1"})) is None
    assert result_key(obs(code={"text": "ANC"})) is None
    assert result_key(obs(effectiveDateTime=None)) is None


def test_a_merge_keeps_both_sources_marks() -> None:
    tag = {"system": "https://specialty-gateway.org/fhir/CodeSystem/feed", "code": "ehr-fhir:x"}
    kept = obs(identifier=[{"system": "lab", "value": "1"}])
    other = obs(identifier=[{"system": "ehr", "value": "9"}], meta={"tag": [tag]})
    merged = merged_marks(kept, other)
    assert [i["system"] for i in merged["identifier"]] == ["lab", "ehr"]
    assert from_ehr_feed(merged) and not from_ehr_feed(kept)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("client: x\nresults: sometimes\n", "merge or keep"),
        ("results: merge\n", "'client'"),
        ("client: x\ncodes:\n  - {from: {code: A}}\n", "needs to:"),
        ("client: x\nwhatever: 1\n", "unknown keys"),
    ],
)
def test_unusable_client_mappings_are_refused(tmp_path: Path, text: str, says: str) -> None:
    (tmp_path / "ehr.yaml").write_text(text)
    with pytest.raises(FhirClientMappingError, match=says):
        load_fhir_clients(tmp_path)


def test_the_shipped_example_loads() -> None:
    found = load_fhir_clients(Path(__file__).resolve().parents[2] / "mappings" / "fhir" / "clients")
    assert found["example-ehr"].merge_results and found["example-ehr"].codes
