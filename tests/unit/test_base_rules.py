"""The base R4 rules: the data derived from the specification, how it is compiled, and the shortcuts taken.

Every invariant run as FHIRPath must give fhirpathpy's verdict on many variants of its values (each element
present, absent, empty, null, repeated, as a primitive extension only), also when presence settles it
without evaluating; a verdict remembered per shape must be the same for every value of that shape.
"""

from __future__ import annotations

import copy
import itertools
import json
from collections.abc import Iterator
from typing import Any

import fhirpathpy
import pytest
from fhirpathpy.engine.nodes import ResourceNode
from fhirpathpy.models import models

from gateway.fhir.base_rules import DATA_FILE, SHIPPED, BaseRules, Invariant
from gateway.fhir.json_types import shape_of
from gateway.fhir.searchparams import RESOURCE_TYPES
from gateway.fhir.validation import Validator, model_class
from gateway.types import Issue

DATA = json.loads((SHIPPED / DATA_FILE).read_text())
RULES = BaseRules.shipped()
UCUM = "http://unitsofmeasure.org"
LOINC = "http://loinc.org"
EXT = [{"url": "http://example.org/x", "valueString": "x"}]
QUANTITY = {"value": 1.5, "comparator": "<", "unit": "mg", "system": UCUM, "code": "mg"}
CODED = {"coding": [{"system": LOINC, "code": "718-7"}]}

# A value with every element the invariants of its type read, by FHIRPath type.
SAMPLES: dict[str, dict[str, Any]] = {
    "Quantity": QUANTITY,
    "Distance": {"value": 3, "system": UCUM, "code": "km"},
    "Duration": {"value": 3, "system": UCUM, "code": "h"},
    "Attachment": {"data": "aGk=", "contentType": "text/plain", "url": "http://example.org/a"},
    "ContactPoint": {"system": "phone", "value": "555", "use": "home"},
    "Address": {"use": "home", "city": "X"},
    "Range": {"low": {"value": 1, "unit": "mg"}, "high": {"value": 2, "unit": "mg"}},
    "Ratio": {"numerator": {"value": 1}, "denominator": {"value": 2}, "extension": EXT},
    "Expression": {"language": "text/fhirpath", "expression": "true", "reference": "http://example.org/e"},
    "TriggerDefinition": {
        "type": "named-event",
        "name": "x",
        "data": [{"type": "Patient"}],
        "condition": {"language": "text/fhirpath", "expression": "true"},
        "timingDateTime": "2024-01-01",
    },
    "DataRequirement.codeFilter": {"path": "code", "searchParam": "code", "code": [{"code": "x"}]},
    "DataRequirement.dateFilter": {"path": "date", "searchParam": "date", "valueDateTime": "2024"},
    "Timing.repeat": {
        "count": 1,
        "countMax": 2,
        "duration": 1,
        "durationMax": 2,
        "durationUnit": "h",
        "period": 1,
        "periodMax": 2,
        "periodUnit": "d",
        "when": ["MORN"],
        "offset": 10,
        "timeOfDay": ["08:00:00"],
    },
    "Observation": {
        "resourceType": "Observation",
        "status": "final",
        "code": CODED,
        "valueQuantity": QUANTITY,
        "dataAbsentReason": {"text": "x"},
        "component": [{"code": CODED, "valueString": "x"}],
    },
    "CarePlan.activity": {
        "reference": {"reference": "ServiceRequest/s1"},
        "detail": {"kind": "ServiceRequest", "status": "scheduled"},
    },
    "Observation.referenceRange": {"low": QUANTITY, "high": QUANTITY, "text": "x", "appliesTo": [CODED]},
    "Patient.contact": {
        "name": {"family": "Roe"},
        "telecom": [{"value": "1"}],
        "address": {"city": "X"},
        "organization": {"reference": "Organization/o1"},
        "gender": "male",
    },
    "Organization": {
        "resourceType": "Organization",
        "identifier": [{"value": "1"}],
        "name": "X",
        "alias": ["Y"],
    },
    "ServiceRequest": {
        "resourceType": "ServiceRequest",
        "status": "active",
        "intent": "order",
        "code": CODED,
        "orderDetail": [CODED],
    },
    "Bundle": {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": 1,
        "identifier": {"system": "urn:x", "value": "1"},
        "timestamp": "2024-01-01T00:00:00Z",
        "entry": [
            {"fullUrl": "urn:uuid:1", "resource": {"resourceType": "Patient"}, "search": {"mode": "match"}}
        ],
    },
    "Bundle.entry": {
        "fullUrl": "http://example.org/Patient/1",
        "resource": {"resourceType": "Patient"},
        "request": {"method": "GET", "url": "Patient/1"},
        "response": {"status": "200"},
    },
}


