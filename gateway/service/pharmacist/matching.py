"""`POST /fhir/Patient/{id}/$match-pharmacist`: rank the pharmacists for a patient and, on request, assign
the best one (README, "Pharmacist matching and assignment").

The use case gathers the facts (`gateway.pharmacist.facts`) from the store, lets the pure
`gateway.pharmacist.matching.match_pharmacists` rank them and answers with a Parameters resource:

- the patient: `Patient.communication`, the home address's state;
- the candidates: every PractitionerRole coded as a pharmacist (SNOMED CT 46255001 "Pharmacist" or
  `http://terminology.hl7.org/CodeSystem/practitioner-role|pharmacist`) and not `active: false`, with its
  Practitioner;
- the patient's drug classes: the `drug_class` of each drug-lab monitoring rule
  (`mappings/monitoring/drug-lab.yaml`) whose drug an active MedicationRequest of the patient orders;
  conditions: the `reasonCode` codings of those orders (`system|code`; the store serves no Condition);
- each candidate's load: the active CareTeams of other patients in which the role (or its Practitioner)
  is a participant whose period has not ended.

With `assign=true` the best eligible candidate becomes the patient's pharmacist: the patient's active
CareTeam of category `pharmacist-assignment` is created, or updated when the pharmacist changes (the
previous participant's period is ended), or left as it is. When no one is eligible an `unassigned-patient`
work item Task is opened (one per patient: a closed one is reopened), so that no patient is left without
a pharmacist silently.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import orjson
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.adapters.hl7v2.identity import stable_id
from gateway.exceptions import BadRequest, Conflict
from gateway.fhir import dates, jsonio
from gateway.mapping.monitoring import MonitoringRules
from gateway.pharmacist.facts import patient_facts, pharmacist_facts
from gateway.pharmacist.matching import (
    Candidate,
    MatchPolicy,
    MatchResult,
    ScoredCandidate,
    match_pharmacists,
)
from gateway.pharmacist.reasons import Reason
from gateway.pharmacist.vocabulary import has_category
from gateway.routing.labs import ordered_rules
from gateway.service.access.authorization import require_all
from gateway.service.access.context import CREATE, READ, UPDATE, RequestContext
from gateway.service.fhirapi.interactions import FhirService, Outcome
from gateway.store import resources as store
from gateway.store import search as store_search
from gateway.store.resources import PendingVersion, Stored, VersionConflict
from gateway.types import JSON

log = logging.getLogger("gateway.matching")

OPERATION = "$match-pharmacist"
GATEWAY = "https://specialty-gateway.org/fhir"
CARE_TEAM_CATEGORY = f"{GATEWAY}/CodeSystem/care-team-category"
PHARMACIST_ASSIGNMENT = "pharmacist-assignment"
WORK_ITEM_TYPE = f"{GATEWAY}/CodeSystem/work-item-type"
UNASSIGNED_PATIENT = "unassigned-patient"
SNOMED = "http://snomed.info/sct"
PRACTITIONER_ROLE = "http://terminology.hl7.org/CodeSystem/practitioner-role"
# PractitionerRole.code values that make a role a pharmacist's (either is accepted).
PHARMACIST_CODES = ((SNOMED, "46255001"), (PRACTITIONER_ROLE, "pharmacist"))
PHARMACIST_ROLE = {"coding": [{"system": SNOMED, "code": "46255001", "display": "Pharmacist"}]}
NOTE_AUTHOR = "specialty-gateway $match-pharmacist"  # the Task notes the operation writes (and rewrites)
OPEN_TASK = frozenset({"draft", "requested", "received", "accepted", "ready", "in-progress", "on-hold"})

# What the caller must hold: read on everything the ranking reads and returns; assigning writes too.
READS = [(t, READ) for t in ("Patient", "PractitionerRole", "Practitioner", "MedicationRequest", "CareTeam")]
WRITES = [("CareTeam", CREATE), ("CareTeam", UPDATE), ("Task", CREATE), ("Task", UPDATE)]


@dataclass(frozen=True, slots=True)
class Assignment:
    outcome: str  # assigned | reassigned | unchanged | unassigned
    resource: JSON  # the CareTeam, or the unassigned-patient Task


def parse_parameters(body: bytes) -> bool:
    """`assign` from the request's Parameters (an empty body: false). Anything else is refused."""
    if not body.strip():
        return False
    try:
        parameters = jsonio.loads(body)
    except jsonio.JSONDecodeError as exc:
        raise BadRequest(f"The body is not valid JSON: {exc}") from None
    if not isinstance(parameters, dict) or parameters.get("resourceType") != "Parameters":
        raise BadRequest("The body must be a FHIR Parameters resource")
    given = parameters.get("parameter") or []
    if not isinstance(given, list):
        raise BadRequest("Parameters.parameter must be a list", expression="Parameters.parameter")
    assign = False
    for index, parameter in enumerate(given):
        where = f"Parameters.parameter[{index}]"
        name = parameter.get("name") if isinstance(parameter, dict) else None
        if name != "assign":
            raise BadRequest(f"{OPERATION} takes only the parameter 'assign', not {name!r}", expression=where)
        value = parameter.get("valueBoolean")
        if not isinstance(value, bool):
            raise BadRequest("'assign' needs a valueBoolean", expression=where)
        assign = value
    return assign


