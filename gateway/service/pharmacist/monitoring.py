"""The monitoring calendar (README, "Monitoring calendar"): a write observer that keeps each specialty
order's CarePlan in step with the order and the results, and a timer that opens `lab-overdue` Tasks.

- An order of a drug whose drug-lab rule has a schedule becomes active: its CarePlan is written (the dates
  from `gateway.pharmacist.schedule`, counted from the therapy start: the patient's first order of that
  drug, so a renewal goes on where the therapy is rather than starting over; activities up to the order's
  `dispenseRequest.validityPeriod.end`, else 12 months from its start: a renewal is a new order with its
  own calendar).
- The order is held (on-hold): the open activities from today on go on hold; resumed (active again): they
  move by the days held. Stopped, cancelled, completed or entered in error: what is not completed is
  cancelled, and the open lab-overdue Tasks of the calendar are cancelled. A dose change (dosageInstruction
  differs) brings the next open lab forward to the day of the change.
- A result of one of the rule's labs completes the activity whose window holds its date, and completes the
  calendar's open lab-overdue Tasks (a late result closes the gap; the missed activity stays missed).
- The timer (`sweep`) opens one lab-overdue Task per activity past its due date plus grace; creating it
  fires `monitoring-overdue`, once, since the Task's id is derived from the calendar and the activity.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, date, datetime

import orjson
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.fhir import dates
from gateway.mapping.monitoring import DrugLabRule, MonitoringRules
from gateway.pharmacist import calendar, schedule
from gateway.pharmacist.schedule import Activity
from gateway.pharmacist.vocabulary import (
    ALERT_RULE,
    CARE_PLAN_CATEGORY,
    LAB_OVERDUE,
    MONITORING_CALENDAR,
    OPEN_STATUSES,
    WORK_ITEM_TYPE,
)
from gateway.routing import labs
from gateway.service.access.context import RequestContext
from gateway.service.fhirapi.interactions import FhirService
from gateway.service.pharmacist.matching import assigned_pharmacists, referenced_medication
from gateway.service.workers import Repeating
from gateway.store import resources as store
from gateway.store import search as store_search
from gateway.store.resources import PendingVersion, Stored
from gateway.types import JSON

log = logging.getLogger("gateway.monitoring")

STOPPED = frozenset({"stopped", "cancelled", "completed", "entered-in-error"})
DEFAULT_MONTHS = 12
CALENDAR = f"{CARE_PLAN_CATEGORY}|{MONITORING_CALENDAR}"


def _today() -> date:
    return datetime.now(UTC).date()


def _day(value: object) -> date | None:
    try:
        return date.fromisoformat(str(value)[:10]) if value else None
    except ValueError:
        return None


def _effective_day(obs: JSON) -> date | None:
    period = obs.get("effectivePeriod")
    period = period if isinstance(period, dict) else {}
    return _day(obs.get("effectiveDateTime") or period.get("start") or obs.get("issued"))


def overdue_task_id(plan_id: str, index: int) -> str:
    digest = hashlib.sha256(f"lab-overdue|{plan_id}|{index}".encode()).hexdigest()
    return f"lab-overdue-{digest[:36]}"


def _months_between(start: date, end: date) -> int:
    return max((end.year - start.year) * 12 + end.month - start.month + 1, 1)


class MonitoringCalendar:
    def __init__(self, fhir: FhirService, rules: MonitoringRules, *, interval_s: float = 3600.0) -> None:
        self.fhir = fhir
        self.rules = {rule.id: rule for rule in rules.drug_lab if rule.schedule is not None}
        self.monitoring = rules
        self.lab_codes = {(lab.system, lab.code) for rule in self.rules.values() for lab in rule.labs}
        self.timer = Repeating(
            "monitoring-calendar", "monitoring calendar sweep", self.sweep, interval_s, log
        )

    # -- the write observer ----------------------------------------------------------------------

    async def observe(
        self, conn: AsyncConnection, ctx: RequestContext, pending: Sequence[PendingVersion], _: list[Stored]
    ) -> None:
        if not self.rules:
            return
        system = RequestContext(ctx.base_url)
        writes: dict[str, tuple[JSON, Stored | None]] = {}
        orders = [p for p in pending if p.type == "MedicationRequest"]
        if orders:
            await self._orders_changed(conn, system, orders, writes)
        results = [p for p in pending if p.type == "Observation" and p.content is not None]
        if results:
            await self._results(conn, system, results, writes)
        await self.fhir.write_derived(conn, system, writes)

    async def _current(
        self, conn: AsyncConnection, rtype: str, rid: str
    ) -> tuple[JSON | None, Stored | None]:
        stored = await store.current(conn, rtype, rid)
        if stored is None or stored.deleted or stored.content is None:
            return None, stored
        return orjson.loads(stored.content), stored

    async def _orders_changed(
        self,
        conn: AsyncConnection,
        system: RequestContext,
        pending: Sequence[PendingVersion],
        writes: dict[str, tuple[JSON, Stored | None]],
    ) -> None:
        today = _today()
        for p in pending:
            current = orjson.loads(p.content) if p.content else None
            previous = orjson.loads(p.previous) if p.previous else None
            request = current or previous
            if request is None:
                continue
            rules = [
                self.rules[r.id]
                for r in labs.ordered_rules(
                    request, self.monitoring, await referenced_medication(conn, request)
                )
                if r.id in self.rules
            ]
            for rule in rules:
                await self._order_rule(conn, system, p.id, previous, current, rule, today, writes)

    async def _order_rule(
        self,
        conn: AsyncConnection,
        system: RequestContext,
        request_id: str,
        previous: JSON | None,
        current: JSON | None,
        rule: DrugLabRule,
        today: date,
        writes: dict[str, tuple[JSON, Stored | None]],
    ) -> None:
        plan_id = calendar.calendar_id(request_id, rule.id)
        existing, stored = await self._current(conn, "CarePlan", plan_id)
        status = (current or {}).get("status") if current is not None else "entered-in-error"
        before = (previous or {}).get("status")
        if existing is None:
            if status == "active":
                made = await self._new_plan(conn, system, plan_id, request_id, current or {}, rule, today)
                if made is not None:
                    writes[plan_id] = (made, stored)
            return
        activities, outcomes = calendar.read_activities(existing, rule)
        held = calendar.held_on(existing)
        plan_status = existing.get("status")
        if status in STOPPED:
            activities, plan_status, held = schedule.discontinue(activities), "revoked", None
            if status == "completed":
                plan_status = "completed"
            await self._cancel_overdue(conn, plan_id, len(activities), writes)
        elif status == "on-hold" and plan_status == "active":
            activities, plan_status, held = schedule.hold(activities, today), "on-hold", today
        elif status == "active" and plan_status == "on-hold":
            activities = schedule.resume(activities, held or today, max(today, held or today))
            plan_status, held = "active", None
        elif status == "active" and before == "active" and _dose(previous) != _dose(current):
            activities = _bring_forward(activities, today)
        else:
            return
        resource = calendar.care_plan(
            plan_id,
            rule,
            activities,
            patient=str(existing["subject"]["reference"]),
            request=f"MedicationRequest/{request_id}",
            start=_day((existing.get("period") or {}).get("start")) or today,
            status=str(plan_status),
            held_on=held,
            outcomes=outcomes,
        )
        writes[plan_id] = (resource, stored)

    async def _new_plan(
        self,
        conn: AsyncConnection,
        system: RequestContext,
        plan_id: str,
        request_id: str,
        request: JSON,
        rule: DrugLabRule,
        today: date,
    ) -> JSON | None:
        """The calendar for a newly active order, with the results already stored applied (a baseline lab
        drawn before the order counts); None when no lab is left to schedule."""
        patient = str((request.get("subject") or {}).get("reference") or "")
        order_start = _day(request.get("authoredOn")) or today
        therapy_start = await self._therapy_start(conn, system, patient, rule, order_start)
        validity = ((request.get("dispenseRequest") or {}).get("validityPeriod") or {}).get("end")
        horizon = _day(validity) or schedule.add_months(order_start, DEFAULT_MONTHS)
        planned = schedule.plan(rule, therapy_start, months=_months_between(therapy_start, horizon))
        # Labs due before the order, or whose grace ran out before the gateway heard of it, are not owed here.
        kept = tuple(a for a in planned if order_start <= a.due <= horizon and a.late_after >= today)
        if not kept:
            return None
        activities, outcomes = await self._stored_results(conn, system, patient, rule, kept)
        return calendar.care_plan(
            plan_id,
            rule,
            activities,
            patient=patient,
            request=f"MedicationRequest/{request_id}",
            start=therapy_start,
            outcomes=outcomes,
        )

    async def _stored_results(
        self,
        conn: AsyncConnection,
        system: RequestContext,
        patient: str,
        rule: DrugLabRule,
        activities: tuple[Activity, ...],
    ) -> tuple[tuple[Activity, ...], dict[int, str]]:
        outcomes: dict[int, str] = {}
        if not patient.startswith("Patient/"):
            return activities, outcomes
        codes = ",".join(f"{lab.system}|{lab.code}" for lab in rule.labs)
        found = await self.fhir.all_matching(
            conn, system, "Observation", [("patient", patient), ("code", codes)]
        )
        for stored in sorted(found, key=lambda s: s.id):
            obs = orjson.loads(stored.content or b"{}")
            when = _effective_day(obs)
            lab = next((c for c in rule.labs if (c.system, c.code) in labs.observation_codes(obs)), None)
            if obs.get("status") in labs.WITHDRAWN_STATUSES or when is None or lab is None:
                continue
            activities, done = schedule.record_result(activities, lab, when)
            if done is not None:
                outcomes[next(n for n, a in enumerate(activities) if a is done)] = f"Observation/{stored.id}"
        return activities, outcomes

    async def _therapy_start(
        self,
        conn: AsyncConnection,
        system: RequestContext,
        patient: str,
        rule: DrugLabRule,
        order_start: date,
    ) -> date:
        """The authoredOn of the patient's first order of the rule's drug: a renewal continues the therapy."""
        if not patient.startswith("Patient/"):
            return order_start
        earliest = order_start
        for stored in await self.fhir.all_matching(conn, system, "MedicationRequest", [("patient", patient)]):
            other = orjson.loads(stored.content or b"{}")
            if other.get("status") == "entered-in-error":
                continue
            medications = await referenced_medication(conn, other)
            if rule.id not in {r.id for r in labs.ordered_rules(other, self.monitoring, medications)}:
                continue
            authored = _day(other.get("authoredOn"))
            if authored is not None and authored < earliest:
                earliest = authored
        return earliest

    async def _cancel_overdue(
        self, conn: AsyncConnection, plan_id: str, count: int, writes: dict[str, tuple[JSON, Stored | None]]
    ) -> None:
        keys = [("Task", overdue_task_id(plan_id, n)) for n in range(count)]
        now = dates.format_instant(dates.now_us())
        for stored in await store.load_by_keys(conn, keys):
            task = orjson.loads(stored.content or b"{}")
            if task.get("status") in OPEN_STATUSES:
                note = {"authorString": "specialty-gateway", "time": now, "text": "The order was stopped."}
                task = {
                    **task,
                    "status": "cancelled",
                    "lastModified": now,
                    "note": [*(task.get("note") or []), note],
                }
                writes[stored.id] = (task, stored)

    # -- results ---------------------------------------------------------------------------------

    async def _results(
        self,
        conn: AsyncConnection,
        system: RequestContext,
        pending: Sequence[PendingVersion],
        writes: dict[str, tuple[JSON, Stored | None]],
    ) -> None:
        results: list[tuple[str, JSON]] = []
        for p in pending:
            obs = orjson.loads(p.content or b"{}")
            if obs.get("status") in labs.WITHDRAWN_STATUSES or not (
                labs.observation_codes(obs) & self.lab_codes
            ):
                continue
            subject = str((obs.get("subject") or {}).get("reference") or "")
            if subject.startswith("Patient/"):
                results.append((p.id, obs))
        if not results:
            return
        # The patients' CarePlans by the index's reference rows, the active calendars among them picked
        # here: what a search for patient, category and status would find, without parsing one (every
        # result of a monitored lab asks).
        patients = sorted({str(obs["subject"]["reference"]) for _, obs in results})
        now = dates.format_instant(dates.now_us())
        plans = await store_search.by_reference(conn, "CarePlan", "patient", patients)
        for stored in sorted(plans, key=lambda s: s.id):
            plan = orjson.loads(stored.content or b"{}")
            if plan.get("status") != "active" or not calendar.is_calendar(plan):
                continue
            rule = self.rules.get(calendar.rule_of(plan) or "")
            if rule is None:
                continue
            activities, outcomes = calendar.read_activities(plan, rule)
            changed = False
            for obs_id, obs in results:
                if obs["subject"]["reference"] != plan["subject"]["reference"]:
                    continue
                when = _effective_day(obs)
                lab = next((c for c in rule.labs if (c.system, c.code) in labs.observation_codes(obs)), None)
                if (
                    when is None
                    or lab is None
                    or any(ref == f"Observation/{obs_id}" for ref in outcomes.values())
                ):
                    continue
                activities, done = schedule.record_result(activities, lab, when)
                if done is not None:
                    index = next(n for n, a in enumerate(activities) if a is done)
                    outcomes[index] = f"Observation/{obs_id}"
                    changed = True
                await self._close_overdue(conn, stored.id, activities, obs_id, when, now, writes)
            if changed:
                resource = calendar.care_plan(
                    stored.id,
                    rule,
                    activities,
                    patient=str(plan["subject"]["reference"]),
                    request=calendar.request_of(plan) or "",
                    start=_day((plan.get("period") or {}).get("start")) or _today(),
                    status=str(plan.get("status")),
                    held_on=calendar.held_on(plan),
                    outcomes=outcomes,
                )
                writes[stored.id] = (resource, stored)

    async def _close_overdue(
        self,
        conn: AsyncConnection,
        plan_id: str,
        activities: Sequence[Activity],
        obs_id: str,
        when: date,
        now: str,
        writes: dict[str, tuple[JSON, Stored | None]],
    ) -> None:
        """A result of the lab arrived: the calendar's open lab-overdue Tasks for labs due by then close."""
        keys = [("Task", overdue_task_id(plan_id, n)) for n, a in enumerate(activities) if a.due <= when]
        for stored in await store.load_by_keys(conn, keys):
            task = orjson.loads(stored.content or b"{}")
            if task.get("status") not in OPEN_STATUSES:
                continue
            text = f"A result arrived (Observation/{obs_id}, taken {when.isoformat()})."
            note = {"authorString": "specialty-gateway", "time": now, "text": text}
            task = {
                **task,
                "status": "completed",
                "lastModified": now,
                "note": [*(task.get("note") or []), note],
            }
            writes[stored.id] = (task, stored)

    # -- the timer -------------------------------------------------------------------------------

    async def start(self) -> None:
        self.timer.start()

    async def stop(self) -> None:
        await self.timer.stop()

    async def sweep(self, today: date | None = None) -> int:
        """Open a lab-overdue Task for every active calendar's activity past due plus grace on `today`
        (default: the current UTC date); returns how many were opened."""
        today = today or _today()
        system = RequestContext("")
        opened = 0
        async with self.fhir.db.write() as conn:
            plans = await self.fhir.all_matching(
                conn, system, "CarePlan", [("category", CALENDAR), ("status", "active")]
            )
            wanted: dict[str, tuple[JSON, DrugLabRule, int, Activity]] = {}
            for stored in plans:
                plan = orjson.loads(stored.content or b"{}")
                rule = self.rules.get(calendar.rule_of(plan) or "")
                if rule is None:
                    continue
                activities, _ = calendar.read_activities(plan, rule)
                for activity in schedule.overdue(activities, today):
                    index = activities.index(activity)
                    wanted[overdue_task_id(stored.id, index)] = (
                        {**plan, "id": stored.id},
                        rule,
                        index,
                        activity,
                    )
            if not wanted:
                return 0
            existing = {s.id for s in await store.load_by_keys(conn, [("Task", t) for t in wanted])}
            new = {t: w for t, w in wanted.items() if t not in existing}
            owners = await assigned_pharmacists(
                conn, sorted({str(w[0]["subject"]["reference"]) for w in new.values()})
            )
            now = dates.format_instant(dates.now_us())
            writes: dict[str, tuple[JSON, Stored | None]] = {}
            for task_id, (plan, rule, _, activity) in new.items():
                patient = str(plan["subject"]["reference"])
                writes[task_id] = (
                    _overdue_task(task_id, plan, rule, activity, owners.get(patient), now),
                    None,
                )
                opened += 1
            await self.fhir.write_derived(conn, system, writes)
        if opened:
            log.info("monitoring sweep opened %d lab-overdue task(s)", opened)
        return opened


