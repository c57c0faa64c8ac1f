"""The gateway's profiles (profiles/*.json) applied by gateway.fhir.profiles.ProfileSet."""

from __future__ import annotations

import copy
import importlib
import json
import pathlib
import tempfile
from typing import Any

import fhirpathpy
import pytest
from fhirpathpy.engine.nodes import ResourceNode
from fhirpathpy.models import models

from gateway.fhir.profiles import ProfileSet
from gateway.fhir.profiles.fhirpath import _fast_exists, compile_fhirpath
from gateway.types import Issue

PROFILES_DIR = pathlib.Path(__file__).resolve().parents[2] / "profiles"
PROFILES = ProfileSet.load(PROFILES_DIR)

BASE = "https://specialty-gateway.org/fhir"
LAB_PROFILE = f"{BASE}/StructureDefinition/lab-observation"
MR_PROFILE = f"{BASE}/StructureDefinition/specialty-medicationrequest"
TASK_PROFILE = f"{BASE}/StructureDefinition/pa-task"
OBS_CAT = "http://terminology.hl7.org/CodeSystem/observation-category"
V3_INTERP = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
UCUM = "http://unitsofmeasure.org"
BS = f"{BASE}/CodeSystem/pa-business-status"
TASK_TYPE = f"{BASE}/CodeSystem/task-type"


def ucum(value: float, unit: str) -> dict[str, Any]:
    return {"value": value, "unit": unit, "system": UCUM, "code": unit}


LAB: dict[str, Any] = {
    "resourceType": "Observation",
    "id": "anc-1",
    "status": "final",
    "category": [{"coding": [{"system": OBS_CAT, "code": "laboratory", "display": "Laboratory"}]}],
    "code": {
        "coding": [
            {"system": "http://loinc.org", "code": "751-8", "display": "Neutrophils [#/volume] in Blood"}
        ]
    },
    "subject": {"reference": "Patient/p1"},
    "effectiveDateTime": "2026-03-01T08:30:00-05:00",
    "issued": "2026-03-01T10:02:00-05:00",
    "performer": [{"reference": "Organization/lab-1"}],
    "valueQuantity": ucum(1.2, "10*3/uL"),
    "interpretation": [{"coding": [{"system": V3_INTERP, "code": "L", "display": "Low"}]}],
    "referenceRange": [{"low": ucum(1.5, "10*3/uL"), "high": ucum(7.5, "10*3/uL")}],
}

MEDICATION_REQUEST: dict[str, Any] = {
    "resourceType": "MedicationRequest",
    "id": "mr-1",
    "status": "active",
    "intent": "order",
    "medicationCodeableConcept": {
        "coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "1148495"}],
        "text": "adalimumab 40 MG/0.4ML prefilled syringe",
    },
    "subject": {"reference": "Patient/p1"},
    "authoredOn": "2026-03-01",
    "requester": {"reference": "Practitioner/dr-1"},
    "dispenseRequest": {
        "numberOfRepeatsAllowed": 5,
        "quantity": {"value": 2, "unit": "syringe"},
        "expectedSupplyDuration": {"value": 28, "unit": "days", "system": UCUM, "code": "d"},
    },
}

PA_TASK: dict[str, Any] = {
    "resourceType": "Task",
    "id": "pa-1",
    "status": "requested",
    "intent": "order",
    "code": {"coding": [{"system": TASK_TYPE, "code": "prior-authorization"}]},
    "businessStatus": {"coding": [{"system": BS, "code": "submitted"}]},
    "focus": {"reference": "MedicationRequest/mr-1"},
    "for": {"reference": "Patient/p1"},
    "authoredOn": "2026-03-01T09:00:00Z",
}


