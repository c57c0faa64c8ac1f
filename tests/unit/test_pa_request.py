"""The PAS request Bundle builder (gateway.pa.request) and the pas-claim / pas-request-bundle profiles."""

from __future__ import annotations

import copy
import dataclasses
import importlib
import json
import pathlib
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from fhirpathpy.models import models
from fhirpathpy.parser import parse

from gateway.adapters.hl7v2.er7 import Message
from gateway.adapters.hl7v2.translate import Translator
from gateway.fhir.profiles import ProfileSet
from gateway.fhir.profiles.fhirpath import child_model_path, typed_node
from gateway.fhir.profiles.native import compile_native
from gateway.mapping.files import load
from gateway.pa.request import (
    PAS_CLAIM_PROFILE,
    PAS_REQUEST_BUNDLE_PROFILE,
    TRACE_SYSTEM,
    RequestError,
    RequestParts,
    build_claim,
    build_request_bundle,
    check_request_bundle,
    referenced,
)
from gateway.settings import PROJECT_ROOT
from gateway.types import JSON
from tests.hl7_messages import compound_rde

PARSE: Callable[[str], Any] = parse  # fhirpathpy's parser is untyped
PROFILES_DIR = pathlib.Path(__file__).resolve().parents[2] / "profiles"
PROFILES = ProfileSet.load(PROFILES_DIR)

TRANSLATOR = Translator(load(PROJECT_ROOT / "mappings"))
BASE_URL = "https://gateway.example.org/fhir"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
ICD10 = "http://hl7.org/fhir/sid/icd-10-cm"
OBS_CAT = "http://terminology.hl7.org/CodeSystem/observation-category"
PAS_SD = "http://hl7.org/fhir/us/davinci-pas/StructureDefinition"
REQUESTED_SERVICE = f"{PAS_SD}/extension-requestedService"
CERTIFICATION_TYPE = f"{PAS_SD}/extension-certificationType"
LEVEL_OF_SERVICE = f"{PAS_SD}/extension-levelOfServiceCode"
X12_1322 = "https://codesystem.x12.org/005010/1322"
X12_1338 = "https://codesystem.x12.org/005010/1338"

# ------------------------------------------------------------------------------------------ factories


def patient() -> JSON:
    return {
        "resourceType": "Patient",
        "id": "pat-100",
        "identifier": [{"system": "https://clinic.example.org/mrn", "value": "MRN-4471"}],
        "name": [{"family": "Okafor", "given": ["Ada"]}],
        "gender": "female",
        "birthDate": "1979-04-12",
    }


def payer(oid: str = "payer-1") -> JSON:
    return {"resourceType": "Organization", "id": oid, "name": "Great Lakes Health Plan", "active": True}


def coverage() -> JSON:
    return {
        "resourceType": "Coverage",
        "id": "cov-1",
        "status": "active",
        "subscriberId": "GLH-88231",
        "beneficiary": {"reference": "Patient/pat-100"},
        "relationship": {
            "coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/subscriber-relationship", "code": "self"}
            ]
        },
        "payor": [{"reference": "Organization/payer-1"}],
    }


def practitioner() -> JSON:
    return {"resourceType": "Practitioner", "id": "dr-7", "name": [{"family": "Lindqvist", "given": ["Eva"]}]}


def clinic() -> JSON:
    return {"resourceType": "Organization", "id": "clinic-3", "name": "Riverside Dermatology"}


def role() -> JSON:
    return {
        "resourceType": "PractitionerRole",
        "id": "role-7",
        "practitioner": {"reference": "Practitioner/dr-7"},
        "organization": {"reference": "Organization/clinic-3"},
    }


def observation(oid: str, loinc: str, text: str, value: float, unit: str) -> JSON:
    return {
        "resourceType": "Observation",
        "id": oid,
        "status": "final",
        "category": [{"coding": [{"system": OBS_CAT, "code": "laboratory"}]}],
        "code": {"coding": [{"system": LOINC, "code": loinc}], "text": text},
        "subject": {"reference": "Patient/pat-100"},
        "effectiveDateTime": "2026-02-20T09:15:00-05:00",
        "valueQuantity": {"value": value, "unit": unit, "system": UCUM, "code": unit},
    }


def crp() -> JSON:
    return observation("obs-crp", "1988-5", "C reactive protein", 14.2, "mg/L")


