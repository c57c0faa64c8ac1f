"""Prior-authorization state beside the Tasks: tracking rows, correlation keys, payer requests, timers.

All SQL for prior authorization lives here. Rows are plain dataclasses; the service decides.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, delete, or_, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.store.tables import (
    pa_reference,
    pa_submission,
    pa_timer_fired,
    pa_tracking,
    resource,
    sp_reference,
)


def _insert(conn: AsyncConnection, table: Any) -> Any:
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    return dialect.insert(table)


# --- tracking -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Tracking:
    task_id: str
    task_version: int
    business_status: str
    payer: str | None
    priority: str
    submitted_us: int | None
    due_us: int | None
    decided_us: int | None
    auth_end: str | None
    updated_us: int


def _tracking(row: Any) -> Tracking:
    return Tracking(
        row.task_id,
        row.task_version,
        row.business_status,
        row.payer,
        row.priority,
        row.submitted_us,
        row.due_us,
        row.decided_us,
        row.auth_end,
        row.updated_us,
    )


async def tracking(conn: AsyncConnection, task_id: str) -> Tracking | None:
    row = (await conn.execute(select(pa_tracking).where(pa_tracking.c.task_id == task_id))).first()
    return _tracking(row) if row is not None else None


async def save_tracking(conn: AsyncConnection, row: Tracking) -> None:
    values = {name: getattr(row, name) for name in Tracking.__dataclass_fields__}
    statement = _insert(conn, pa_tracking).values(**values)
    statement = statement.on_conflict_do_update(
        index_elements=[pa_tracking.c.task_id],
        set_={k: v for k, v in values.items() if k != "task_id"},
        where=pa_tracking.c.task_version <= row.task_version,  # an older version never wins
    )
    await conn.execute(statement)


async def any_tracked(conn: AsyncConnection) -> bool:
    return (await conn.execute(select(pa_tracking.c.task_id).limit(1))).first() is not None


async def forget_tracking(conn: AsyncConnection, task_id: str) -> None:
    await conn.execute(delete(pa_tracking).where(pa_tracking.c.task_id == task_id))


async def in_status(conn: AsyncConnection, statuses: Sequence[str]) -> list[Tracking]:
    rows = await conn.execute(select(pa_tracking).where(pa_tracking.c.business_status.in_(list(statuses))))
    return [_tracking(r) for r in rows]


async def overdue(conn: AsyncConnection, statuses: Sequence[str], now_us: int) -> list[Tracking]:
    t = pa_tracking.c
    rows = await conn.execute(
        select(pa_tracking).where(
            t.business_status.in_(list(statuses)), t.due_us.is_not(None), t.due_us < now_us
        )
    )
    return [_tracking(r) for r in rows]


async def submitted_ever(conn: AsyncConnection) -> list[Tracking]:
    """Every Task that was submitted at least once (turnaround figures)."""
    rows = await conn.execute(select(pa_tracking).where(pa_tracking.c.submitted_us.is_not(None)))
    return [_tracking(r) for r in rows]


async def submitted_between(
    conn: AsyncConnection,
    low_us: int,
    high_us: int,
    *,
    patient_ids: Sequence[str] | None,
    after_task_id: str | None,
    limit: int,
) -> list[Tracking]:
    """Up to `limit` Tasks first submitted in [low_us, high_us] (the PA turnaround Measure), by Task id
    after `after_task_id`; with `patient_ids`, only the Tasks of those Patients (`Task.for`)."""
    t = pa_tracking.c
    where = [t.submitted_us.is_not(None), t.submitted_us >= low_us, t.submitted_us <= high_us]
    if patient_ids is not None:
        r = sp_reference.c
        of_patients = (
            select(resource.c.res_id)
            .select_from(resource.join(sp_reference, sp_reference.c.rid == resource.c.rid))
            .where(
                resource.c.res_type == "Task",
                resource.c.deleted.is_(False),
                r.res_type == "Task",
                r.param == "patient",
                r.target_type == "Patient",
                r.target_id.in_(list(patient_ids)),
            )
        )
        where.append(t.task_id.in_(of_patients))
    if after_task_id is not None:
        where.append(t.task_id > after_task_id)
    rows = await conn.execute(select(pa_tracking).where(*where).order_by(t.task_id).limit(limit))
    return [_tracking(r) for r in rows]


async def lock_order(conn: AsyncConnection, request_id: str) -> None:
    """Serialise PA work on one MedicationRequest for the rest of the transaction (PostgreSQL; SQLite
    has one writer at a time already)."""
    if conn.dialect.name == "postgresql":
        await conn.execute(
            text("SELECT pg_advisory_xact_lock(hashtext(:key))"), {"key": f"prior-auth:{request_id}"}
        )


# --- correlation keys -----------------------------------------------------------------------------


async def add_references(conn: AsyncConnection, task_id: str, keys: Sequence[tuple[str, str]]) -> None:
    """Remember keys that identify this Task's request (first owner wins; values are capped at 255)."""
    rows = [{"kind": k, "value": v[:255], "task_id": task_id} for k, v in dict.fromkeys(keys) if v]
    if rows:
        await conn.execute(_insert(conn, pa_reference).values(rows).on_conflict_do_nothing())


