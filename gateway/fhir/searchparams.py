"""The resource types the gateway serves and the search parameters it indexes for each.

This table is the single place that says which types exist: the REST API, the CapabilityStatement,
validation and indexing all read it. Adding a type is a few lines here (and, if it is not in the
R4B models, nothing else). Paths are dotted element names from the resource root; `x[x]` stands for
every choice element (`effective[x]` matches effectiveDateTime and effectivePeriod).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class ParamType(StrEnum):
    TOKEN = "token"
    REFERENCE = "reference"
    DATE = "date"
    STRING = "string"


@dataclass(frozen=True, slots=True)
class SearchParam:
    name: str
    type: ParamType
    paths: tuple[str, ...]
    # Reference parameters: the target types this parameter may point at (empty: any type).
    targets: tuple[str, ...] = ()

    @property
    def definition(self) -> str:
        return f"http://hl7.org/fhir/SearchParameter/{self.name}"


T, R, D, S = ParamType.TOKEN, ParamType.REFERENCE, ParamType.DATE, ParamType.STRING


def _p(name: str, ptype: ParamType, *paths: str, targets: tuple[str, ...] = ()) -> SearchParam:
    return SearchParam(name, ptype, paths, targets)


def _patient_refs(path: str) -> list[SearchParam]:
    """`subject` (any target) and `patient` (Patient only) over the same element, as R4 defines them."""
    return [_p("subject", R, path), _p("patient", R, path, targets=("Patient",))]


_IDENTIFIER = _p("identifier", T, "identifier")

_PARAMS: dict[str, list[SearchParam]] = {
    "Patient": [
        _IDENTIFIER,
        _p("name", S, "name"),
        _p("family", S, "name.family"),
        _p("given", S, "name.given"),
        _p("birthdate", D, "birthDate"),
        _p("gender", T, "gender"),
        _p("active", T, "active"),
        _p("link", R, "link.other", targets=("Patient", "RelatedPerson")),
        _p("general-practitioner", R, "generalPractitioner"),
        _p("organization", R, "managingOrganization", targets=("Organization",)),
    ],
    "Observation": [
        _IDENTIFIER,
        _p("code", T, "code"),
        _p("category", T, "category"),
        _p("status", T, "status"),
        *_patient_refs("subject"),
        _p("date", D, "effective[x]"),
        _p("based-on", R, "basedOn"),
        _p("encounter", R, "encounter"),
        _p("performer", R, "performer"),
        _p("has-member", R, "hasMember"),
        _p("specimen", R, "specimen"),
        _p("value-concept", T, "valueCodeableConcept"),
    ],
    "DiagnosticReport": [
        _IDENTIFIER,
        _p("code", T, "code"),
        _p("category", T, "category"),
        _p("status", T, "status"),
        *_patient_refs("subject"),
        _p("date", D, "effective[x]"),
        _p("issued", D, "issued"),
        _p("result", R, "result", targets=("Observation",)),
        _p("based-on", R, "basedOn"),
        _p("encounter", R, "encounter"),
        _p("performer", R, "performer"),
        _p("specimen", R, "specimen"),
    ],
    "ServiceRequest": [
        _IDENTIFIER,
        _p("code", T, "code"),
        _p("category", T, "category"),
        _p("status", T, "status"),
        _p("intent", T, "intent"),
        _p("priority", T, "priority"),
        *_patient_refs("subject"),
        _p("authored", D, "authoredOn"),
        _p("occurrence", D, "occurrence[x]"),
        _p("requester", R, "requester"),
        _p("based-on", R, "basedOn"),
        _p("specimen", R, "specimen", targets=("Specimen",)),
        _p("requisition", T, "requisition"),
    ],
    "Specimen": [
        _IDENTIFIER,
        _p("accession", T, "accessionIdentifier"),
        _p("type", T, "type"),
        _p("status", T, "status"),
        *_patient_refs("subject"),
        _p("collected", D, "collection.collected[x]"),
        _p("bodysite", T, "collection.bodySite"),
    ],
    "MedicationRequest": [
        _IDENTIFIER,
        _p("code", T, "medicationCodeableConcept"),
        _p("medication", R, "medicationReference", targets=("Medication",)),
        _p("status", T, "status"),
        _p("intent", T, "intent"),
        _p("category", T, "category"),
        _p("priority", T, "priority"),
        *_patient_refs("subject"),
        _p("authoredon", D, "authoredOn"),
        _p("requester", R, "requester"),
        _p("encounter", R, "encounter"),
        _p("intended-dispenser", R, "dispenseRequest.performer", targets=("Organization",)),
    ],
    "MedicationDispense": [
        _IDENTIFIER,
        _p("code", T, "medicationCodeableConcept"),
        _p("medication", R, "medicationReference", targets=("Medication",)),
        _p("status", T, "status"),
        _p("type", T, "type"),
        *_patient_refs("subject"),
        _p("prescription", R, "authorizingPrescription", targets=("MedicationRequest",)),
        _p("performer", R, "performer.actor"),
        _p("whenhandedover", D, "whenHandedOver"),
        _p("whenprepared", D, "whenPrepared"),
    ],
    "Task": [
        _IDENTIFIER,
        _p("code", T, "code"),
        _p("status", T, "status"),
        _p("business-status", T, "businessStatus"),
        _p("intent", T, "intent"),
        _p("priority", T, "priority"),
        _p("focus", R, "focus"),
        *_patient_refs("for"),
        _p("owner", R, "owner"),
        _p("requester", R, "requester"),
        _p("part-of", R, "partOf", targets=("Task",)),
        _p("based-on", R, "basedOn"),
        _p("authored-on", D, "authoredOn"),
        _p("modified", D, "lastModified"),
        _p("period", D, "executionPeriod"),
        _p("group-identifier", T, "groupIdentifier"),
    ],
    "Coverage": [
        _IDENTIFIER,
        _p("status", T, "status"),
        _p("type", T, "type"),
        _p("beneficiary", R, "beneficiary", targets=("Patient",)),
        _p("patient", R, "beneficiary", targets=("Patient",)),
        _p("subscriber", R, "subscriber"),
        _p("policy-holder", R, "policyHolder"),
        _p("payor", R, "payor"),
    ],
    "Claim": [
        _IDENTIFIER,
        _p("status", T, "status"),
        _p("use", T, "use"),
        _p("priority", T, "priority"),
        _p("patient", R, "patient", targets=("Patient",)),
        _p("insurer", R, "insurer", targets=("Organization",)),
        _p("provider", R, "provider"),
        _p("enterer", R, "enterer"),
        _p("created", D, "created"),
    ],
    "ClaimResponse": [
        _IDENTIFIER,
        _p("status", T, "status"),
        _p("use", T, "use"),
        _p("outcome", T, "outcome"),
        _p("patient", R, "patient", targets=("Patient",)),
        _p("insurer", R, "insurer", targets=("Organization",)),
        _p("requestor", R, "requestor"),
        _p("request", R, "request", targets=("Claim",)),
        _p("created", D, "created"),
    ],
    "Provenance": [
        _p("target", R, "target"),
        _p("patient", R, "target", targets=("Patient",)),
        _p("agent", R, "agent.who"),
        _p("agent-type", T, "agent.type"),
        _p("entity", R, "entity.what"),
        _p("recorded", D, "recorded"),
    ],
    "Organization": [
        _IDENTIFIER,
        _p("name", S, "name", "alias"),
        _p("type", T, "type"),
        _p("active", T, "active"),
        _p("partof", R, "partOf", targets=("Organization",)),
    ],
    "Practitioner": [
        _IDENTIFIER,
        _p("name", S, "name"),
        _p("family", S, "name.family"),
        _p("given", S, "name.given"),
        _p("active", T, "active"),
    ],
    "PractitionerRole": [
        _IDENTIFIER,
        _p("practitioner", R, "practitioner", targets=("Practitioner",)),
        _p("organization", R, "organization", targets=("Organization",)),
        _p("role", T, "code"),
        _p("specialty", T, "specialty"),
        _p("active", T, "active"),
    ],
    "CareTeam": [
        _IDENTIFIER,
        _p("status", T, "status"),
        _p("category", T, "category"),
        *_patient_refs("subject"),
        _p("participant", R, "participant.member"),
        _p("date", D, "period"),
        _p("encounter", R, "encounter"),
    ],
    "CarePlan": [
        _IDENTIFIER,
        _p("status", T, "status"),
        _p("intent", T, "intent"),
        _p("category", T, "category"),
        *_patient_refs("subject"),
        _p("date", D, "period"),
        _p("activity-date", D, "activity.detail.scheduled[x]"),
        _p("activity-code", T, "activity.detail.code"),
        _p("performer", R, "activity.detail.performer"),
        _p("based-on", R, "basedOn", targets=("CarePlan",)),
        _p("part-of", R, "partOf", targets=("CarePlan",)),
        _p("care-team", R, "careTeam", targets=("CareTeam",)),
        _p("encounter", R, "encounter"),
    ],
    "Communication": [
        _IDENTIFIER,
        _p("status", T, "status"),
        _p("category", T, "category"),
        _p("medium", T, "medium"),
        *_patient_refs("subject"),
        _p("sender", R, "sender"),
        _p("recipient", R, "recipient"),
        _p("based-on", R, "basedOn"),
        _p("part-of", R, "partOf"),
        _p("encounter", R, "encounter"),
        _p("sent", D, "sent"),
        _p("received", D, "received"),
    ],
    # Patient lists for Bulk Data's `Group/{id}/$export` (member.entity: the patients).
    "Group": [
        _IDENTIFIER,
        _p("member", R, "member.entity"),
        _p("type", T, "type"),
        _p("actual", T, "actual"),
        _p("code", T, "code"),
    ],
    "Medication": [
        _IDENTIFIER,
        _p("code", T, "code"),
        _p("status", T, "status"),
        _p("form", T, "form"),
    ],
    "Subscription": [
        _p("status", T, "status"),
        _p("type", T, "channel.type"),
        _p("url", T, "channel.endpoint"),
        _p("criteria", S, "criteria"),
        _p("payload", T, "channel.payload"),
    ],
}

SEARCH_PARAMS: dict[str, dict[str, SearchParam]] = {
    rtype: {p.name: p for p in params} for rtype, params in _PARAMS.items()
}

# The types the REST API serves, in CapabilityStatement order.
RESOURCE_TYPES: tuple[str, ...] = tuple(sorted(SEARCH_PARAMS))

# Parameters every type understands, handled by the query layer rather than the index tables.
COMMON_PARAMS = {"_id": ParamType.TOKEN, "_lastUpdated": ParamType.DATE}


def is_supported(resource_type: str) -> bool:
    return resource_type in SEARCH_PARAMS


def params_for(resource_type: str) -> dict[str, SearchParam]:
    return SEARCH_PARAMS[resource_type]


def reference_params() -> list[tuple[str, SearchParam]]:
    """Every (type, parameter) pair usable in _include and _revinclude."""
    return [(rtype, p) for rtype, params in SEARCH_PARAMS.items() for p in params.values() if p.type is R]