def quantiferon() -> JSON:
    return observation("obs-tb", "71773-6", "TB interferon gamma release", 0.1, "[IU]/mL")


def medication_request(**changes: Any) -> JSON:
    order: JSON = {
        "resourceType": "MedicationRequest",
        "id": "mr-55",
        "status": "active",
        "intent": "order",
        "medicationCodeableConcept": {
            "coding": [{"system": RXNORM, "code": "1148495"}],
            "text": "adalimumab 40 MG/0.4ML prefilled syringe",
        },
        "subject": {"reference": "Patient/pat-100"},
        "authoredOn": "2026-03-01",
        "requester": {"reference": "PractitionerRole/role-7"},
        "reasonCode": [{"coding": [{"system": ICD10, "code": "L40.0"}], "text": "Psoriasis vulgaris"}],
        "supportingInformation": [{"reference": "Observation/obs-crp"}],
        "dispenseRequest": {
            "validityPeriod": {"start": "2026-03-01", "end": "2026-08-31"},
            "numberOfRepeatsAllowed": 5,
            "quantity": {"value": 2, "unit": "syringe"},
            "expectedSupplyDuration": {"value": 28, "unit": "days", "system": UCUM, "code": "d"},
        },
    }
    for key, value in changes.items():
        if value is None:
            order.pop(key, None)
        else:
            order[key] = value
    return order


def parts(**changes: Any) -> RequestParts:
    base = RequestParts(
        task_id="task-9",
        claim_id="claim-1",
        trace_number="TRN-000123",
        bundle_id="sub-000123",
        created="2026-03-02T10:30:00-05:00",
        base_url=BASE_URL + "/",
        medication_request=medication_request(),
        patient=patient(),
        coverage=coverage(),
        insurer=payer(),
        provider=role(),
        medication=None,
        supporting=(quantiferon(), crp()),
        priority="routine",
        related_claim_id=None,
        extras=(practitioner(), clinic(), crp(), payer("unused-org")),
    )
    return dataclasses.replace(base, **changes)


def key(resource: JSON) -> str:
    return f"{resource['resourceType']}/{resource['id']}"


def entry_keys(bundle: JSON) -> list[str]:
    return [key(e["resource"]) for e in bundle["entry"]]


def errors(resource: JSON) -> list[str]:
    return [i.diagnostics for i in PROFILES.validate(resource) if i.is_error]


def extension(element: JSON, url: str) -> Any:
    (found,) = [e for e in element.get("extension", []) if e["url"] == url]
    return found


# ------------------------------------------------------------------------------------------ the happy path


def test_bundle_claim_and_entries_pass_the_profiles() -> None:
    bundle = build_request_bundle(parts())
    assert bundle["meta"]["profile"] == [PAS_REQUEST_BUNDLE_PROFILE]
    assert bundle["entry"][0]["resource"]["meta"]["profile"] == [PAS_CLAIM_PROFILE]
    assert errors(bundle) == []
    for entry in bundle["entry"]:  # the Claim by its declared profile, the rest by the enforced ones
        assert errors(entry["resource"]) == [], key(entry["resource"])
    assert check_request_bundle(bundle) == []


def test_the_profiles_are_applied_not_unknown() -> None:
    bundle = build_request_bundle(parts())
    issues = PROFILES.validate(bundle) + PROFILES.validate(bundle["entry"][0]["resource"])
    assert not [i for i in issues if i.code == "not-supported"]
    assert PROFILES.profiles_for("Claim") == [PAS_CLAIM_PROFILE]
    assert PROFILES.profiles_for("Bundle") == [PAS_REQUEST_BUNDLE_PROFILE]


def test_built_resources_are_structurally_valid_r4b() -> None:
    bundle = build_request_bundle(parts(related_claim_id="claim-0"))
    module = importlib.import_module("fhir.resources.R4B.bundle")
    module.Bundle.model_validate(copy.deepcopy(bundle))


