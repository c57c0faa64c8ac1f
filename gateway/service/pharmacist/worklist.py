"""`GET /fhir/Task/$worklist`: a pharmacist's work, ranked, each row saying why it is there and why there.

Which Tasks are rows and what they say is `gateway.pharmacist.worklist`'s; the order is
`gateway.pharmacist.ranking`'s. This module finds the caller's Tasks and the facts of patient risk:

- `owner=Practitioner/{id}`: the Practitioner and their PractitionerRoles are the *members*;
  `owner=PractitionerRole/{id}`: that role alone; `owner=CareTeam/{id}`: the team's current participants
  that are Practitioners or PractitionerRoles (a Practitioner with their roles), and, when the team is
  itself a patient's pharmacist-assignment CareTeam, that patient.
  The owner's *patients* are the subjects of the active `pharmacist-assignment` CareTeams in which a
  member is a current participant (its period not ended). Rows: the alert, lab-overdue and PA rows of
  those patients, and the open work-item Tasks whose `owner` is a member (or the CareTeam itself), for
  whichever patient.
- `unassigned=true`: the rows of patients with no pharmacist (no active pharmacist-assignment CareTeam
  with a current participant), from all open work-item Tasks and PA Tasks needing action.

An unassigned-patient Task is a row only while its patient still has no pharmacist: under an owner when
the owner holds it (`Task.owner`), and always under `unassigned=true`.

Everything is read by indexed searches: the CareTeams by participant, the Tasks by owner, or by patient
(in chunks of the search value limit) with code and status or business status; the facts of risk by
patient and date. At most GATEWAY_MAX_PAGE_SIZE x 20 rows are read per search (503 too-costly beyond),
and the ranking is made in memory from them, per request.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.auth.roles import Area, Role
from gateway.exceptions import BadRequest, Forbidden, TooCostly
from gateway.fhir import dates, jsonio
from gateway.fhir.query import split_values
from gateway.fhir.references import parse_reference
from gateway.fhir.urls import check_id
from gateway.mapping.monitoring import MonitoringRules
from gateway.pa import tasks as pa_tasks
from gateway.pa.lifecycle import APPROVED, BUSINESS_STATUS_SYSTEM, TASK_TYPE_SYSTEM
from gateway.pharmacist import vocabulary as v
from gateway.pharmacist import worklist as wl
from gateway.pharmacist.ranking import RankedRow, RiskInput, rank_worklist
from gateway.pharmacist.reasons import Reason
from gateway.routing.labs import critical_reasons, ordered_rules
from gateway.service.access.authorization import require_all
from gateway.service.access.context import READ, RequestContext
from gateway.service.access.people import PersonAccess
from gateway.service.fhirapi.interactions import FhirService, Outcome, strict_count_param
from gateway.service.pharmacist.matching import CARE_TEAM_CATEGORY, PHARMACIST_ASSIGNMENT
from gateway.store import search as store_search
from gateway.store.resources import Stored
from gateway.types import JSON

OPERATION = "$worklist"
KNOWN_PARAMS = frozenset(
    {"owner", "unassigned", "kind", "patient", "_count", "_cursor", "_format", "_pretty"}
)
OWNER_TYPES = ("Practitioner", "PractitionerRole", "CareTeam")
ROWS_FACTOR = 20  # a search reads at most GATEWAY_MAX_PAGE_SIZE x this rows
ASSIGNMENT = f"{CARE_TEAM_CATEGORY}|{PHARMACIST_ASSIGNMENT}"
CRITICAL_DAYS = 30  # critical results this recent count towards patient risk
# Types whose read scope a risk fact needs; without it the fact is not looked at (README, "Worklist").
RISK_SCOPES = {
    "low-pdc": "MedicationDispense",
    "critical-results": "Observation",
    "specialty-drugs": "MedicationRequest",
}


@dataclass(frozen=True, slots=True)
class WorklistRequest:
    owner: tuple[str, str] | None  # (type, id); None with unassigned
    unassigned: bool
    kinds: frozenset[str]
    patients: frozenset[str] | None  # the `patient` filter (ids)
    count: int
    after: wl.RowKey | None


@dataclass(slots=True)
class Scope:
    """Whose work: the owner, the references that make a patient or Task theirs, their patients."""

    owner: str | None
    members: set[str] = field(default_factory=set)  # CareTeam participants that count
    owners: set[str] = field(default_factory=set)  # Task.owner values that count
    patients: dict[str, wl.Via] = field(default_factory=dict)  # patient id -> how they are the owner's


def _reference_of(value: Any) -> str | None:
    reference = value.get("reference") if isinstance(value, dict) else None
    return reference if isinstance(reference, str) else None


def _chunks(values: Sequence[str], size: int) -> Iterable[list[str]]:
    for start in range(0, len(values), size):
        yield list(values[start : start + size])


def _loads(stored: Stored) -> JSON:
    assert stored.content is not None
    content: JSON = jsonio.loads(stored.content)
    return content


# A ranked row, the candidate it came from, why it is the caller's, and the stored Task.
Row = tuple[RankedRow, wl.Candidate, wl.Via, Stored]


class PharmacistWorklist:
    def __init__(
        self, fhir: FhirService, rules: MonitoringRules, *, expiring_days: int, appeal_days: int
    ) -> None:
        self.fhir = fhir
        self.rules = rules
        self.expiring_days = expiring_days
        self.appeal_days = appeal_days

    @property
    def limit(self) -> int:
        return self.fhir.max_count * ROWS_FACTOR

    # -- the request -----------------------------------------------------------------------------

    def parse(self, ctx: RequestContext, params: list[tuple[str, str]]) -> WorklistRequest:
        unknown = sorted({k for k, _ in params if k not in KNOWN_PARAMS})
        if unknown:
            raise BadRequest(f"Unknown parameters for {OPERATION}: {', '.join(unknown)}")
        single = {}
        for name in ("owner", "unassigned", "_count", "_cursor"):
            given = [value for key, value in params if key == name]
            if len(given) > 1:
                raise BadRequest(f"{OPERATION}: '{name}' may be given once")
            single[name] = given[0] if given else None
        unassigned = self._boolean(single["unassigned"])
        owner = self._owner(ctx, single["owner"]) if single["owner"] is not None else None
        if (owner is None) == (not unassigned):
            raise BadRequest(
                f"{OPERATION} needs either owner=Practitioner|PractitionerRole|CareTeam/{{id}}"
                " or unassigned=true (not both)"
            )
        kinds = frozenset(k for key, value in params if key == "kind" for k in split_values(value))
        wrong = sorted(kinds - set(wl.KINDS))
        if wrong:
            raise BadRequest(f"{OPERATION}: unknown kind {', '.join(wrong)} (one of {', '.join(wl.KINDS)})")
        patients = [
            self._patient(value) for key, raw in params if key == "patient" for value in split_values(raw)
        ]
        after = None
        if single["_cursor"] is not None:
            after = wl.decode_cursor(single["_cursor"])
            if after is None:
                raise BadRequest("_cursor is not valid: use the next link of a previous page as it is")
        count = self.fhir.default_count
        if single["_count"] is not None:
            count = strict_count_param(single["_count"], self.fhir.max_count)
        return WorklistRequest(
            owner,
            unassigned,
            kinds or frozenset(wl.KINDS),
            frozenset(patients) if patients else None,
            count,
            after,
        )

    @staticmethod
    def _boolean(value: str | None) -> bool:
        if value is None or value == "false":
            return False
        if value == "true":
            return True
        raise BadRequest(f"unassigned must be true or false, got {value[:20]!r}")

    def _owner(self, ctx: RequestContext, value: str) -> tuple[str, str]:
        parsed = parse_reference(value, self.fhir.local_bases(ctx))
        if parsed is None or parsed[0] not in OWNER_TYPES or "/_history/" in value:
            raise BadRequest(
                f"owner must be a reference to a Practitioner, PractitionerRole or CareTeam on this server"
                f" (e.g. Practitioner/123), got {value[:80]!r}"
            )
        check_id(parsed[1])
        return parsed

    def _patient(self, value: str) -> str:
        patient_id = value.split("/", 1)[1] if value.startswith("Patient/") else value
        check_id(patient_id)
        return patient_id

    @staticmethod
    def needs(request: WorklistRequest) -> list[tuple[str, str]]:
        """The read scopes the request needs before anything is looked up (one 403 naming each missing)."""
        needs = [("Task", READ), ("CareTeam", READ)]
        if request.owner is not None and request.owner[0] != "CareTeam":
            needs.append((request.owner[0], READ))
        if request.owner is not None:
            needs.append(("PractitionerRole", READ))  # a Practitioner's roles; a role read; a team's members
        return needs

    @staticmethod
    def _check_person(person: PersonAccess, request: WorklistRequest) -> None:
        """A person asks for their own worklist (owner=their Practitioner) or, where their role allows,
        for the unassigned work; an admin for anyone's."""
        if person.role is Role.ADMIN:
            return
        if not person.reaches(Area.WORKLIST):
            raise Forbidden(f"A user with the {person.role.value} role has no worklist")
        if request.unassigned:
            if not person.reaches(Area.UNASSIGNED_WORK):
                raise Forbidden(f"A user with the {person.role.value} role does not see unassigned work")
            return
        own = tuple(person.practitioner.split("/", 1)) if person.practitioner else None
        if request.owner != own:
            raise Forbidden(f"{OPERATION}: a user's worklist is their own (owner={person.practitioner})")

    @staticmethod
    def _person_row(person: PersonAccess | None, candidate: wl.Candidate, via: wl.Via) -> bool:
        """A row a person may see: of a patient they reach, or unassigned work where their role allows."""
        if person is None or person.sees_patient(candidate.item.patient_id):
            return True
        return via.code == "no-pharmacist" and person.reaches(Area.UNASSIGNED_WORK)

    # -- the answer ------------------------------------------------------------------------------

    async def run(self, ctx: RequestContext, params: list[tuple[str, str]]) -> Outcome:
        request = self.parse(ctx, params)
        if ctx.person is not None:
            self._check_person(ctx.person, request)
        require_all(ctx, OPERATION, self.needs(request))
        now_us = dates.now_us()
        try:
            async with self.fhir.db.read() as conn:
                rows, lookups, gaps = await self._ranked(conn, ctx, request, now_us)
        except DBAPIError as exc:
            if "statement timeout" not in str(exc.orig):
                raise
            raise TooCostly(
                f"{OPERATION} ran past the statement timeout (GATEWAY_DB_STATEMENT_TIMEOUT_SECONDS);"
                " narrow it with patient or kind"
            ) from None
        return self._answer(ctx, request, params, rows, lookups, gaps, now_us)

    async def _ranked(
        self, conn: AsyncConnection, ctx: RequestContext, request: WorklistRequest, now_us: int
    ) -> tuple[list[Row], wl.Lookups, list[Reason]]:
        """Every row of the request, ranked; what the summaries quote; the risk facts left unassessed."""
        scope = await self._scope(conn, ctx, request, now_us)
        windows = wl.PaWindows(now_us, self.expiring_days, self.appeal_days)
        tasks = [(_loads(s), s) for s in await self._gather(conn, ctx, request, scope, windows)]
        contents = [task for task, _ in tasks]
        asking = self._asking(request, scope, contents)
        assigned = await self._assigned(conn, ctx, asking, now_us) | set(scope.patients)
        appealed, renewed = await self._pa_followups(conn, ctx, contents)
        lookups = await self._lookups(conn, ctx, contents)
        found: list[tuple[wl.Candidate, JSON, Stored]] = []
        for task, stored in tasks:
            candidate = wl.candidate(
                task,
                updated_us=stored.updated_us,
                windows=windows,
                rules=self.rules,
                lookups=lookups,
                appealed=stored.id in appealed,
                renewed=stored.id in renewed,
            )
            if candidate is not None:
                found.append((candidate, task, stored))
        rows = [
            (c, via, stored)
            for c, task, stored in found
            if (via := self._via(scope, request, task, c, assigned)) is not None
            and self._wanted(request, c)
            and self._person_row(ctx.person, c, via)
        ]
        shown = {c.item.patient_id for c, _, _ in rows}
        risks, gaps = await self._risks(conn, ctx, shown, [c for c, _, _ in found], now_us)
        ranked = rank_worklist([c.item for c, _, _ in rows], risks, dates.from_us(now_us))
        by_task = {c.item.id: (c, via, stored) for c, via, stored in rows}
        return [(row, *by_task[row.item.id]) for row in ranked], lookups, gaps

    async def _gather(
        self,
        conn: AsyncConnection,
        ctx: RequestContext,
        request: WorklistRequest,
        scope: Scope,
        windows: wl.PaWindows,
    ) -> list[Stored]:
        """The Tasks that may be rows or count towards risk: of the owner's patients and of the patients
        of the Tasks the owner holds; with unassigned=true, of everyone (or of the `patient` filter)."""
        if request.unassigned:
            return await self._tasks(conn, ctx, set(request.patients) if request.patients else None, windows)
        owned = await self._owned(conn, ctx, scope)
        patients = set(scope.patients) | {p for s in owned if (p := wl.patient_of(_loads(s)))}
        if request.patients is not None:
            patients &= request.patients
        return await self._tasks(conn, ctx, patients, windows) if patients else []

    @staticmethod
    def _asking(request: WorklistRequest, scope: Scope, tasks: list[JSON]) -> set[str]:
        """The patients whose assignment must be looked up: with unassigned=true every one; under an owner
        those of unassigned-patient Tasks (whether they still have no pharmacist) outside the owner's."""
        return {
            patient
            for task in tasks
            if (patient := wl.patient_of(task))
            and (
                request.unassigned
                or (wl.kind_of(task) == "unassigned-patient" and patient not in scope.patients)
            )
        }

    @staticmethod
    def _wanted(request: WorklistRequest, candidate: wl.Candidate) -> bool:
        """The `kind` and `patient` filters."""
        return candidate.item.kind in request.kinds and (
            request.patients is None or candidate.item.patient_id in request.patients
        )

    def _via(
        self,
        scope: Scope,
        request: WorklistRequest,
        task: JSON,
        found: wl.Candidate,
        assigned: set[str],
    ) -> wl.Via | None:
        """Why this Task is the caller's, or None when it is not a row of this worklist."""
        patient = found.item.patient_id
        if found.item.kind == "unassigned-patient" and patient in assigned:
            return None  # stale: the patient has a pharmacist by now
        if request.unassigned:
            if patient in assigned:
                return None
            return wl.Via("no-pharmacist", f"Patient/{patient} has no pharmacist")
        owner = _reference_of(task.get("owner"))
        if owner is not None and owner in scope.owners:
            return wl.Via("owner", f"the Task's owner is {owner}", owner)
        via = scope.patients.get(patient)
        if via is None or found.item.kind == "unassigned-patient":
            return None
        return via

    # -- whose work ------------------------------------------------------------------------------

    async def _scope(
        self, conn: AsyncConnection, ctx: RequestContext, request: WorklistRequest, now_us: int
    ) -> Scope:
        if request.owner is None:
            return Scope(None)
        rtype, rid = request.owner
        owner = f"{rtype}/{rid}"
        read = await self.fhir.read_on(conn, ctx, rtype, rid)  # 404 unknown, 410 deleted
        assert read.stored is not None
        scope = Scope(owner, owners={owner})
        practitioners: list[str] = []
        if rtype == "Practitioner":
            practitioners = [owner]
        elif rtype == "PractitionerRole":
            scope.members.add(owner)
        else:
            team = _loads(read.stored)
            current = wl.current_members(team, now_us)
            scope.members |= {m for m in current if m.startswith("PractitionerRole/")}
            practitioners = [m for m in current if m.startswith("Practitioner/")]
            patient = self._assignment_subject(team)
            if patient is not None:
                scope.patients[patient] = wl.Via(
                    "care-team", f"Patient/{patient} is the patient of {owner}", owner
                )
        scope.members |= set(practitioners)
        if practitioners:
            roles = await self._search(
                conn, ctx, "PractitionerRole", [("practitioner", ",".join(practitioners))]
            )
            scope.members |= {f"PractitionerRole/{s.id}" for s in roles}
        scope.owners |= scope.members
        if scope.members:
            await self._patients_of(conn, ctx, scope, now_us)
        return scope

    @staticmethod
    def _assignment_subject(team: JSON) -> str | None:
        """The patient id of a pharmacist-assignment CareTeam (None for any other team)."""
        subject = _reference_of(team.get("subject")) or ""
        categories = [
            c for concept in team.get("category") or [] for c in wl.codes(concept, CARE_TEAM_CATEGORY)
        ]
        if subject.startswith("Patient/") and PHARMACIST_ASSIGNMENT in categories:
            return subject.split("/", 1)[1]
        return None

    async def _patients_of(
        self, conn: AsyncConnection, ctx: RequestContext, scope: Scope, now_us: int
    ) -> None:
        """The patients whose active pharmacist-assignment CareTeam has a member as a current participant."""
        teams = await self._search_in(
            conn,
            ctx,
            "CareTeam",
            "participant",
            sorted(scope.members),
            [("status", "active"), ("category", ASSIGNMENT)],
        )
        for stored in teams:
            team = _loads(stored)
            subject = _reference_of(team.get("subject")) or ""
            member = next((m for m in wl.current_members(team, now_us) if m in scope.members), None)
            if member is None or not subject.startswith("Patient/"):
                continue
            patient = subject.split("/", 1)[1]
            scope.patients.setdefault(
                patient,
                wl.Via(
                    "care-team",
                    f"{subject}'s pharmacist is {member} (CareTeam/{stored.id})",
                    f"CareTeam/{stored.id}",
                ),
            )

    async def _assigned(
        self, conn: AsyncConnection, ctx: RequestContext, patients: set[str], now_us: int
    ) -> set[str]:
        """Which of these patients have a pharmacist (an active assignment with a current participant)."""
        if not patients:
            return set()
        teams = await self._search_in(
            conn,
            ctx,
            "CareTeam",
            "patient",
            sorted(f"Patient/{p}" for p in patients),
            [("status", "active"), ("category", ASSIGNMENT)],
        )
        return {
            subject.split("/", 1)[1]
            for s in teams
            if (team := _loads(s))
            and wl.current_members(team, now_us)
            and (subject := _reference_of(team.get("subject")) or "").startswith("Patient/")
        }

    # -- the Tasks -------------------------------------------------------------------------------

    @staticmethod
    def _work_params() -> list[tuple[str, str]]:
        codes = ",".join(f"{v.WORK_ITEM_TYPE}|{c}" for c in wl.WORK_ITEM_CODES)
        return [("code", codes), ("status", ",".join(sorted(v.OPEN_STATUSES)))]

    @staticmethod
    def _pa_params(statuses: Iterable[str]) -> list[tuple[str, str]]:
        return [
            ("code", ",".join(f"{TASK_TYPE_SYSTEM}|{c}" for c in wl.PA_TASK_CODES)),
            ("business-status", ",".join(f"{BUSINESS_STATUS_SYSTEM}|{s}" for s in statuses)),
        ]

    async def _owned(self, conn: AsyncConnection, ctx: RequestContext, scope: Scope) -> list[Stored]:
        """Open work-item Tasks whose owner is one of the scope's owners."""
        return await self._search_in(conn, ctx, "Task", "owner", sorted(scope.owners), self._work_params())

    async def _tasks(
        self, conn: AsyncConnection, ctx: RequestContext, patients: set[str] | None, windows: wl.PaWindows
    ) -> list[Stored]:
        """Open work-item Tasks and PA Tasks that may need action: of these patients, or of everyone."""
        denied = [
            *self._pa_params([wl.DENIED]),
            ("modified", f"ge{dates.format_instant(windows.denied_since_us)}"),
        ]
        searches = [self._work_params(), self._pa_params(wl.PA_LIVE_STATUSES), denied]
        found: dict[str, Stored] = {}
        for params in searches:
            if patients is None:
                rows = await self._search(conn, ctx, "Task", params)
            else:
                rows = await self._search_in(
                    conn, ctx, "Task", "patient", sorted(f"Patient/{p}" for p in patients), params
                )
            found.update((s.id, s) for s in rows)
        return list(found.values())

    async def _pa_followups(
        self, conn: AsyncConnection, ctx: RequestContext, tasks: list[JSON]
    ) -> tuple[set[str], set[str]]:
        """Denied PA Tasks with an appeal `partOf` them, approved ones with a submitted renewal `basedOn`."""
        denied, approved = [], []
        for task in tasks:
            if wl.kind_of(task) == "pa":
                status = pa_tasks.business_status(task)
                if status == wl.DENIED:
                    denied.append(f"Task/{task['id']}")
                elif status in APPROVED:
                    approved.append(f"Task/{task['id']}")
        appealed: set[str] = set()
        for stored in await self._search_in(conn, ctx, "Task", "part-of", denied, []):
            follow = _loads(stored)
            if pa_tasks.business_status(follow) not in wl.APPEAL_WITHDRAWN:
                appealed |= {r.split("/", 1)[1] for r in wl.references(follow.get("partOf")) if r in denied}
        renewed: set[str] = set()
        for stored in await self._search_in(conn, ctx, "Task", "based-on", approved, []):
            follow = _loads(stored)
            if wl.kind_of(follow) == "pa" and pa_tasks.business_status(follow) not in wl.RENEWAL_NOT_STARTED:
                renewed |= {r.split("/", 1)[1] for r in wl.references(follow.get("basedOn")) if r in approved}
        return appealed, renewed

    async def _lookups(self, conn: AsyncConnection, ctx: RequestContext, tasks: Iterable[JSON]) -> wl.Lookups:
        """The focus Observations of alerts and focus orders of PA Tasks, each only with its read scope."""
        observations, orders = set(), set()
        for task in tasks:
            focus = _reference_of(task.get("focus")) or ""
            kind = wl.kind_of(task)
            if kind == "alert" and focus.startswith("Observation/"):
                observations.add(focus)
            elif kind == "pa" and focus.startswith("MedicationRequest/"):
                orders.add(focus)
        return wl.Lookups(
            await self._by_id(conn, ctx, "Observation", observations),
            await self._by_id(conn, ctx, "MedicationRequest", orders),
        )

    async def _by_id(
        self, conn: AsyncConnection, ctx: RequestContext, rtype: str, references: set[str]
    ) -> dict[str, JSON]:
        if not references or not ctx.can(rtype, READ):
            return {}
        ids = sorted(r.split("/", 1)[1] for r in references)
        return {f"{rtype}/{s.id}": _loads(s) for s in await self._search_in(conn, ctx, rtype, "_id", ids, [])}

    # -- patient risk ----------------------------------------------------------------------------

    async def _risks(
        self,
        conn: AsyncConnection,
        ctx: RequestContext,
        patients: set[str],
        candidates: list[wl.Candidate],
        now_us: int,
    ) -> tuple[dict[str, RiskInput], list[Reason]]:
        """Each shown patient's risk facts, and the facts the caller's scopes kept from being looked at."""
        gaps = [
            Reason(code, f"not assessed: needs system/{rtype}.r")
            for code, rtype in RISK_SCOPES.items()
            if not ctx.can(rtype, READ)
        ]
        if not patients:
            return {}, gaps
        overdue = {p: 0 for p in patients}
        pa_at_risk: set[str] = set()
        for found in candidates:
            if found.item.kind == "lab-overdue" and found.item.patient_id in overdue:
                overdue[found.item.patient_id] += 1
            if found.item.state in ("denied-appealable", "expiring"):
                pa_at_risk.add(found.item.patient_id)
        subjects = sorted(f"Patient/{p}" for p in patients)
        adherence = await self._adherence(conn, ctx, subjects, now_us)
        critical = await self._critical(conn, ctx, subjects, now_us)
        drugs = await self._specialty_drugs(conn, ctx, subjects)
        risks = {
            p: RiskInput(
                p,
                pdc=float(adherence[p].pdc) if p in adherence else None,
                overdue_labs=overdue[p],
                critical_results_30d=critical.get(p, 0),
                pa_denied_or_expiring=p in pa_at_risk,
                specialty_drugs=len(drugs.get(p, ())),
            )
            for p in patients
        }
        return risks, gaps

    async def _medications(
        self, conn: AsyncConnection, ctx: RequestContext, resources: Iterable[JSON]
    ) -> dict[str, JSON]:
        """The Medications these orders or dispenses reference, when the caller may read Medication."""
        wanted = {
            ref
            for r in resources
            if (ref := _reference_of(r.get("medicationReference"))) and ref.startswith("Medication/")
        }
        return await self._by_id(conn, ctx, "Medication", wanted)

    async def _adherence(
        self, conn: AsyncConnection, ctx: RequestContext, subjects: list[str], now_us: int
    ) -> dict[str, wl.Adherence]:
        if not ctx.can("MedicationDispense", READ):
            return {}
        today = datetime.fromtimestamp(now_us / 1_000_000, UTC).date()
        start = (today - timedelta(days=wl.PDC_DAYS - 1)).isoformat()
        found = await self._search_in(
            conn, ctx, "MedicationDispense", "patient", subjects, [("whenhandedover", f"ge{start}")]
        )
        dispenses: dict[str, list[JSON]] = {}
        for stored in found:
            dispense = _loads(stored)
            subject = _reference_of(dispense.get("subject")) or ""
            dispenses.setdefault(subject.split("/", 1)[-1], []).append(dispense)
        medications = await self._medications(conn, ctx, [d for ds in dispenses.values() for d in ds])
        result = {}
        for patient, given in dispenses.items():
            lowest = wl.lowest_pdc(given, medications, today)
            if lowest is not None:
                result[patient] = lowest
        return result

    async def _critical(
        self, conn: AsyncConnection, ctx: RequestContext, subjects: list[str], now_us: int
    ) -> dict[str, int]:
        """Per patient, the Observations of the last 30 days (by `effective[x]`) with a critical value."""
        if not ctx.can("Observation", READ):
            return {}
        since = dates.format_instant(now_us - CRITICAL_DAYS * wl.DAY_US)
        found = await self._search_in(conn, ctx, "Observation", "patient", subjects, [("date", f"ge{since}")])
        counts: dict[str, int] = {}
        for stored in found:
            observation = _loads(stored)
            if critical_reasons(observation, self.rules):
                subject = _reference_of(observation.get("subject")) or ""
                patient = subject.split("/", 1)[-1]
                counts[patient] = counts.get(patient, 0) + 1
        return counts

    async def _specialty_drugs(
        self, conn: AsyncConnection, ctx: RequestContext, subjects: list[str]
    ) -> dict[str, set[str]]:
        """Per patient, the drugs of drug-lab rules that an active MedicationRequest orders."""
        if not ctx.can("MedicationRequest", READ):
            return {}
        found = await self._search_in(
            conn, ctx, "MedicationRequest", "patient", subjects, [("status", "active")]
        )
        orders = [_loads(s) for s in found]
        medications = await self._medications(conn, ctx, orders)
        drugs: dict[str, set[str]] = {}
        for order in orders:
            subject = _reference_of(order.get("subject")) or ""
            names = {rule.drug for rule in ordered_rules(order, self.rules, medications)}
            if names:
                drugs.setdefault(subject.split("/", 1)[-1], set()).update(names)
        return drugs

    # -- searching -------------------------------------------------------------------------------

    async def _search(
        self, conn: AsyncConnection, ctx: RequestContext, rtype: str, params: list[tuple[str, str]]
    ) -> list[Stored]:
        """Every current match of a search the operation makes for itself (its scopes were checked), at
        most `limit`: past that the request is too costly."""
        query = self.fhir.parser(ctx).parse(rtype, [*params, ("_total", "none")])
        assert not query.unknown, query.unknown
        query.count = self.limit + 1
        found, _ = await store_search.search(conn, query)
        if len(found) > self.limit:
            raise TooCostly(
                f"{OPERATION}: more than {self.limit} {rtype} resources to look at; narrow it with patient"
            )
        return [s for s in found if s.content is not None and not s.deleted]

    async def _search_in(
        self,
        conn: AsyncConnection,
        ctx: RequestContext,
        rtype: str,
        param: str,
        values: Sequence[str],
        params: list[tuple[str, str]],
    ) -> list[Stored]:
        """The search with `param` matching any of `values`, in chunks within the search value limits."""
        limits = self.fhir.search_limits
        others = sum(len(split_values(value)) for _, value in params)
        size = max(1, min(limits.max_values, limits.max_total_values - others))
        found: dict[str, Stored] = {}
        for chunk in _chunks(values, size):
            found.update(
                (s.id, s) for s in await self._search(conn, ctx, rtype, [(param, ",".join(chunk)), *params])
            )
            if len(found) > self.limit:
                raise TooCostly(f"{OPERATION}: more than {self.limit} {rtype} resources to look at")
        return list(found.values())

    # -- the document ----------------------------------------------------------------------------

    def _answer(
        self,
        ctx: RequestContext,
        request: WorklistRequest,
        params: list[tuple[str, str]],
        rows: list[Row],
        lookups: wl.Lookups,
        gaps: list[Reason],
        now_us: int,
    ) -> Outcome:
        start = 0
        if request.after is not None:
            start = next((i for i, r in enumerate(rows) if wl.row_key(r[0]) > request.after), len(rows))
        page = rows[start : start + request.count]
        next_url = None
        if page and start + request.count < len(rows):
            kept = [(k, v) for k, v in params if k not in ("_count", "_cursor")]
            cursor = wl.encode_cursor(wl.row_key(page[-1][0]))
            query = urlencode([*kept, ("_count", str(request.count)), ("_cursor", cursor)])
            next_url = f"{ctx.base_url}/Task/{OPERATION}?{query}"
        owner = f"{request.owner[0]}/{request.owner[1]}" if request.owner else None
        body = {
            "owner": owner,
            "unassigned": request.unassigned,
            "generated": dates.format_instant(now_us),
            "total": len(rows),
            "riskNotAssessed": [g.to_json() for g in gaps],
            "rows": [wl.row_json(row, found, via) for row, found, via, _ in page],
            "next": next_url,
        }
        self._audit(ctx, params, page, lookups)
        return Outcome(200, body=jsonio.dumps(body))

    def _audit(
        self,
        ctx: RequestContext,
        params: list[tuple[str, str]],
        page: list[Row],
        lookups: wl.Lookups,
    ) -> None:
        """A read: the Tasks returned, and the Observations and orders their summaries quote."""
        record = ctx.audit
        if record is None:
            return
        record.action_code = "R"
        kinds = sorted({row.item.kind for row, _, _, _ in page})
        shown = urlencode([(k, v) for k, v in params if k != "_cursor"])
        record.operation = (
            f"{OPERATION}{'?' + shown if shown else ''}; returned: {', '.join(kinds) if kinds else 'nothing'}"
        )
        for _, _, _, stored in page:
            ctx.note("Task", stored.id, stored.content)
            task = _loads(stored)
            focus = _reference_of(task.get("focus"))
            quoted = lookups.observations.get(focus or "") or lookups.orders.get(focus or "")
            if focus and quoted is not None:
                rtype, rid = focus.split("/", 1)
                ctx.note(rtype, rid, jsonio.dumps(quoted))
