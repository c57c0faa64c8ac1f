"""Search index rows extracted from resources."""

from __future__ import annotations

from gateway.fhir.dates import MAX_US, date_range
from gateway.fhir.extract import extract, normalise_string, values_at
from tests.factories import lab_observation, pa_task, patient


def test_values_at_flattens_arrays_and_expands_choices() -> None:
    obs = lab_observation("p1")
    assert values_at(obs, "code.coding") == obs["code"]["coding"]
    assert values_at(obs, "effective[x]") == ["2024-03-01T08:30:00Z"]
    assert values_at(obs, "value[x]") == [obs["valueQuantity"]]
    assert values_at(obs, "missing.path") == []


def test_observation_rows() -> None:
    rows = extract(lab_observation("p1", code="751-8"))
    assert ("code", "http://loinc.org", "751-8") in rows.tokens
    assert ("status", None, "final") in rows.tokens
    assert (
        "category",
        "http://terminology.hl7.org/CodeSystem/observation-category",
        "laboratory",
    ) in rows.tokens
    assert {("subject", "Patient", "p1"), ("patient", "Patient", "p1")} <= rows.references
    low, high = date_range("2024-03-01T08:30:00Z")
    assert ("date", low, high) in rows.dates


def test_patient_parameter_only_indexes_patient_targets() -> None:
    rows = extract(lab_observation("g1", subject={"reference": "Group/g1"}))
    assert ("subject", "Group", "g1") in rows.references
    assert not any(param == "patient" for param, _, _ in rows.references)


def test_open_period_end_is_unbounded() -> None:
    obs = lab_observation("p1")
    del obs["effectiveDateTime"]
    obs["effectivePeriod"] = {"start": "2024-05-01"}
    (row,) = [r for r in extract(obs).dates if r[0] == "date"]
    assert row[2] == MAX_US


def test_names_are_folded_for_search() -> None:
    rows = extract(patient(name=[{"family": "Müller-Łukasz", "given": ["Zoë"]}]))
    assert ("family", normalise_string("Müller-Łukasz")) in rows.strings
    assert ("given", "zoe") in rows.strings
    assert ("name", "zoe") in rows.strings


def test_references_to_other_servers_are_not_indexed_but_local_absolute_ones_are() -> None:
    obs = lab_observation("p1", subject={"reference": "https://elsewhere.org/fhir/Patient/p1"})
    assert not extract(obs).references
    local = lab_observation("p1", subject={"reference": "https://gw.example/fhir/Patient/p1"})
    assert ("patient", "Patient", "p1") in extract(local, ("https://gw.example/fhir",)).references


def test_task_business_status_and_focus() -> None:
    rows = extract(pa_task("p1", "m1", business_status="pended"))
    assert any(p == "business-status" and c == "pended" for p, _, c in rows.tokens)
    assert ("focus", "MedicationRequest", "m1") in rows.references