def test_every_referenced_resource_appears_exactly_once_and_nothing_else() -> None:
    bundle = build_request_bundle(parts())
    counts = Counter(entry_keys(bundle))
    assert set(counts.values()) == {1}
    # obs-crp is supporting info, referenced by the MedicationRequest and supplied twice: one entry.
    assert set(counts) == {
        "Claim/claim-1",
        "MedicationRequest/mr-55",
        "Patient/pat-100",
        "Coverage/cov-1",
        "Organization/payer-1",
        "PractitionerRole/role-7",
        "Practitioner/dr-7",
        "Organization/clinic-3",
        "Observation/obs-tb",
        "Observation/obs-crp",
    }
    assert "Organization/unused-org" not in counts  # supplied, referenced by nothing: left out
    present = {tuple(k.split("/")) for k in counts}
    for entry in bundle["entry"]:
        assert referenced(entry["resource"], BASE_URL) - {("Claim", "claim-1")} <= present


def test_claim_is_first_and_urls_and_identifiers_are_the_gateways() -> None:
    bundle = build_request_bundle(parts())
    claim = bundle["entry"][0]["resource"]
    assert claim["resourceType"] == "Claim" and claim["use"] == "preauthorization"
    assert all(e["fullUrl"] == f"{BASE_URL}/{key(e['resource'])}" for e in bundle["entry"])
    assert bundle["type"] == "collection"
    assert bundle["identifier"] == {
        "system": "https://specialty-gateway.org/fhir/pa-submission",
        "value": "sub-000123",
    }
    assert bundle["timestamp"] == "2026-03-02T10:30:00-05:00" == claim["created"]
    assert claim["identifier"] == [{"system": TRACE_SYSTEM, "value": "TRN-000123"}]
    assert entry_keys(bundle)[1:4] == ["MedicationRequest/mr-55", "Patient/pat-100", "Coverage/cov-1"]


def test_claim_content_for_a_routine_initial_request() -> None:
    claim = build_claim(parts())
    assert claim["status"] == "active"
    assert claim["type"]["coding"][0]["code"] == "professional"
    assert claim["patient"] == {"reference": "Patient/pat-100"}
    assert claim["insurer"] == {"reference": "Organization/payer-1"}
    assert claim["provider"] == {"reference": "PractitionerRole/role-7"}
    assert claim["priority"]["coding"] == [
        {"system": "http://terminology.hl7.org/CodeSystem/processpriority", "code": "normal"}
    ]
    assert extension(claim, LEVEL_OF_SERVICE)["valueCodeableConcept"]["coding"][0]["code"] == "E"
    assert claim["insurance"] == [{"sequence": 1, "focal": True, "coverage": {"reference": "Coverage/cov-1"}}]
    assert [d["diagnosisCodeableConcept"]["coding"][0]["code"] for d in claim["diagnosis"]] == ["L40.0"]
    assert [s["valueReference"]["reference"] for s in claim["supportingInfo"]] == [
        "Observation/obs-tb",
        "Observation/obs-crp",
    ]
    assert [s["sequence"] for s in claim["supportingInfo"]] == [1, 2]
    assert claim["supportingInfo"][0]["category"]["coding"][0]["code"] == "additionalInformation"
    assert "related" not in claim
    (item,) = claim["item"]
    assert extension(item, REQUESTED_SERVICE)["valueReference"] == {"reference": "MedicationRequest/mr-55"}
    certification = extension(item, CERTIFICATION_TYPE)["valueCodeableConcept"]["coding"][0]
    assert (certification["system"], certification["code"]) == (X12_1322, "I")
    assert item["productOrService"]["coding"] == [{"system": RXNORM, "code": "1148495"}]
    assert item["quantity"] == {"value": 2, "unit": "syringe"}
    assert item["servicedPeriod"] == {"start": "2026-03-01", "end": "2026-08-31"}
    assert item["diagnosisSequence"] == [1] and item["informationSequence"] == [1, 2]


def test_without_reason_dispense_or_supporting_those_parts_are_absent() -> None:
    order = medication_request(reasonCode=None, dispenseRequest=None, supportingInformation=None)
    claim = build_claim(parts(medication_request=order, supporting=()))
    assert "diagnosis" not in claim and "supportingInfo" not in claim
    assert not {"quantity", "servicedPeriod", "diagnosisSequence", "informationSequence"} & set(
        claim["item"][0]
    )
    assert errors(claim) == []


def test_building_leaves_the_parts_alone_and_copies_them() -> None:
    request = parts()
    before = copy.deepcopy(dataclasses.asdict(request))
    bundle = build_request_bundle(request)
    assert dataclasses.asdict(request) == before
    bundle["entry"][1]["resource"]["status"] = "stopped"
    assert request.medication_request["status"] == "active"