def _now() -> tuple[datetime, str]:
    now_us = dates.now_us()
    return datetime.fromtimestamp(now_us / 1_000_000, UTC), dates.format_instant(now_us)


def _reference(resource: JSON, element: str) -> str | None:
    value = resource.get(element)
    reference = value.get("reference") if isinstance(value, dict) else None
    return reference if isinstance(reference, str) else None


def current_member(participant: object, now_us: int) -> str | None:
    """The participant's member reference when its period has not ended at `now_us`."""
    if not isinstance(participant, dict):
        return None
    end = (participant.get("period") or {}).get("end")
    try:
        if isinstance(end, str) and dates.date_range(end)[1] < now_us:
            return None
    except dates.DateFormatError:
        return None
    return _reference(participant, "member")


def _codes_of(concept: object) -> list[str]:
    codings = concept.get("coding") if isinstance(concept, dict) else None
    found = []
    for coding in codings if isinstance(codings, list) else []:
        code = coding.get("code") if isinstance(coding, dict) else None
        if isinstance(code, str):
            system = coding.get("system")
            found.append(f"{system}|{code}" if isinstance(system, str) else code)
    return found


class PharmacistMatching:
    def __init__(self, fhir: FhirService, rules: MonitoringRules, policy: MatchPolicy | None = None) -> None:
        self.fhir = fhir
        self.rules = rules
        self.policy = policy or MatchPolicy()

    async def run(self, ctx: RequestContext, patient_id: str, body: bytes) -> Outcome:
        assign = parse_parameters(body)
        require_all(
            ctx, OPERATION + (" with assign=true" if assign else ""), READS + (WRITES if assign else [])
        )
        try:
            if assign:
                async with self.fhir.db.write() as conn:  # ranking and assignment see the same store
                    result, patient = await self._rank(conn, ctx, patient_id)
                    assignment = await self._assign(conn, ctx, patient, result)
            else:
                async with self.fhir.db.read() as conn:
                    result, patient = await self._rank(conn, ctx, patient_id)
                    assignment = None
        except VersionConflict as exc:
            raise Conflict(f"The patient's assignment changed while this ran ({exc}); try again") from exc
        return Outcome(200, None, orjson.dumps(to_parameters(result, assignment)))

    # -- automatic assignment on the first specialty order -----------------------------------------

    async def observe(
        self, conn: AsyncConnection, ctx: RequestContext, pending: Sequence[PendingVersion], _: list[Stored]
    ) -> None:
        """A write observer: a patient's order of a specialty drug (one a drug-lab rule is about) becoming
        active, with no pharmacist assigned yet, assigns the best match, or opens the unassigned-patient
        work item when no one is eligible. In the order's transaction, as the gateway (not the caller)."""
        patients: list[str] = []
        for p in pending:
            if p.type != "MedicationRequest" or p.content is None:
                continue
            order = orjson.loads(p.content)
            before = orjson.loads(p.previous) if p.previous else {}
            subject = _reference(order, "subject") or ""
            if order.get("status") != "active" or before.get("status") == "active":
                continue
            if subject.startswith("Patient/") and ordered_rules(
                order, self.rules, await referenced_medication(conn, order)
            ):
                patients.append(subject)
        if not patients:
            return
        system = RequestContext(ctx.base_url)
        assigned = await assigned_pharmacists(conn, patients)
        for subject in dict.fromkeys(patients):
            stored = await store.current(conn, "Patient", subject.split("/", 1)[1])
            if subject in assigned or stored is None or stored.deleted:
                continue  # an order may name a Patient not (or no longer) stored: nobody to assign
            result, patient = await self._rank(conn, system, subject.split("/", 1)[1])
            outcome = await self._assign(conn, system, patient, result)
            log.info("patient %s on a first specialty order: %s", subject, outcome.outcome)

    # -- gathering the facts ---------------------------------------------------------------------

    async def _all(
        self, conn: AsyncConnection, ctx: RequestContext, rtype: str, params: list[tuple[str, str]]
    ) -> list[Stored]:
        return await self.fhir.all_matching(conn, ctx, rtype, params)

    async def _rank(
        self, conn: AsyncConnection, ctx: RequestContext, patient_id: str
    ) -> tuple[MatchResult, JSON]:
        read = await self.fhir.read_on(conn, ctx, "Patient", patient_id)  # 404 or 410 as a read would
        assert read.stored is not None and read.stored.content is not None
        patient = jsonio.loads(read.stored.content)
        now, _ = _now()
        subject = f"Patient/{patient_id}"
        orders = await self._all(conn, ctx, "MedicationRequest", [("patient", subject), ("status", "active")])
        classes: set[str] = set()
        conditions: set[str] = set()
        for stored in orders:
            ctx.note("MedicationRequest", stored.id, stored.content)
            order = jsonio.loads(stored.content or b"{}")
            classes |= {
                r.drug_class
                for r in ordered_rules(order, self.rules, await self._medications(conn, ctx, order))
                if r.drug_class
            }
            for concept in order.get("reasonCode") or []:
                conditions.update(_codes_of(concept))
        facts = patient_facts(patient, now, drug_classes=classes, conditions=conditions)
        candidates = await self._candidates(conn, ctx, subject, now)
        return match_pharmacists(facts, candidates, self.policy), patient

    async def _medications(self, conn: AsyncConnection, ctx: RequestContext, order: JSON) -> dict[str, JSON]:
        """The Medication an order references, when the caller may read it (else the order's own code)."""
        reference = _reference(order, "medicationReference")
        if not reference or not reference.startswith("Medication/") or not ctx.can("Medication", READ):
            return {}
        stored = await store.current(conn, "Medication", reference.split("/", 1)[1])
        if stored is None or stored.content is None or stored.deleted:
            return {}
        ctx.note("Medication", stored.id, stored.content)
        return {reference: jsonio.loads(stored.content)}

    async def _candidates(
        self, conn: AsyncConnection, ctx: RequestContext, subject: str, now: datetime
    ) -> list[Candidate]:
        codes = ",".join(f"{system}|{code}" for system, code in PHARMACIST_CODES)
        roles = await self._all(conn, ctx, "PractitionerRole", [("role", codes), ("active:not", "false")])
        now_us = dates.now_us()
        candidates = []
        for stored in roles:
            role = jsonio.loads(stored.content or b"{}")
            reference = _reference(role, "practitioner") or ""
            if not reference.startswith("Practitioner/"):
                continue  # a role without its pharmacist cannot be checked for a licence
            practitioner_id = reference.split("/", 1)[1]
            found = await store.current(conn, "Practitioner", practitioner_id)
            if found is None or found.content is None or found.deleted:
                continue
            ctx.note("PractitionerRole", stored.id, stored.content)
            ctx.note("Practitioner", found.id, found.content)
            facts = pharmacist_facts(jsonio.loads(found.content), role, now)
            load = await self._load(conn, ctx, stored.id, practitioner_id, subject, now_us)
            candidates.append(Candidate(facts, load))
        return candidates

    async def _load(
        self,
        conn: AsyncConnection,
        ctx: RequestContext,
        role_id: str,
        practitioner_id: str,
        subject: str,
        now_us: int,
    ) -> int:
        """Other patients' active CareTeams in which the role or its Practitioner still takes part. Only the
        count leaves here: these CareTeams are not noted for the audit trail (they are not returned)."""
        members = {f"PractitionerRole/{role_id}", f"Practitioner/{practitioner_id}"}
        teams = await self._all(
            conn, ctx, "CareTeam", [("participant", ",".join(sorted(members))), ("status", "active")]
        )
        load = 0
        for stored in teams:
            team = jsonio.loads(stored.content or b"{}")
            if _reference(team, "subject") == subject:
                continue  # the patient's own assignment is not load against them
            if any(current_member(p, now_us) in members for p in team.get("participant") or []):
                load += 1
        return load

    # -- assigning -------------------------------------------------------------------------------

    async def _assign(
        self, conn: AsyncConnection, ctx: RequestContext, patient: JSON, result: MatchResult
    ) -> Assignment:
        subject = f"Patient/{patient['id']}"
        best = next((c for c in result.candidates if c.eligible), None)
        if best is None:
            return await self._unassigned(conn, ctx, subject, result)
        _, now = _now()
        member = f"PractitionerRole/{best.role_id}"
        teams = await self._all(
            conn,
            ctx,
            "CareTeam",
            [
                ("patient", subject),
                ("status", "active"),
                ("category", f"{CARE_TEAM_CATEGORY}|{PHARMACIST_ASSIGNMENT}"),
            ],
        )
        if not teams:
            team_id = stable_id("CareTeam", PHARMACIST_ASSIGNMENT, subject)
            team: JSON = {
                "resourceType": "CareTeam",
                "id": team_id,
                "status": "active",
                "category": [
                    {
                        "coding": [
                            {
                                "system": CARE_TEAM_CATEGORY,
                                "code": PHARMACIST_ASSIGNMENT,
                                "display": "Pharmacist assignment",
                            }
                        ]
                    }
                ],
                "name": "Pharmacist",
                "subject": {"reference": subject},
                "period": {"start": now},
                "participant": [_participant(member, now)],
            }
            written = await self.fhir.update_on(conn, ctx, team, team_id)
            return Assignment("assigned", _content(written))
        stored = teams[0]
        team = jsonio.loads(stored.content or b"{}")
        ctx.note("CareTeam", stored.id, stored.content)
        now_us = dates.now_us()
        participants = [p for p in team.get("participant") or [] if isinstance(p, dict)]
        current = [p for p in participants if current_member(p, now_us) is not None]
        if any(current_member(p, now_us) == member for p in current):
            return Assignment("unchanged", team)
        for participant in current:  # the previous pharmacist's part ends now
            participant["period"] = {**(participant.get("period") or {}), "end": now}
        team["participant"] = [*participants, _participant(member, now)]
        written = await self.fhir.update_on(conn, ctx, team, stored.id)
        return Assignment("reassigned", _content(written))

    async def _unassigned(
        self, conn: AsyncConnection, ctx: RequestContext, subject: str, result: MatchResult
    ) -> Assignment:
        """The patient's unassigned-patient Task: opened, reopened when closed, its reasons kept current."""
        task_id = stable_id("Task", UNASSIGNED_PATIENT, subject)
        why = "; ".join(r.text for r in result.reasons) or "no eligible pharmacist"
        notes = [_note_of(c) for c in result.candidates]
        existing = await store.current(conn, "Task", task_id)
        previous = (
            jsonio.loads(existing.content) if existing and existing.content and not existing.deleted else None
        )
        _, now = _now()
        if previous is not None and previous.get("status") in OPEN_TASK:
            ctx.note("Task", task_id, existing.content if existing else None)
            kept = [n for n in previous.get("note") or [] if n.get("authorString") != NOTE_AUTHOR]
            ours = [n.get("text") for n in previous.get("note") or [] if n.get("authorString") == NOTE_AUTHOR]
            if ((previous.get("reasonCode") or {}).get("text"), ours) == (why, notes):
                return Assignment("unassigned", previous)
            # New reasons: the gateway's notes are replaced; what people wrote on the Task stays.
            task = {**previous, "reasonCode": {"text": why}, "lastModified": now}
            task["note"] = [*kept, *_notes(notes, now)] or None
        else:
            task = {
                "resourceType": "Task",
                "id": task_id,
                "status": "requested",
                "intent": "order",
                "priority": "routine",
                "code": {
                    "coding": [
                        {
                            "system": WORK_ITEM_TYPE,
                            "code": UNASSIGNED_PATIENT,
                            "display": "Patient without a pharmacist",
                        }
                    ]
                },
                "description": f"No eligible pharmacist for {subject}: assign one, or add licences or room",
                "focus": {"reference": subject},
                "for": {"reference": subject},
                "authoredOn": now,
                "lastModified": now,
                "reasonCode": {"text": why},
            }
            if notes:
                task["note"] = _notes(notes, now)
        task = {k: v for k, v in task.items() if v is not None}
        written = await self.fhir.update_on(conn, ctx, task, task_id)
        return Assignment("unassigned", _content(written))


