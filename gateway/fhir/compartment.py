"""The Patient compartment as far as the gateway serves it: what `Patient/{id}/$everything` returns.

R4's CompartmentDefinition `patient` (https://hl7.org/fhir/R4/compartmentdefinition-patient.html) lists,
per resource type, the search parameters that make a resource part of a Patient's compartment. This
table keeps the ones for the types the gateway serves (`searchparams.py`), restricted to the parameters
it indexes, so that membership is one lookup in `sp_reference` per type. What R4 lists but the gateway
does not index, and what it adds:

- `Claim.payee`, `ServiceRequest.performer`, `MedicationDispense.receiver`: not indexed, not followed;
- `Task`: R4 leaves Task out of the compartment; the gateway's PA, alert and identity-review Tasks name
  their Patient in `Task.for`, so Task is included by `patient` (`Task.for` pointing at the Patient);
- `Provenance`: by `patient` (a `target` that is the Patient), as R4 defines it;
- `Patient`: the Patient itself, and Patients whose `link` points at it (R4: `link`);
- `CareTeam`: by `patient` (subject) and `participant`, as R4 defines it (the pharmacist assignment);
- `Communication`: by `subject`, `sender` and `recipient`, as R4 defines it (pharmacist interventions);
- `CarePlan`: by `subject` and `performer` (activity.detail.performer), as R4 defines it (the monitoring
  calendar);
- types R4 lists that the gateway does not serve (Encounter, Condition, AllergyIntolerance, ...) cannot
  be stored, so they never appear.

`REFERENCED_TYPES` are the types the specification names as "resources referenced by" compartment
resources (Medication, Practitioner, Organization; Location is not served; PractitionerRole is added,
as it is how prescribers are referenced too).
"""

from __future__ import annotations

from typing import Any

from gateway.fhir.extract import extract
from gateway.fhir.searchparams import SEARCH_PARAMS, ParamType

# type -> the reference parameters (indexed, pointing at a Patient) that put a resource in the compartment
PATIENT_COMPARTMENT: dict[str, tuple[str, ...]] = {
    "CarePlan": ("subject", "performer"),
    "CareTeam": ("patient", "participant"),
    "Claim": ("patient",),
    "ClaimResponse": ("patient",),
    "Communication": ("subject", "sender", "recipient"),
    "Coverage": ("policy-holder", "subscriber", "beneficiary", "payor"),
    "DiagnosticReport": ("subject",),
    "MedicationDispense": ("subject",),
    "MedicationRequest": ("subject",),
    "Observation": ("subject", "performer"),
    "Provenance": ("patient",),
    "ServiceRequest": ("subject",),
    "Specimen": ("subject",),
    "Task": ("patient",),
}
PATIENT_LINK = "link"  # Patient.link.other: another Patient record of the same person

REFERENCED_TYPES: tuple[str, ...] = ("Medication", "Organization", "Practitioner", "PractitionerRole")


def check_table() -> None:
    """Every parameter named here is an indexed reference parameter of its type (a unit test runs it)."""
    for rtype, names in {**PATIENT_COMPARTMENT, "Patient": (PATIENT_LINK,)}.items():
        for name in names:
            param = SEARCH_PARAMS[rtype][name]
            assert param.type is ParamType.REFERENCE, (rtype, name)
            assert not param.targets or "Patient" in param.targets, (rtype, name)
    for rtype in REFERENCED_TYPES:
        assert rtype in SEARCH_PARAMS, rtype


def in_compartment(resource_type: str) -> bool:
    """Whether resources of this type belong to Patients' compartments (the Patient type included)."""
    return resource_type == "Patient" or resource_type in PATIENT_COMPARTMENT


def compartment_patients(resource: dict[str, Any], local_bases: tuple[str, ...] = ()) -> set[str]:
    """The ids of the Patients whose compartment holds this resource, read exactly as the search index
    reads it (the same `extract`), so a read and a search decide alike: a Patient is in its own; any
    other type through its compartment parameters that point at a Patient. Empty for a type outside the
    compartment, or a resource that names no Patient."""
    resource_type = resource.get("resourceType")
    if resource_type == "Patient":
        rid = resource.get("id")
        return {rid} if isinstance(rid, str) else set()
    params = PATIENT_COMPARTMENT.get(str(resource_type))
    if not params:
        return set()
    rows = extract(resource, local_bases)
    return {rid for param, rtype, rid in rows.references if rtype == "Patient" and param in params}
