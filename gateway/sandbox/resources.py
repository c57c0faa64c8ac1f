"""The test data a sandbox run writes: one made-up patient and the gateway's own specialty resources.

Pure: builds dicts. Every resource carries the run's identifier (so every type can be searched back and
found again after cleanup) and the HL7 `HTEST` security label (test health data, v3 ActReason), and the
patient has an obviously made-up name: nothing here could be mistaken for a real person.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from gateway.adapters.hl7v2.er7 import Message
from gateway.adapters.hl7v2.translate import Translator
from gateway.mapping.files import load
from gateway.pa.tasks import new_task
from gateway.settings import PROJECT_ROOT

JSON = dict[str, Any]

RUN_SYSTEM = "https://specialty-gateway.org/fhir/sandbox-run"
TEST_TAG = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-ActReason",
    "code": "HTEST",
    "display": "test health data",
}
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
CLOZAPINE = "2626"
LOINC = "http://loinc.org"
ANC = "751-8"


@dataclass(frozen=True)
class Planned:
    """A resource to create, and the name the run's steps call it by."""

    label: str
    resource: JSON


def marked(resource: JSON, run: str, suffix: str) -> JSON:
    """The resource with the run's identifier and the test-data tag."""
    out = copy.deepcopy(resource)
    out.pop("id", None)
    out["meta"] = {"tag": [dict(TEST_TAG)]}  # any profile the builder set: meta is the server's to rewrite
    identifiers = [i for i in out.get("identifier") or [] if i.get("system") != RUN_SYSTEM]
    out["identifier"] = [{"system": RUN_SYSTEM, "value": f"{run}-{suffix}"}, *identifiers]
    return out


def patient(run: str) -> JSON:
    return marked(
        {
            "resourceType": "Patient",
            "active": True,
            "name": [{"use": "official", "family": "Sandboxtest", "given": ["Synthetic"]}],
            "gender": "unknown",
            "birthDate": "2000-01-01",
        },
        run,
        "patient",
    )


def clozapine_order(run: str, patient_ref: str, now: datetime) -> JSON:
    return marked(
        {
            "resourceType": "MedicationRequest",
            "status": "active",
            "intent": "order",
            "medicationCodeableConcept": {
                "coding": [{"system": RXNORM, "code": CLOZAPINE, "display": "clozapine"}],
                "text": "clozapine 100 mg oral tablet",
            },
            "subject": {"reference": patient_ref},
            "authoredOn": now.isoformat(timespec="seconds"),
            "dosageInstruction": [{"text": "Take one 100 mg tablet by mouth at bedtime"}],
            "dispenseRequest": {"numberOfRepeatsAllowed": 0, "quantity": {"value": 7, "unit": "tablet"}},
        },
        run,
        "order",
    )


def anc_oru(run: str, now: datetime) -> str:
    """An ORU^R01 from a made-up lab with a low ANC and the WBC beside it (what REMS monitoring reads)."""
    when = f"{now:%Y%m%d%H%M%S}+0000"
    return "\r".join(
        [
            f"MSH|^~\\&|SANDBOXLAB|SANDBOX|GATEWAY|SPECIALTY RX|{when}||ORU^R01^ORU_R01|SBX{run}|T|2.5.1",
            f"PID|1||SBX{run}^^^SANDBOX^MR||Sandboxtest^Synthetic||20000101|U",
            f"ORC|RE|SBX{run}^EHR|FSBX{run}^LAB",
            f"OBR|1|SBX{run}^EHR|FSBX{run}^LAB|57021-8^CBC W Auto Differential panel^LN|||{when}"
            f"|||||||||||||||{when}|||F",
            f"OBX|1|NM|{ANC}^Neutrophils^LN||1.2|10*3/uL^^UCUM|1.5-8.0|L|||F|||{when}",
            f"OBX|2|NM|6690-2^Leukocytes^LN||3.9|10*3/uL^^UCUM|4.0-11.0|L|||F|||{when}",
        ]
    )


def lab_observations(
    run: str, patient_ref: str, now: datetime, translator: Translator | None = None
) -> list[JSON]:
    """The ORU's Observations as the gateway's own translator makes them, pointed at the created patient.
    The order and specimen they were `basedOn` are not created in the sandbox, so those links go."""
    translator = translator or Translator(load(PROJECT_ROOT / "mappings"))
    translation = translator.translate(Message(anc_oru(run, now)))
    found = [p.resource for p in translation.resources if p.resource["resourceType"] == "Observation"]
    made = []
    for n, observation in enumerate(found, 1):
        for link in ("basedOn", "specimen", "derivedFrom", "hasMember", "performer"):
            observation.pop(link, None)
        observation["subject"] = {"reference": patient_ref}
        made.append(marked(observation, run, f"lab{n}"))
    return made


def pa_task(run: str, order_ref: str, patient_ref: str, now: datetime) -> JSON:
    """The gateway's PA Task (task-type prior-authorization, businessStatus pa-required) for the order."""
    order = {"id": order_ref.split("/", 1)[1], "subject": {"reference": patient_ref}}
    return marked(new_task("sandbox", medication_request=order, now=now), run, "pa")
