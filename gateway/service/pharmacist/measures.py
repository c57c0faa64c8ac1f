"""`Measure/{id}/$evaluate-measure` and the Measure definitions: the pharmacist's measures over the store.

The definitions are the Measure resources under `profiles/` (loaded with the other conformance resources),
served read-only at `GET [base]/Measure` (search by `url`) and `GET [base]/Measure/{id}` to any valid
token, like the SubscriptionTopics: they hold no patient data.

`$evaluate-measure` follows R4's operation (https://hl7.org/fhir/R4/measure-operation-evaluate-measure.html):
`periodStart` and `periodEnd` (dates, required; `2026` or `2026-03` stand for their whole range),
`subject` (`Patient/{id}`: an individual report; `Practitioner/{id}`: a summary over that pharmacist's
patients), `practitioner` (R4's parameter, the same as `subject=Practitioner/{id}`), `reportType`
(`subject` or `population`; `subject-list` is not supported), `measure` (on the type-level route). Bad
or unknown parameters are a 400 OperationOutcome; `lastReceivedOn` is refused as not supported.

Authorization: `read` on every type the measure and the subject make it read (table `READS`), checked
before anything is read: one 403 names every scope missing, so a token never gets figures computed from
a type it may not read. Audited as a read (`operation` `$evaluate-measure?...`): an individual report
names its Patient, a pharmacist's summary its Practitioner, a summary over everyone no Patient (it
reveals none).

Bounded work: resources are read page by page (`GATEWAY_MAX_PAGE_SIZE` rows, keyset on the row id;
for PDC, that many patients at a time with their dispenses in the period), fed to the pure tallies of
`gateway.pharmacist.measures` and let go; what is kept are counts and, for the medians, one number per
order or alert.
"""

from __future__ import annotations

import asyncio
import calendar
import re
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any, Final
from urllib.parse import urlencode

import orjson
from sqlalchemy import ColumnElement
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.exceptions import BadRequest, Gone, NotFound, TooCostly
from gateway.fhir import dates
from gateway.fhir.bundles import Entry, bundle_bytes
from gateway.fhir.urls import check_id
from gateway.pharmacist import measures as m
from gateway.pharmacist import vocabulary as vocab
from gateway.pharmacist.dispenses import fills_from_dispenses
from gateway.pharmacist.measure_report import ReportType, measure_report
from gateway.service.access.authorization import require_all
from gateway.service.access.context import READ, RequestContext
from gateway.service.fhirapi.interactions import FhirService, Outcome
from gateway.service.pharmacist.matching import CARE_TEAM_CATEGORY, PHARMACIST_ASSIGNMENT, current_member
from gateway.service.priorauth.worker import clock_of
from gateway.store import measures as store
from gateway.store import priorauth as pa_store
from gateway.store import resources as resources_store
from gateway.store.resources import Stored
from gateway.store.timeline import versions as all_versions
from gateway.types import JSON

OPERATION: Final = "$evaluate-measure"
DAY_US: Final = 86_400_000_000
MAX_PERIOD_DAYS: Final = 3660  # ten years: a longer period is refused (400)
KNOWN_PARAMS: Final = frozenset(
    {"periodStart", "periodEnd", "subject", "practitioner", "reportType", "measure", "lastReceivedOn"}
)
IGNORED_PARAMS: Final = frozenset({"_format", "_pretty"})

# The types each measure reads, and those a subject makes it read (read on each is required).
READS: Final[Mapping[str, tuple[str, ...]]] = {
    "pdc": ("MedicationDispense", "Medication"),
    "time-to-first-dose": ("MedicationRequest", "MedicationDispense"),
    "pa-turnaround": ("Task",),
    "alert-response": ("Task",),
    "monitoring-adherence": ("CarePlan", "Observation"),
}
SUBJECT_READS: Final[Mapping[str, tuple[str, ...]]] = {
    "Patient": ("Patient",),
    "Practitioner": ("Practitioner", "PractitionerRole", "CareTeam"),
}

