"""The native FHIRPath subset (gateway.fhir.profiles.native) gives exactly what fhirpathpy gives.

Every invariant of the shipped profiles, the enforcement `when`s and a table of further expressions of the
subset are evaluated by the native program and by fhirpathpy on many resources: the ones
tests/unit/test_profiles.py builds, hand-made variants (present, absent, empty, repeated, other choice
types, wrong JSON types, primitive extensions) and generated ones; each at the contexts the validator uses
(the values at the invariant's element, typed by their model path, and the resource itself). The raw
native program must return fhirpathpy's result or defer (never answer where fhirpathpy fails); the
evaluator `compile_fhirpath` builds (native with fhirpathpy behind it) must always agree with fhirpathpy.
"""

from __future__ import annotations

import copy
import itertools
import json
import random
from collections.abc import Callable, Iterator, Mapping
from decimal import Decimal
from typing import Any

import fhirpathpy
import pytest
from fhirpathpy.engine.nodes import ResourceNode
from fhirpathpy.models import models
from fhirpathpy.parser import parse

from gateway.fhir.profiles.fhirpath import (
    child_model_path,
    compile_fhirpath,
    not_native_reason,
    typed_node,
)
from gateway.fhir.profiles.native import Defer, Node, compile_native
from tests.unit.test_profiles import (
    BS,
    LAB,
    LIFECYCLE,
    MEDICATION_REQUEST,
    OBS_CAT,
    PA_TASK,
    PROFILES_DIR,
    TASK_TYPE,
    UCUM,
    changed,
    task_with,
    ucum,
)

MODEL = models["r4"]
LOINC = "http://loinc.org"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"

# ------------------------------------------------------------------------------------------ resources


def observations() -> list[dict[str, Any]]:
    """The lab Observations of test_profiles.py and hand-made variants of each part an invariant reads."""
    other = {"code": {"coding": [{"system": LOINC, "code": "26499-4"}]}, "valueString": "x"}
    same = {"code": {"coding": [{"system": LOINC, "code": "751-8"}]}, "valueString": "y"}
    quantity = ucum(1.2, "10*3/uL")
    values: list[dict[str, Any]] = [
        {"valueQuantity": quantity},
        {"valueQuantity": {"value": 1.2, "unit": "10*3/uL", "code": "10*3/uL"}},  # code, no system
        {"valueQuantity": {"value": 1.2, "unit": "10*3/uL"}},
        {"valueQuantity": {"value": 0, "system": UCUM}},
        {"valueQuantity": {"value": 13.5, "code": "g/dL", "system": UCUM}},
        {"valueQuantity": {"value": 2, "code": "mg"}},
        {"valueQuantity": {"value": 1.5, "unit": "per uL", "system": UCUM, "code": "10*3/uL"}},  # = low
        {"valueQuantity": {}},
        {"valueQuantity": {"extension": [{"url": "http://example.org/x", "valueString": "e"}]}},
        {"valueQuantity": [quantity, ucum(2, "mg")]},  # wrong: a list
        {"valueQuantity": "5 mg"},  # wrong: a string
        {"valueString": "positive"},
        {"valueString": ""},
        {"valueString": "positive", "_valueString": {"extension": [{"url": "http://example.org/y"}]}},
        {"_valueString": {"extension": [{"url": "http://example.org/y"}]}},
        {"valueCodeableConcept": {"coding": [{"system": LOINC, "code": "LA6576-8"}], "text": "Positive"}},
        {"valueCodeableConcept": {}},
        {"valueBoolean": True},
        {"valueBoolean": False},
        {"valueInteger": 5},
        {"valueInteger": 0},
        {"valueRange": {"low": quantity}},
        {"valueDateTime": "2026-03-01"},
        {"valueQuantity": quantity, "valueString": "both"},  # two choices: the model's order decides
        {"valueBoolean": True, "valueInteger": 1},
        {},
    ]
    ranges: list[Any] = [
        [{"low": ucum(1.5, "10*3/uL"), "high": ucum(7.5, "10*3/uL")}],
        [{"low": ucum(1.5, "10*3/uL")}, {"appliesTo": [{"text": "adults"}]}],
        [{"text": "normal"}],
        [{}],
        [],
        [{"high": ucum(7.5, "10*3/uL")}, {"text": "child"}, {"low": "1.5"}],
        {"low": ucum(1.5, "10*3/uL")},  # wrong: not a list
    ]
    components: list[Any] = [
        [other, same],
        [other],
        [same],
        [{"code": {"coding": [{"code": "751-8"}]}, "valueString": "no system"}],
        [{"code": {"coding": [{"system": LOINC}]}}],
        [{"code": {"coding": [{"system": 7, "code": "751-8"}]}}],  # wrong type for system
        [{"code": {"coding": [{"system": [LOINC, LOINC], "code": "751-8"}]}}],
        [{"code": {"text": "no coding"}, "valueQuantity": ucum(1, "mg")}],
        [{"valueBoolean": False}, {"valueBoolean": True}],
        [],
    ]
    found = [
        LAB,
        changed(LAB, category=[{"coding": [{"system": OBS_CAT, "code": "vital-signs"}]}], subject=None),
        changed(LAB, code={"text": "ANC"}),
        changed(LAB, category=LAB["category"] * 2),
        changed(LAB, dataAbsentReason={"text": "not measured"}),
        changed(LAB, valueQuantity=None, interpretation=None, dataAbsentReason={"text": "haemolysed"}),
        changed(LAB, valueQuantity=None, interpretation=None, valueString="positive"),
        changed(LAB, status="done"),
        changed(LAB, status=None, _status={"extension": [{"url": "http://example.org/dar"}]}),
        changed(LAB, _status={"extension": [{"url": "http://example.org/dar"}]}),
        changed(LAB, status=7),
        changed(LAB, code={"coding": [{"system": LOINC, "code": "751-8"}, {"code": "ANC"}]}),
        changed(LAB, code={"coding": [{"system": LOINC, "code": "751-8"}, {"system": OBS_CAT, "code": "x"}]}),
        changed(LAB, contained=[{"resourceType": "Patient", "id": "c1", "active": True}]),
        changed(LAB, identifier=[{"system": "http://example.org/accession", "value": "A1"}]),
    ]
    for value in values:
        found.append({**changed(LAB, valueQuantity=None), **value})
    for ranges_value in ranges:
        found.append(changed(LAB, referenceRange=ranges_value))
    for component in components:
        found.append(changed(LAB, component=component))
        found.append(changed(LAB, valueQuantity=None, component=component))
    return found


