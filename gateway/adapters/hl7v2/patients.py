"""Who a message is about: the Patient of a PID, its identifiers, and the key its id derives from.

Every identifier gets a system: the assigning authority its CX-4 names, else the sending site's configured
patient-identifier system, else one derived from the sending facility (MSH-4, else MSH-3). A bare value is
never an identifier: two senders' MRN T12345 are two patients unless they (or the site file) say the same
authority assigned it. Blank ids are no ids. PID-3 (every repetition), PID-2 and PID-4 may identify the
patient; national numbers (SSN in PID-19 or typed SS, a driver's licence) are kept as identifiers but never
used to match, because a shared or mistyped national number would join two people.
"""

from __future__ import annotations

from urllib.parse import quote

from gateway.adapters.hl7v2 import datatypes
from gateway.adapters.hl7v2.er7 import Segment, Value
from gateway.adapters.hl7v2.run import Mode, PatientIdentity, Run, TranslationError
from gateway.types import JSON

US_SSN = "http://hl7.org/fhir/sid/us-ssn"
FACILITY_AUTHORITY = "urn:hl7v2:facility:"
# v2-0203 identifier types that are never match keys (see the module docstring).
NOT_MATCHED = frozenset({"SS", "SB", "DL", "PPN"})
# Fields whose CX repetitions may identify the patient, in the order they are preferred (the first one
# holds the identifier list whose MR-typed repetition comes first): PID-3, 2, 4 and their MRG twins.
ID_FIELDS = {"PID": (3, 2, 4), "MRG": (1, 4, 2)}


def default_system(run: Run) -> str:
    """The system of identifiers sent without an assigning authority (site setting, else the facility)."""
    configured = run.identity.patient_identifier_system
    if configured:
        return configured
    return FACILITY_AUTHORITY + quote(run.facility or "unknown", safe="")


def _type_code(identifier: JSON) -> str:
    for coding in (identifier.get("type") or {}).get("coding", []):
        if coding.get("system") == datatypes.IDENTIFIER_TYPE:
            return str(coding.get("code", ""))
    return ""


def qualify(identifiers: list[JSON], system: str) -> list[JSON]:
    """Identifiers with a system each (SS-typed ones: the US SSN system), blank ones and repeats dropped."""
    kept: list[JSON] = []
    seen: set[tuple[str, str]] = set()
    for identifier in identifiers:
        value = str(identifier.get("value", "")).strip()
        if not value:
            continue
        if not identifier.get("system"):
            fallback = US_SSN if _type_code(identifier) in ("SS", "SB") else system
            identifier = {**identifier, "system": fallback}
        key = (identifier["system"], value)
        if key in seen:
            continue
        seen.add(key)
        kept.append({**identifier, "value": value})
    return kept


def _cx_key(cx: Value, run: Run, system: str) -> tuple[str, str] | None:
    value = cx.c(1).strip()
    if not value or cx.c(5).strip().upper() in NOT_MATCHED:
        return None
    return (datatypes.authority(cx.part(4), run.ctx) or system, value)


def match_keys(pid: Segment, run: Run) -> list[tuple[str, str]]:
    """The (system, value) pairs that may identify the patient: MR-typed PID-3 first, then the rest of
    PID-3, PID-2 and PID-4, each once (for an MRG: MRG-1, MRG-4, MRG-2, the prior patient's)."""
    system = default_system(run)
    preferred: list[tuple[str, str]] = []
    others: list[tuple[str, str]] = []
    fields = ID_FIELDS[pid.name]
    for number in fields:
        for cx in pid.repetitions(number):
            key = _cx_key(cx, run, system)
            if key is None:
                continue
            target = preferred if number == fields[0] and cx.c(5).strip().upper() == "MR" else others
            if key not in preferred and key not in others:
                target.append(key)
    return preferred + others


def patient(run: Run, pid: Segment, demographics: Mode) -> str:
    """The Patient of a PID (produced once per message); its id derives from its first match key."""
    if pid.index in run.patients:
        return run.patients[pid.index]
    keys = match_keys(pid, run)
    resource = run.apply("Patient", run.scope(pid))
    resource["identifier"] = qualify(resource.get("identifier", []), default_system(run))
    if not resource["identifier"]:
        del resource["identifier"]
    patient_id = run.stable("Patient", *keys[0]) if keys else _unidentified(run, pid)
    resource["id"] = patient_id
    run.add(resource, demographics, pid)
    run.patients[pid.index] = patient_id
    if keys:
        run.identities.append(PatientIdentity(patient_id, keys, demographics, pid))
    return patient_id


def _unidentified(run: Run, pid: Segment) -> str:
    """No usable identifier: refused (AE on PID-3), or held in quarantine when the site says so."""
    reason = "PID has no usable patient identifier (PID-3, PID-2 or PID-4 are empty or blank)"
    if run.identity.unidentified != "quarantine":
        raise TranslationError(reason, code="101", segment="PID", sequence=run.sequence(pid), field=3)
    run.quarantine = reason
    # A Patient of this message alone, never matched with anyone; the pipeline writes nothing of it.
    return run.stable("Patient", "unidentified", run.message.sender, run.message.control_id, str(pid.index))


def patient_of(run: Run, before: Segment) -> str:
    """The Patient of the last PID before `before`, as results and orders refer to it."""
    mode: Mode = "replace" if run.identity.demographics.get(run.adapter_kind, "fill") == "replace" else "fill"
    return patient(run, run.current_pid(before), mode)