async def find_task(conn: AsyncConnection, keys: Sequence[tuple[str, str]]) -> str | None:
    """The Task the first known key belongs to, trying keys in the order given."""
    if not keys:
        return None
    r = pa_reference.c
    rows = await conn.execute(
        select(r.kind, r.value, r.task_id).where(
            or_(*[and_(r.kind == k, r.value == v[:255]) for k, v in keys])
        )
    )
    found = {(row.kind, row.value): row.task_id for row in rows}
    for kind, value in keys:
        if (kind, value[:255]) in found:
            return str(found[(kind, value[:255])])
    return None


async def tasks_by_key(conn: AsyncConnection, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], str]:
    """Every known key among `keys` with the Task it belongs to."""
    if not keys:
        return {}
    r = pa_reference.c
    rows = await conn.execute(
        select(r.kind, r.value, r.task_id).where(
            or_(*[and_(r.kind == k, r.value == v[:255]) for k, v in keys])
        )
    )
    return {(row.kind, row.value): str(row.task_id) for row in rows}


async def references(conn: AsyncConnection, task_id: str) -> list[tuple[str, str]]:
    rows = await conn.execute(
        select(pa_reference.c.kind, pa_reference.c.value).where(pa_reference.c.task_id == task_id)
    )
    return [(row.kind, row.value) for row in rows]


# --- requests to payers ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Submission:
    id: str
    task_id: str
    task_version: int
    kind: str
    payer: str
    state: str
    attempt: int
    next_attempt_us: int
    lease_until_us: int | None
    claim_token: str | None
    created_us: int
    sent_us: int | None
    duration_us: int | None
    http_status: int | None
    error: str | None
    body: str


def new_submission(
    submission_id: str,
    task_id: str,
    version: int,
    kind: str,
    payer: str,
    attempt: int,
    now_us: int,
    body: str,
) -> Submission:
    """A request to send now (state pending)."""
    return Submission(
        submission_id, task_id, version, kind, payer, "pending", attempt, now_us, None, None, now_us,
        None, None, None, None, body,
    )  # fmt: skip


def _submission(row: Any) -> Submission:
    return Submission(**{name: getattr(row, name) for name in Submission.__dataclass_fields__})


async def add_submission(conn: AsyncConnection, submission: Submission) -> bool:
    """Record a request to send; False when one with this id (Task version and kind) exists already."""
    values = {name: getattr(submission, name) for name in Submission.__dataclass_fields__}
    result = await conn.execute(
        _insert(conn, pa_submission).values(**values).on_conflict_do_nothing().returning(pa_submission.c.id)
    )
    return result.first() is not None


async def submission(conn: AsyncConnection, submission_id: str) -> Submission | None:
    row = (await conn.execute(select(pa_submission).where(pa_submission.c.id == submission_id))).first()
    return _submission(row) if row is not None else None


async def submissions_of(conn: AsyncConnection, task_id: str) -> list[Submission]:
    return (await submissions_of_tasks(conn, [task_id])).get(task_id, [])


async def submissions_of_tasks(conn: AsyncConnection, task_ids: Sequence[str]) -> dict[str, list[Submission]]:
    """Each Task's requests to payers, oldest first, in one query."""
    s = pa_submission.c
    found: dict[str, list[Submission]] = {}
    if not task_ids:
        return found
    rows = await conn.execute(
        select(pa_submission).where(s.task_id.in_(list(task_ids))).order_by(s.created_us, s.id)
    )
    for row in rows:
        found.setdefault(row.task_id, []).append(_submission(row))
    return found