def medication_requests() -> list[dict[str, Any]]:
    """The MedicationRequests of test_profiles.py and variants of medication[x] and the repeats."""
    found = [
        MEDICATION_REQUEST,
        changed(MEDICATION_REQUEST, medicationCodeableConcept={"id": "empty"}),
        changed(MEDICATION_REQUEST, medicationCodeableConcept={"text": "adalimumab"}),
        changed(MEDICATION_REQUEST, medicationCodeableConcept={"coding": []}),
        changed(MEDICATION_REQUEST, medicationCodeableConcept={"coding": [{}]}),
        changed(MEDICATION_REQUEST, medicationCodeableConcept="adalimumab"),  # wrong type
        changed(MEDICATION_REQUEST, medicationCodeableConcept=[{"text": "a"}, {"text": "b"}]),
        changed(MEDICATION_REQUEST, medicationCodeableConcept=None),
        changed(
            MEDICATION_REQUEST,
            medicationCodeableConcept=None,
            medicationReference={"reference": "Medication/m1"},
        ),
        changed(MEDICATION_REQUEST, medicationReference={"reference": "Medication/m1"}),
        changed(MEDICATION_REQUEST, intent="wish"),
        changed(MEDICATION_REQUEST, dispenseRequest=None),
    ]
    for repeats in (5, 0, -1, 1.5, -0.5, "3", True, [1, 2], None, 10**20, {}):
        request = copy.deepcopy(MEDICATION_REQUEST)
        request["dispenseRequest"]["numberOfRepeatsAllowed"] = repeats
        found.append(request)
    request = copy.deepcopy(MEDICATION_REQUEST)
    request["dispenseRequest"]["_numberOfRepeatsAllowed"] = {"extension": [{"url": "http://example.org/z"}]}
    found.append(request)
    return found