_DATE = re.compile(r"^(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?$")


# -- parameters ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Evaluation:
    """What `$evaluate-measure` was asked."""

    period: m.Period
    subject: tuple[str, str] | None  # ("Patient" | "Practitioner", id); None: everyone
    report_type: ReportType
    measure: str | None  # the `measure` parameter (type-level route)


def _date_bounds(name: str, value: str) -> tuple[date, date]:
    """The first and last day a FHIR date (`2026`, `2026-03`, `2026-03-15`) stands for."""
    match = _DATE.match(value)
    try:
        if match is None:
            raise ValueError(value)
        year, month, day = (int(g) if g else None for g in match.groups())
        assert year is not None
        if month is None:
            return date(year, 1, 1), date(year, 12, 31)
        if day is None:
            return date(year, month, 1), date(year, month, calendar.monthrange(year, month)[1])
        return date(year, month, day), date(year, month, day)
    except ValueError:
        raise BadRequest(f"{name} must be a date (YYYY, YYYY-MM or YYYY-MM-DD), not {value!r}") from None


def _reference(name: str, value: str, allowed: tuple[str, ...]) -> tuple[str, str]:
    resource_type, slash, resource_id = value.partition("/")
    if not slash and allowed == ("Practitioner",):  # `practitioner` may be a bare id
        resource_type, resource_id = "Practitioner", value
    if resource_type not in allowed or not resource_id:
        kinds = " or ".join(f"{t}/{{id}}" for t in allowed)
        raise BadRequest(f"{name} must be {kinds}, not {value!r} (Group subjects are not supported)")
    check_id(resource_id)
    return resource_type, resource_id


def parse_parameters(params: Sequence[tuple[str, str]]) -> Evaluation:
    """The operation's parameters, or a 400 naming what is wrong."""
    given: dict[str, str] = {}
    for key, value in params:
        if key in IGNORED_PARAMS:
            continue
        if key not in KNOWN_PARAMS:
            raise BadRequest(f"Unknown parameter for {OPERATION}: {key}")
        if key in given:
            raise BadRequest(f"{key} is given more than once")
        given[key] = value
    if "lastReceivedOn" in given:
        raise BadRequest("lastReceivedOn is not supported: every measure is computed from the whole store")
    missing = [p for p in ("periodStart", "periodEnd") if not given.get(p)]
    if missing:
        raise BadRequest(f"{OPERATION} needs {' and '.join(missing)}")
    start = _date_bounds("periodStart", given["periodStart"])[0]
    end = _date_bounds("periodEnd", given["periodEnd"])[1]
    if end < start:
        raise BadRequest(f"periodEnd ({end}) is before periodStart ({start})")
    if (end - start).days + 1 > MAX_PERIOD_DAYS:
        raise BadRequest(f"The period is longer than {MAX_PERIOD_DAYS} days")
    subject = (
        _reference("subject", given["subject"], ("Patient", "Practitioner")) if "subject" in given else None
    )
    if "practitioner" in given:
        if subject is not None:
            raise BadRequest("Give subject or practitioner, not both")
        subject = _reference("practitioner", given["practitioner"], ("Practitioner",))
    report_type = given.get("reportType") or (
        "subject" if subject and subject[0] == "Patient" else "population"
    )
    if report_type == "subject-list":
        raise BadRequest("reportType subject-list is not supported (use subject or population)")
    if report_type not in ("subject", "population"):
        raise BadRequest(f"reportType must be subject or population, not {report_type!r}")
    if report_type == "subject" and (subject is None or subject[0] != "Patient"):
        raise BadRequest("reportType subject needs subject=Patient/{id}")
    kind: ReportType = "individual" if report_type == "subject" else "summary"
    return Evaluation(m.Period(start, end), subject, kind, given.get("measure"))


# -- the service --------------------------------------------------------------------------------------


Tally = m.PdcTally | m.FirstDoseTally | m.TurnaroundTally | m.AlertTally | m.MonitoringTally