# ------------------------------------------------------------------------------------------ variants


@pytest.mark.parametrize("priority", ["urgent", "stat", "asap", "URGENT"])
def test_urgent_priority_is_stat_with_urgent_level_of_service(priority: str) -> None:
    claim = build_claim(parts(priority=priority))
    assert claim["priority"]["coding"][0]["code"] == "stat"
    level = extension(claim, LEVEL_OF_SERVICE)["valueCodeableConcept"]["coding"][0]
    assert (level["system"], level["code"]) == (X12_1338, "U")
    assert errors(claim) == []


def test_unknown_priority_is_refused() -> None:
    with pytest.raises(RequestError, match="priority"):
        build_claim(parts(priority="whenever"))


def test_appeal_points_at_the_original_claim_which_is_not_included() -> None:
    bundle = build_request_bundle(parts(related_claim_id="claim-0"))
    claim = bundle["entry"][0]["resource"]
    assert claim["related"] == [
        {
            "claim": {"reference": "Claim/claim-0"},
            "relationship": {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/ex-relatedclaimrelationship",
                        "code": "prior",
                    }
                ]
            },
        }
    ]
    assert "Claim/claim-0" not in entry_keys(bundle)
    assert errors(bundle) == [] and errors(claim) == [] and check_request_bundle(bundle) == []


def test_cancel_needs_the_original_claim() -> None:
    with pytest.raises(RequestError, match="related_claim_id is required"):
        build_claim(parts(certification_type="3"))
    claim = build_claim(parts(certification_type="3", related_claim_id="claim-0"))
    code = extension(claim["item"][0], CERTIFICATION_TYPE)["valueCodeableConcept"]["coding"][0]["code"]
    assert code == "3"
    assert errors(claim) == []


def test_unknown_certification_type_is_refused() -> None:
    with pytest.raises(RequestError, match="X12 1322"):
        build_claim(parts(certification_type="Z"))


def test_medication_reference_includes_the_medication() -> None:
    medication = {
        "resourceType": "Medication",
        "id": "med-1",
        "code": {"coding": [{"system": RXNORM, "code": "1602593"}], "text": "secukinumab 150 MG/ML"},
    }
    order = medication_request(
        medicationCodeableConcept=None, medicationReference={"reference": "Medication/med-1"}
    )
    bundle = build_request_bundle(parts(medication_request=order, medication=medication))
    assert entry_keys(bundle).count("Medication/med-1") == 1
    assert bundle["entry"][0]["resource"]["item"][0]["productOrService"] == medication["code"]
    assert errors(bundle) == [] and check_request_bundle(bundle) == []


def test_an_hl7_compound_order_is_requested_by_its_medications_code() -> None:
    # An order with RXC components references the Medication the HL7 adapter makes for it.
    translated = TRANSLATOR.translate(Message(compound_rde("PA-1", "MRN-PA")))
    produced = {p.resource["resourceType"]: p.resource for p in translated.resources}
    medication, request = produced["Medication"], produced["MedicationRequest"]
    order = medication_request(
        medicationCodeableConcept=None, medicationReference=request["medicationReference"]
    )
    bundle = build_request_bundle(parts(medication_request=order, medication=medication))
    assert bundle["entry"][0]["resource"]["item"][0]["productOrService"] == medication["code"]
    assert entry_keys(bundle).count(f"Medication/{medication['id']}") == 1
    assert errors(bundle) == [] and check_request_bundle(bundle) == []


def test_medication_reference_without_the_medication_is_refused() -> None:
    order = medication_request(
        medicationCodeableConcept=None, medicationReference={"reference": "Medication/med-1"}
    )
    with pytest.raises(RequestError, match="Medication/med-1"):
        build_request_bundle(parts(medication_request=order))


def test_contained_medication_gives_the_code_and_no_extra_entry() -> None:
    contained = {"resourceType": "Medication", "id": "m", "code": {"text": "ustekinumab 45 MG/0.5ML"}}
    order = medication_request(
        medicationCodeableConcept=None, medicationReference={"reference": "#m"}, contained=[contained]
    )
    bundle = build_request_bundle(parts(medication_request=order))
    assert bundle["entry"][0]["resource"]["item"][0]["productOrService"] == {
        "text": "ustekinumab 45 MG/0.5ML"
    }
    assert not [k for k in entry_keys(bundle) if k.startswith("Medication/")]
    dangling = {**order, "medicationReference": {"reference": "#other"}}
    with pytest.raises(RequestError, match="#other is not one of its contained resources"):
        build_claim(parts(medication_request=dangling))