async def referenced_medication(conn: AsyncConnection, order: JSON) -> dict[str, JSON]:
    """The Medication an order's `medicationReference` names, as `{"Medication/id": resource}` (the shape
    `gateway.routing.labs` reads); empty when it names none that is stored. For the gateway's own use: no
    scope is checked and nothing is noted for the audit trail."""
    reference = _reference(order, "medicationReference") or ""
    if not reference.startswith("Medication/"):
        return {}
    stored = await store.current(conn, "Medication", reference.split("/", 1)[1])
    if stored is None or stored.content is None or stored.deleted:
        return {}
    return {reference: jsonio.loads(stored.content)}


def _active_assignment(team: JSON) -> bool:
    return team.get("status") == "active" and has_category(team, CARE_TEAM_CATEGORY, PHARMACIST_ASSIGNMENT)


async def assigned_pharmacists(conn: AsyncConnection, patients: Sequence[str]) -> dict[str, str]:
    """`Patient/id` -> the current member (a PractitionerRole, or a Practitioner) of the patient's active
    pharmacist-assignment CareTeam, for those that have one."""
    if not patients:
        return {}
    # The patients' CareTeams by the index's reference rows, the active assignments among them picked here:
    # what a search by patient, status and category finds, without parsing one (each alert asks).
    found_teams = await store_search.by_reference(conn, "CareTeam", "patient", sorted(set(patients)))
    teams = [orjson.loads(s.content or b"{}") for s in sorted(found_teams, key=lambda s: s.id)]
    now_us = dates.now_us()
    found: dict[str, str] = {}
    for team in filter(_active_assignment, teams):
        subject = _reference(team, "subject")
        members = [m for p in team.get("participant") or [] if (m := current_member(p, now_us))]
        if subject and members:
            found[subject] = members[-1]  # the latest joined: a handover in progress goes to the new one
    return found


