"""Filing a message under the right Patient: identifiers decide, demographics guard the decision.

For each Patient a translated message carries (its PID), in the message's own transaction:
1. the Patient whose id derives from the message's first match key, if stored; else the one stored Patient
   carrying any of its match keys (system and value, exactly: a bare value matches nothing);
2. when identifiers point at different stored Patients, or the matched Patient's name, birth date or sex
   disagree with the message's beyond the tolerance (gateway.fhir.demographics), the stored Patient is
   not overwritten: an identity-review Task is opened (one per Patient, sender and conflicting identity;
   later messages are added to it) and the site's policy decides: `refuse` (AE, nothing filed) or
   `accept` (filed under the matched Patient, its demographics untouched, AA with a warning).
A source that may replace demographics (ADT by default) may correct a single element (a mistyped birth
date); two or more disagreeing elements are a conflict whoever sends them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.adapters.hl7v2.ack import AckError
from gateway.adapters.hl7v2.identity import stable_id
from gateway.adapters.hl7v2.run import PatientIdentity, Translation
from gateway.fhir import dates, jsonio
from gateway.fhir.demographics import disagreements, message_input, review_task
from gateway.fhir.references import iter_references
from gateway.store.resources import Stored
from gateway.types import JSON

# Where the element that disagrees sits in PID, for the ERR segment.
_PID_FIELDS = {"identifier": 3, "name": 5, "birthDate": 7, "gender": 8}
_CLOSED = ("completed", "cancelled", "rejected", "failed")


@dataclass
class IdentityOutcome:
    """What identity checking decided for one message."""

    refused: bool = False
    errors: list[AckError] = field(default_factory=list)  # AE: why it was not filed
    warnings: list[AckError] = field(default_factory=list)  # AA: what the sender should know
    problems: list[str] = field(default_factory=list)  # for the message log
    notes: list[JSON] = field(default_factory=list)  # machine-readable, for the message log
    tasks: list[JSON] = field(default_factory=list)  # identity-review Tasks to write
    keep: set[str] = field(default_factory=set)  # Patient ids whose stored demographics stay as they are


def _incoming(translation: Translation, patient_id: str) -> JSON:
    for produced in translation.resources:
        resource = produced.resource
        if resource["resourceType"] == "Patient" and resource["id"] == patient_id:
            return resource
    return {}


def adopt(translation: Translation, old_id: str, new_id: str) -> None:
    """File what the message says about `old_id` (the id its identifiers derive) under `new_id`."""
    old, new = f"Patient/{old_id}", f"Patient/{new_id}"
    for produced in translation.resources:
        resource = produced.resource
        if resource["resourceType"] == "Patient" and resource["id"] == old_id:
            resource["id"] = new_id
        for reference in iter_references(resource):
            if reference["reference"] == old:
                reference["reference"] = new
    for identity in translation.patients:
        if identity.patient_id == old_id:
            identity.patient_id = new_id
    if translation.merge is not None:
        prior, survivor = translation.merge
        translation.merge = (prior, new_id if survivor == old_id else survivor)


def rename(translation: Translation, resource_type: str, old_id: str, new_id: str) -> None:
    """File the message's `resource_type`/`old_id` under `new_id`: its id and every reference to it."""
    old, new = f"{resource_type}/{old_id}", f"{resource_type}/{new_id}"
    for produced in translation.resources:
        resource = produced.resource
        if resource["resourceType"] == resource_type and resource["id"] == old_id:
            resource["id"] = new_id
        for reference in iter_references(resource):
            if reference["reference"] == old:
                reference["reference"] = new


def _identity_digest(patient: JSON) -> str:
    """Which identity a message claims (its name, birth date, sex), as a digest: no PHI in ids."""
    claimed = [patient.get("name"), patient.get("birthDate"), patient.get("gender")]
    return hashlib.sha256(orjson.dumps(claimed, option=orjson.OPT_SORT_KEYS)).hexdigest()[:24]


