"""Finding and repairing Patients that earlier releases joined wrongly (`gateway identity ...`).

Before identifiers always carried a system, a PID-3 without an assigning authority became a bare value,
and any stored Patient with that value took the message: two labs' MRN T12345 became one Patient, and an
ADT from the second lab overwrote the first person's demographics. The audit finds such Patients from the
message log (which sender's messages wrote which resources) and from the Patient's own history; the repair
rebuilds each sender's Patient from that sender's logged messages under today's rules and moves each
resource to the Patient of the sender that last wrote it. Nothing is deleted and existing Provenance is
untouched: the repair writes new versions and one Provenance of its own that names what it changed.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson
from sqlalchemy import literal, select
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.adapters.hl7v2.er7 import ER7Error, Message
from gateway.adapters.hl7v2.translate import TranslationError, Translator
from gateway.fhir import dates, jsonio
from gateway.fhir.demographics import disagreements
from gateway.fhir.references import iter_references
from gateway.service.access.context import RequestContext
from gateway.service.fhirapi.interactions import FhirService
from gateway.service.hl7.patient_matching import replace_patient
from gateway.service.hl7.patient_merge import merged_versions
from gateway.service.hl7.pipeline import fill
from gateway.store import resources as store
from gateway.store.resources import PendingVersion, Stored
from gateway.store.tables import hl7_message, resource, resource_version, sp_token
from gateway.types import JSON

REPAIR_AGENT = "gateway identity repair"


@dataclass
class Finding:
    """One Patient the audit doubts, and why (ids, senders and element names only: no PHI)."""

    patient: str
    kinds: list[str] = field(default_factory=list)  # joined-across-senders | bare-identifier | ...
    senders: list[str] = field(default_factory=list)
    elements: list[str] = field(default_factory=list)
    versions: list[int] = field(
        default_factory=list
    )  # versions whose demographics disagree with the one before

    def as_json(self) -> JSON:
        return {
            "patient": f"Patient/{self.patient}",
            "kinds": self.kinds,
            "senders": self.senders,
            "elements": self.elements,
            "versions": self.versions,
        }


@dataclass
class _Logged:
    id: str
    sender: str
    raw: str
    received_us: int
    resources: list[tuple[str, str]]  # (type, id) it wrote


def _refs(text: str) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    for reference in orjson.loads(text):
        parts = str(reference).split("/")
        if len(parts) >= 2:
            found.append((parts[0], parts[1]))
    return found


async def _logged(conn: AsyncConnection, patient: str | None = None) -> list[_Logged]:
    """Accepted messages, oldest first; only those that wrote `patient` when one is named (with their
    raw text, which the repair replays; the audit of the whole log reads no message text)."""
    raw = hl7_message.c.raw if patient is not None else literal("").label("raw")
    query = select(
        hl7_message.c.id, hl7_message.c.sender, raw, hl7_message.c.received_us, hl7_message.c.resources
    ).where(hl7_message.c.status == "accepted")
    if patient is not None:
        query = query.where(hl7_message.c.resources.like(f'%"Patient/{patient}/%'))
    rows = await conn.execute(query.order_by(hl7_message.c.received_us, hl7_message.c.id))
    return [_Logged(r.id, r.sender, r.raw, r.received_us, _refs(r.resources)) for r in rows]


async def _bare_identifier_patients(conn: AsyncConnection) -> set[str]:
    rows = await conn.execute(
        select(resource.c.res_id)
        .join(sp_token, sp_token.c.rid == resource.c.rid)
        .where(
            sp_token.c.res_type == "Patient",
            sp_token.c.param == "identifier",
            (sp_token.c.system.is_(None)) | (sp_token.c.system == ""),
            resource.c.deleted.is_(False),
        )
        .distinct()
    )
    return {row.res_id for row in rows}


async def _history_conflicts(conn: AsyncConnection) -> dict[str, tuple[list[int], list[str]]]:
    """Patients whose consecutive versions disagree on name, birth date or sex (beyond the tolerance)."""
    rows = await conn.execute(
        select(resource.c.res_id, resource_version.c.version, resource_version.c.content)
        .join(resource_version, resource_version.c.rid == resource.c.rid)
        .where(resource.c.res_type == "Patient", resource_version.c.content.is_not(None))
        .order_by(resource.c.rid, resource_version.c.version)
    )
    found: dict[str, tuple[list[int], list[str]]] = {}
    previous: tuple[str, JSON] | None = None
    for row in rows:
        content = orjson.loads(row.content)
        if previous is not None and previous[0] == row.res_id:
            elements = disagreements(previous[1], content)
            if elements:
                versions, seen = found.setdefault(row.res_id, ([], []))
                versions.append(int(row.version))
                seen += [e for e in elements if e not in seen]
        previous = (row.res_id, content)
    return found


async def audit(conn: AsyncConnection) -> list[Finding]:
    """Patients joined across senders by bare identifiers, or whose demographics changed person."""
    findings: dict[str, Finding] = {}
    senders: dict[str, list[str]] = {}
    for message in await _logged(conn):
        for rtype, rid in message.resources:
            if rtype == "Patient" and message.sender not in senders.setdefault(rid, []):
                senders[rid].append(message.sender)
    bare = await _bare_identifier_patients(conn)
    for patient in sorted(bare):
        finding = findings.setdefault(patient, Finding(patient))
        finding.senders = senders.get(patient, [])
        finding.kinds.append("joined-across-senders" if len(finding.senders) > 1 else "bare-identifier")
    for patient, (versions, elements) in sorted((await _history_conflicts(conn)).items()):
        finding = findings.setdefault(patient, Finding(patient, senders=senders.get(patient, [])))
        finding.kinds.append("conflicting-demographics")
        finding.versions, finding.elements = versions, elements
    return sorted(findings.values(), key=lambda f: (-len(f.kinds), f.patient))


# -- repair ---------------------------------------------------------------------------------------


@dataclass
class Repair:
    """What a repair did (or would do, dry): per sender, its Patient and the resources moved to it."""

    patient: str
    senders: dict[str, str] = field(default_factory=dict)  # sender -> Patient id
    moved: dict[str, list[str]] = field(default_factory=dict)  # Patient id -> "Type/id" moved there
    skipped: list[str] = field(default_factory=list)  # messages that no longer translate, and why
    written: list[str] = field(default_factory=list)  # versioned references written
    provenance: str | None = None

    def as_json(self) -> JSON:
        return {
            "patient": f"Patient/{self.patient}",
            "senders": {s: f"Patient/{p}" for s, p in self.senders.items()},
            "moved": self.moved,
            "skipped": self.skipped,
            "written": self.written,
            "provenance": self.provenance,
        }


def _rebuild(
    translator: Translator, messages: Iterable[_Logged], skipped: list[str]
) -> tuple[str, JSON] | None:
    """A sender's Patient as its messages, replayed under today's mappings, describe it: (id, content)."""
    patient_id: str | None = None
    content: JSON = {}
    for message in messages:
        try:
            translation = translator.translate(Message(message.raw))
        except (ER7Error, TranslationError) as exc:
            skipped.append(f"{message.id}: {exc}")
            continue
        produced = next((p for p in translation.resources if p.resource["resourceType"] == "Patient"), None)
        if produced is None or not translation.patients:
            continue
        patient_id = patient_id or translation.patients[0].patient_id
        incoming = {**produced.resource, "id": patient_id}
        if not content:
            content = incoming
        elif produced.mode == "replace":
            content = replace_patient(content, incoming)
        else:
            content = fill(content, incoming)
    return (patient_id, content) if patient_id else None


def _last_writers(messages: list[_Logged]) -> dict[tuple[str, str], str]:
    """Which sender last wrote each resource (Patients and Provenance aside)."""
    writers: dict[tuple[str, str], str] = {}
    for message in messages:
        for key in message.resources:
            if key[0] not in ("Patient", "Provenance"):
                writers[key] = message.sender
    return writers


async def repair(
    conn: AsyncConnection,
    fhir: FhirService,
    translator: Translator,
    patient_id: str,
    *,
    dry_run: bool = False,
) -> Repair:
    """Give each sender that wrote `patient_id` its own Patient again (see the module docstring).

    The sender of the oldest message keeps `patient_id`; the others get the Patient their messages
    identify today (created, or filled in when it already exists). Each resource referring to
    `patient_id` moves to the Patient of the sender that last wrote it; resources no logged message
    wrote (created over the FHIR API) stay.
    """
    result = Repair(patient_id)
    messages = await _logged(conn, patient_id)
    if not messages:
        raise LookupError(f"no accepted HL7 v2 message wrote Patient/{patient_id}")
    by_sender: dict[str, list[_Logged]] = {}
    for message in messages:
        by_sender.setdefault(message.sender, []).append(message)
    patients: dict[str, JSON] = {}
    for index, (sender, sent) in enumerate(by_sender.items()):
        rebuilt = _rebuild(translator, sent, result.skipped)
        if rebuilt is None:
            continue
        target = patient_id if index == 0 else rebuilt[0]
        result.senders[sender] = target
        patients[target] = {**rebuilt[1], "id": target}
    writers = _last_writers(messages)
    ctx = RequestContext(base_url=fhir.configured_base)
    now = dates.now_us()
    planned: list[tuple[JSON, Stored | None]] = []
    current = await store.current_many(conn, [("Patient", p) for p in patients])
    for target, content in patients.items():
        stored = current.get(("Patient", target))
        if stored is not None and stored.content is not None and not stored.deleted and target != patient_id:
            content = fill(jsonio.loads(stored.content), content)  # a Patient today's messages already made
        planned.append((content, stored))
    movers = await store.current_many(conn, list(writers))
    for key, sender in sorted(writers.items()):
        target = result.senders.get(sender, patient_id)
        stored = movers.get(key)
        if target == patient_id or stored is None or stored.content is None or stored.deleted:
            continue
        content = jsonio.loads(stored.content)
        moved = False
        for reference in iter_references(content):
            if reference["reference"] == f"Patient/{patient_id}":
                reference["reference"] = f"Patient/{target}"
                moved = True
        if moved:
            planned.append((content, stored))
            result.moved.setdefault(target, []).append(f"{key[0]}/{key[1]}")
    if dry_run:
        return result
    before = current.get(("Patient", patient_id))
    result.written = await _write(conn, fhir, ctx, planned, now)
    reason = f"identity repair: Patient/{patient_id} separated by sender ({len(result.senders)} senders)"
    result.provenance = await _provenance(conn, fhir, ctx, result.written, before, reason, now)
    return result


async def merge(conn: AsyncConnection, fhir: FhirService, source: str, target: str) -> list[str]:
    """Join two Patients who are one person: `source` is merged into `target`, as an ADT^A40 would."""
    if source == target:
        raise ValueError("a Patient cannot be merged into itself")
    current = await store.current_many(conn, [("Patient", source), ("Patient", target)])
    for patient in (source, target):
        stored = current.get(("Patient", patient))
        if stored is None or stored.deleted:
            raise LookupError(f"Patient/{patient} does not exist")
    ctx = RequestContext(base_url=fhir.configured_base)
    now = dates.now_us()
    written = await _write(conn, fhir, ctx, await merged_versions(conn, source, target), now)
    reason = f"identity merge: Patient/{source} merged into Patient/{target}"
    await _provenance(conn, fhir, ctx, written, current.get(("Patient", source)), reason, now)
    return written


async def _write(
    conn: AsyncConnection,
    fhir: FhirService,
    ctx: RequestContext,
    planned: list[tuple[JSON, Stored | None]],
    now: int,
) -> list[str]:
    pending: list[PendingVersion] = []
    refs: list[str] = []
    for content, stored in planned:
        plan = fhir.plan_update(ctx, content, content["id"], stored, None, now)
        refs.append(f"{content['resourceType']}/{content['id']}/_history/{plan.version}")
        if isinstance(plan, PendingVersion):
            fhir.validate(content)
            pending.append(plan)
    if pending:
        await fhir.write_versions(conn, ctx, pending)
    return refs


async def _provenance(
    conn: AsyncConnection,
    fhir: FhirService,
    ctx: RequestContext,
    targets: list[str],
    before: Stored | None,
    reason: str,
    now: int,
) -> str | None:
    """One Provenance for the whole repair: what it wrote, which Patient version it revised, by whom."""
    if not targets:
        return None
    provenance: dict[str, Any] = {
        "resourceType": "Provenance",
        "id": str(uuid.uuid4()),
        "target": [{"reference": ref} for ref in targets],
        "recorded": dates.format_instant(now),
        "activity": {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-DataOperation", "code": "UPDATE"}]
        },
        "reason": [{"text": reason}],
        "agent": [
            {
                "type": {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type",
                            "code": "performer",
                        }
                    ]
                },
                "who": {"display": REPAIR_AGENT},
            }
        ],
    }
    if before is not None:
        revised = f"{before.type}/{before.id}/_history/{before.version}"
        provenance["entity"] = [{"role": "revision", "what": {"reference": revised}}]
    await _write(conn, fhir, ctx, [(provenance, None)], now)
    return f"Provenance/{provenance['id']}"