def tasks() -> list[dict[str, Any]]:
    """The PA Tasks of test_profiles.py, every status with every business status, and odd shapes."""
    statuses = [s for s, _ in LIFECYCLE] + ["accepted", "ready", "requested", "draft", "completed"]
    business = sorted({b for _, b in LIFECYCLE} | {"denied", "appeal-submitted", "pa-required", "lost"})
    found = [PA_TASK]
    found += [task_with(s, b) for s, b in itertools.product(dict.fromkeys(statuses), business)]
    found += [
        task_with("completed", "denied", statusReason={"text": "step therapy not tried"}),
        task_with("requested", "appeal-submitted", partOf=[{"reference": "Task/pa-0"}]),
        task_with("requested", "appeal-submitted", partOf=[]),
        changed(PA_TASK, businessStatus=None),
        changed(PA_TASK, businessStatus={"text": "submitted"}),
        changed(PA_TASK, businessStatus={"coding": [{"system": BS, "code": "lost"}]}),
        changed(PA_TASK, businessStatus={"coding": [{"code": "submitted"}]}),
        changed(PA_TASK, businessStatus={"coding": [{"system": BS, "code": "submitted"}, {"code": "x"}]}),
        changed(PA_TASK, businessStatus={"coding": [{"system": BS, "code": ["submitted", "approved"]}]}),
        changed(PA_TASK, businessStatus={"coding": [{"system": BS, "code": 5}]}),
        changed(PA_TASK, businessStatus=[{"coding": [{"system": BS, "code": "submitted"}]}] * 2),
        changed(PA_TASK, status=None),
        changed(PA_TASK, status=["requested", "draft"]),
        changed(PA_TASK, status=3),
        changed(PA_TASK, _status={"extension": [{"url": "http://example.org/s"}]}),
        changed(PA_TASK, code={"coding": [{"system": "http://example.org/tasks", "code": "call"}]}),
        changed(PA_TASK, code={"coding": [{"system": TASK_TYPE}]}),
    ]
    return found


def generated(count: int, seed: int = 20260301) -> list[dict[str, Any]]:
    """Random resources assembled from the same parts (deterministic)."""
    rng = random.Random(seed)
    parts_obs = observations()
    parts_task = tasks()
    found = []
    for _ in range(count):
        resource = copy.deepcopy(rng.choice(parts_obs))
        donor = rng.choice(parts_obs)
        for key in rng.sample(sorted(donor), k=min(3, len(donor))):
            resource[key] = copy.deepcopy(donor[key])
        for key in rng.sample(["interpretation", "component", "referenceRange", "dataAbsentReason"], k=1):
            resource.pop(key, None)
        found.append(resource)
        task = copy.deepcopy(rng.choice(parts_task))
        if rng.random() < 0.3:
            task["statusReason"] = {"text": "why"}
        if rng.random() < 0.3:
            task["partOf"] = [{"reference": "Task/t0"}]
        found.append(task)
    return found


RESOURCES: list[dict[str, Any]] = [*observations(), *medication_requests(), *tasks(), *generated(60)]

# ------------------------------------------------------------------------------------------ contexts


def values_at(resource: Mapping[str, Any], path: str) -> list[tuple[Any, str]]:
    """(value, model type path) of every value at an element path (`Observation.value[x]`, ...)."""
    rtype, *steps = path.split(".")
    if resource.get("resourceType") != rtype:
        return []
    current: list[tuple[Any, str]] = [(resource, rtype)]
    for step in steps:
        found: list[tuple[Any, str]] = []
        for value, model in current:
            if not isinstance(value, dict):
                continue
            stem = step.removesuffix("[x]")
            if step.endswith("[x]"):
                keys = [k for k in value if k.startswith(stem) and k[len(stem) : len(stem) + 1].isupper()]
            else:
                keys = [step] if step in value else []
            for key in keys:
                child = child_model_path(model, key)
                items = value[key] if isinstance(value[key], list) else [value[key]]
                found.extend((item, child) for item in items)
        current = found
    return current


Context = tuple[Any, Any, Mapping[str, Any]]  # (native context, fhirpathpy context, variables)


def contexts(path: str) -> Iterator[Context]:
    """The contexts an invariant on `path` is evaluated at: resources themselves, or values typed by model
    path; `*` is every resource. The native side gets the validator's Node, fhirpathpy its ResourceNode."""
    for resource in RESOURCES:
        env = {"resource": resource, "rootResource": resource}
        if path == "*" or path == resource["resourceType"]:
            yield resource, resource, env
            continue
        for value, model in values_at(resource, path):
            yield typed_node(value, model), ResourceNode.create_node(value, model), env