def _json(stored: Stored) -> JSON:
    assert stored.content is not None
    found = orjson.loads(stored.content)  # only read: orjson is faster than `jsonio` here
    return found if isinstance(found, dict) else {}


def _adherences(
    groups: list[list[JSON]], medications: dict[str, JSON], period: m.Period
) -> list[m.PatientAdherence]:
    return [m.patient_adherence(fills_from_dispenses(d, medications).fills, period) for d in groups]


def _patient_of(resource: Mapping[str, Any], element: str) -> str | None:
    reference = m.reference_of(resource.get(element), "Patient")
    return reference.split("/", 1)[1] if reference else None


class MeasureService:
    """The Measure definitions and their evaluation over the FHIR store."""

    def __init__(
        self, fhir: FhirService, definitions: Sequence[JSON], *, now: Callable[[], int] = dates.now_us
    ) -> None:
        self.fhir = fhir
        self.definitions = {str(d["id"]): d for d in definitions if d.get("resourceType") == "Measure"}
        self.now = now

    @property
    def page_size(self) -> int:
        return max(1, self.fhir.max_count)

    # -- the definitions ---------------------------------------------------------------------------

    def read(self, measure_id: str) -> Outcome:
        found = self.definitions.get(measure_id)
        if found is None:
            raise NotFound(f"Measure/{measure_id} is not known")
        return Outcome(200, None, orjson.dumps(found))

    def search(self, params: Sequence[tuple[str, str]]) -> Outcome:
        urls: set[str] | None = None
        for key, value in params:
            if key == "url":
                urls = (urls or set()) | set(value.split(","))
            elif key not in IGNORED_PARAMS and key != "_count":  # all of them fit on a page
                raise BadRequest(f"Measure is searched by url only, not {key}")
        found = [d for d in self.definitions.values() if urls is None or d.get("url") in urls]
        entries = [Entry(f"Measure/{d['id']}", orjson.dumps(d), "match") for d in found]
        return Outcome(200, body=bundle_bytes("searchset", entries, total=len(entries)))

    def _measure(self, measure_id: str | None, evaluation: Evaluation) -> JSON:
        wanted = measure_id or evaluation.measure
        if wanted is None:
            raise BadRequest(f"Measure/{OPERATION} needs the measure parameter (an id or canonical url)")
        found = self.definitions.get(wanted) or next(
            (d for d in self.definitions.values() if d.get("url") == wanted), None
        )
        if found is None or found["id"] not in READS:
            raise NotFound(f"Measure {wanted} is not known (or has no evaluation here)")
        if evaluation.measure is not None and evaluation.measure not in (found["id"], found.get("url")):
            raise BadRequest(f"The measure parameter names another Measure than Measure/{found['id']}")
        return found

    # -- $evaluate-measure -------------------------------------------------------------------------

    async def evaluate(
        self, ctx: RequestContext, measure_id: str | None, params: Sequence[tuple[str, str]]
    ) -> Outcome:
        evaluation = parse_parameters(params)
        measure = self._measure(measure_id, evaluation)
        key = str(measure["id"])
        needs = list(READS[key]) + list(SUBJECT_READS[evaluation.subject[0]] if evaluation.subject else ())
        require_all(ctx, OPERATION, [(t, READ) for t in needs])
        now = self.now()
        evaluated: list[str] | None = [] if evaluation.report_type == "individual" else None
        try:
            async with self.fhir.db.read() as conn:
                patients = await self._patients(conn, ctx, evaluation.subject, now)
                tally = await self.compute(conn, key, patients, evaluation.period, now, evaluated)
        except DBAPIError as exc:
            if "statement timeout" not in str(exc.orig):
                raise
            raise TooCostly(
                f"{OPERATION} ran past the statement timeout (GATEWAY_DB_STATEMENT_TIMEOUT_SECONDS);"
                " narrow the period or the subject"
            ) from None
        subject = f"{evaluation.subject[0]}/{evaluation.subject[1]}" if evaluation.subject else None
        report = measure_report(
            measure,
            report_type=evaluation.report_type,
            subject=subject,
            period=evaluation.period,
            groups=tally.groups(),
            evaluated=evaluated or (),
            now_us=now,
        )
        self._audit(ctx, params)
        return Outcome(200, None, orjson.dumps(report))

    def _audit(self, ctx: RequestContext, params: Sequence[tuple[str, str]]) -> None:
        record = ctx.audit
        if record is None:
            return
        record.action_code = "R"
        shown = urlencode([(k, v) for k, v in params if k not in IGNORED_PARAMS])
        record.operation = f"{OPERATION}{'?' + shown if shown else ''}"

    async def _patients(
        self, conn: AsyncConnection, ctx: RequestContext, subject: tuple[str, str] | None, now_us: int
    ) -> list[str] | None:
        """The Patients measured: one, a pharmacist's, or None for everyone. An unknown subject is a 404
        (a deleted one 410), as a read of it would be."""
        if subject is None:
            return None
        resource_type, resource_id = subject
        head = await resources_store.head(conn, resource_type, resource_id)
        if head is None:
            raise NotFound(f"{resource_type}/{resource_id} is not known")
        if head.deleted:
            raise Gone(f"{resource_type}/{resource_id} was deleted (version {head.version})")
        ctx.note(resource_type, resource_id)
        if resource_type == "Patient":
            return [resource_id]
        return await self.practitioner_patients(conn, resource_id, now_us)

    async def _all(
        self, conn: AsyncConnection, resource_type: str, conditions: Sequence[ColumnElement[bool]]
    ) -> AsyncIterator[list[Stored]]:
        after: int | None = None
        while True:
            rows = await store.page(conn, resource_type, conditions, after_rid=after, limit=self.page_size)
            if rows:
                yield rows
            if len(rows) < self.page_size:
                return
            after = rows[-1].rid

    async def practitioner_patients(
        self, conn: AsyncConnection, practitioner_id: str, now_us: int
    ) -> list[str]:
        """Patients whose active pharmacist-assignment CareTeam has a current participant that is one of
        the practitioner's PractitionerRoles (or the Practitioner itself)."""
        members = {f"Practitioner/{practitioner_id}"}
        of_practitioner = [
            store.refers_to("PractitionerRole", "practitioner", "Practitioner", [practitioner_id])
        ]
        async for roles in self._all(conn, "PractitionerRole", of_practitioner):
            members |= {f"PractitionerRole/{r.id}" for r in roles}
        patients: set[str] = set()
        team_filters = [
            store.coded("CareTeam", "status", None, ["active"]),
            store.coded("CareTeam", "category", CARE_TEAM_CATEGORY, [PHARMACIST_ASSIGNMENT]),
        ]
        for target_type in ("PractitionerRole", "Practitioner"):
            ids = sorted(r.split("/", 1)[1] for r in members if r.startswith(f"{target_type}/"))
            for start in range(0, len(ids), store.CHUNK):
                naming = store.refers_to(
                    "CareTeam", "participant", target_type, ids[start : start + store.CHUNK]
                )
                async for teams in self._all(conn, "CareTeam", [*team_filters, naming]):
                    for stored in teams:
                        team = _json(stored)
                        participants = team.get("participant")
                        current = {current_member(p, now_us) for p in participants or []}
                        patient = _patient_of(team, "subject")
                        if patient and current & members:
                            patients.add(patient)
        return sorted(patients)

    # -- the measures ------------------------------------------------------------------------------

    async def compute(
        self,
        conn: AsyncConnection,
        measure_id: str,
        patients: list[str] | None,
        period: m.Period,
        now_us: int,
        evaluated: list[str] | None = None,
    ) -> Tally:
        """The tally of one measure over the period for these Patients (None: everyone); `evaluated`, when
        given, collects the references of the resources that counted (individual reports)."""
        if measure_id == "pdc":
            return await self._pdc(conn, patients, period, evaluated)
        if measure_id == "time-to-first-dose":
            return await self._first_dose(conn, patients, period, evaluated)
        if measure_id == "pa-turnaround":
            return await self._turnaround(conn, patients, period, now_us, evaluated)
        if measure_id == "alert-response":
            return await self._alerts(conn, patients, period, evaluated)
        if measure_id == "monitoring-adherence":
            return await self._monitoring(conn, patients, period, now_us, evaluated)
        raise NotFound(f"Measure/{measure_id} has no evaluation here")  # READS lists those that have one

    @staticmethod
    def _window(period: m.Period) -> tuple[int, int]:
        """The period in UTC, a day wider each side: days are judged as written (local), the index in UTC."""
        return period.start_us - DAY_US, period.end_us + DAY_US

    async def _pages(
        self,
        conn: AsyncConnection,
        resource_type: str,
        patient_param: str,
        conditions: Sequence[ColumnElement[bool]],
        patients: list[str] | None,
    ) -> AsyncIterator[list[Stored]]:
        """Pages of the resources meeting `conditions` (of these Patients, when given)."""
        if patients is None:
            async for rows in self._all(conn, resource_type, conditions):
                yield rows
            return
        for start in range(0, len(patients), store.CHUNK):
            chunk = patients[start : start + store.CHUNK]
            of_patients = store.refers_to(resource_type, patient_param, "Patient", chunk)
            async for rows in self._all(conn, resource_type, [*conditions, of_patients]):
                yield rows

    async def _patient_batches(
        self,
        conn: AsyncConnection,
        resource_type: str,
        patient_param: str,
        conditions: Sequence[ColumnElement[bool]],
        patients: list[str] | None,
    ) -> AsyncIterator[list[str]]:
        """The Patients to measure, a page at a time: those given, or those the resources point at."""
        size = self.page_size
        if patients is not None:
            for start in range(0, len(patients), size):
                yield patients[start : start + size]
            return
        after: str | None = None
        while True:
            found = await store.patients_page(
                conn, resource_type, patient_param, conditions, after=after, limit=size
            )
            if found:
                yield found
            if len(found) < size:
                return
            after = found[-1]

    async def _pdc(
        self, conn: AsyncConnection, patients: list[str] | None, period: m.Period, evaluated: list[str] | None
    ) -> m.PdcTally:
        tally = m.PdcTally()
        handed_over = [store.dated_within("MedicationDispense", "whenhandedover", *self._window(period))]
        async for batch in self._patient_batches(
            conn, "MedicationDispense", "subject", handed_over, patients
        ):
            by_patient: dict[str, list[JSON]] = {p: [] for p in batch}
            async for rows in self._pages(conn, "MedicationDispense", "subject", handed_over, batch):
                for stored in rows:
                    dispense = _json(stored)
                    patient = _patient_of(dispense, "subject")
                    if patient in by_patient:
                        by_patient[patient].append(dispense)
            medications = await self._medications(conn, [d for found in by_patient.values() for d in found])
            # The PDC arithmetic is most of the cost (about 0.4 ms a patient): off the event loop.
            found = await asyncio.to_thread(_adherences, list(by_patient.values()), medications, period)
            for adherence in found:
                tally.add(adherence)
                if evaluated is not None:
                    counted = [c.fill.source for d in adherence.drugs for c in d.result.fills if c.counted]
                    evaluated += [s for s in counted if s]
        return tally

    async def _medications(self, conn: AsyncConnection, dispenses: list[JSON]) -> dict[str, JSON]:
        """The Medications the dispenses reference (not contained ones), by `Medication/id`."""
        ids = {
            r.split("/", 1)[1]
            for d in dispenses
            if (r := m.reference_of(d.get("medicationReference"), "Medication")) is not None
        }
        return {
            f"Medication/{s.id}": _json(s) for s in await store.current_of(conn, "Medication", sorted(ids))
        }

    async def _first_dose(
        self, conn: AsyncConnection, patients: list[str] | None, period: m.Period, evaluated: list[str] | None
    ) -> m.FirstDoseTally:
        tally = m.FirstDoseTally()
        authored = [store.dated_within("MedicationRequest", "authoredon", *self._window(period))]
        async for rows in self._pages(conn, "MedicationRequest", "subject", authored, patients):
            requests = [_json(s) for s in rows]
            ids = [str(r.get("id")) for r in requests if m.is_order_in(r, period)]
            dispenses: list[JSON] = []
            if ids:
                of_orders = [store.refers_to("MedicationDispense", "prescription", "MedicationRequest", ids)]
                async for found in self._all(conn, "MedicationDispense", of_orders):
                    dispenses += [_json(s) for s in found]
            for dose in m.first_doses(requests, dispenses, period):
                tally.add(dose)
                if evaluated is not None:
                    evaluated += [r for r in (dose.request, dose.dispense) if r]
        return tally

    async def _turnaround(
        self,
        conn: AsyncConnection,
        patients: list[str] | None,
        period: m.Period,
        now_us: int,
        evaluated: list[str] | None,
    ) -> m.TurnaroundTally:
        tally = m.TurnaroundTally(now_us)
        chunks = (
            [None]
            if patients is None
            else [patients[i : i + store.CHUNK] for i in range(0, len(patients), store.CHUNK)]
        )
        for chunk in chunks:
            after: str | None = None
            while True:
                rows = await pa_store.submitted_between(
                    conn,
                    period.start_us,
                    period.end_us,
                    patient_ids=chunk,
                    after_task_id=after,
                    limit=self.page_size,
                )
                for row in rows:
                    tally.add(clock_of(row))
                    if evaluated is not None:
                        evaluated.append(f"Task/{row.task_id}")
                if len(rows) < self.page_size:
                    break
                after = rows[-1].task_id
        return tally

    async def _alerts(
        self, conn: AsyncConnection, patients: list[str] | None, period: m.Period, evaluated: list[str] | None
    ) -> m.AlertTally:
        tally = m.AlertTally()
        conditions = [
            store.coded("Task", "code", vocab.WORK_ITEM_TYPE, sorted(m.ALERT_KINDS)),
            store.dated_within("Task", "authored-on", *self._window(period)),
        ]
        async for rows in self._pages(conn, "Task", "patient", conditions, patients):
            history: dict[int, list[m.TaskVersion]] = {}
            for version in await all_versions(conn, [s.rid for s in rows]):
                task = None if version.deleted or version.content is None else _json(version)
                history.setdefault(version.rid, []).append(
                    m.TaskVersion(version.version, version.updated_us, task)
                )
            for stored in rows:
                response = m.alert_response(stored.id, history.get(stored.rid, []))
                if response is not None and period.holds(response.raised_day):
                    tally.add(response)
                    if evaluated is not None:
                        evaluated.append(response.task)
        return tally

    async def _monitoring(
        self,
        conn: AsyncConnection,
        patients: list[str] | None,
        period: m.Period,
        now_us: int,
        evaluated: list[str] | None,
    ) -> m.MonitoringTally:
        tally = m.MonitoringTally()
        today = dates.from_us(now_us).date()
        conditions = [
            store.coded("CarePlan", "category", vocab.CARE_PLAN_CATEGORY, [vocab.MONITORING_CALENDAR]),
            store.dated_within("CarePlan", "activity-date", *self._window(period)),
        ]
        async for rows in self._pages(conn, "CarePlan", "subject", conditions, patients):
            plans = [_json(s) for s in rows]
            wanted = sorted({r.split("/", 1)[1] for p in plans for r in m.outcome_references(p)})
            observations = {
                f"Observation/{s.id}": _json(s) for s in await store.current_of(conn, "Observation", wanted)
            }
            for plan in plans:
                activities = m.monitoring_activities(plan, observations, period, today)
                for activity in activities:
                    tally.add(activity)
                if evaluated is not None and activities:
                    evaluated.append(f"CarePlan/{plan.get('id')}")
        return tally