def test_without_provider_the_requester_is_used_as_given() -> None:
    bundle = build_request_bundle(parts(provider=None, extras=(practitioner(), clinic(), role())))
    assert bundle["entry"][0]["resource"]["provider"] == {"reference": "PractitionerRole/role-7"}
    assert entry_keys(bundle).count("PractitionerRole/role-7") == 1


def test_without_provider_or_requester_there_is_no_request() -> None:
    order = medication_request(requester=None)
    with pytest.raises(RequestError, match="no requester: a PA request needs a provider"):
        build_claim(parts(medication_request=order, provider=None))


def test_requester_on_another_server_needs_an_explicit_provider() -> None:
    order = medication_request(requester={"reference": "https://elsewhere.example.com/fhir/Practitioner/x"})
    with pytest.raises(RequestError, match="supply the provider"):
        build_claim(parts(medication_request=order, provider=None))


# ------------------------------------------------------------------------------------------ incomplete parts


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        # the order's own insurance names a Coverage nobody loaded
        (
            {"medication_request": medication_request(insurance=[{"reference": "Coverage/cov-2"}])},
            "Coverage/cov-2",
        ),
        # the Coverage's payer is not the insurer that was supplied
        ({"insurer": payer("payer-9")}, "Organization/payer-1"),
        # the PractitionerRole's Practitioner was not loaded
        ({"extras": (clinic(),)}, "Practitioner/dr-7"),
        # a supporting Observation's performer was not loaded
        (
            {"supporting": ({**crp(), "performer": [{"reference": "Organization/lab-4"}]},), "extras": ()},
            "Organization/lab-4",
        ),
    ],
)
def test_a_reference_nobody_supplied_is_refused_by_name(changes: dict[str, Any], named: str) -> None:
    with pytest.raises(RequestError, match="incomplete") as caught:
        build_request_bundle(parts(**changes))
    assert named in str(caught.value)