def _dose(request: JSON | None) -> bytes:
    return orjson.dumps((request or {}).get("dosageInstruction"), option=orjson.OPT_SORT_KEYS)


def _bring_forward(activities: tuple[Activity, ...], today: date) -> tuple[Activity, ...]:
    """A dose change: the next open lab due after today is due today instead (its window opens today at the
    latest), the ones after it stay."""
    for n, activity in enumerate(activities):
        if activity.status == "scheduled" and activity.due > today:
            moved = replace(activity, due=today, window_start=min(activity.window_start, today))
            return (*activities[:n], moved, *activities[n + 1 :])
    return activities


def _overdue_task(
    task_id: str, plan: JSON, rule: DrugLabRule, activity: Activity, owner: str | None, now: str
) -> JSON:
    # A lab that can show a critical value is urgent when missed (ranked high on the worklist).
    urgent = any(band.severity == "critical" for band in rule.bands)
    task: JSON = {
        "resourceType": "Task",
        "id": task_id,
        "status": "ready",
        "intent": "order",
        "priority": "urgent" if urgent else "routine",
        "code": {
            "coding": [{"system": WORK_ITEM_TYPE, "code": LAB_OVERDUE, "display": "Monitoring lab overdue"}]
        },
        "description": (
            f"{rule.drug}: monitoring lab due {activity.due.isoformat()} not received by"
            f" {activity.late_after.isoformat()} ({activity.grace_days} days' grace)"
        ),
        "focus": {"reference": f"CarePlan/{plan['id']}"},
        "for": {"reference": str(plan["subject"]["reference"])},
        "authoredOn": now,
        "lastModified": now,
        "reasonCode": {
            "coding": [{"system": ALERT_RULE, "code": rule.id}],
            "text": f"{rule.drug} monitoring",
        },
        "input": [
            {
                "type": {"text": "lab"},
                "valueCodeableConcept": {"coding": [{"system": c.system, "code": c.code} for c in rule.labs]},
            },
            {"type": {"text": "due"}, "valueDate": activity.due.isoformat()},
        ],
        "restriction": {"period": {"end": activity.late_after.isoformat()}},  # the deadline that passed
    }
    request = calendar.request_of(plan)
    if request is not None:
        task["basedOn"] = [{"reference": request}]
    if owner is not None:
        task["owner"] = {"reference": owner}
    return task