def shipped_invariants() -> list[tuple[str, str, str]]:
    """(element path, key, expression) of every invariant in the shipped profiles."""
    found = []
    for file in sorted(PROFILES_DIR.glob("StructureDefinition-*.json")):
        for element in json.loads(file.read_text())["differential"]["element"]:
            found += [(element["path"], c["key"], c["expression"]) for c in element.get("constraint", [])]
    return found


def enforcement_whens() -> list[tuple[str, str]]:
    """(resource type, expression) of the enforcement rules' `when`s."""
    rules = json.loads((PROFILES_DIR / "enforcement.json").read_text())
    return [(r["resourceType"], r["when"]) for r in rules if "when" in r]


# ------------------------------------------------------------------------------------------ comparing


def strict(value: Any) -> Any:
    """A value with its types made explicit, so that 1 and true, or 1.0 and Decimal('1.0'), differ."""
    if isinstance(value, list):
        return ["list", *map(strict, value)]
    if isinstance(value, dict):
        return ["dict", *((key, strict(v)) for key, v in value.items())]
    return [type(value).__name__, value]


def outcome(evaluate: Callable[..., list[Any]], *args: Any) -> tuple[str, Any]:
    """evaluate(*args) as ('ok', strict result), ('defer', None) or ('error', exception type)."""
    try:
        return "ok", strict(evaluate(*args))
    except Defer:
        return "defer", None
    except Exception as exc:
        return "error", type(exc).__name__


def compare(expression: str, model_path: str, cases: list[Context]) -> tuple[int, int]:
    """Assert native == fhirpathpy on every context; return (contexts answered natively, deferred)."""
    program = compile_native(parse(expression), MODEL)
    evaluator = compile_fhirpath(expression, model_path)
    reference = fhirpathpy.compile(expression, MODEL)
    native = deferred = 0
    for native_context, fhirpathpy_context, env in cases:
        expected = outcome(reference, fhirpathpy_context, env)
        got = outcome(program, native_context, env)
        where = f"{expression!r} at {json.dumps(getattr(native_context, 'data', native_context))[:300]}"
        if got[0] == "defer":
            deferred += 1
        else:
            assert got[0] != "error", f"native failed without deferring: {got} for {where}"
            assert expected[0] == "ok", f"fhirpathpy fails ({expected}) but native answers {got}: {where}"
            assert got == expected, f"{where}: native {got} != fhirpathpy {expected}"
            native += 1
            # a fhirpathpy ResourceNode context gives the same as the validator's Node
            assert outcome(program, fhirpathpy_context, env) == got, where
        full = outcome(evaluator, native_context, env)
        assert full == expected, f"{where}: compile_fhirpath {full} != fhirpathpy {expected}"
    return native, deferred


# ------------------------------------------------------------------------------------------ shipped


SHIPPED = shipped_invariants()


def test_every_shipped_invariant_is_native() -> None:
    assert len(SHIPPED) >= 18
    assert {key: not_native_reason(expression) for _, key, expression in SHIPPED} == {
        key: None for _, key, _ in SHIPPED
    }


@pytest.mark.parametrize(("path", "key", "expression"), SHIPPED, ids=[key for _, key, _ in SHIPPED])
def test_shipped_invariant_agrees_with_fhirpathpy(path: str, key: str, expression: str) -> None:
    model_path = "" if path.endswith("[x]") else child_model_path(*path.rsplit(".", 1))
    at_element = list(contexts(path))
    at_root = list(contexts(path.split(".")[0]))
    native, _ = compare(expression, model_path, at_element + at_root)
    assert native >= len(at_element) // 2, "most contexts should be answered natively"


@pytest.mark.parametrize(("path", "key", "expression"), SHIPPED, ids=[key for _, key, _ in SHIPPED])
def test_shipped_invariant_never_defers_on_the_profile_test_resources(
    path: str, key: str, expression: str
) -> None:
    resources = [LAB, MEDICATION_REQUEST, PA_TASK, *(task_with(s, b) for s, b in LIFECYCLE)]
    program = compile_native(parse(expression), MODEL)
    for resource in resources:
        env = {"resource": resource, "rootResource": resource}
        for value, model in values_at(resource, path):
            program(typed_node(value, model), env)  # raises Defer if it deferred


