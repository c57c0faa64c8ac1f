"""The alert candidates: which alert Tasks a later lab result of a patient may speak to, found without
reading the patient's whole pile of alerts (`alert_candidate` in tables.py).

The rows are derived from the alert Tasks in the transaction that writes them (the alert service keeps
them), so they are as current as the Tasks. A lookup returns a superset of the alerts a result marks: the
caller loads those Tasks and decides.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, update
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.store import driver_sql
from gateway.store.resources import bulk_insert
from gateway.store.tables import alert_candidate

CHUNK = 100  # SELECTs per UNION ALL statement (SQLite allows 500 in one compound SELECT)


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
    ids = sorted(task_ids)
    for start in range(0, len(ids), CHUNK):
        chunk = ids[start : start + CHUNK]
        sql = f"DELETE FROM alert_candidate WHERE task_id IN ({driver_sql.marks(len(chunk))})"
        await driver_sql.execute_many(conn, sql, [tuple(chunk)])
    await bulk_insert(
        conn,
        alert_candidate,
        ("task_id", "patient", "rule", "lab_system", "lab_code", "live"),
        [(r.task_id, r.patient, r.rule, r.lab_system, r.lab_code, r.live) for r in rows],
    )


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
    the rules `by_rule` names for that patient.

    One SELECT per key, joined by UNION ALL, a chunk of keys a statement: each SELECT is an equality on
    the leading columns of a partial index, which both planners answer from that index. One flat OR of
    all the keys (the first version) let SQLite scan the whole table instead: 100 ms a batch at 12,000
    messages and growing with every alert ever opened."""
    found: set[str] = set()
    for sql, values in lookups(conn.dialect.name, by_lab=by_lab, by_rule=by_rule, lab_rules=lab_rules):
        found.update(str(row[0]) for row in await driver_sql.fetch(conn, sql, tuple(values)))
    return found


def lookups(
    dialect: str,
    *,
    by_lab: Sequence[LabKey],
    by_rule: Mapping[str, Collection[str]],
    lab_rules: Collection[str],
) -> list[tuple[str, list[Any]]]:
    """The statements of `live_tasks` (with `?` placeholders) and their values."""
    live = "live = 1" if dialect == "sqlite" else "live"  # the partial indexes' own term
    selects: list[tuple[str, list[Any]]] = []
    excluded = sorted(lab_rules)
    for key in by_lab:
        rules = sorted(set(key.holding) | set(excluded))
        sql = f"SELECT task_id FROM alert_candidate WHERE {live} AND patient = ? AND lab_system "
        sql += "IS NULL" if key.lab_system is None else "= ?"
        sql += " AND lab_code = ?"
        if rules:
            sql += f" AND rule NOT IN ({', '.join('?' * len(rules))})"
        values = [key.patient, *([] if key.lab_system is None else [key.lab_system]), key.lab_code, *rules]
        selects.append((sql, values))
    for patient in sorted(by_rule):
        rules = sorted(by_rule[patient])
        if rules:
            sql = f"SELECT task_id FROM alert_candidate WHERE {live} AND patient = ? AND rule IN "
            selects.append((sql + f"({', '.join('?' * len(rules))})", [patient, *rules]))
    statements = []
    for start in range(0, len(selects), CHUNK):
        chunk = selects[start : start + CHUNK]
        sql = " UNION ALL ".join(part for part, _ in chunk)
        statements.append((sql, [value for _, part_values in chunk for value in part_values]))
    return statements
