"""alert_candidate: the alert Tasks by patient, rule and the codes of their result, live while open and not
marked back-to-normal (a later result finds the alerts it may mark without reading the patient's pile);
filled from the current alert Tasks

The rows hold what the Tasks and their results say, never the monitoring config (applied when a result
looks them up), so filling them needs none. The reading of a Task and an Observation is written out here
rather than imported: a migration does what it did when it was written.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-07 17:00:00.000000
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

GATEWAY = "https://specialty-gateway.org/fhir"
WORK_ITEM_TYPE = f"{GATEWAY}/CodeSystem/work-item-type"
ALERT_RULE = f"{GATEWAY}/CodeSystem/alert-rule"
ALERT_MARK = f"{GATEWAY}/CodeSystem/alert-mark"
OPEN_STATUSES = frozenset({"requested", "received", "ready", "accepted", "in-progress", "on-hold"})
PAGE = 500  # alert Tasks per round: their focus results are read in one statement

resource = sa.table(
    "resource",
    sa.column("rid", sa.BigInteger),
    sa.column("res_type", sa.String),
    sa.column("res_id", sa.String),
    sa.column("version", sa.Integer),
    sa.column("deleted", sa.Boolean),
)
resource_version = sa.table(
    "resource_version",
    sa.column("rid", sa.BigInteger),
    sa.column("version", sa.Integer),
    sa.column("content", sa.Text),
)


def upgrade() -> None:
    candidates = op.create_table(
        "alert_candidate",
        sa.Column("task_id", sa.String(length=64), nullable=False),
        sa.Column("patient", sa.String(length=200), nullable=False),
        sa.Column("rule", sa.String(length=64), nullable=False),
        sa.Column("lab_system", sa.String(length=255), nullable=True),
        sa.Column("lab_code", sa.String(length=200), nullable=False),
        sa.Column("live", sa.Boolean(), nullable=False),
    )
    op.create_index("ix_alert_candidate_task_id", "alert_candidate", ["task_id"])
    live = {"sqlite_where": sa.text("live = 1"), "postgresql_where": sa.text("live")}
    op.create_index(
        "ix_alert_candidate_lab", "alert_candidate", ["patient", "lab_system", "lab_code", "rule"], **live
    )
    op.create_index("ix_alert_candidate_rule", "alert_candidate", ["patient", "rule"], **live)
    bind = op.get_bind()
    for tasks in _alert_pages(bind):
        codes = _codes_of(bind, {f for f in (_focus_id(t) for t in tasks.values()) if f is not None})
        rows = [row for task_id, task in tasks.items() for row in _rows(task_id, task, codes)]
        if rows:
            op.bulk_insert(candidates, rows)


def downgrade() -> None:
    op.drop_index("ix_alert_candidate_rule", table_name="alert_candidate")
    op.drop_index("ix_alert_candidate_lab", table_name="alert_candidate")
    op.drop_index("ix_alert_candidate_task_id", table_name="alert_candidate")
    op.drop_table("alert_candidate")


def _current(res_type: str) -> Any:
    return (
        sa.select(resource.c.rid, resource.c.res_id, resource_version.c.content)
        .join(
            resource_version,
            sa.and_(
                resource_version.c.rid == resource.c.rid, resource_version.c.version == resource.c.version
            ),
        )
        .where(resource.c.res_type == res_type, resource.c.deleted.is_(sa.false()))
    )


def _alert_pages(bind: sa.Connection) -> Iterator[dict[str, dict[str, Any]]]:
    """The current alert Tasks, a page at a time, by id."""
    after = -1
    while True:
        stmt = (
            _current("Task")
            .where(resource.c.rid > after, resource_version.c.content.like('%"alert"%'))
            .order_by(resource.c.rid)
            .limit(PAGE)
        )
        page = bind.execute(stmt).all()
        if not page:
            return
        after = int(page[-1].rid)
        tasks = {str(row.res_id): json.loads(row.content) for row in page if row.content}
        yield {task_id: task for task_id, task in tasks.items() if _is_alert(task)}


def _codes_of(bind: sa.Connection, observation_ids: set[str]) -> dict[str, set[tuple[str | None, str]]]:
    if not observation_ids:
        return {}
    stmt = _current("Observation").where(resource.c.res_id.in_(sorted(observation_ids)))
    return {
        str(row.res_id): _observation_codes(json.loads(row.content or "{}")) for row in bind.execute(stmt)
    }


def _rows(
    task_id: str, task: dict[str, Any], codes: dict[str, set[tuple[str | None, str]]]
) -> list[dict[str, Any]]:
    found = codes.get(_focus_id(task) or "") or {(None, "")}
    live = (
        task.get("status") in OPEN_STATUSES
        and _code_in(task.get("businessStatus"), ALERT_MARK) != "back-to-normal"
    )
    patient = str((task.get("for") or {}).get("reference") or "")
    rule = _code_in(task.get("reasonCode"), ALERT_RULE) or ""
    return [
        {
            "task_id": task_id,
            "patient": patient,
            "rule": rule,
            "lab_system": system,
            "lab_code": code,
            "live": live,
        }
        for system, code in sorted(found, key=str)
    ]


def _codings(concept: Any) -> list[dict[str, Any]]:
    codings = concept.get("coding") if isinstance(concept, dict) else None
    return [c for c in codings if isinstance(c, dict)] if isinstance(codings, list) else []


def _code_in(concept: Any, system: str) -> str | None:
    return next((str(c.get("code")) for c in _codings(concept) if c.get("system") == system), None)


def _is_alert(task: dict[str, Any]) -> bool:
    return any(
        c.get("system") == WORK_ITEM_TYPE and c.get("code") == "alert" for c in _codings(task.get("code"))
    )


def _focus_id(task: dict[str, Any]) -> str | None:
    reference = str((task.get("focus") or {}).get("reference") or "")
    return reference.split("/", 1)[1] if reference.startswith("Observation/") else None


def _observation_codes(obs: dict[str, Any]) -> set[tuple[str | None, str]]:
    return {(c.get("system"), c["code"]) for c in _codings(obs.get("code")) if isinstance(c.get("code"), str)}