def test_two_different_versions_of_one_resource_are_refused() -> None:
    changed = {**crp(), "valueQuantity": {"value": 3.1, "unit": "mg/L", "system": UCUM, "code": "mg/L"}}
    with pytest.raises(RequestError, match="Observation/obs-crp"):
        build_request_bundle(parts(extras=(practitioner(), clinic(), changed)))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"medication_request": medication_request(subject={"reference": "Patient/other"})}, "Patient/other"),
        ({"coverage": {**coverage(), "beneficiary": {"reference": "Patient/other"}}}, "Patient/other"),
        ({"insurer": {**patient(), "id": "payer-1"}}, "insurer must be Organization, not Patient"),
        ({"created": "2026-03-02"}, "created"),
        ({"claim_id": "claim 1"}, "claim_id"),
        ({"base_url": "gateway.example.org/fhir"}, "base_url"),
    ],
)
def test_inconsistent_parts_are_refused(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(RequestError, match=message):
        build_request_bundle(parts(**changes))


# ------------------------------------------------------------------------------------------ references


def test_referenced_reads_relative_and_local_absolute_references_only() -> None:
    resource = {
        "resourceType": "Observation",
        "id": "o",
        "subject": {"reference": "Patient/p1/_history/3"},
        "performer": [
            {"reference": f"{BASE_URL}/Organization/lab-1"},
            {"reference": "https://elsewhere.example.com/fhir/Organization/x"},
            {"reference": "#contained-1"},
            {"reference": "urn:uuid:7f2b1f0e-3c4d-4e5f-8a9b-0c1d2e3f4a5b"},
            {"display": "no reference"},
        ],
        "contained": [{"resourceType": "Practitioner", "id": "contained-1", "extension": []}],
        "hasMember": [{"reference": "Observation/o2"}, {"reference": "Observation/o2"}],
    }
    assert referenced(resource, BASE_URL) == {
        ("Patient", "p1"),
        ("Organization", "lab-1"),
        ("Observation", "o2"),
    }
    assert referenced(resource) == {("Patient", "p1"), ("Observation", "o2")}


# ------------------------------------------------------------------------------------------ profile rules


def mutated(change: str) -> JSON:
    """A built Bundle with one rule broken."""
    bundle = build_request_bundle(parts())
    entries = bundle["entry"]
    if change == "claim-not-first":
        entries.insert(1, entries.pop(0))
    elif change == "wrong-use":
        entries[0]["resource"]["use"] = "claim"
    elif change == "duplicate-entry":
        entries.append(copy.deepcopy(entries[2]))
    elif change == "same-resource-other-url":
        entries.append(
            {**copy.deepcopy(entries[2]), "fullUrl": "urn:uuid:2c0c3e6a-0c55-4c43-9d43-3f9a7c1b9e10"}
        )
    elif change == "same-url-other-resource":
        entries[3]["fullUrl"] = entries[2]["fullUrl"]
    elif change == "no-fullurl":
        del entries[4]["fullUrl"]
    elif change == "no-id":
        del entries[5]["resource"]["id"]
    elif change == "coverage-missing":
        bundle["entry"] = [e for e in entries if e["resource"]["resourceType"] != "Coverage"]
    elif change == "type-batch":
        bundle["type"] = "batch"
    elif change == "no-timestamp":
        del bundle["timestamp"]
    elif change == "claim-only":
        bundle["entry"] = entries[:1]
    return bundle


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ("claim-not-first", "prb-claim-first"),
        ("wrong-use", "prb-claim-first"),
        ("duplicate-entry", "prb-resource-once"),
        ("duplicate-entry", "prb-fullurl-unique"),
        ("same-resource-other-url", "prb-resource-once"),
        ("same-url-other-resource", "prb-fullurl-unique"),
        ("no-fullurl", "Bundle.entry[4].fullUrl: at least 1 required"),
        ("no-id", "prb-entry-id"),
        ("coverage-missing", "prb-claim-references"),
        ("type-batch", 'must be exactly "collection"'),
        ("no-timestamp", "Bundle.timestamp: at least 1 required"),
        ("claim-only", "Bundle.entry: at least 2 required"),
    ],
)
def test_bundle_profile_rules_can_fail(change: str, expected: str) -> None:
    found = errors(mutated(change))
    assert any(expected in d for d in found), found


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ("claim-not-first", "first entry must be a Claim"),
        ("wrong-use", "first entry must be a Claim"),
        ("duplicate-entry", "appears more than once"),
        ("same-resource-other-url", "appears more than once"),
        ("same-url-other-resource", f"fullUrl {BASE_URL}/Patient/pat-100 appears more than once"),
        ("no-fullurl", "has no fullUrl"),
        ("no-id", "has no id"),
        ("coverage-missing", "reference Coverage/cov-1 does not resolve"),
        ("type-batch", "collection"),
    ],
)
def test_check_request_bundle_reports_the_same_breaks(change: str, expected: str) -> None:
    problems = check_request_bundle(mutated(change))
    assert any(expected in p for p in problems), problems


def test_references_beyond_the_claim_are_checked_in_code_not_by_the_profile() -> None:
    bundle = build_request_bundle(parts())
    bundle["entry"] = [e for e in bundle["entry"] if key(e["resource"]) != "Practitioner/dr-7"]
    assert errors(bundle) == []  # the PractitionerRole's reference is outside what FHIRPath can list
    problems = check_request_bundle(bundle)
    assert any("Practitioner/dr-7 does not resolve" in p for p in problems), problems


def test_unreferenced_entries_and_foreign_fullurls_are_reported_in_code() -> None:
    bundle = build_request_bundle(parts())
    bundle["entry"].append(
        {"fullUrl": f"{BASE_URL}/Organization/unused-org", "resource": payer("unused-org")}
    )
    bundle["entry"][2]["fullUrl"] = f"{BASE_URL}/Patient/someone-else"
    problems = check_request_bundle(bundle)
    assert any("Organization/unused-org) is not referenced from the Claim" in p for p in problems), problems
    assert any("is not {base}/Patient/pat-100" in p for p in problems), problems


def claim_with(**changes: Any) -> JSON:
    claim = build_claim(parts())
    for name, value in changes.items():
        if value is None:
            claim.pop(name, None)
        else:
            claim[name] = value
    return claim


