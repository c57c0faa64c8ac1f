"""The validator's shortcut for shapes it has already accepted must never accept what the model rejects."""

from __future__ import annotations

import uuid

import pytest

from gateway.adapters.hl7v2.identity import NAMESPACE, stable_id
from gateway.fhir.validation import Validator, validate_structure
from tests.factories import lab_observation, patient


def errors(validator: Validator, resource: dict) -> list[str]:
    return [e for i in validator.validate(resource) if i.is_error for e in i.expression]


def test_a_known_shape_with_an_invalid_value_is_still_rejected() -> None:
    validator = Validator()
    assert errors(validator, lab_observation("p1")) == []
    # Same shape, impossible date: the cached shape must not let it through.
    assert errors(validator, lab_observation("p1", effective="2024-13-45T10:00:00Z")) == [
        "Observation.effectiveDateTime"
    ]
    bad_status = lab_observation("p1", status="final  final")  # codes have no double spaces
    assert errors(validator, bad_status) == ["Observation.status"]


def test_the_shortcut_agrees_with_the_full_model_on_many_variants() -> None:
    validator = Validator()
    variants = [
        lab_observation("p1"),
        lab_observation("p1", value=0),
        lab_observation("p1", effective="2024"),
        lab_observation("p1", effective="2024-02-30"),  # no such day
        lab_observation("p1", unit="10*3/uL"),
        {**lab_observation("p1"), "issued": "2024-03-01"},  # an instant needs a time
        {**lab_observation("p1"), "id": "has space"},
        patient(birthDate="1980-02-29"),
        patient(birthDate="1981-02-29"),
        patient(gender=""),
    ]
    for resource in variants * 2:  # the second round runs on cached shapes
        full = sorted(e for i in validate_structure(resource) if i.is_error for e in i.expression)
        fast = sorted(e for i in validator.validate_structure(resource) if i.is_error for e in i.expression)
        assert bool(full) == bool(fast), resource
        assert set(fast) <= set(full) or not full, resource


def test_stable_ids_are_uuid5() -> None:
    parts = ("Observation", "urn:oid:1.2.3", "ORD1", "57021-8", "3")
    assert stable_id(*parts) == str(uuid.uuid5(NAMESPACE, "\x1f".join(parts)))


def test_remembered_values_stay_within_their_limit_and_never_excuse_an_invalid_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from gateway.fhir import json_types

    monkeypatch.setattr(json_types, "_SEEN_LIMIT", 50)
    monkeypatch.setattr(json_types, "_seen", {})
    monkeypatch.setattr(json_types, "_seen_count", 0)
    validator = Validator()
    for n in range(200):  # new ids and times: the memory of valid values is cleared as it fills
        assert errors(validator, {**lab_observation("p1"), "id": f"obs-{n}"}) == []
        assert sum(len(s) for s in json_types._seen.values()) <= 50
    assert errors(validator, {**lab_observation("p1"), "id": "has space"}) == ["Observation.id"]
    uri = {**lab_observation("p1"), "implicitRules": "http://example.org/a b"}
    assert errors(validator, uri) == ["Observation.implicitRules"]
