"""Subscription filter criteria: parsing against a topic's canFilterBy, and matching event keys."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.fhir.extract import IndexRows, extract
from gateway.routing.evaluators import EVALUATORS
from gateway.routing.filters import Filter, FilterError, index_keys, matches, parse_filters, token_keys
from gateway.routing.topics import Topic, TopicSet
from tests.factories import lab_observation

TOPICS = TopicSet.load(Path(__file__).resolve().parents[2] / "profiles" / "topics", frozenset(EVALUATORS))
LOINC = "http://loinc.org"


def _topic(topic_id: str) -> Topic:
    topic = TOPICS.by_id(topic_id)
    assert topic is not None
    return topic


ABNORMAL = _topic("abnormal-lab-result")
ORDER = _topic("medication-order")
MONITORING = _topic("medication-monitoring")


def _one(text: str, topic: Topic = ABNORMAL) -> Filter:
    (parsed,) = parse_filters([text], topic)
    return parsed


# --- parsing ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "parameter", "keys"),
    [
        ("patient=Patient/1", "patient", {"patient=Patient/1"}),
        ("patient=1", "patient", {"patient=Patient/1"}),  # a bare id is a Patient
        ("  patient=Patient/1  ", "patient", {"patient=Patient/1"}),
        ("Observation.patient=Patient/7", "patient", {"patient=Patient/7"}),
        ("Observation.code=http://loinc.org|751-8", "code", {"code=http://loinc.org|751-8"}),
        ("code=http://loinc.org|751-8", "code", {"code=http://loinc.org|751-8"}),
        ("code=751-8", "code", {"code=*|751-8"}),  # no system: any system
        ("code=|751-8", "code", {"code=|751-8"}),  # explicitly no system
        ("code=751-8,26499-4", "code", {"code=*|751-8", "code=*|26499-4"}),
        ("patient=1,Patient/2", "patient", {"patient=Patient/1", "patient=Patient/2"}),
        ("code=http%3A%2F%2Floinc.org%7C751-8", "code", {"code=http://loinc.org|751-8"}),
    ],
)
def test_single_filters(text: str, parameter: str, keys: set[str]) -> None:
    parsed = _one(text)
    assert parsed.parameter == parameter
    assert parsed.keys == frozenset(keys)
    assert parsed.text == text


def test_query_form_gives_one_filter_per_parameter() -> None:
    text = "Observation?patient=Patient/1&code=x"
    patient, code = parse_filters([text], ABNORMAL)
    assert (patient.parameter, patient.keys) == ("patient", frozenset({"patient=Patient/1"}))
    assert (code.parameter, code.keys) == ("code", frozenset({"code=*|x"}))
    assert patient.text == code.text == text


def test_several_criteria_strings() -> None:
    parsed = parse_filters(["patient=1", "category=laboratory"], ABNORMAL)
    assert [(f.parameter, f.keys) for f in parsed] == [
        ("patient", frozenset({"patient=Patient/1"})),
        ("category", frozenset({"category=*|laboratory"})),
    ]
    assert parse_filters([], ABNORMAL) == []


def test_medication_filter_on_the_monitoring_topic() -> None:
    parsed = _one("medication=clozapine-anc", MONITORING)
    assert parsed.keys == frozenset({"medication=*|clozapine-anc"})
    with pytest.raises(FilterError, match="medication"):
        _one("medication=clozapine-anc", ABNORMAL)  # the abnormal topic does not offer it


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("subject=Patient/1", "no filter 'subject'"),  # not in canFilterBy
        ("MedicationRequest.code=751-8", "on MedicationRequest"),  # wrong resource type prefix
        ("MedicationRequest?patient=1", "on MedicationRequest"),
        ("patient:missing=true", "modifier :missing"),  # the topics offer no modifiers
        ("code:not=751-8", "modifier :not"),
        ("patient=", "no value"),
        ("code=,", "no value"),
        ("patient", "not of the form"),
        ("Observation?patient=1&code", "not of the form"),
    ],
)
def test_bad_filters(text: str, message: str) -> None:
    with pytest.raises(FilterError, match=message):
        parse_filters([text], ABNORMAL)


def test_unknown_parameter_lists_what_is_offered() -> None:
    with pytest.raises(FilterError) as exc:
        parse_filters(["performer=Practitioner/1"], ORDER)
    assert ORDER.url in str(exc.value)
    assert "code, medication, patient, status" in str(exc.value)


def test_one_bad_part_fails_the_whole_criteria() -> None:
    with pytest.raises(FilterError):
        parse_filters(["patient=1", "Observation?code=x&bogus=1"], ABNORMAL)


# --- keys ---------------------------------------------------------------------------------------------


def test_token_keys() -> None:
    assert token_keys("code", LOINC, "751-8") == ("code=http://loinc.org|751-8", "code=*|751-8")
    assert token_keys("status", None, "final") == ("status=|final", "status=*|final")


def test_index_keys_of_a_real_observation() -> None:
    keys = index_keys(extract(lab_observation("1", code="751-8")))
    assert {
        "patient=Patient/1",
        "subject=Patient/1",
        "code=http://loinc.org|751-8",
        "code=*|751-8",
        "category=*|laboratory",
        "status=*|final",
    } <= keys
    assert "patient=1" not in keys
    assert "code=*|718-7" not in keys


def test_index_keys_of_nothing() -> None:
    assert index_keys(None) == set()
    assert index_keys(IndexRows()) == set()


@pytest.mark.parametrize(
    ("criteria", "expected"),
    [
        (["patient=1"], True),
        (["patient=Patient/1"], True),
        (["patient=2"], False),
        (["code=751-8"], True),
        (["code=http://loinc.org|751-8"], True),
        (["code=http://example.org|751-8"], False),  # right code, wrong system
        (["code=|751-8"], False),  # the observation's code has a system
        (["code=718-7"], False),
        (["patient=1", "code=751-8"], True),  # AND
        (["patient=1", "code=718-7"], False),
        (["patient=2", "code=751-8"], False),
        (["Observation?patient=1&code=751-8&category=laboratory"], True),
        (["Observation?patient=1&code=751-8&category=vital-signs"], False),
        (["patient=2,1"], True),  # OR within one filter
        (["code=718-7,26499-4"], False),
        (["patient=2,3", "code=751-8"], False),
    ],
)
def test_matches_a_real_observation(criteria: list[str], expected: bool) -> None:
    keys = index_keys(extract(lab_observation("1", code="751-8")))
    assert matches(parse_filters(criteria, ABNORMAL), keys) is expected


def test_no_filters_match_everything() -> None:
    assert matches([], set())
    assert matches([], {"patient=Patient/1"})
