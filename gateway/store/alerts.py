"""The alert candidates: which alert Tasks a later lab result of a patient may speak to, found without
reading the patient's whole pile of alerts (`alert_candidate` in tables.py).

The rows are derived from the alert Tasks in the transaction that writes them (the alert service keeps
them), so they are as current as the Tasks. A lookup returns a superset of the alerts a result marks: the
caller loads those Tasks and decides.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import asdict, dataclass

from sqlalchemy import and_, bindparam, delete, insert, or_, select, union, update
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.elements import ColumnElement

from gateway.store.tables import alert_candidate

CHUNK = 100  # keys per statement: SQLite parses a flat OR as a tree as deep as its terms (limit 1000)
# Renders as the partial indexes' WHERE on each backend ("live = 1", "live"): SQLite needs the very term.
_LIVE = alert_candidate.c.live


@dataclass(frozen=True, slots=True)
class Candidate:
    """One row: an alert Task and one code of its result."""

    task_id: str
    patient: str
    rule: str
    lab_system: str | None
    lab_code: str
    live: bool


@dataclass(frozen=True, slots=True)
class LabKey:
    """A patient's latest result of a lab, and the rules that hold for it (their alerts stay as they are)."""

    patient: str
    lab_system: str | None
    lab_code: str
    holding: frozenset[str]


async def replace(conn: AsyncConnection, *, task_ids: Collection[str], rows: Sequence[Candidate]) -> None:
    """`rows` written afresh: the rows of the alerts `task_ids` go first (a chunk of them a statement),
    then the new ones in one statement."""
    c = alert_candidate.c
    ids = sorted(task_ids)
    for start in range(0, len(ids), CHUNK):
        await conn.execute(delete(alert_candidate).where(c.task_id.in_(ids[start : start + CHUNK])))
    if rows:
        await conn.execute(insert(alert_candidate), [asdict(row) for row in rows])


async def set_live(conn: AsyncConnection, *, live: Mapping[str, bool]) -> None:
    """Whether each of these alerts is live now: one statement for them all (none when it has no rows)."""
    if not live:
        return
    stmt = (
        update(alert_candidate)
        .where(alert_candidate.c.task_id == bindparam("b_task_id"))
        .values(live=bindparam("b_live"))
    )
    await conn.execute(stmt, [{"b_task_id": t, "b_live": v} for t, v in sorted(live.items())])


async def live_tasks(
    conn: AsyncConnection,
    *,
    by_lab: Sequence[LabKey],
    by_rule: Mapping[str, Collection[str]],
    lab_rules: Collection[str],
) -> set[str]:
    """The ids of the live alerts (a) of a patient's lab, whose rule neither holds for its latest result
    nor is one of `lab_rules` (rules read by their configured labs instead), or (b) of a patient and one of
    the rules `by_rule` names for that patient. One statement per chunk of keys."""
    found: set[str] = set()
    patients = sorted(by_rule)
    for start in range(0, max(len(by_lab), len(patients)), CHUNK):
        parts = [
            _of_labs(by_lab[start : start + CHUNK], lab_rules),
            _of_rules({p: by_rule[p] for p in patients[start : start + CHUNK]}),
        ]
        selects = [
            select(alert_candidate.c.task_id).where(_LIVE, condition)
            for condition in parts
            if condition is not None
        ]
        if selects:
            stmt = union(*selects) if len(selects) > 1 else selects[0]
            found.update(str(row[0]) for row in await conn.execute(stmt))
    return found


def _of_labs(keys: Sequence[LabKey], lab_rules: Collection[str]) -> ColumnElement[bool] | None:
    c = alert_candidate.c
    terms = [
        and_(
            c.patient == key.patient,
            c.lab_system.is_(None) if key.lab_system is None else c.lab_system == key.lab_system,
            c.lab_code == key.lab_code,
            *([c.rule.not_in(sorted(key.holding))] if key.holding else []),
        )
        for key in keys
    ]
    if not terms:
        return None
    return and_(or_(*terms), c.rule.not_in(sorted(lab_rules))) if lab_rules else or_(*terms)


def _of_rules(by_rule: Mapping[str, Collection[str]]) -> ColumnElement[bool] | None:
    c = alert_candidate.c
    terms = [and_(c.patient == p, c.rule.in_(sorted(rules))) for p, rules in by_rule.items() if rules]
    return or_(*terms) if terms else None
