"""The Da Vinci PAS request Bundle for one specialty MedicationRequest, built from resources already loaded.

`build_claim` turns the order, the patient, the coverage, the payer and the prescriber into an R4 Claim
(`use=preauthorization`) that carries the order through the PAS `requestedService` extension;
`build_request_bundle` puts that Claim first in a `collection` Bundle followed by every resource the Claim
references, directly or through the resources it includes, each exactly once. A Bundle is complete or not
built at all: a reference to something the caller did not supply is a `RequestError`, and resources that
nothing references are left out. `check_request_bundle` states the same rules for a finished Bundle (the
parts the gateway's pas-request-bundle profile cannot express in FHIRPath), and `referenced` lists the
references of a resource so that the service knows what to load.

Pure: no I/O; the service (`gateway.service.priorauth.requests`) loads the resources and sends the Bundle.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final

from gateway.fhir.references import ID_RE, parse_reference
from gateway.types import JSON

GATEWAY_FHIR: Final = "https://specialty-gateway.org/fhir"
PAS_CLAIM_PROFILE: Final = f"{GATEWAY_FHIR}/StructureDefinition/pas-claim"
PAS_REQUEST_BUNDLE_PROFILE: Final = f"{GATEWAY_FHIR}/StructureDefinition/pas-request-bundle"
TRACE_SYSTEM: Final = f"{GATEWAY_FHIR}/pa-trace-number"
SUBMISSION_SYSTEM: Final = f"{GATEWAY_FHIR}/pa-submission"

PAS: Final = "http://hl7.org/fhir/us/davinci-pas"
REQUESTED_SERVICE_URL: Final = f"{PAS}/StructureDefinition/extension-requestedService"
CERTIFICATION_TYPE_URL: Final = f"{PAS}/StructureDefinition/extension-certificationType"
LEVEL_OF_SERVICE_URL: Final = f"{PAS}/StructureDefinition/extension-levelOfServiceCode"
PAS_TEMP_CODES: Final = f"{PAS}/CodeSystem/PASTempCodes"

CLAIM_TYPE_SYSTEM: Final = "http://terminology.hl7.org/CodeSystem/claim-type"
PRIORITY_SYSTEM: Final = "http://terminology.hl7.org/CodeSystem/processpriority"
RELATED_CLAIM_SYSTEM: Final = "http://terminology.hl7.org/CodeSystem/ex-relatedclaimrelationship"
CERTIFICATION_TYPE_SYSTEM: Final = "https://codesystem.x12.org/005010/1322"
LEVEL_OF_SERVICE_SYSTEM: Final = "https://codesystem.x12.org/005010/1338"

# X12 1322 certification types a 278 request uses. Everything but I (initial) acts on an earlier request,
# so it needs `related_claim_id`; cancelling a whole request is 3 (STANDARDS.md, "Prior authorization").
CERTIFICATION_TYPES: Final[dict[str, str]] = {
    "I": "Initial",
    "1": "Appeal - Immediate",
    "2": "Appeal - Standard",
    "3": "Cancel",
    "4": "Extension",
    "R": "Renewal",
    "S": "Revised",
}
# The requester's priority -> (processpriority code, X12 1338 level of service code and display).
_PRIORITIES: Final[dict[str, tuple[str, str, str]]] = {
    "routine": ("normal", "E", "Elective"),
    "urgent": ("stat", "U", "Urgent"),
    "stat": ("stat", "U", "Urgent"),
    "asap": ("stat", "U", "Urgent"),
}
_PROVIDER_TYPES: Final = frozenset({"Practitioner", "PractitionerRole", "Organization"})
# Bundle.timestamp is an instant: seconds and a zone are required, so `created` must carry them.
_INSTANT_RE: Final = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})$")

Key = tuple[str, str]  # (resource type, id)


class RequestError(ValueError):
    """The parts cannot make a complete, valid PAS request; the message says what is wrong or missing."""


@dataclass(frozen=True)
class RequestParts:
    """Everything one PAS request is built from, already loaded by the service.

    - `task_id`: the gateway's PA Task the request belongs to. Not sent (the payer has no use for it); it
      travels with the parts so the service can tie the built Bundle to its Task.
    - `trace_number`: the gateway's trace number, sent as Claim.identifier (system TRACE_SYSTEM).
    - `bundle_id`: sent as Bundle.identifier (system SUBMISSION_SYSTEM).
    - `created`: a FHIR instant (date, time with seconds, zone): Claim.created and Bundle.timestamp.
    - `base_url`: the gateway's FHIR base; fullUrls are `{base_url}/{type}/{id}`.
    - `provider`: the Claim's provider; None takes MedicationRequest.requester as it is.
    - `medication`: the Medication a `medicationReference` points at.
    - `supporting`: resources the requester chose as supporting information (one supportingInfo each).
    - `priority`: "routine", or "urgent" (also "stat", "asap").
    - `related_claim_id`: the earlier Claim an appeal, update or cancel refers to (Claim.related, "prior").
    - `certification_type`: X12 1322 code of the item: I initial (default), 3 cancel, 1/2 appeal, ...
    - `extras`: further resources the others reference (the Practitioner of a PractitionerRole, ...).
    """

    task_id: str
    claim_id: str
    trace_number: str
    bundle_id: str
    created: str
    base_url: str
    medication_request: JSON
    patient: JSON
    coverage: JSON
    insurer: JSON
    provider: JSON | None
    medication: JSON | None
    supporting: tuple[JSON, ...]
    priority: str
    related_claim_id: str | None
    certification_type: str = "I"
    # Medical-benefit drugs (what PAS carries; pharmacy-benefit ones go through NCPDP ePA) are billed on
    # professional claims; a payer may want pharmacy or institutional (its `claim_type` setting).
    claim_type: str = "professional"
    extras: tuple[JSON, ...] = ()


# ------------------------------------------------------------------------------------------ references


def _reference_strings(node: Any) -> Iterator[str]:
    """Every `reference` string anywhere in a JSON value, contained resources included (their references
    to other resources resolve on the same server as their container's)."""
    if isinstance(node, dict):
        reference = node.get("reference")
        if isinstance(reference, str):
            yield reference
        for value in node.values():
            if isinstance(value, dict | list):
                yield from _reference_strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from _reference_strings(item)


def _bases(base_url: str | None) -> tuple[str, ...]:
    return (base_url.rstrip("/"),) if base_url else ()


def referenced(resource: JSON, base_url: str | None = None) -> set[Key]:
    """The (type, id) pairs of the literal references to server resources inside `resource`: relative ones
    ("Patient/1", versioned or not), and absolute ones under `base_url`. References to contained resources
    ("#x"), urn:uuid: / urn:oid: and other servers' URLs are not references to resources to include."""
    bases = _bases(base_url)
    found: set[Key] = set()
    for reference in _reference_strings(resource):
        parsed = parse_reference(reference, bases)
        if parsed is not None:
            found.add(parsed)
    return found


def _claim_references(claim: JSON, base_url: str | None = None) -> set[Key]:
    """What the Claim needs in its Bundle: all its references but Claim.related.claim (the earlier
    request was sent in an earlier submission; the payer already holds it)."""
    return referenced({k: v for k, v in claim.items() if k != "related"}, base_url)


def _key_text(key: Key) -> str:
    return f"{key[0]}/{key[1]}"


def _full_url(base_url: str, key: Key) -> str:
    return f"{base_url}/{key[0]}/{key[1]}"


# ------------------------------------------------------------------------------------------ checking parts


def _key(resource: Any, role: str, types: frozenset[str] | None = None) -> Key:
    """(type, id) of a supplied resource; RequestError when it is not a resource of the expected type."""
    if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
        raise RequestError(f"{role} is not a FHIR resource")
    rtype = resource["resourceType"]
    if types is not None and rtype not in types:
        raise RequestError(f"{role} must be {' or '.join(sorted(types))}, not {rtype}")
    rid = resource.get("id")
    if not isinstance(rid, str) or not ID_RE.match(rid):
        raise RequestError(f"{role} ({rtype}) has no valid id")
    return rtype, rid


def _ref(resource: JSON) -> JSON:
    return {"reference": f"{resource['resourceType']}/{resource['id']}"}


def _base_url(parts: RequestParts) -> str:
    base = parts.base_url.rstrip("/")
    if not base.startswith(("http://", "https://")):
        raise RequestError(f"base_url must be an absolute http(s) URL, not {parts.base_url!r}")
    return base


def _priority(parts: RequestParts) -> tuple[str, str, str]:
    found = _PRIORITIES.get(parts.priority.strip().lower())
    if found is None:
        raise RequestError(f"priority must be routine, urgent, stat or asap, not {parts.priority!r}")
    return found


def _provider(parts: RequestParts, base: str) -> JSON:
    """The Claim's provider: the one supplied, else the MedicationRequest's requester as it is."""
    if parts.provider is not None:
        _key(parts.provider, "provider", _PROVIDER_TYPES)
        return _ref(parts.provider)
    requester = parts.medication_request.get("requester")
    if not isinstance(requester, dict):
        raise RequestError("the MedicationRequest has no requester: a PA request needs a provider")
    reference = requester.get("reference")
    if not isinstance(reference, str) or parse_reference(reference, (base,)) is None:
        raise RequestError(
            f"the MedicationRequest's requester ({reference or 'no literal reference'}) does not name a "
            "resource on this server: supply the provider"
        )
    return copy.deepcopy(requester)


def _medication_code(parts: RequestParts, base: str) -> JSON:
    """What is requested: medicationCodeableConcept, or the code of the Medication it references."""
    order = parts.medication_request
    concept = order.get("medicationCodeableConcept")
    if isinstance(concept, dict):
        return copy.deepcopy(concept)
    reference = order.get("medicationReference")
    target = reference.get("reference") if isinstance(reference, dict) else None
    if not isinstance(target, str):
        raise RequestError("the MedicationRequest names no medication (medication[x])")
    if target.startswith("#"):
        contained = order.get("contained")
        candidates = [c for c in contained if isinstance(c, dict)] if isinstance(contained, list) else []
        medication = next(
            (c for c in candidates if c.get("resourceType") == "Medication" and c.get("id") == target[1:]),
            None,
        )
        if medication is None:
            raise RequestError(
                f"the MedicationRequest's medicationReference {target} is not one of its contained resources"
            )
    else:
        key = parse_reference(target, (base,))
        medication = parts.medication
        if (
            medication is None
            or key is None
            or _key(medication, "medication", frozenset({"Medication"})) != key
        ):
            raise RequestError(f"the MedicationRequest's medicationReference {target} was not supplied")
    code = medication.get("code")
    if not isinstance(code, dict) or not (code.get("coding") or code.get("text")):
        raise RequestError(f"the Medication {target} has no code: nothing to request")
    return copy.deepcopy(code)


def _check_same_patient(parts: RequestParts, patient: Key, base: str) -> None:
    """The order and the coverage must be the patient's own: the Claim names one patient for both."""
    for role, resource, element in (
        ("MedicationRequest", parts.medication_request, "subject"),
        ("Coverage", parts.coverage, "beneficiary"),
    ):
        value = resource.get(element)
        reference = value.get("reference") if isinstance(value, dict) else None
        key = parse_reference(reference, (base,)) if isinstance(reference, str) else None
        if key is not None and key != patient:
            raise RequestError(
                f"the {role}'s {element} is {_key_text(key)}, not the patient {_key_text(patient)}"
            )


# ------------------------------------------------------------------------------------------ the Claim


def build_claim(parts: RequestParts) -> JSON:
    """The PAS Claim (pas-claim profile) for one MedicationRequest; RequestError if the parts cannot make
    one."""
    base = _base_url(parts)
    order = parts.medication_request
    _key(order, "medication_request", frozenset({"MedicationRequest"}))
    patient = _key(parts.patient, "patient", frozenset({"Patient"}))
    _key(parts.coverage, "coverage", frozenset({"Coverage"}))
    _key(parts.insurer, "insurer", frozenset({"Organization"}))
    if not ID_RE.match(parts.claim_id):
        raise RequestError(f"claim_id {parts.claim_id!r} is not a valid FHIR id")
    if not parts.trace_number.strip():
        raise RequestError("trace_number is empty")
    if not _INSTANT_RE.match(parts.created):
        raise RequestError(f"created must be a dateTime with seconds and a zone, not {parts.created!r}")
    certification = CERTIFICATION_TYPES.get(parts.certification_type)
    if certification is None:
        raise RequestError(f"certification_type {parts.certification_type!r} is not an X12 1322 code in use")
    if parts.related_claim_id is not None and not ID_RE.match(parts.related_claim_id):
        raise RequestError(f"related_claim_id {parts.related_claim_id!r} is not a valid FHIR id")
    if parts.certification_type != "I" and parts.related_claim_id is None:
        raise RequestError(
            f"certification type {parts.certification_type} ({certification}) acts on an earlier request:"
            " related_claim_id is required"
        )
    _check_same_patient(parts, patient, base)
    priority, level, level_display = _priority(parts)
    provider = _provider(parts, base)
    product = _medication_code(parts, base)

    claim: JSON = {
        "resourceType": "Claim",
        "id": parts.claim_id,
        "meta": {"profile": [PAS_CLAIM_PROFILE]},
        "extension": [
            {
                "url": LEVEL_OF_SERVICE_URL,
                "valueCodeableConcept": {
                    "coding": [{"system": LEVEL_OF_SERVICE_SYSTEM, "code": level, "display": level_display}]
                },
            }
        ],
        "identifier": [{"system": TRACE_SYSTEM, "value": parts.trace_number}],
        "status": "active",
        "type": {"coding": [{"system": CLAIM_TYPE_SYSTEM, "code": parts.claim_type}]},
        "use": "preauthorization",
        "patient": _ref(parts.patient),
        "created": parts.created,
        "insurer": _ref(parts.insurer),
        "provider": provider,
        "priority": {"coding": [{"system": PRIORITY_SYSTEM, "code": priority}]},
    }
    if parts.related_claim_id is not None:
        claim["related"] = [
            {
                "claim": {"reference": f"Claim/{parts.related_claim_id}"},
                "relationship": {"coding": [{"system": RELATED_CLAIM_SYSTEM, "code": "prior"}]},
            }
        ]

    supporting: dict[Key, JSON] = {}
    for index, resource in enumerate(parts.supporting):
        supporting.setdefault(_key(resource, f"supporting[{index}]"), resource)
    if supporting:
        claim["supportingInfo"] = [
            {
                "sequence": sequence,
                "category": {"coding": [{"system": PAS_TEMP_CODES, "code": "additionalInformation"}]},
                "valueReference": _ref(resource),
            }
            for sequence, resource in enumerate(supporting.values(), start=1)
        ]
    reasons = [r for r in order.get("reasonCode", []) if isinstance(r, dict)]
    if reasons:
        claim["diagnosis"] = [
            {"sequence": sequence, "diagnosisCodeableConcept": copy.deepcopy(reason)}
            for sequence, reason in enumerate(reasons, start=1)
        ]
    claim["insurance"] = [{"sequence": 1, "focal": True, "coverage": _ref(parts.coverage)}]

    item: JSON = {
        "extension": [
            {"url": REQUESTED_SERVICE_URL, "valueReference": _ref(order)},
            {
                "url": CERTIFICATION_TYPE_URL,
                "valueCodeableConcept": {
                    "coding": [
                        {
                            "system": CERTIFICATION_TYPE_SYSTEM,
                            "code": parts.certification_type,
                            "display": certification,
                        }
                    ]
                },
            },
        ],
        "sequence": 1,
    }
    if reasons:
        item["diagnosisSequence"] = list(range(1, len(reasons) + 1))
    if supporting:
        item["informationSequence"] = list(range(1, len(supporting) + 1))
    item["productOrService"] = product
    dispense = order.get("dispenseRequest")
    if isinstance(dispense, dict):
        if isinstance(dispense.get("validityPeriod"), dict):
            item["servicedPeriod"] = copy.deepcopy(dispense["validityPeriod"])
        if isinstance(dispense.get("quantity"), dict):
            item["quantity"] = copy.deepcopy(dispense["quantity"])
    claim["item"] = [item]
    return claim


# ------------------------------------------------------------------------------------------ the Bundle


def _supplied(parts: RequestParts) -> dict[Key, JSON]:
    """Every supplied resource by (type, id), in a stable order (order, drug, patient, coverage, payer,
    provider, supporting, extras); the same resource twice is one, two different versions an error."""
    candidates: list[tuple[str, JSON | None, frozenset[str] | None]] = [
        ("medication_request", parts.medication_request, frozenset({"MedicationRequest"})),
        ("medication", parts.medication, frozenset({"Medication"})),
        ("patient", parts.patient, frozenset({"Patient"})),
        ("coverage", parts.coverage, frozenset({"Coverage"})),
        ("insurer", parts.insurer, frozenset({"Organization"})),
        ("provider", parts.provider, _PROVIDER_TYPES),
        *((f"supporting[{i}]", r, None) for i, r in enumerate(parts.supporting)),
        *((f"extras[{i}]", r, None) for i, r in enumerate(parts.extras)),
    ]
    supplied: dict[Key, JSON] = {}
    for role, resource, types in candidates:
        if resource is None:
            continue
        key = _key(resource, role, types)
        if key in supplied and supplied[key] != resource:
            raise RequestError(f"two different versions of {_key_text(key)} were supplied ({role})")
        supplied.setdefault(key, resource)
    return supplied


def build_request_bundle(parts: RequestParts) -> JSON:
    """The PAS request Bundle (pas-request-bundle profile): the Claim first, then every resource it needs,
    each once. RequestError names what is missing when the parts do not make a complete Bundle."""
    claim = build_claim(parts)
    base = _base_url(parts)
    if not parts.bundle_id.strip():
        raise RequestError("bundle_id is empty")
    supplied = _supplied(parts)
    claim_key: Key = ("Claim", parts.claim_id)
    needed: set[Key] = set()
    missing: dict[Key, str] = {}  # what is missing -> the first resource that references it
    queue: list[tuple[Key, Key]] = [(key, claim_key) for key in sorted(_claim_references(claim, base))]
    while queue:
        key, by = queue.pop(0)
        if key == claim_key or key in needed or key in missing:
            continue
        resource = supplied.get(key)
        if resource is None:
            missing[key] = _key_text(by)
            continue
        needed.add(key)
        queue.extend((found, key) for found in sorted(referenced(resource, base)))
    if missing:
        listed = ", ".join(f"{_key_text(key)} (referenced by {by})" for key, by in missing.items())
        raise RequestError(f"the request Bundle would be incomplete; not supplied: {listed}")
    entries = [{"fullUrl": _full_url(base, claim_key), "resource": claim}]
    entries += [
        {"fullUrl": _full_url(base, key), "resource": copy.deepcopy(resource)}
        for key, resource in supplied.items()
        if key in needed
    ]
    bundle: JSON = {
        "resourceType": "Bundle",
        "meta": {"profile": [PAS_REQUEST_BUNDLE_PROFILE]},
        "identifier": {"system": SUBMISSION_SYSTEM, "value": parts.bundle_id},
        "type": "collection",
        "timestamp": parts.created,
        "entry": entries,
    }
    problems = check_request_bundle(bundle)
    if problems:  # the construction above rules these out; a complete Bundle or nothing
        raise RequestError("; ".join(problems))
    return bundle


def check_request_bundle(bundle: JSON) -> list[str]:
    """What makes `bundle` not a complete PAS request Bundle as the gateway sends them; [] when it is one.

    Beyond what the pas-request-bundle profile checks in FHIRPath: each fullUrl is `{base}/{type}/{id}` of
    its resource; every literal reference in every entry (contained resources included, the Claim's
    related.claim excepted) resolves to an entry, relative ones by type/id and absolute or urn: ones by
    fullUrl (absolute URLs outside the Bundle's bases are other servers' and not judged); and every entry
    is reachable from the Claim through such references.
    """
    problems: list[str] = []
    if bundle.get("resourceType") != "Bundle" or bundle.get("type") != "collection":
        problems.append("not a Bundle of type collection")
    raw = bundle.get("entry")
    entries = [e for e in raw if isinstance(e, dict)] if isinstance(raw, list) else []
    if not entries or (isinstance(raw, list) and len(entries) != len(raw)):
        return [*problems, "entry must be a non-empty list of objects"]
    first = entries[0].get("resource")
    if not (
        isinstance(first, dict)
        and first.get("resourceType") == "Claim"
        and first.get("use") == "preauthorization"
    ):
        problems.append("the first entry must be a Claim with use preauthorization")

    by_key: dict[Key, int] = {}
    by_url: dict[str, int] = {}
    bases: set[str] = set()
    for index, entry in enumerate(entries):
        resource, full_url = entry.get("resource"), entry.get("fullUrl")
        where = f"entry[{index}]"
        if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
            problems.append(f"{where} has no resource")
            continue
        rid = resource.get("id")
        if not isinstance(rid, str):
            problems.append(f"{where} ({resource['resourceType']}) has no id")
            continue
        key: Key = (resource["resourceType"], rid)
        if key in by_key:
            problems.append(f"{_key_text(key)} appears more than once (entry[{by_key[key]}] and {where})")
        else:
            by_key[key] = index
        if not isinstance(full_url, str):
            problems.append(f"{where} ({_key_text(key)}) has no fullUrl")
            continue
        if full_url in by_url:
            problems.append(
                f"fullUrl {full_url} appears more than once (entry[{by_url[full_url]}] and {where})"
            )
        else:
            by_url[full_url] = index
        suffix = "/" + _key_text(key)
        if not full_url.endswith(suffix) or "://" not in full_url:
            problems.append(f"{where}: fullUrl {full_url} is not {{base}}{suffix}")
        else:
            bases.add(full_url.removesuffix(suffix))

    # Resolve the references of each entry; collect the edges for the reachability check.
    edges: dict[int, set[int]] = {}
    for index, entry in enumerate(entries):
        resource = entry.get("resource")
        if not isinstance(resource, dict):
            continue
        if index == 0 and resource.get("resourceType") == "Claim":
            resource = {k: v for k, v in resource.items() if k != "related"}
        targets = edges.setdefault(index, set())
        for reference in _reference_strings(resource):
            if reference.startswith("#"):
                continue
            target = by_url.get(reference)
            if target is None:
                parsed = parse_reference(reference, tuple(sorted(bases)))
                target = by_key.get(parsed) if parsed is not None else None
                if target is None and parsed is None and not reference.startswith("urn:"):
                    continue  # another server's URL, or not a reference to a resource at all
            if target is None:
                problems.append(f"entry[{index}]: reference {reference} does not resolve to an entry")
            else:
                targets.add(target)
    reached, stack = {0}, [0]
    while stack:
        for target in edges.get(stack.pop(), ()):
            if target not in reached:
                reached.add(target)
                stack.append(target)
    for index in range(len(entries)):
        if index not in reached and index in edges:
            resource = entries[index]["resource"]
            what = f"{resource['resourceType']}/{resource.get('id')}"
            problems.append(f"entry[{index}] ({what}) is not referenced from the Claim")
    return problems