@pytest.mark.parametrize(("rtype", "expression"), enforcement_whens())
def test_enforcement_when_agrees_with_fhirpathpy(rtype: str, expression: str) -> None:
    assert not_native_reason(expression) is None
    native, deferred = compare(expression, rtype, list(contexts(rtype)))
    assert native and not deferred


# ---------------------------------------------------------------------------------------- more of the subset


def _truth_table_rows() -> list[tuple[str, str, str]]:
    """and/or/xor/implies on every pair of true, false and {}."""
    values = ("true", "false", "{}")
    return [
        ("*", f"{a} {op} {b}", f"three-valued {op}: {a}, {b}")
        for op in ("and", "or", "xor", "implies")
        for a, b in itertools.product(values, values)
    ]


# (context path, expression, what the row checks); `*` is every resource itself.
EXTRA: list[tuple[str, str, str]] = [
    # member paths and choice elements
    ("Observation", "value", "choice element: whichever value[x] is present, first in the model's order"),
    ("Observation", "value.value", "into a choice: Quantity.value (floats come back as Decimal)"),
    ("Observation", "value.coding.code", "into a CodeableConcept value"),
    ("Observation", "valueQuantity.unit", "the JSON property of one choice type is also a member"),
    ("Observation", "component.value", "choice inside a repeating backbone element"),
    ("Observation", "referenceRange.low.value", "through a backbone element to a Quantity's decimal"),
    ("Observation", "code.coding.code", "repeating elements flatten"),
    ("Observation", "status", "a primitive, with its `_status` extension object as a further item"),
    ("Observation", "status.count()", "the extension object counts"),
    ("Observation", "code.coding[0].code", "indexer"),
    ("Observation", "code.coding[1]", "indexer past the end"),
    ("Observation", "code.text.foo", "a member of a string: {}"),
    ("Observation", "contained.active", "a contained resource is typed by its resourceType"),
    ("Observation", "extension.url", "extension members are Extension"),
    ("Observation", "nosuchthing", "unknown member: {}"),
    ("Observation.value[x]", "value", "a member of the typed context"),
    ("Observation.referenceRange", "low | high", "union of resource items (they lose their type)"),
    ("Observation", "(code | code).coding.code", "navigation from untyped union items"),
    ("Observation", "(code | category).coding.count()", "union then count"),
    # existence
    ("Observation", "value.exists()", "exists()"),
    ("Observation", "component.empty()", "empty()"),
    ("Observation", "code.coding.count()", "count()"),
    ("Observation", "category.coding.code.count() > 1", "count() compared"),
    ("Observation", "value.exists().not()", "not() of a computed boolean"),
    ("Observation", "status.not()", "not() of a single non-boolean: false"),
    ("Observation", "valueBoolean.not()", "not() of a boolean read from the resource"),
    ("Observation", "code.coding.not()", "not() of several items: {}"),
    ("Observation", "{}.not()", "not() of {}: {}"),
    ("Observation", "code.coding.exists(system = 'http://loinc.org' and code = '751-8')", "exists(criteria)"),
    # where / select
    ("Observation", "code.coding.where(system = 'http://loinc.org')", "where returns the items"),
    ("Observation", "code.coding.where(code.exists()).code", "where then navigate"),
    ("Observation", "component.where(value is Quantity).code.coding.code", "where with a type test"),
    ("Observation", "code.coding.where(system = 'http://loinc.org' or code = 'x').count()", "or inside"),
    ("Observation", "category.where(coding.code = 'laboratory').exists()", "several codes vs one: false"),
    ("Observation", "code.coding.where($this.code = '751-8')", "$this at the start of an operand"),
    ("Observation", "code.coding.where(display)", "a string criterion (fhirpathpy: truthy) defers"),
    ("Observation", "component.where(valueBoolean).exists()", "a resource boolean criterion defers"),
    ("Observation", "code.coding.where({})", "an empty criterion keeps nothing"),
    ("Observation", "code.coding.select(system & '|' & code)", "select with string concatenation"),
    ("Observation", "referenceRange.select(low.value)", "select flattens"),
    ("Observation", "component.select(code.coding).code", "select then navigate"),
    ("Observation", "code.coding.select($this)", "select $this"),
    # iif
    ("Observation", "iif(value.exists(), 'has value', 'no value')", "iif with both branches"),
    ("Observation", "iif(status = 'final', value)", "iif without otherwise: {}"),
    ("Observation", "iif(valueBoolean, 1, 2)", "iif criterion read from the resource"),
    ("Observation", "iif(status, 1, 2)", "iif on a non-boolean criterion defers"),
    ("Observation", "iif({}, 1, 2)", "iif on {}: otherwise"),
    ("Observation", "code.coding.iif($this.count() > 1, 'many', 'one')", "iif's $this is its whole input"),
    ("Observation.value[x]", "iif($this is Quantity, value > 1, true)", "lab-1's shape on other tests"),
    ("Task.status", "iif($this = 'requested', 'r', iif($this = 'draft', 'd', 'other'))", "nested iif"),
    # types
    ("Observation", "value.ofType(Quantity).value", "ofType on a choice"),
    ("Observation", "value.ofType(string)", "ofType(string)"),
    ("Observation", "value.ofType(FHIR.CodeableConcept).coding.code", "ofType with the FHIR namespace"),
    ("Observation", "status.ofType(string)", "a code is a string"),
    ("Observation", "status.ofType(System.String)", "a FHIR string is not a System.String"),
    ("Observation", "referenceRange.ofType(BackboneElement).count()", "backbone elements"),
    ("Observation", "value is Quantity", "is on a choice element"),
    ("Observation", "value is FHIR.Quantity", "is with a namespace"),
    ("Observation", "value is string", "is string"),
    ("Observation", "value is Element", "the model's type hierarchy"),
    ("Observation", "status is code", "is code"),
    ("Observation", "status is string", "a code is a string"),
    ("Observation", "status is System.String", "not a System.String"),
    ("Observation", "code.coding is Coding", "is on several items defers (fhirpathpy fails)"),
    ("Observation", "referenceRange is BackboneElement", "is on a backbone element"),
    ("Observation.referenceRange", "$this is BackboneElement", "the typed context"),
    ("*", "'a' is String", "System types of literals"),
    ("*", "'a' is string", "a literal is not a FHIR string"),
    ("*", "1 is Integer", "integer literal"),
    ("*", "1.5 is Decimal", "decimal literal"),
    ("*", "true is System.Boolean", "boolean literal"),
    ("*", "%resource is Observation", "%resource is an untyped object in fhirpathpy"),
    ("*", "(1 | 2) is Integer", "is on two items defers (fhirpathpy fails)"),
    # equality and comparison
    ("Observation", "status = 'final'", "= with a literal"),
    ("Observation", "status != 'final'", "!= with a literal"),
    ("Observation", "'final' = status", "literal on the left"),
    ("Observation", "value.value = 1.2", "a JSON float is not the decimal literal 1.2 in fhirpathpy"),
    ("Observation", "value.value = 13.5", "... unless exactly representable"),
    ("Observation", "valueInteger = 5", "integer equality"),
    ("Observation", "valueBoolean = true", "boolean equality"),
    ("Observation", "code.coding.code = '751-8'", "several items vs one: false"),
    ("Observation", "code.coding.code != '751-8'", "several items vs one: != true"),
    ("Observation", "code.coding.system = code.coding.system", "several vs several defers"),
    (
        "Observation",
        "code.coding[0].code = code.coding.code",
        "one vs several: false, though the firsts match",
    ),
    ("Observation", "code.coding[0].code != code.coding.code", "one vs several: != is true"),
    ("Observation", "value = %resource.value", "Quantity equality defers"),
    ("Observation", "value = referenceRange.low", "Quantities equal as quantities, not as JSON: defers"),
    ("Observation", "code = %resource.code", "CodeableConcept objects compare as JSON"),
    ("Observation", "subject.reference = 'Patient/p1'", "nested string"),
    ("Observation", "status = {}", "= with {}: {}"),
    ("Observation", "status = status", "path on both sides"),
    ("Observation", "value.value > 1", "decimal vs integer"),
    ("Observation", "value.value <= 1.2", "a JSON float is compared as a decimal"),
    ("Observation", "value.value < 1.2", "... so 1.2 is not below 1.2"),
    ("Observation", "referenceRange.low.value < value.value", "paths on both sides"),
    ("Observation", "status > 'a'", "strings"),
    ("Observation", "status < 5", "string vs number defers (fhirpathpy fails)"),
    ("Observation", "code.coding.code >= '7'", "several items defer"),
    ("Observation", "value >= 0", "a Quantity is not a number: defers"),
    ("MedicationRequest", "dispenseRequest.numberOfRepeatsAllowed > -1", "negative literal"),
    ("MedicationRequest.dispenseRequest.numberOfRepeatsAllowed", "$this < 3.5", "decimal literal"),
    ("*", "-1.5 < 0", "polarity"),
    ("*", "1.0 = 1", "1.0 is read as the integer 1"),
    ("*", "'a' < 'b'", "string literals"),
    # membership
    ("Observation", "status in ('final' | 'amended')", "in a literal collection"),
    ("Observation", "status in ('final' | 'final' | 'preliminary')", "duplicates in the literal"),
    ("Observation", "code.coding.code contains '751-8'", "contains"),
    ("Observation", "'751-8' in code.coding.code", "literal in a path"),
    ("Observation", "code.coding.code in ('a' | 'b')", "several items in: defers"),
    ("Observation", "status in {}", "in {}: false"),
    ("Observation", "{} in status", "{} in: {}"),
    ("Observation", "status in %resource.status", "in a variable's path"),
    ("Observation", "valueInteger in (1 | 5)", "integers"),
    # union and concatenation
    ("*", "('a' | 'b' | 'a')", "literal union removes duplicates"),
    ("*", "(1 | 1 | 2 | true)", "1 and true are different JSON"),
    ("*", "(1.5 | 1.50)", "fhirpathpy keeps both decimals"),
    ("Observation", "code.coding.code | category.coding.code", "union of paths"),
    ("Observation", "status | 'x'", "resource items with literals defer"),
    ("Observation", "status & '/' & code.coding[0].code", "concatenation"),
    ("Observation", "{} & 'x'", "{} counts as ''"),
    ("Observation", "code.coding.code & 'x'", "several items defer"),
    ("Observation", "value.value & 'x'", "a number defers"),
    # logic with paths
    ("Observation", "value.exists() and status = 'final'", "and"),
    ("Observation", "status = 'final' or %resource.nothing.exists()", "or with a decided left side"),
    ("Observation", "status and true", "a non-boolean operand defers"),
    ("Observation", "valueBoolean or false", "a boolean read from the resource"),
    ("Observation", "code.coding.code.exists() xor value.exists()", "xor"),
    ("Observation", "value.exists() implies value.value > 0", "implies"),
    ("Observation", "component.valueBoolean and true", "several booleans defer"),
    ("Observation", "false and (status < 5)", "a failing right side is still evaluated"),
    # intersect
    ("Observation", "code.coding.code.intersect(%resource.component.code.coding.code)", "intersect"),
    ("Observation", "category.coding.intersect(%resource.category.coding)", "intersect of objects"),
    ("Observation", "category.coding.code.intersect(%resource.category.coding.code)", "no duplicates"),
    ("Observation", "('a' | 'b').intersect(%resource.status | 'b')", "literals (the argument defers)"),
    # variables
    ("*", "%resource.id", "%resource"),
    ("*", "%rootResource.status", "%rootResource"),
    ("*", "%context.status", "%context is the evaluated resource"),
    ("Observation.value[x]", "%context.value", "%context is the typed value"),
    ("*", "%ucum", "%ucum"),
    ("*", "%resource = %context", "the same resource"),
    # literals
    ("*", "{}", "the empty collection"),
    ("*", "'x'", "a string"),
    ("*", "true", "a boolean"),
    ("*", "0", "an integer"),
    # $this where it is the focus
    ("Observation.value[x]", "$this.value > 0", "$this at the start of an operand"),
    ("Task.status", "$this = 'requested' or $this = 'draft'", "the lifecycle rules' shape"),
    ("Task.status", "$this in ('requested' | 'draft')", "in with $this"),
    *_truth_table_rows(),
]