def changed(resource: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """A deep copy of `resource` with top-level properties replaced (None removes one)."""
    copied = copy.deepcopy(resource)
    for key, value in changes.items():
        key = key.rstrip("_")  # for_ -> for
        if value is None:
            copied.pop(key, None)
        else:
            copied[key] = value
    return copied


def errors(resource: dict[str, Any]) -> list[Issue]:
    return [i for i in PROFILES.validate(resource) if i.is_error]


def only_error(resource: dict[str, Any]) -> Issue:
    found = errors(resource)
    assert len(found) == 1, found
    return found[0]


def task_with(status: str, business: str, **changes: Any) -> dict[str, Any]:
    return changed(
        PA_TASK, status=status, businessStatus={"coding": [{"system": BS, "code": business}]}, **changes
    )


# ------------------------------------------------------------------------------------ shipped resources


def test_every_shipped_conformance_resource_is_valid_r4b() -> None:
    for resource in PROFILES.resources():
        module = importlib.import_module(f"fhir.resources.R4B.{resource['resourceType'].lower()}")
        getattr(module, resource["resourceType"]).model_validate(resource)


def test_example_resources_are_structurally_valid_r4b() -> None:
    for resource in (LAB, MEDICATION_REQUEST, PA_TASK):
        module = importlib.import_module(f"fhir.resources.R4B.{resource['resourceType'].lower()}")
        getattr(module, resource["resourceType"]).model_validate(copy.deepcopy(resource))


def test_profiles_for_lists_the_canonical_urls_per_type() -> None:
    assert PROFILES.profiles_for("Observation") == [LAB_PROFILE]
    assert PROFILES.profiles_for("MedicationRequest") == [MR_PROFILE]
    assert PROFILES.profiles_for("Task") == [TASK_PROFILE]
    assert PROFILES.profiles_for("Patient") == []


def test_value_set_codes_expands_a_whole_code_system() -> None:
    codes = PROFILES.value_set_codes(f"{BASE}/ValueSet/pa-business-status")
    assert len(codes) == 14
    assert (BS, "appeal-submitted") in codes
    assert ("http://hl7.org/fhir/task-status", "on-hold") in PROFILES.value_set_codes(
        f"{BASE}/ValueSet/task-status"
    )


def test_value_set_codes_of_an_unknown_value_set_raises_key_error() -> None:
    with pytest.raises(KeyError):
        PROFILES.value_set_codes(f"{BASE}/ValueSet/nope")


# ------------------------------------------------------------------------------------ conforming resources


def test_conforming_lab_observation_has_no_issues() -> None:
    assert PROFILES.validate(LAB) == []


def test_conforming_medication_request_has_no_issues() -> None:
    assert PROFILES.validate(MEDICATION_REQUEST) == []


def test_conforming_pa_task_has_no_issues() -> None:
    assert PROFILES.validate(PA_TASK) == []


def test_validate_does_not_modify_the_resource() -> None:
    resource = changed(LAB, component=[{"code": LAB["code"], "valueString": "x"}])
    before = copy.deepcopy(resource)
    PROFILES.validate(resource)
    assert resource == before


# ------------------------------------------------------------------------------------ enforcement


def test_non_laboratory_observation_is_not_held_to_the_lab_profile() -> None:
    vitals = changed(LAB, category=[{"coding": [{"system": OBS_CAT, "code": "vital-signs"}]}], subject=None)
    assert PROFILES.validate(vitals) == []


def test_task_without_a_gateway_task_type_is_not_held_to_the_pa_profile() -> None:
    other = changed(
        PA_TASK, code={"coding": [{"system": "http://example.org/tasks", "code": "call"}]}, focus=None
    )
    assert PROFILES.validate(other) == []


def test_unknown_meta_profile_yields_only_information() -> None:
    vitals = changed(
        LAB,
        category=[{"coding": [{"system": OBS_CAT, "code": "vital-signs"}]}],
        meta={"profile": ["http://example.org/StructureDefinition/unknown"]},
    )
    issues = PROFILES.validate(vitals)
    assert [(i.severity, i.expression) for i in issues] == [("information", ("Observation.meta.profile[0]",))]


def test_declared_profile_applies_even_when_the_enforcement_rule_does_not() -> None:
    vitals = changed(
        LAB,
        category=[{"coding": [{"system": OBS_CAT, "code": "vital-signs"}]}],
        meta={"profile": [LAB_PROFILE]},
    )
    issue = only_error(vitals)
    assert issue.code == "required"
    assert issue.expression == ("Observation.category",)
    assert "laboratory" in issue.diagnostics


def test_declared_versioned_profile_is_recognised() -> None:
    assert PROFILES.validate(changed(LAB, meta={"profile": [LAB_PROFILE + "|0.1.0"]})) == []


def test_declared_profile_of_another_type_is_an_error_at_meta_profile() -> None:
    issue = only_error(changed(LAB, meta={"profile": [TASK_PROFILE]}))
    assert issue.expression == ("Observation.meta.profile[0]",)


# ------------------------------------------------------------------------------------ cardinality


def test_lab_observation_without_subject_is_rejected_at_subject() -> None:
    issue = only_error(changed(LAB, subject=None))
    assert (issue.code, issue.expression) == ("required", ("Observation.subject",))


def test_lab_observation_code_without_coding_is_rejected_at_code_coding() -> None:
    issue = only_error(changed(LAB, code={"text": "ANC"}))
    assert (issue.code, issue.expression) == ("required", ("Observation.code.coding",))


def test_lab_observation_with_two_laboratory_categories_breaks_the_slice_maximum() -> None:
    issue = only_error(changed(LAB, category=LAB["category"] * 2))
    assert (issue.code, issue.expression) == ("structure", ("Observation.category",))


def test_lab_observation_without_laboratory_category_slice_is_rejected_at_category() -> None:
    declared = changed(
        LAB,
        meta={"profile": [LAB_PROFILE]},
        category=[{"coding": [{"system": "http://example.org/local", "code": "laboratory"}]}],
    )
    issue = only_error(declared)
    assert (issue.code, issue.expression) == ("required", ("Observation.category",))


def test_medication_request_without_medication_is_rejected_at_medication() -> None:
    issue = only_error(changed(MEDICATION_REQUEST, medicationCodeableConcept=None))
    assert (issue.code, issue.expression) == ("required", ("MedicationRequest.medication",))


def test_medication_reference_satisfies_the_medication_choice() -> None:
    by_reference = changed(
        MEDICATION_REQUEST, medicationCodeableConcept=None, medicationReference={"reference": "Medication/m1"}
    )
    assert PROFILES.validate(by_reference) == []


def test_nested_cardinality_names_the_repeating_parent_by_index() -> None:
    profile = {
        "resourceType": "StructureDefinition",
        "url": "http://example.org/sd/coded",
        "type": "Observation",
        "kind": "resource",
        "derivation": "constraint",
        "differential": {
            "element": [
                {"id": "Observation.code.coding.system", "path": "Observation.code.coding.system", "min": 1}
            ]
        },
    }
    coded = ProfileSet.from_resources(
        [profile], [{"profile": "http://example.org/sd/coded", "resourceType": "Observation"}]
    )
    resource = changed(
        LAB, code={"coding": [{"system": "http://loinc.org", "code": "751-8"}, {"code": "ANC"}]}
    )
    issues = coded.validate(resource)
    assert [(i.code, i.expression) for i in issues] == [("required", ("Observation.code.coding[1].system",))]


# ------------------------------------------------------------------------------------ choice types


def test_lab_observation_with_effective_timing_is_rejected_as_a_disallowed_choice_type() -> None:
    timing = changed(LAB, effectiveDateTime=None, effectiveTiming={"event": ["2026-03-01T08:30:00-05:00"]})
    issue = only_error(timing)
    assert (issue.code, issue.expression) == ("structure", ("Observation.effective.ofType(Timing)",))


def test_lab_observation_with_effective_period_is_accepted() -> None:
    period = changed(LAB, effectiveDateTime=None, effectivePeriod={"start": "2026-03-01T08:30:00-05:00"})
    assert PROFILES.validate(period) == []


# ------------------------------------------------------------------------------------ bindings


def test_lab_observation_with_unknown_status_code_is_rejected_at_status() -> None:
    issue = only_error(changed(LAB, status="done"))
    assert (issue.code, issue.expression) == ("code-invalid", ("Observation.status",))
    assert "'done'" in issue.diagnostics


def test_medication_request_with_unknown_intent_is_rejected_at_intent() -> None:
    issue = only_error(changed(MEDICATION_REQUEST, intent="wish"))
    assert (issue.code, issue.expression) == ("code-invalid", ("MedicationRequest.intent",))


def test_pa_task_with_unknown_business_status_is_rejected_at_business_status() -> None:
    task = changed(PA_TASK, businessStatus={"coding": [{"system": BS, "code": "lost"}]})
    found = errors(task)
    assert ("code-invalid", ("Task.businessStatus",)) in [(i.code, i.expression) for i in found]


def test_pa_task_with_business_status_text_only_is_rejected_by_the_required_binding() -> None:
    task = changed(PA_TASK, businessStatus={"text": "submitted"})
    assert ("code-invalid", ("Task.businessStatus",)) in [(i.code, i.expression) for i in errors(task)]


def test_extensible_binding_gives_a_warning_not_an_error() -> None:
    odd = changed(
        LAB, interpretation=[{"coding": [{"system": "http://example.org/flags", "code": "LOWISH"}]}]
    )
    issues = PROFILES.validate(odd)
    assert [(i.severity, i.code, i.expression) for i in issues] == [
        ("warning", "code-invalid", ("Observation.interpretation[0]",))
    ]


def test_extensible_binding_accepts_text_only() -> None:
    assert PROFILES.validate(changed(LAB, interpretation=[{"text": "low"}])) == []


# ------------------------------------------------------------------------------------ fixed and pattern


def test_pa_task_with_intent_other_than_order_is_rejected_at_intent() -> None:
    issue = only_error(changed(PA_TASK, intent="plan"))
    assert (issue.code, issue.expression) == ("value", ("Task.intent",))


def test_expected_supply_duration_not_in_days_breaks_the_pattern() -> None:
    weeks = copy.deepcopy(MEDICATION_REQUEST)
    weeks["dispenseRequest"]["expectedSupplyDuration"] = ucum(4, "wk")
    issue = only_error(weeks)
    assert (issue.code, issue.expression) == (
        "value",
        ("MedicationRequest.dispenseRequest.expectedSupplyDuration",),
    )


def test_pattern_allows_extra_properties() -> None:
    extra = copy.deepcopy(MEDICATION_REQUEST)
    extra["dispenseRequest"]["expectedSupplyDuration"]["comparator"] = "<"
    assert PROFILES.validate(extra) == []


# ------------------------------------------------------------------------------------ references


def test_lab_observation_subject_pointing_at_a_group_is_rejected_at_subject() -> None:
    issue = only_error(changed(LAB, subject={"reference": "Group/g1"}))
    assert (issue.code, issue.expression) == ("structure", ("Observation.subject",))


def test_medication_request_requester_pointing_at_a_location_is_rejected_at_requester() -> None:
    issue = only_error(changed(MEDICATION_REQUEST, requester={"reference": "Location/l1"}))
    assert issue.expression == ("MedicationRequest.requester",)


def test_pa_task_focus_must_be_a_medication_request() -> None:
    issue = only_error(changed(PA_TASK, focus={"reference": "ServiceRequest/s1"}))
    assert issue.expression == ("Task.focus",)


def test_reference_type_element_is_checked_for_logical_references() -> None:
    logical = {"type": "Group", "identifier": {"system": "http://example.org/mrn", "value": "1"}}
    issue = only_error(changed(LAB, subject=logical))
    assert issue.expression == ("Observation.subject",)


@pytest.mark.parametrize(
    "reference",
    ["urn:uuid:0b0a4c2e-8a4c-4c1e-9d0a-6a6f0a1c2b3d", "#contained-1", "https://other.example/fhir/Group/g1"],
)
def test_uuid_contained_and_absolute_references_are_not_judged(reference: str) -> None:
    assert errors(changed(LAB, subject={"reference": reference})) == []


# ------------------------------------------------------------------------------------ invariants


def test_data_absent_reason_with_a_value_breaks_obs_6() -> None:
    resource = changed(LAB, dataAbsentReason={"text": "not measured"})
    issue = only_error(resource)
    assert (issue.code, issue.expression) == ("invariant", ("Observation.dataAbsentReason",))
    assert "obs-6" in issue.diagnostics and "no value" in issue.diagnostics


def test_data_absent_reason_without_a_value_is_accepted() -> None:
    resource = changed(LAB, valueQuantity=None, interpretation=None, dataAbsentReason={"text": "haemolysed"})
    assert PROFILES.validate(resource) == []


def test_component_repeating_the_observation_code_breaks_obs_7() -> None:
    other = {"code": {"coding": [{"system": "http://loinc.org", "code": "26499-4"}]}, "valueString": "x"}
    same = {"code": {"coding": [{"system": "http://loinc.org", "code": "751-8"}]}, "valueString": "y"}
    issue = only_error(changed(LAB, component=[other, same]))
    assert (issue.code, issue.expression) == ("invariant", ("Observation.component[1]",))
    assert "obs-7" in issue.diagnostics


def test_reference_range_without_low_high_or_text_breaks_obs_3() -> None:
    ranges = [{"low": ucum(1.5, "10*3/uL")}, {"appliesTo": [{"text": "adults"}]}]
    issue = only_error(changed(LAB, referenceRange=ranges))
    assert (issue.code, issue.expression) == ("invariant", ("Observation.referenceRange[1]",))
    assert "obs-3" in issue.diagnostics


def test_value_quantity_with_code_but_no_system_breaks_lab_1() -> None:
    issue = only_error(changed(LAB, valueQuantity={"value": 1.2, "unit": "10*3/uL", "code": "10*3/uL"}))
    assert (issue.code, issue.expression) == ("invariant", ("Observation.value.ofType(Quantity)",))
    assert "lab-1" in issue.diagnostics


def test_lab_1_leaves_other_value_types_alone() -> None:
    assert (
        PROFILES.validate(changed(LAB, valueQuantity=None, interpretation=None, valueString="positive")) == []
    )


def test_medication_codeable_concept_without_coding_or_text_breaks_smr_1() -> None:
    issue = only_error(changed(MEDICATION_REQUEST, medicationCodeableConcept={"id": "empty"}))
    assert (issue.code, issue.expression) == (
        "invariant",
        ("MedicationRequest.medication.ofType(CodeableConcept)",),
    )
    assert "smr-1" in issue.diagnostics


def test_negative_number_of_repeats_breaks_smr_2() -> None:
    negative = copy.deepcopy(MEDICATION_REQUEST)
    negative["dispenseRequest"]["numberOfRepeatsAllowed"] = -1
    issue = only_error(negative)
    assert (issue.code, issue.expression) == (
        "invariant",
        ("MedicationRequest.dispenseRequest.numberOfRepeatsAllowed",),
    )


# ------------------------------------------------------------------------------------ PA lifecycle

LIFECYCLE = [
    ("draft", "pa-required"),
    ("requested", "submitted"),
    ("received", "payer-received"),
    ("in-progress", "pended"),
    ("on-hold", "info-requested"),
    ("completed", "approved"),
    ("completed", "approved-modified"),
    ("completed", "partially-approved"),
    ("completed", "expired"),
    ("cancelled", "cancelled"),
    ("rejected", "rejected-by-payer"),
    ("failed", "submission-error"),
    ("entered-in-error", "submitted"),
]


@pytest.mark.parametrize(("status", "business"), LIFECYCLE)
def test_pa_task_lifecycle_pair_from_the_table_passes(status: str, business: str) -> None:
    assert PROFILES.validate(task_with(status, business)) == []


def test_denied_pa_task_with_a_status_reason_passes() -> None:
    denied = task_with("completed", "denied", statusReason={"text": "step therapy not tried"})
    assert PROFILES.validate(denied) == []


def test_appeal_pa_task_part_of_the_denied_task_passes() -> None:
    appeal = task_with("requested", "appeal-submitted", partOf=[{"reference": "Task/pa-0"}])
    assert PROFILES.validate(appeal) == []


@pytest.mark.parametrize(
    ("status", "business", "key"),
    [
        ("completed", "pa-required", "pa-completed"),
        ("draft", "submitted", "pa-draft"),
        ("requested", "approved", "pa-requested"),
        ("received", "pended", "pa-received"),
        ("in-progress", "payer-received", "pa-in-progress"),
        ("on-hold", "pended", "pa-on-hold"),
        ("cancelled", "denied", "pa-cancelled"),
        ("rejected", "submission-error", "pa-rejected"),
        ("failed", "rejected-by-payer", "pa-failed"),
        ("accepted", "pended", "pa-unused-status"),
        ("ready", "submitted", "pa-unused-status"),
    ],
)
def test_pa_task_lifecycle_pair_outside_the_table_is_rejected_at_status(
    status: str, business: str, key: str
) -> None:
    issue = only_error(task_with(status, business))
    assert (issue.code, issue.expression) == ("invariant", ("Task.status",))
    assert issue.diagnostics.startswith(f"Task.status: {key}:")


def test_denied_pa_task_without_status_reason_breaks_pa_denied_reason() -> None:
    issue = only_error(task_with("completed", "denied"))
    assert (issue.code, issue.expression) == ("invariant", ("Task.status",))
    assert "pa-denied-reason" in issue.diagnostics


def test_appeal_pa_task_without_part_of_breaks_pa_appeal_partof() -> None:
    issue = only_error(task_with("requested", "appeal-submitted"))
    assert "pa-appeal-partof" in issue.diagnostics


def test_pa_task_without_business_status_is_reported_once_at_business_status() -> None:
    issue = only_error(changed(PA_TASK, businessStatus=None))
    assert (issue.code, issue.expression) == ("required", ("Task.businessStatus",))


# ---------------------------------------------------------------------------- slicing (inline profile)


def sliced_profile(rules: str) -> ProfileSet:
    """An Observation profile with identifier slices by fixed system: 'mrn' 1..1, closed or open."""
    elements = [
        {
            "id": "Observation.identifier",
            "path": "Observation.identifier",
            "slicing": {"discriminator": [{"type": "value", "path": "$this"}], "rules": rules},
        },
        {
            "id": "Observation.identifier:accession",
            "path": "Observation.identifier",
            "sliceName": "accession",
            "min": 1,
            "max": "1",
            "patternIdentifier": {"system": "http://example.org/accession"},
        },
        {"id": "Observation.identifier:accession.value", "path": "Observation.identifier.value", "min": 1},
    ]
    sd = {
        "resourceType": "StructureDefinition",
        "url": "http://example.org/sd/sliced",
        "type": "Observation",
        "kind": "resource",
        "derivation": "constraint",
        "differential": {"element": elements},
    }
    return ProfileSet.from_resources(
        [sd], [{"profile": "http://example.org/sd/sliced", "resourceType": "Observation"}]
    )


def test_slice_children_apply_only_to_items_in_the_slice() -> None:
    identifiers = [{"system": "http://example.org/other"}, {"system": "http://example.org/accession"}]
    issues = sliced_profile("open").validate(changed(LAB, identifier=identifiers))
    assert [(i.code, i.expression) for i in issues] == [("required", ("Observation.identifier[1].value",))]


def test_closed_slicing_rejects_items_matching_no_slice() -> None:
    identifiers = [
        {"system": "http://example.org/other", "value": "1"},
        {"system": "http://example.org/accession", "value": "A1"},
    ]
    issues = sliced_profile("closed").validate(changed(LAB, identifier=identifiers))
    assert [(i.code, i.expression) for i in issues] == [("structure", ("Observation.identifier[0]",))]


# ------------------------------------------------------------------------------------ loading


def minimal_sd(**element: Any) -> dict[str, Any]:
    return {
        "resourceType": "StructureDefinition",
        "url": "http://example.org/sd/x",
        "type": "Observation",
        "kind": "resource",
        "derivation": "constraint",
        "differential": {"element": [{"id": "Observation", "path": "Observation", **element}]},
    }


def test_load_names_a_malformed_file() -> None:
    with tempfile.TemporaryDirectory() as folder:
        (pathlib.Path(folder) / "StructureDefinition-broken.json").write_text("{ not json")
        with pytest.raises(ValueError, match=r"StructureDefinition-broken\.json"):
            ProfileSet.load(pathlib.Path(folder))


def test_load_names_the_file_of_a_bad_invariant() -> None:
    with tempfile.TemporaryDirectory() as folder:
        bad = minimal_sd(constraint=[{"key": "x-1", "severity": "error", "human": "h", "expression": "a.b("}])
        (pathlib.Path(folder) / "StructureDefinition-x.json").write_text(json.dumps(bad))
        with pytest.raises(ValueError, match=r"StructureDefinition-x\.json.*x-1.*syntax"):
            ProfileSet.load(pathlib.Path(folder))


def test_unknown_fhirpath_function_is_refused_at_load() -> None:
    bad = minimal_sd(
        constraint=[{"key": "x-1", "severity": "error", "human": "h", "expression": "a.nosuch()"}]
    )
    with pytest.raises(ValueError, match="nosuch"):
        ProfileSet.from_resources([bad], [])


def test_required_binding_to_an_unshipped_value_set_is_refused_at_load() -> None:
    bad = minimal_sd()
    bad["differential"]["element"].append(
        {
            "id": "Observation.status",
            "path": "Observation.status",
            "binding": {"strength": "required", "valueSet": "http://x/vs"},
        }
    )
    with pytest.raises(ValueError, match="http://x/vs"):
        ProfileSet.from_resources([bad], [])


def test_unsupported_element_property_is_refused_at_load() -> None:
    with pytest.raises(ValueError, match="maxLength"):
        ProfileSet.from_resources([minimal_sd(maxLength=3)], [])


def test_enforcement_rule_for_an_unknown_profile_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown profile"):
        ProfileSet.from_resources([], [{"profile": "http://x/sd", "resourceType": "Observation"}])


# ------------------------------------------------------------------------------------ FHIRPath fast path


@pytest.mark.parametrize(
    "resource",
    [
        LAB,
        changed(LAB, category=None),
        changed(LAB, category=[{"text": "lab"}]),
        changed(LAB, category=[{"coding": [{"system": OBS_CAT}]}, {"coding": [{"code": "laboratory"}]}]),
        changed(
            LAB,
            category=[
                {"coding": [{"system": "x", "code": "laboratory"}, {"system": OBS_CAT, "code": "laboratory"}]}
            ],
        ),
    ],
)
def test_native_simple_exists_agrees_with_fhirpathpy(resource: dict[str, Any]) -> None:
    expression = f"category.coding.where(system = '{OBS_CAT}' and code = 'laboratory').exists()"
    native = _fast_exists(expression, "Observation")
    assert native is not None
    assert native(resource, {}) == fhirpathpy.evaluate(resource, expression, {}, models["r4"])


def test_choice_names_are_left_to_fhirpathpy() -> None:
    assert _fast_exists("value.where(code = 'x').exists()", "Observation") is None


@pytest.mark.parametrize("status", ["draft", "completed", "requested"])
def test_guarded_invariant_agrees_with_fhirpathpy(status: str) -> None:
    task = task_with(status, "pa-required")
    expression = (
        f"iif($this = 'draft', %resource.businessStatus.coding.where(system = '{BS}' and code = 'submitted')"
        ".exists(), true)"
    )
    env = {"resource": task, "rootResource": task}
    node = ResourceNode.create_node(status, "code")
    assert compile_fhirpath(expression, "code")(node, env) == fhirpathpy.compile(expression, models["r4"])(
        node, env
    )


def test_iif_with_another_otherwise_result_is_not_short_circuited() -> None:
    evaluate = compile_fhirpath("iif($this = 'draft', true, false)", "code")
    assert evaluate(ResourceNode.create_node("completed", "code"), {}) == [False]


def test_value_set_concept_without_code_is_refused_naming_the_file() -> None:
    with tempfile.TemporaryDirectory() as folder:
        broken = {
            "resourceType": "ValueSet",
            "url": "http://example.org/vs/broken",
            "status": "active",
            "compose": {
                "include": [{"system": "http://example.org/cs", "concept": [{"display": "no code"}]}]
            },
        }
        (pathlib.Path(folder) / "ValueSet-broken.json").write_text(json.dumps(broken))
        with pytest.raises(ValueError, match=r"ValueSet-broken\.json"):
            ProfileSet.load(pathlib.Path(folder))


def test_non_numeric_max_is_refused_at_load() -> None:
    with pytest.raises(ValueError, match="max"):
        ProfileSet.from_resources([minimal_sd(max="many")], [])