async def claim_submission(
    conn: AsyncConnection, submission_id: str, now_us: int, lease_us: int, token: str
) -> bool:
    """pending -> sending for this caller (`token`); False when someone else has it or it is done.

    A `sending` row whose process died is never taken over here (the payer may have it):
    `recover_stale` turns it into a failed attempt instead.
    """
    s = pa_submission.c
    result = await conn.execute(
        update(pa_submission)
        .where(s.id == submission_id, s.state == "pending")
        .values(state="sending", lease_until_us=now_us + lease_us, claim_token=token)
        .returning(s.id)
    )
    return result.first() is not None


async def recover_stale(conn: AsyncConnection, submission_id: str, now_us: int, token: str) -> bool:
    """A `sending` row past its lease (its process died mid-call) becomes this caller's to record as a
    failed attempt; True for exactly one caller."""
    s = pa_submission.c
    result = await conn.execute(
        update(pa_submission)
        .where(s.id == submission_id, s.state == "sending", s.lease_until_us < now_us)
        .values(claim_token=token, lease_until_us=now_us + 60_000_000)
        .returning(s.id)
    )
    return result.first() is not None


async def supersede(conn: AsyncConnection, submission_id: str, token: str) -> None:
    """Not sent: the Task moved on (answered, cancelled, resubmitted) before this request went out."""
    s = pa_submission.c
    await conn.execute(
        update(pa_submission)
        .where(s.id == submission_id, s.claim_token == token)
        .values(state="superseded", lease_until_us=None)
    )


async def finish_submission(
    conn: AsyncConnection,
    submission_id: str,
    token: str,
    *,
    state: str,
    sent_us: int | None,
    duration_us: int | None,
    http_status: int | None,
    error: str | None,
    next_attempt_us: int = 0,
) -> bool:
    """Record the outcome; only the caller that claimed the row (`token`) may, and only once."""
    s = pa_submission.c
    result = await conn.execute(
        update(pa_submission)
        .where(s.id == submission_id, s.state == "sending", s.claim_token == token)
        .values(
            state=state,
            sent_us=sent_us,
            duration_us=duration_us,
            http_status=http_status,
            error=error[:2000] if error else None,
            next_attempt_us=next_attempt_us,
            lease_until_us=None,
        )
        .returning(s.id)
    )
    return result.first() is not None


async def due_submissions(conn: AsyncConnection, now_us: int, limit: int = 100) -> list[Submission]:
    """Requests to send now: pending ones, `sending` ones whose process died, and failed ones to retry."""
    s = pa_submission.c
    rows = await conn.execute(
        select(pa_submission)
        .where(
            or_(
                and_(s.state.in_(("pending", "failed")), s.next_attempt_us <= now_us),
                and_(s.state == "sending", s.lease_until_us < now_us),
            )
        )
        .order_by(s.next_attempt_us)
        .limit(limit)
    )
    return [_submission(r) for r in rows]


async def set_submission_state(conn: AsyncConnection, submission_id: str, state: str, expected: str) -> bool:
    result = await conn.execute(
        update(pa_submission)
        .where(pa_submission.c.id == submission_id, pa_submission.c.state == expected)
        .values(state=state)
        .returning(pa_submission.c.id)
    )
    return result.first() is not None


# --- timers ---------------------------------------------------------------------------------------


async def fire_once(conn: AsyncConnection, task_id: str, kind: str, key: str, now_us: int) -> bool:
    """True the first time (task, kind, key) is fired; False ever after (in any process)."""
    result = await conn.execute(
        _insert(conn, pa_timer_fired)
        .values(task_id=task_id, kind=kind, key=key[:80], fired_us=now_us)
        .on_conflict_do_nothing()
        .returning(pa_timer_fired.c.task_id)
    )
    return result.first() is not None


async def fired(conn: AsyncConnection, task_id: str) -> list[tuple[str, str, int]]:
    f = pa_timer_fired.c
    rows = await conn.execute(select(f.kind, f.key, f.fired_us).where(f.task_id == task_id))
    return [(r.kind, r.key, r.fired_us) for r in rows]
