"""Do two Patients' demographics describe the same person? And the review work item when they do not.

Identifiers decide which stored Patient a message is about; demographics guard that decision. A message
whose identifier matches a Patient but whose name, birth date or sex disagree beyond the tolerance below
must not overwrite that Patient, and a person has to look: that is an identity-review Task.

Tolerance (documented in mappings/README.md, "Identity"):
- birth date: the two must be equal at the precision both give (`1970` agrees with `1970-01-01`);
- sex: `male`, `female` and `other` must be equal; `unknown` or a missing value agrees with anything;
- name: agrees when the family names share a word or the given names do (an initial matches a name that
  starts with it), after case, accents and punctuation are set aside. A married name (new family name,
  same given name) is therefore not a conflict; a different person is. A side without a name agrees.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

from gateway.types import JSON

WORK_ITEM_TYPE = "https://specialty-gateway.org/fhir/CodeSystem/work-item-type"
IDENTITY_REVIEW = "identity-review"
MESSAGE_INPUT = "https://specialty-gateway.org/fhir/CodeSystem/work-item-input"
_WORD = re.compile(r"[a-z0-9]+")
_KNOWN_SEX = {"male", "female", "other"}


def _words(values: Iterable[str]) -> set[str]:
    words: set[str] = set()
    for value in values:
        plain = unicodedata.normalize("NFKD", value).encode("ascii", "ignore").decode().casefold()
        words.update(_WORD.findall(plain))
    return words


def _names(patient: JSON) -> tuple[set[str], set[str]]:
    family: list[str] = []
    given: list[str] = []
    for name in patient.get("name") or []:
        if isinstance(name.get("family"), str):
            family.append(name["family"])
        given += [g for g in name.get("given") or [] if isinstance(g, str)]
    return _words(family), _words(given)


def _given_agree(left: set[str], right: set[str]) -> bool:
    for a in left:
        for b in right:
            if a == b or (len(a) == 1 and b.startswith(a)) or (len(b) == 1 and a.startswith(b)):
                return True
    return False


def _names_agree(stored: JSON, incoming: JSON) -> bool:
    stored_family, stored_given = _names(stored)
    new_family, new_given = _names(incoming)
    if not (stored_family or stored_given) or not (new_family or new_given):
        return True
    return bool(stored_family & new_family) or _given_agree(stored_given, new_given)


def _dates_agree(stored: object, incoming: object) -> bool:
    if not isinstance(stored, str) or not isinstance(incoming, str):
        return True
    shared = min(len(stored), len(incoming))
    return stored[:shared] == incoming[:shared]


def disagreements(stored: JSON, incoming: JSON) -> list[str]:
    """The elements (`name`, `birthDate`, `gender`) on which two Patients disagree beyond the tolerance."""
    found: list[str] = []
    if not _names_agree(stored, incoming):
        found.append("name")
    if not _dates_agree(stored.get("birthDate"), incoming.get("birthDate")):
        found.append("birthDate")
    sexes = (stored.get("gender"), incoming.get("gender"))
    if all(s in _KNOWN_SEX for s in sexes) and sexes[0] != sexes[1]:
        found.append("gender")
    return found


def review_task(
    task_id: str,
    *,
    patient_id: str,
    elements: list[str],
    sender: str,
    message_ids: list[str],
    authored: str,
    outcome: str,
) -> JSON:
    """The identity-review work item: which Patient, which elements disagree, which messages, what was done.

    No demographic values are copied into the Task (they are in the messages it names); the description
    says what to check.
    """
    fields = ", ".join(elements)
    return {
        "resourceType": "Task",
        "id": task_id,
        "status": "requested",
        "intent": "order",
        "priority": "urgent",
        "code": {
            "coding": [
                {"system": WORK_ITEM_TYPE, "code": IDENTITY_REVIEW, "display": "Patient identity review"}
            ]
        },
        "description": (
            f"HL7 v2 messages from {sender} match this Patient by identifier, but its {fields} disagree"
            f" with theirs. {outcome} Check whether they are the same person; if not, the sender must"
            " correct its identifier, and `gateway identity repair` separates what was joined."
        ),
        "focus": {"reference": f"Patient/{patient_id}"},
        "for": {"reference": f"Patient/{patient_id}"},
        "authoredOn": authored,
        "lastModified": authored,
        "reasonCode": {"text": f"demographics disagree: {fields}"},
        "input": [message_input(message_id) for message_id in message_ids],
    }


def message_input(message_id: str) -> JSON:
    """A Task input naming an HL7 v2 message of the log by its id."""
    return {
        "type": {"coding": [{"system": MESSAGE_INPUT, "code": "hl7v2-message", "display": "HL7 v2 message"}]},
        "valueIdentifier": {"system": "urn:specialty-gateway:hl7v2-message", "value": message_id},
    }


def is_identity_review(task: JSON) -> bool:
    return any(
        c.get("system") == WORK_ITEM_TYPE and c.get("code") == IDENTITY_REVIEW
        for c in (task.get("code") or {}).get("coding", [])
    )