def fhirpath_invariants() -> list[tuple[str, str, Invariant]]:
    """(element path, FHIRPath type of its values, invariant) of every invariant run as FHIRPath."""
    found = []
    for path, invariants in RULES.invariants.items():
        for invariant in invariants:
            if invariant.key not in ("ext-1", "ref-1", "per-1", "mdd-1", "inv-1"):
                found.append((path, RULES._model_path(path), invariant))
    return found


INVARIANTS = fhirpath_invariants()


def variants(sample: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The sample with each subset of its elements (up to three removed), and each element in turn empty,
    null, a primitive extension only, or repeated."""
    keys = [k for k in sample if k != "resourceType"]
    for size in range(min(len(keys), 3) + 1):
        for removed in itertools.combinations(keys, size):
            yield {k: v for k, v in sample.items() if k not in removed}
    for key in keys:
        value = sample[key]
        yield {**sample, key: []}
        yield {**sample, key: None}
        yield {**{k: v for k, v in sample.items() if k != key}, f"_{key}": {"extension": EXT}}
        yield {**sample, key: value if isinstance(value, list) else [value, copy.deepcopy(value)]}
    for kind in ("Bundle",):
        if sample.get("resourceType") == kind:
            for bundle_type in ("document", "message", "transaction", "batch-response", "history"):
                yield {**sample, "type": bundle_type}


def fhirpathpy_verdict(expression: str, value: dict[str, Any], model_path: str) -> bool | None:
    context = value if "resourceType" in value else ResourceNode.create_node(value, model_path)
    try:
        result = fhirpathpy.evaluate(
            context, expression, {"resource": value, "rootResource": value}, models["r4"]
        )
    except Exception:
        return None
    return False if result == [False] else True if result == [True] else None


class _Walk:
    """What invariants use of the validator's walk: the FHIRPath variables, and where issues go."""

    def __init__(self, value: dict[str, Any]) -> None:
        self.env = {"resource": value, "rootResource": value}
        self.issues: list[Issue] = []


def refused(invariant: Invariant, value: dict[str, Any], shape: Any) -> bool:
    """Whether the invariant reports the value, as the validator runs it."""
    walk = _Walk(value)
    invariant.check(value, "X", walk, shape)  # type: ignore[arg-type]
    return bool(walk.issues)


def expression_of(path: str, key: str) -> str:
    return next(i["expression"] for i in DATA["invariants"][path] if i["key"] == key)


def test_every_fhirpath_invariant_has_a_sample() -> None:
    assert len(INVARIANTS) >= 50
    assert {model for _, model, _ in INVARIANTS} <= set(SAMPLES)


@pytest.mark.parametrize(
    ("path", "model_path", "invariant"), INVARIANTS, ids=[f"{p}:{i.key}" for p, _, i in INVARIANTS]
)
def test_invariant_refuses_what_fhirpathpy_finds_false_and_its_settled_verdicts_follow_the_shape(
    path: str, model_path: str, invariant: Invariant
) -> None:
    """Only a false result is a failure (an empty result or an error is no proof); presence, where it
    settles the invariant, gives fhirpathpy's answer; verdicts remembered per shape hold for the shape."""
    expression = expression_of(path, invariant.key)
    by_shape: dict[Any, bool | None] = {}
    for value in variants(SAMPLES[model_path]):
        expected = fhirpathpy_verdict(expression, value, model_path)
        shape = shape_of(value)
        assert refused(invariant, value, shape) == (expected is False), f"{invariant.key} on {value}"
        assert refused(invariant, value, shape) == (expected is False), "a remembered verdict differs"
        verdict = invariant.settle(value) if invariant.settle is not None else None
        if verdict is not None:
            # settled: fhirpathpy's answer, except where it gives {} or fails on a primitive that has only
            # an extension (FHIRPath's answer is then the settled one): never a different refusal
            assert verdict == expected or expected in (None, "error"), f"{invariant.key}: {verdict} {value}"
            assert (verdict is False) == (expected is False), f"{invariant.key}: {verdict} on {value}"
        if invariant.by_shape:
            assert by_shape.setdefault(shape, verdict) == verdict, (
                f"{invariant.key}: same shape, other verdict"
            )


def test_the_common_invariants_are_settled_by_presence_alone() -> None:
    settled = {i.key for _, _, i in INVARIANTS if i.by_shape}
    assert {"qty-3", "sqty-1", "obs-3", "obs-6", "pat-1", "cpt-2", "prr-1", "att-1", "tim-1"} <= settled
    assert not {i.key for _, _, i in INVARIANTS if i.key == "org-1" and i.by_shape}  # counts: not by shape


def test_the_data_holds_the_required_bindings_seen_unchecked() -> None:
    bindings = DATA["bindings"]
    for path in (
        "Patient.gender",
        "Task.status",
        "Coverage.status",
        "Claim.use",
        "Observation.status",
        "MedicationDispense.status",
        "ContactPoint.system",
        "HumanName.use",
        "Quantity.comparator",
        "Narrative.status",
    ):
        assert bindings[path]["type"] == "code", path
    gender = DATA["valueSets"][bindings["Patient.gender"]["valueSet"]]["systems"]
    assert gender == {"http://hl7.org/fhir/administrative-gender": ["male", "female", "other", "unknown"]}
    intents = DATA["valueSets"][bindings["ServiceRequest.intent"]["valueSet"]]["systems"]
    assert "original-order" in intents["http://hl7.org/fhir/request-intent"]  # nested concepts expanded
    assert DATA["valueSets"][bindings["Attachment.contentType"]["valueSet"]] == {"syntax": "mime-type"}


@pytest.mark.parametrize("rtype", RESOURCE_TYPES)
def test_every_served_type_gets_its_bindings(rtype: str) -> None:
    table = RULES.table(model_class(rtype), rtype)
    status = table.fields.get("status")
    if f"{rtype}.status" in DATA["bindings"]:
        assert status is not None and status.codes, rtype
    assert set(DATA["resourceTypes"]) >= set(RESOURCE_TYPES)


def test_a_remembered_verdict_never_stands_for_other_values() -> None:
    """per-1 depends on the dates, not on which are present: the same shape must be judged again."""
    validator = Validator()

    def errors(start: str, end: str) -> list[str]:
        patient = {
            "resourceType": "Patient",
            "name": [{"family": "Doe", "period": {"start": start, "end": end}}],
        }
        return [e for i in validator.validate(patient) if i.is_error for e in i.expression]

    assert errors("2024-01-01", "2024-02-01") == []
    assert errors("2024-03-01", "2024-02-01") == ["Patient.name[0].period"]
    assert errors("2024-01-01T10:00:00+05:00", "2024-01-01T06:00:00Z") == []  # 05:00Z before 06:00Z
    assert errors("2024-01-01T10:00:00Z", "2024-01-01T06:00:00+05:00") == ["Patient.name[0].period"]


def _with_binding(path: str, kind: str) -> BaseRules:
    data = copy.deepcopy(DATA)
    url = "http://example.org/ValueSet/marital"
    data["valueSets"][url] = {"systems": {"http://example.org/marital": ["M", "S"]}}
    data["bindings"][path] = {"valueSet": url, "type": kind}
    return BaseRules(data, "test")


def test_required_bindings_on_codeable_concepts_and_codings_are_checked() -> None:
    """R4 binds no Coding or CodeableConcept of the served types `required`; the rules handle them anyway."""
    validator = Validator(base=_with_binding("Patient.maritalStatus", "CodeableConcept"))

    def errors(marital: dict[str, Any]) -> list[str]:
        issues = validator.validate({"resourceType": "Patient", "maritalStatus": marital})
        return [e for i in issues if i.is_error for e in i.expression]

    assert errors({"coding": [{"system": "http://example.org/marital", "code": "M"}]}) == []
    assert errors({"coding": [{"system": "http://example.org/other", "code": "M"}]}) == [
        "Patient.maritalStatus"
    ]
    assert errors({"text": "married"}) == ["Patient.maritalStatus"]
    coding = Validator(base=_with_binding("Meta.security", "Coding"))
    labels = [{"system": "http://example.org/marital", "code": "S"}, {"system": "urn:x", "code": "M"}]
    bad = {"resourceType": "Patient", "meta": {"security": labels}}
    assert [e for i in coding.validate(bad) if i.is_error for e in i.expression] == [
        "Patient.meta.security[1]"
    ]


def test_a_broken_rules_file_fails_the_load(tmp_path: Any) -> None:
    with pytest.raises(ValueError, match="cannot be read"):
        BaseRules.load(tmp_path)
    (tmp_path / DATA_FILE).write_text("{}")
    with pytest.raises(ValueError, match="not a base rules file"):
        BaseRules.load(tmp_path)
    data = copy.deepcopy(DATA)
    data["invariants"]["DomainResource"] = [
        i for i in data["invariants"]["DomainResource"] if i["key"] != "dom-3"
    ]
    with pytest.raises(ValueError, match="dom-3"):
        BaseRules(data, "test")
    data = copy.deepcopy(DATA)
    data["invariants"]["Quantity"][0]["expression"] = "code.nosuchfunction()"
    with pytest.raises(ValueError, match="Quantity qty-3"):
        BaseRules(data, "test")


def test_content_nested_deeper_than_the_walk_can_follow_is_an_error_not_an_exception() -> None:
    extension: dict[str, Any] = {"url": "http://example.org/x", "valueString": "a"}
    for _ in range(600):
        extension = {"url": "http://example.org/x", "extension": [extension]}
    issues = Validator().validate({"resourceType": "Patient", "extension": [extension]})
    assert [(i.severity, i.expression) for i in issues] == [("error", ("Patient",))]
    assert "nested too deeply" in issues[0].diagnostics