@pytest.mark.parametrize(("path", "expression", "why"), EXTRA, ids=[e for _, e, _ in EXTRA])
def test_subset_expression_agrees_with_fhirpathpy(path: str, expression: str, why: str) -> None:
    assert not_native_reason(expression) is None, why
    cases = list(contexts(path))
    assert cases
    native, deferred = compare(expression, "", cases)
    if "defer" in why:  # rows about inputs left to fhirpathpy must reach that path
        assert deferred, f"never deferred: {why}"
    else:
        assert native, f"never answered natively: {why}"


def test_missing_variable_fails_as_in_fhirpathpy() -> None:
    expression = "%resource.status = 'final'"
    with pytest.raises(Defer):
        compile_native(parse(expression), MODEL)(LAB, {})
    with pytest.raises(ValueError, match="resource"):
        compile_fhirpath(expression, "Observation")(LAB, {})


def test_a_deferred_input_is_answered_by_fhirpathpy() -> None:
    expression = "value = %resource.value"  # Quantity equality: fhirpathpy compares units
    env = {"resource": LAB, "rootResource": LAB}
    with pytest.raises(Defer):
        compile_native(parse(expression), MODEL)(LAB, env)
    assert compile_fhirpath(expression, "Observation")(LAB, env) == [True]


def test_results_are_fresh_lists() -> None:
    evaluate = compile_fhirpath("('a' | 'b')", "Observation")
    first = evaluate(LAB, {})
    first.append("changed")
    assert evaluate(LAB, {}) == ["a", "b"]