class Matcher:
    """Identity checks for the messages of one batch; `load` fetches stored resources by key."""

    def __init__(
        self,
        currents: dict[tuple[str, str], Stored],
        known: dict[tuple[str, str], list[str]],
        load: Callable[[tuple[str, str]], Awaitable[Stored | None]],
        now_us: int,
    ) -> None:
        self.currents = currents
        self.known = known
        self.load = load
        self.now_us = now_us

    def _live(self, patient_id: str) -> JSON | None:
        stored = self.currents.get(("Patient", patient_id))
        if stored is None or stored.deleted or stored.content is None:
            return None
        content: JSON = orjson.loads(stored.content)
        return content

    async def check(
        self, translation: Translation, *, sender: str, log_id: str, sequence: Callable[[Any], int]
    ) -> IdentityOutcome:
        outcome = IdentityOutcome()
        for identity in translation.patients:
            await self._check_one(translation, identity, outcome, sender, log_id, sequence)
        return outcome

    async def _check_one(
        self,
        translation: Translation,
        identity: PatientIdentity,
        outcome: IdentityOutcome,
        sender: str,
        log_id: str,
        sequence: Callable[[Any], int],
    ) -> None:
        candidate = identity.patient_id
        found: list[str] = []
        for key in identity.match_keys:
            found += [pid for pid in self.known.get(key, []) if pid not in found]
        stored = self._live(candidate)
        matched = candidate if stored is not None else (found[0] if found else None)
        if matched is None:
            return  # a patient the gateway has not seen: created as the message says
        if matched != candidate:
            adopt(translation, candidate, matched)
            stored = self._live(matched)
        if stored is None:
            return
        others = [pid for pid in found if pid != matched]
        incoming = _incoming(translation, matched)
        elements = (["identifier"] if others else []) + disagreements(stored, incoming)
        if not elements:
            return
        if identity.demographics == "replace" and elements != ["identifier"] and len(elements) == 1:
            outcome.problems.append(
                f"Patient/{matched}: {elements[0]} corrected by this message (its sender may replace"
                " demographics)"
            )
            return
        await self._conflict(translation, identity, matched, elements, incoming, outcome, sender, log_id)
        where = _PID_FIELDS[elements[0]]
        refused = translation.identity.on_conflict != "accept"
        text = (
            f"Patient identity conflict: the PID matches Patient/{matched} by identifier, but"
            f" {', '.join(elements)} disagree; "
            + ("not filed, held for identity review" if refused else "filed, the Patient left unchanged")
        )
        error = AckError("207", text, "E" if refused else "W", "PID", sequence(identity.segment), where)
        (outcome.errors if refused else outcome.warnings).append(error)
        outcome.refused = outcome.refused or refused
        outcome.keep.add(matched)

    async def _conflict(
        self,
        translation: Translation,
        identity: PatientIdentity,
        patient_id: str,
        elements: list[str],
        incoming: JSON,
        outcome: IdentityOutcome,
        sender: str,
        log_id: str,
    ) -> None:
        refused = translation.identity.on_conflict != "accept"
        said = (
            "The messages were refused (AE) and nothing of them was filed."
            if refused
            else "The messages were filed under this Patient; its demographics were left as they were."
        )
        task_id = stable_id("Task", "identity-review", patient_id, sender, _identity_digest(incoming))
        now = dates.format_instant(self.now_us)
        key = ("Task", task_id)
        if key not in self.currents:
            stored = await self.load(key)
            if stored is not None:
                self.currents[key] = stored
        current = self.currents.get(key)
        if current is not None and not current.deleted and current.content is not None:
            task: JSON = jsonio.loads(current.content)
            inputs = task.setdefault("input", [])
            if message_input(log_id) not in inputs:
                inputs.append(message_input(log_id))
            if task.get("status") in _CLOSED:
                task["status"] = "requested"  # the same conflict came back: it needs a person again
            task["lastModified"] = now
        else:
            task = review_task(
                task_id,
                patient_id=patient_id,
                elements=elements,
                sender=sender,
                message_ids=[log_id],
                authored=now,
                outcome=said,
            )
        outcome.tasks.append(task)
        outcome.notes.append(
            {
                "kind": "identity-conflict",
                "patient": f"Patient/{patient_id}",
                "elements": elements,
                "task": f"Task/{task_id}",
                "outcome": "refused" if refused else "accepted",
            }
        )
        outcome.problems.append(
            f"identity conflict with Patient/{patient_id} ({', '.join(elements)}): Task/{task_id} opened;"
            + (" message refused" if refused else " filed without changing the Patient")
        )


def replace_patient(stored: JSON, incoming: JSON) -> JSON:
    """A Patient as an authoritative source (ADT) sends it, keeping what only the store knows: identifiers
    other sources added, and merge links (A40)."""
    merged = dict(incoming)
    known = {(i.get("system"), i.get("value")) for i in incoming.get("identifier", [])}
    extra = [i for i in stored.get("identifier", []) if (i.get("system"), i.get("value")) not in known]
    if extra:
        merged["identifier"] = [*incoming.get("identifier", []), *extra]
    links = stored.get("link")
    if links and "link" not in incoming:
        merged["link"] = links
    if stored.get("active") is False and "active" not in incoming:
        merged["active"] = False  # merged away: a late ADT for the prior patient does not revive it
    return merged