def _participant(member: str, now: str) -> JSON:
    return {"role": [PHARMACIST_ROLE], "member": {"reference": member}, "period": {"start": now}}


def _notes(texts: list[str], now: str) -> list[JSON]:
    return [{"authorString": NOTE_AUTHOR, "time": now, "text": text} for text in texts]


def _note_of(candidate: ScoredCandidate) -> str:
    reasons = "; ".join(f"{r.code}: {r.text}" for r in candidate.reasons)
    return f"PractitionerRole/{candidate.role_id} (Practitioner/{candidate.practitioner_id}): {reasons}"


def _content(outcome: Outcome) -> JSON:
    assert outcome.stored is not None and outcome.stored.content is not None
    content: JSON = jsonio.loads(outcome.stored.content)
    return content


def _reason_parts(reasons: Sequence[Reason]) -> list[JSON]:
    return [
        {
            "name": "reason",
            "part": [
                {"name": "code", "valueCode": r.code},
                {"name": "text", "valueString": r.text},
            ],
        }
        for r in reasons
    ]


def to_parameters(result: MatchResult, assignment: Assignment | None) -> JSON:
    """The operation's answer (README, "Pharmacist matching and assignment", for the shape)."""
    parameter: list[JSON] = [
        {"name": "patient", "valueReference": {"reference": f"Patient/{result.patient_id}"}}
    ]
    for c in result.candidates:
        part: list[JSON] = [
            {"name": "rank", "valueInteger": c.rank},
            {"name": "practitioner", "valueReference": {"reference": f"Practitioner/{c.practitioner_id}"}},
            {"name": "practitionerRole", "valueReference": {"reference": f"PractitionerRole/{c.role_id}"}},
            {"name": "eligible", "valueBoolean": c.eligible},
            {"name": "score", "valueDecimal": c.score},
            {"name": "load", "valueInteger": c.load},
        ]
        if c.capacity is not None:
            part.append({"name": "capacity", "valueInteger": c.capacity})
        parameter.append({"name": "candidate", "part": [*part, *_reason_parts(c.reasons)]})
    parameter += _reason_parts(result.reasons)
    if assignment is not None:
        parameter.append({"name": "assignment", "valueCode": assignment.outcome})
        name = "careTeam" if assignment.resource.get("resourceType") == "CareTeam" else "task"
        parameter.append({"name": name, "resource": assignment.resource})
    return {"resourceType": "Parameters", "parameter": parameter}
