"""Alerts as work items: the write observer that opens, updates and marks alert Tasks as lab results are
written, and checks the moves people make on them (README, "Alerts as work items"; the rules are in
`gateway.pharmacist.alerts`).

It runs inside the write transaction of the results, so an alert commits with its result or not at all,
and it works per batch: one HL7 v2 report or transaction of any size costs a fixed number of queries (the
patients' active orders and their Medications, the alerts already about these results, the patients'
open alerts a later result may mark, their pharmacists) and one write of all the Tasks.

Those open alerts are found through `alert_candidate` (gateway/store/alerts.py), which this observer
keeps in step with every alert Task version written, in the same transaction: a patient's pile of open
alerts whose rule still holds costs a result nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import orjson
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.exceptions import Unprocessable
from gateway.fhir import dates
from gateway.mapping.monitoring import MonitoringRules
from gateway.pharmacist import alerts as rules_of_alerts
from gateway.pharmacist.alerts import Finding, Severity, alert_id
from gateway.pharmacist.vocabulary import (
    ABNORMAL_RESULT,
    ALERT,
    CRITICAL_VALUE,
)
from gateway.routing import labs
from gateway.service.access.context import RequestContext
from gateway.service.fhirapi.interactions import FhirService
from gateway.service.pharmacist.matching import assigned_pharmacists
from gateway.store import alerts as store_alerts
from gateway.store import resources as store
from gateway.store import search as store_search
from gateway.store.resources import PendingVersion, Stored
from gateway.types import JSON, Issue

VALUE_ELEMENTS = (
    "valueQuantity",
    "valueCodeableConcept",
    "valueString",
    "valueBoolean",
    "valueInteger",
    "valueRange",
    "valueRatio",
    "valueSampledData",
    "interpretation",
    "status",
    "referenceRange",
    "code",
)


@dataclass(slots=True)
class _Result:
    id: str
    patient: str
    current: JSON
    previous: JSON | None
    findings: list[Finding]  # those that become alerts
    version: int = 1
    holding: frozenset[str] = frozenset()  # every rule that holds, alert or not


_ALERT_BYTES = b'"' + ALERT.encode() + b'"'


def _observation_id(task: JSON) -> str | None:
    reference = str((task.get("focus") or {}).get("reference") or "")
    return reference.split("/", 1)[1] if reference.startswith("Observation/") else None


def _subject(resource: JSON) -> str | None:
    subject = resource.get("subject")
    reference = subject.get("reference") if isinstance(subject, dict) else None
    return reference if isinstance(reference, str) and reference.startswith("Patient/") else None


def _changed(previous: JSON | None, current: JSON) -> bool:
    return previous is None or any(previous.get(k) != current.get(k) for k in VALUE_ELEMENTS)


def _effective(resource: JSON) -> int | None:
    value = resource.get("effectiveDateTime") or (resource.get("effectivePeriod") or {}).get("start")
    value = value or resource.get("issued")
    try:
        return dates.date_range(value)[0] if isinstance(value, str) else None
    except dates.DateFormatError:
        return None


class AlertService:
    def __init__(self, fhir: FhirService, rules: MonitoringRules) -> None:
        self.fhir = fhir
        self.rules = rules
        self.labs_of_rule = {
            rule.id: {(lab.system, lab.code) for lab in rule.labs} for rule in rules.drug_lab
        }
        self.rule_labs = set().union(*self.labs_of_rule.values())
        self.rules_of_lab: dict[tuple[str | None, str], set[str]] = {}
        for rule_id, rule_labs in self.labs_of_rule.items():
            for lab in rule_labs:
                self.rules_of_lab.setdefault(lab, set()).add(rule_id)

    # -- the write observer ----------------------------------------------------------------------

    async def observe(
        self, conn: AsyncConnection, ctx: RequestContext, pending: Sequence[PendingVersion], _: list[Stored]
    ) -> None:
        if ctx.grants is not None:  # a person's (a client's) write; the gateway's own and merges are trusted
            for p in pending:
                if p.type == "Task" and p.content is not None and _ALERT_BYTES in p.content:
                    self._check_move(p)
        # First: a Task written in this batch (a client's transaction) is found by the results after it.
        await self._index(conn, pending)
        results = [p for p in pending if p.type == "Observation" and p.content is not None]
        if results:
            await self._derive(conn, ctx, results)

    @staticmethod
    def _check_move(p: PendingVersion) -> None:
        current = orjson.loads(p.content or b"{}")
        previous = orjson.loads(p.previous) if p.previous else None
        if not rules_of_alerts.is_alert(current) and not rules_of_alerts.is_alert(previous):
            return
        problems = rules_of_alerts.move_problems(previous, current)
        if problems:
            raise Unprocessable(
                issues=[Issue("error", "business-rule", text, (where,)) for text, where in problems]
            )

    # -- the alert candidates: the live alerts by patient, rule and lab ----------------------------

    async def _index(self, conn: AsyncConnection, pending: Sequence[PendingVersion]) -> None:
        """Keep `alert_candidate` in step with the alert Tasks written: a new alert (or one whose patient,
        result or rule changed) gets its rows afresh, any other version says whether it is live, a deleted
        one is not. So is an alert whose result's codes changed. A fixed number of statements per batch."""
        fresh: dict[str, JSON] = {}
        live: dict[str, bool] = {}
        recoded: dict[str, set[tuple[str | None, str]]] = {}  # Observation id -> its codes now
        for p in pending:
            if p.type == "Task":
                self._index_task(p, fresh, live)
            elif p.type == "Observation" and p.version > 1 and p.content is not None:
                codes = labs.observation_codes(orjson.loads(p.content))
                if p.previous is None or labs.observation_codes(orjson.loads(p.previous)) != codes:
                    recoded[p.id] = codes
        if recoded:
            focused = await store_search.by_reference(
                conn, "Task", "focus", [f"Observation/{i}" for i in sorted(recoded)]
            )
            for stored in focused:
                task = orjson.loads(stored.content or b"{}")
                if rules_of_alerts.is_alert(task):
                    fresh.setdefault(stored.id, task)
        if fresh:
            # A Task at version 1 never had rows: only the others' go first.
            first = {p.id for p in pending if p.type == "Task" and p.version == 1}
            await self._write_candidates(conn, fresh, recoded, stale=set(fresh) - first)
        await store_alerts.set_live(conn, live={k: v for k, v in live.items() if k not in fresh})

    @staticmethod
    def _index_task(p: PendingVersion, fresh: dict[str, JSON], live: dict[str, bool]) -> None:
        if p.content is None:
            live[p.id] = False  # deleted (nothing changes when it was no alert)
            return
        if _ALERT_BYTES not in p.content and (p.previous is None or _ALERT_BYTES not in p.previous):
            return  # the cheap test first: most Tasks are no alerts
        task = orjson.loads(p.content)
        if not rules_of_alerts.is_alert(task):
            live[p.id] = False
            return
        previous = orjson.loads(p.previous) if p.previous else None
        if previous is None or any(previous.get(k) != task.get(k) for k in ("for", "focus", "reasonCode")):
            fresh[p.id] = task
        else:
            live[p.id] = rules_of_alerts.is_live(task)

    async def _write_candidates(
        self,
        conn: AsyncConnection,
        tasks: dict[str, JSON],
        known: dict[str, set[tuple[str | None, str]]],
        *,
        stale: set[str],
    ) -> None:
        """The rows of these alerts, one per code of their result (that result loaded unless known)."""
        focus = {task_id: _observation_id(task) for task_id, task in tasks.items()}
        wanted = {("Observation", i) for i in focus.values() if i is not None and i not in known}
        codes = dict(known)
        for stored in await store.load_by_keys(conn, wanted) if wanted else []:
            codes[stored.id] = labs.observation_codes(orjson.loads(stored.content or b"{}"))
        rows = [
            store_alerts.Candidate(
                task_id=task_id,
                patient=str((task.get("for") or {}).get("reference") or ""),
                rule=rules_of_alerts.rule_of(task) or "",
                lab_system=system,
                lab_code=code,
                live=rules_of_alerts.is_live(task),
            )
            for task_id, task in tasks.items()
            # A result with no code, or none to be found, still has its row: a drug-lab rule's alert is
            # found by its rule, and the caller's checks then skip it as before.
            for system, code in sorted(codes.get(focus[task_id] or "") or {(None, "")}, key=str)
        ]
        await store_alerts.replace(conn, task_ids=stale, rows=rows)

    # -- deriving alerts from results ------------------------------------------------------------

    async def _derive(
        self, conn: AsyncConnection, ctx: RequestContext, pending: Sequence[PendingVersion]
    ) -> None:
        results: list[_Result] = []
        for p in pending:
            current = orjson.loads(p.content or b"{}")
            previous = orjson.loads(p.previous) if p.previous else None
            patient = _subject(current)
            if patient is None or not _changed(previous, current):
                continue  # a re-sent result, or one about no patient: nothing new to say
            results.append(_Result(p.id, patient, current, previous, [], p.version))
        if not results:
            return
        system = RequestContext(ctx.base_url)
        orders, medications = await self._orders(conn, results)
        for result in results:
            found = self._findings(result.current, orders, medications)
            result.findings = rules_of_alerts.strongest(found)
            result.holding = frozenset(f.rule for f in found)
        existing = await self._existing(conn, results)
        writes: dict[str, tuple[JSON, Stored | None]] = {}
        now_us = dates.now_us()
        now = dates.format_instant(now_us)
        owners = await assigned_pharmacists(conn, sorted({r.patient for r in results if r.findings}))
        for result in results:
            self._reconcile(result, existing, owners, now, writes)
        await self._later_results(conn, results, writes, now)
        await self.fhir.write_derived(conn, system, writes)

    async def _orders(
        self, conn: AsyncConnection, results: list[_Result]
    ) -> tuple[dict[str, list[JSON]], dict[str, JSON]]:
        """Active MedicationRequests of the patients whose results a drug-lab rule reads, and the Medications
        they reference."""
        patients = sorted({r.patient for r in results if labs.observation_codes(r.current) & self.rule_labs})
        if not patients:
            return {}, {}
        by_patient: dict[str, list[JSON]] = {}
        referenced: set[tuple[str, str]] = set()
        for stored in await store_search.by_reference(conn, "MedicationRequest", "patient", patients):
            request = orjson.loads(stored.content or b"{}")
            if request.get("status") != "active":
                continue
            by_patient.setdefault(str((request.get("subject") or {}).get("reference")), []).append(request)
            reference = str((request.get("medicationReference") or {}).get("reference") or "")
            if reference.startswith("Medication/"):
                referenced.add(("Medication", reference.split("/", 1)[1]))
        medications = {
            f"Medication/{m.id}": orjson.loads(m.content)
            for m in await store.load_by_keys(conn, referenced)
            if m.content
        }
        return by_patient, medications

    def _findings(
        self, obs: JSON, orders: dict[str, list[JSON]], medications: dict[str, JSON]
    ) -> list[Finding]:
        critical = labs.critical_reasons(obs, self.rules)
        active = orders.get(_subject(obs) or "")  # none: no drug-lab rule can hold (the common case)
        findings = [
            Finding(
                rule=alert.rule_id,
                title=f"{alert.drug} monitoring ({alert.rule_id})",  # the rule's words, not the result's
                severity="critical" if critical else cast(Severity, alert.severity),
                action=alert.action,
                band=alert.band,
                order=alert.medication_request_id,
            )
            for alert in (labs.monitoring_alerts(obs, active, self.rules, medications) if active else ())
        ]
        if critical:
            findings.append(
                Finding(CRITICAL_VALUE, "Critical value", "critical", "Review the critical result.")
            )
        elif labs.is_abnormal(obs):
            findings.append(Finding(ABNORMAL_RESULT, "Abnormal result", "low", "Review the abnormal result."))
        return findings

    async def _existing(self, conn: AsyncConnection, results: list[_Result]) -> dict[str, Stored]:
        """The alert Tasks already about these results (any status), by id."""
        # A result at version 1 has an id never used before: no alert can be about it yet (a deleted and
        # created again result is at a later version). Most results are new: most batches skip the query.
        focus = [f"Observation/{r.id}" for r in results if r.version > 1]
        found = await store_search.by_reference(conn, "Task", "focus", focus) if focus else []
        return {s.id: s for s in found if s.content and rules_of_alerts.is_alert(orjson.loads(s.content))}

    def _reconcile(
        self,
        result: _Result,
        existing: dict[str, Stored],
        owners: dict[str, str],
        now: str,
        writes: dict[str, tuple[JSON, Stored | None]],
    ) -> None:
        observation = f"Observation/{result.id}"
        status = result.current.get("status")
        wanted = {alert_id(result.id, f.rule, f.order): f for f in result.findings}
        for task_id, finding in wanted.items():
            stored = existing.get(task_id)
            if stored is None:
                task = rules_of_alerts.new_alert(
                    task_id, finding, observation, result.patient, owners.get(result.patient), now
                )
                writes[task_id] = (task, None)
            elif result.previous is not None or result.version > 1:  # changed, or deleted and back
                task = orjson.loads(stored.content or b"{}")
                if task.get("status") != "entered-in-error":
                    writes[task_id] = (rules_of_alerts.corrected(task, finding, status, now), stored)
        for task_id, stored in existing.items():
            if task_id in wanted:
                continue
            task = orjson.loads(stored.content or b"{}")
            if (task.get("focus") or {}).get("reference") != observation:
                continue
            if wanted:  # the changed result meets another rule now: its alert says so, this one points there
                marked = rules_of_alerts.superseded(task, sorted(wanted), now)
            else:
                marked = rules_of_alerts.back_to_normal(
                    task, rules_of_alerts.withdrawn_or_normal(status), now
                )
            if marked is not None:
                writes[task_id] = (marked, stored)

    async def _later_results(
        self,
        conn: AsyncConnection,
        results: list[_Result],
        writes: dict[str, tuple[JSON, Stored | None]],
        now: str,
    ) -> None:
        """A newer result of the same lab that no longer meets a rule marks the patient's open alerts of that
        rule and lab (about older results) back to normal."""
        quiet = [r for r in results if r.current.get("status") not in labs.WITHDRAWN_STATUSES]
        # Only the latest result of each lab and patient in this batch speaks for the patient now; alerts
        # are looked up by (patient, lab), so the work grows with results plus alerts, not their product.
        latest: dict[tuple[str, tuple[str | None, str]], tuple[int, _Result]] = {}
        for result in quiet:
            when = _effective(result.current)
            if when is None:
                continue
            for code in labs.observation_codes(result.current):
                key = (result.patient, code)
                if key not in latest or latest[key][0] < when:
                    latest[key] = (when, result)
        if not latest:
            return
        tasks = await self._candidates(conn, latest)
        if not tasks:
            return
        focus_ids = {
            ("Observation", str(task["focus"]["reference"]).split("/", 1)[1])
            for task, _ in tasks
            if str((task.get("focus") or {}).get("reference") or "").startswith("Observation/")
        }
        focused = {
            f"Observation/{s.id}": orjson.loads(s.content)
            for s in await store.load_by_keys(conn, focus_ids)
            if s.content
        }
        effective = {reference: _effective(obs) for reference, obs in focused.items()}
        groups: dict[tuple[str, tuple[str | None, str]], list[tuple[JSON, Stored]]] = {}
        for task, stored in tasks:
            patient = str((task.get("for") or {}).get("reference"))
            focus = focused.get(str((task.get("focus") or {}).get("reference")))
            for code in self._labs_of(task, focus):
                if (patient, code) in latest:
                    groups.setdefault((patient, code), []).append((task, stored))
        for key, members in groups.items():
            when, result = latest[key]
            for task, stored in members:
                focus = str((task.get("focus") or {}).get("reference") or "")
                before = effective.get(focus)
                if (
                    stored.id in writes
                    or focus == f"Observation/{result.id}"
                    or rules_of_alerts.rule_of(task) in result.holding
                    or before is None
                    or when <= before  # only a later result says the patient is back to normal
                ):
                    continue
                why = (
                    f"A later result (Observation/{result.id}) no longer meets the rule."
                    " Close the alert when reviewed."
                )
                marked = rules_of_alerts.back_to_normal(task, why, now)
                if marked is not None:
                    writes[stored.id] = (marked, stored)

    async def _candidates(
        self, conn: AsyncConnection, latest: dict[tuple[str, tuple[str | None, str]], tuple[int, _Result]]
    ) -> list[tuple[JSON, Stored]]:
        """The open alerts these latest results may speak to (a superset of those they mark: the caller
        judges), found by `alert_candidate` rather than by reading each patient's every open alert. The
        same reach as `_labs_of`: a drug-lab rule's alert by any of the rule's labs, any other by the codes
        of its result; none whose rule holds for the latest result."""
        by_lab: list[store_alerts.LabKey] = []
        by_rule: dict[str, set[str]] = {}
        for (patient, (lab_system, lab_code)), (_, result) in latest.items():
            by_lab.append(store_alerts.LabKey(patient, lab_system, lab_code, result.holding))
            rules = self.rules_of_lab.get((lab_system, lab_code), set()) - result.holding
            if rules:
                by_rule.setdefault(patient, set()).update(rules)
        task_ids = await store_alerts.live_tasks(
            conn, by_lab=by_lab, by_rule=by_rule, lab_rules=self.labs_of_rule.keys()
        )
        stored = await store.load_by_keys(conn, [("Task", i) for i in task_ids]) if task_ids else []
        tasks = [(orjson.loads(s.content or b"{}"), s) for s in sorted(stored, key=lambda s: s.id)]
        # What the Task search asked before the table: open alerts (the rows say so; the Tasks are the word).
        return [(t, s) for t, s in tasks if rules_of_alerts.is_alert(t) and rules_of_alerts.is_open(t)]

    def _labs_of(self, task: JSON, focus: JSON | None) -> set[tuple[str | None, str]]:
        """The labs whose results speak to an alert: any of a drug-lab rule's labs (they are alternatives),
        else the codes of the alert's own result (the Task does not carry them: it says no more of the
        result than that a rule fired)."""
        rule_labs = self.labs_of_rule.get(rules_of_alerts.rule_of(task) or "")
        if rule_labs is not None:
            return set(rule_labs)
        return labs.observation_codes(focus) if focus is not None else set()