def item_without_requested_service() -> list[JSON]:
    item = copy.deepcopy(build_claim(parts())["item"][0])
    item["extension"] = [e for e in item["extension"] if e["url"] != REQUESTED_SERVICE]
    return [item]


def item_with_two_requested_services() -> list[JSON]:
    item = copy.deepcopy(build_claim(parts())["item"][0])
    item["extension"].append(
        {"url": REQUESTED_SERVICE, "valueReference": {"reference": "MedicationRequest/mr-56"}}
    )
    return [item]


def item_with_identifier_only() -> list[JSON]:
    item = copy.deepcopy(build_claim(parts())["item"][0])
    extension(item, REQUESTED_SERVICE)["valueReference"] = {"identifier": {"value": "rx-55"}}
    return [item]


def cancelling_item() -> list[JSON]:
    return copy.deepcopy(build_claim(parts(certification_type="3", related_claim_id="claim-0"))["item"])


COVERAGE_REF = {"reference": "Coverage/cov-1"}
SNOMED_PRIORITY = {"coding": [{"system": "http://snomed.info/sct", "code": "394848005"}]}


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"item": item_without_requested_service()}, "pcl-requested-service"),
        ({"item": item_with_two_requested_services()}, "pcl-requested-service"),
        ({"item": item_with_identifier_only()}, "pcl-requested-service"),
        ({"item": cancelling_item()}, "pcl-cancel-related"),
        ({"insurance": [{"sequence": 1, "focal": False, "coverage": COVERAGE_REF}]}, "pcl-one-focal"),
        (
            {"insurance": [{"sequence": n, "focal": True, "coverage": COVERAGE_REF} for n in (1, 2)]},
            "pcl-one-focal",
        ),
        ({"priority": SNOMED_PRIORITY}, "pcl-priority"),
        ({"priority": None}, "Claim.priority: at least 1 required"),
        ({"use": "claim"}, 'must be exactly "preauthorization"'),
        ({"status": "draft"}, 'must be exactly "active"'),
        ({"identifier": None}, "Claim.identifier: at least 1 required"),
        ({"provider": None}, "Claim.provider: at least 1 required"),
        ({"insurance": None}, "Claim.insurance: at least 1 required"),
        ({"item": None}, "Claim.item: at least 1 required"),
        ({"insurer": {"reference": "Patient/pat-100"}}, "allowed: Organization"),
        (
            {"provider": {"reference": "Patient/pat-100"}},
            "allowed: Organization, Practitioner, PractitionerRole",
        ),
    ],
)
def test_claim_profile_rules_can_fail(changes: dict[str, Any], expected: str) -> None:
    found = errors(claim_with(**changes))
    assert any(expected in d for d in found), found


def test_an_undeclared_claim_is_not_held_to_the_profile() -> None:
    claim = claim_with(item=item_without_requested_service(), meta=None)
    assert errors(claim) == []


def invariants() -> list[tuple[str, str, str]]:
    """(element path, key, expression) of the invariants of the two PAS profiles."""
    found = []
    for name in ("pas-claim", "pas-request-bundle"):
        sd = json.loads((PROFILES_DIR / f"StructureDefinition-{name}.json").read_text())
        for element in sd["differential"]["element"]:
            found += [(element["path"], c["key"], c["expression"]) for c in element.get("constraint", [])]
    return found


@pytest.mark.parametrize(("path", "key", "expression"), invariants(), ids=[k for _, k, _ in invariants()])
def test_invariants_are_answered_natively_on_built_requests(path: str, key: str, expression: str) -> None:
    """No fallback to fhirpathpy (40-250 us a call) for the Bundles and Claims the gateway builds."""
    program = compile_native(PARSE(expression), models["r4"])  # raises NotNative outside the subset
    rtype, name = path.split(".")  # every invariant sits one level down (see the profiles' descriptions)
    bundle = build_request_bundle(
        parts(supporting=(crp(),), related_claim_id="claim-0", certification_type="3")
    )
    resource = bundle if rtype == "Bundle" else bundle["entry"][0]["resource"]
    values = resource[name] if isinstance(resource[name], list) else [resource[name]]
    for value in values:
        context = typed_node(value, child_model_path(rtype, name))
        assert program(context, {"resource": resource, "rootResource": resource}) == [True]
