"""Every write of a PA Task, whatever wrote it (the PA service, a REST PUT, a transaction Bundle):
the lifecycle is enforced and the tracking row beside the Task is kept current, in the same transaction.

An invalid move (e.g. denied -> approved; an appeal is a new Task) is refused with a 422
OperationOutcome naming the allowed moves, and nothing of that write is stored.
"""

from __future__ import annotations

from collections.abc import Sequence

import orjson
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.exceptions import Unprocessable
from gateway.fhir import dates
from gateway.pa import tasks
from gateway.pa.lifecycle import AWAITING_PAYER, transition_problem
from gateway.service.access.context import RequestContext
from gateway.store import priorauth as pa_store
from gateway.store import search as store_search
from gateway.store.database import Database
from gateway.store.resources import PendingVersion, Stored
from gateway.types import JSON, Issue

PA_TASK_TYPES = frozenset(
    {"prior-authorization", "prior-authorization-renewal", "prior-authorization-appeal"}
)
# The payer's decisions (a withdrawal or a refusal to process is not one): they end the turnaround clock.
DECISIONS = frozenset({"approved", "approved-modified", "partially-approved", "denied"})


def _task(content: bytes | None) -> JSON | None:
    if content is None:
        return None
    task = orjson.loads(content)  # only read (statuses, dates): orjson is faster than `jsonio` here
    return task if isinstance(task, dict) else None


def _pa_task(content: bytes | None) -> JSON | None:
    task = _task(content)
    return task if task is not None and tasks.is_pa_task(task) else None


def _due_us(task: JSON) -> int | None:
    due = tasks.due(task)
    if not due:
        return None
    try:
        return dates.date_range(due)[0]
    except ValueError:
        return None


async def observe(
    conn: AsyncConnection, ctx: RequestContext, pending: Sequence[PendingVersion], written: list[Stored]
) -> None:
    now = dates.now_us()
    for p, s in zip(pending, written, strict=True):
        if p.type != "Task":
            continue
        current = _pa_task(p.content)
        previous = _task(p.previous)
        was_pa = previous is not None and tasks.is_pa_task(previous)
        if current is None:
            if p.content is None:
                await pa_store.forget_tracking(conn, s.id)
            elif was_pa:  # dropping Task.code would let the next write skip the lifecycle
                raise Unprocessable(
                    issues=[
                        Issue(
                            "error",
                            "business-rule",
                            "A prior-authorization Task cannot stop being one",
                            ("Task.code",),
                        )
                    ]
                )
            continue
        before = tasks.business_status(previous) if previous else None
        after = tasks.business_status(current)
        if after is None:
            continue  # the profile requires it; nothing to track
        problem = transition_problem(before, after)
        if problem:
            raise Unprocessable(issues=[Issue("error", "business-rule", problem, ("Task.businessStatus",))])
        await _track(conn, s.id, s.version, current, before, after, now)


async def _track(
    conn: AsyncConnection, task_id: str, version: int, task: JSON, before: str | None, after: str, now: int
) -> None:
    row = await pa_store.tracking(conn, task_id)
    submitted_us = row.submitted_us if row else None
    decided_us = row.decided_us if row else None
    if after in ("submitted", "appeal-submitted") and before != after:
        submitted_us = submitted_us or now
        if before in ("info-requested", "rejected-by-payer"):
            decided_us = None  # answered the payer's questions: the clock is the payer's again
    if after in DECISIONS and (before in AWAITING_PAYER or before == "submission-error") and not decided_us:
        decided_us = now if submitted_us else None
    owner = tasks.owner_key(task)  # an insurer named by identifier only is still known
    owner = owner[:255] if owner else None  # the column's size; a longer key just names no payer
    await pa_store.save_tracking(
        conn,
        pa_store.Tracking(
            task_id,
            version,
            after,
            owner,
            str(task.get("priority") or "routine"),
            submitted_us,
            _due_us(task),
            decided_us,
            tasks.authorized_end(task),
            now,
        ),
    )
    keys = [("trace", t) for t in [tasks.trace_number(task)] if t]
    claim = tasks.reference_of(task, "input", "claim")
    if claim and claim.startswith("Claim/"):
        keys.append(("claim", claim.split("/", 1)[1]))
    await pa_store.add_references(conn, task_id, keys)


async def backfill(db: Database) -> int:
    """Tracking rows for PA Tasks stored before the gateway kept them (the first start after upgrading).

    Runs only while no Task is tracked at all, so it costs one query on every later start.
    """
    async with db.write() as conn:
        if await pa_store.any_tracked(conn):
            return 0
        found = await store_search.by_token(conn, "Task", "code", sorted(PA_TASK_TYPES))
        now = dates.now_us()
        count = 0
        for stored in found:
            task = _pa_task(stored.content)
            status = tasks.business_status(task) if task else None
            if task is not None and status is not None:
                await _track(conn, stored.id, stored.version, task, None, status, now)
                count += 1
    return count