def test_native_nodes_keep_the_model_type() -> None:
    node = typed_node({"value": 1}, "Quantity")
    assert isinstance(node, Node) and node.path == "Quantity"
    assert typed_node({"resourceType": "Patient"}, "Resource").path == "Patient"


# ---------------------------------------------------------------------------------------- outside the subset

# (expression, a word of the reason); each still evaluates, through fhirpathpy.
OUTSIDE: list[tuple[str, str]] = [
    ("code.coding.first().code", "first()"),
    ("value.as(Quantity).value > 1", "as"),
    ("$this.status", "$this"),  # no operator has set $this yet: fhirpathpy fails
    ("code.coding.select(system).intersect(code.coding.select(system)).empty()", "intersect"),
    ("status.length() > 2", "length()"),
    ("status = 'fin\\'al'", "escapes"),
    ("value.value + 1 > 2", "+"),
    ("Observation.status = 'final'", "Observation"),
    ("effective < @2030-01-01", "DateTimeLiteral"),
    ("status ~ 'FINAL'", "~"),
    ("value.value > 1 'mg'", "QuantityLiteral"),
    ("code.coding.where($index = 0).code", "IndexInvocation"),
    ("code.coding.code.distinct().count()", "distinct()"),
    ("code.coding.$this", "ThisInvocation"),
    ("code.coding[code.coding.count()]", "integer literal"),
    ("-value.value < 0", "number literals"),
    ("status.matches('f.*')", "matches()"),
]


