"""The pure part of `$timeline`: kind, clinical time, one-line summary and source of a resource version."""

from __future__ import annotations

from gateway.fhir import dates
from gateway.pharmacist import timeline as t

ANC = {
    "resourceType": "Observation",
    "status": "final",
    "code": {"coding": [{"system": "http://loinc.org", "code": "751-8", "display": "Neutrophils"}]},
    "effectiveDateTime": "2024-03-01T08:30:00-06:00",
    "issued": "2024-03-01T10:00:00Z",
    "valueQuantity": {"value": 1.2, "unit": "10*3/uL"},
}


def test_an_observation_is_timed_by_its_effective_time_not_when_it_was_stored() -> None:
    assert t.kind_of(ANC) == "observation"
    moment = t.time_of("observation", ANC, dates.now_us())
    assert moment.text == "2024-03-01T08:30:00-06:00"
    assert moment.us == dates.date_range("2024-03-01T14:30:00Z")[0]


def test_without_a_clinical_time_the_recorded_instant_is_used() -> None:
    recorded_us = dates.date_range("2024-05-05T05:05:05Z")[0]
    moment = t.time_of("observation", {**ANC, "effectiveDateTime": None, "issued": None}, recorded_us)
    assert moment.us == recorded_us


def test_the_summary_names_the_result_and_its_value() -> None:
    line = t.summary("observation", ANC)
    assert line.startswith("Neutrophils") and "1.2" in line


def test_only_status_changes_of_a_pa_task_are_moves() -> None:
    submitted = {"resourceType": "Task", "status": "requested", "businessStatus": {"text": "submitted"}}
    assert t.is_pa_move(submitted, None)
    assert not t.is_pa_move({**submitted, "note": [{"text": "x"}]}, submitted)
    assert t.is_pa_move({**submitted, "status": "in-progress"}, submitted)


def test_a_task_that_is_neither_pa_nor_alert_is_not_on_the_timeline() -> None:
    assert t.task_kind({"resourceType": "Task", "code": {"text": "something else"}}) is None


def test_a_rest_write_without_provenance_says_what_meta_source_says() -> None:
    assert t.source_from_meta({"meta": {"source": "http://ehr.example/fhir"}}) == {
        "system": "http://ehr.example/fhir",
        "kind": "fhir-client",
    }
    assert t.source_from_meta({}) == {"system": None, "kind": "fhir-client"}


def test_an_hl7_provenance_names_its_sender() -> None:
    provenance = {"agent": [{"who": {"display": f"{t.HL7_SENDER}LAB / ACME"}}]}
    assert t.source_from_provenance(provenance) == {"system": "LAB / ACME", "kind": "hl7v2"}