@pytest.mark.parametrize(("expression", "reason"), OUTSIDE)
def test_expression_outside_the_subset_is_reported_and_left_to_fhirpathpy(
    expression: str, reason: str
) -> None:
    why = not_native_reason(expression)
    assert why is not None and reason in why, why
    evaluate = compile_fhirpath(expression, "Observation")
    reference = fhirpathpy.compile(expression, MODEL)
    for resource in (LAB, *observations()[:12]):
        env = {"resource": resource, "rootResource": resource}
        assert outcome(evaluate, resource, env) == outcome(reference, resource, env)


def test_decimal_results_match_types() -> None:
    # a guard on `strict` itself: the comparison must see these as different
    assert strict([1]) != strict([True])
    assert strict([Decimal("1.0")]) != strict([1.0])


def test_fhirpathpy_is_compiled_only_when_an_expression_first_asks_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    compiled: list[str] = []
    real = fhirpathpy.compile

    def counting(expression: str, *args: Any, **kwargs: Any) -> Any:
        compiled.append(expression)
        return real(expression, *args, **kwargs)

    monkeypatch.setattr(fhirpathpy, "compile", counting)
    native = compile_fhirpath("status.exists() and code.coding.exists()", "Observation")
    deferring = compile_fhirpath("code.coding.first().code = 'b'", "Observation")  # first() is not native
    assert compiled == []  # nothing at start
    observation = {"resourceType": "Observation", "status": "final", "code": {"coding": [{"code": "a"}]}}
    assert native(observation, {}) == [True]
    assert compiled == []
    for _ in range(2):
        assert deferring(observation, {}) == [False]
    assert compiled == ["code.coding.first().code = 'b'"]  # once, on its first call
    with pytest.raises(ValueError, match="syntax"):
        compile_fhirpath("status.exists(", "Observation")  # still refused when compiled
