"""EHR pull checkpoints and their leases (table `upstream_checkpoint`). All SQL of the pull lives here.

A process polls an (upstream, type) only after `claim` took the row: free, its own, or left by a process
whose lease ran out (it crashed). Each page's resources are committed with `advance` in one transaction,
which succeeds only while the lease is still ours, so a process that lost it cannot move the checkpoint.

The first load by Bulk Data `$export` has a pseudo-row of its own per upstream (`res_type` = `$export`),
with the same lease: one process at a time runs it, and the upstream's status URL (`export_url`) is kept
there, so a restart resumes the same export. `complete_first_load` sets every type's checkpoint to the
export's transactionTime in the transaction that marks the export done.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.store.tables import upstream_checkpoint

c = upstream_checkpoint.c

EXPORT_ROW = "$export"
EXPORT_DONE, EXPORT_FAILED = "done", "failed"


@dataclass(frozen=True, slots=True)
class Checkpoint:
    upstream: str
    res_type: str
    last_updated: str | None
    polled_us: int | None
    failures: int


def _insert(conn: AsyncConnection) -> Any:
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    return dialect.insert(upstream_checkpoint)


async def ensure(conn: AsyncConnection, upstream: str, types: Sequence[str]) -> None:
    """A row for each configured (upstream, type), due at once; existing rows keep their progress."""
    rows = [{"upstream": upstream, "res_type": t, "next_poll_us": 0, "failures": 0} for t in types]
    if rows:
        await conn.execute(_insert(conn).values(rows).on_conflict_do_nothing())


async def claim(
    conn: AsyncConnection, upstream: str, res_type: str, worker: str, now: int, lease_us: int
) -> Checkpoint | None:
    """Take a due row's lease; None when it is not due or another live process holds it."""
    result = await conn.execute(
        update(upstream_checkpoint)
        .where(
            c.upstream == upstream,
            c.res_type == res_type,
            c.next_poll_us <= now,
            or_(c.lease_owner.is_(None), c.lease_owner == worker, c.lease_until_us < now),
        )
        .values(lease_owner=worker, lease_until_us=now + lease_us)
        .returning(c.upstream, c.res_type, c.last_updated, c.polled_us, c.failures)
    )
    row = result.first()
    return None if row is None else Checkpoint(*row)


async def advance(
    conn: AsyncConnection, upstream: str, res_type: str, worker: str, last_updated: str | None, until_us: int
) -> bool:
    """Move the checkpoint (None: keep it) and renew the lease; False when the lease is no longer ours."""
    values: dict[str, Any] = {"lease_until_us": until_us}
    if last_updated is not None:
        values["last_updated"] = last_updated
    result = await conn.execute(
        update(upstream_checkpoint)
        .where(c.upstream == upstream, c.res_type == res_type, c.lease_owner == worker)
        .values(**values)
        .returning(c.upstream)
    )
    return result.first() is not None


async def finish(
    conn: AsyncConnection,
    upstream: str,
    res_type: str,
    worker: str,
    *,
    now: int,
    next_poll_us: int,
    error: str | None,
) -> None:
    """Release the lease and schedule the next poll; a failure counts and keeps the previous `polled_us`."""
    values: dict[str, Any] = {"lease_owner": None, "lease_until_us": None, "next_poll_us": next_poll_us}
    if error is None:
        values.update(polled_us=now, failures=0, last_error=None)
    else:
        values.update(failures=c.failures + 1, last_error=error[:500])
    await conn.execute(
        update(upstream_checkpoint)
        .where(c.upstream == upstream, c.res_type == res_type, c.lease_owner == worker)
        .values(**values)
    )


async def all_checkpoints(conn: AsyncConnection) -> list[Checkpoint]:
    """The types' checkpoints (not the `$export` pseudo-rows)."""
    rows = await conn.execute(
        select(c.upstream, c.res_type, c.last_updated, c.polled_us, c.failures)
        .where(c.res_type != EXPORT_ROW)
        .order_by(c.upstream, c.res_type)
    )
    return [Checkpoint(*row) for row in rows]


@dataclass(frozen=True, slots=True)
class FirstLoad:
    export_url: str | None  # the upstream's status URL while an export runs
    state: str | None  # None: not finished; done; failed (the incremental pull took over)
    types_started: bool  # some configured type already has a checkpoint: no export is needed


async def first_load(conn: AsyncConnection, upstream: str, types: Sequence[str]) -> FirstLoad:
    row = (
        await conn.execute(
            select(c.export_url, c.export_state).where(c.upstream == upstream, c.res_type == EXPORT_ROW)
        )
    ).first()
    started = (
        await conn.execute(
            select(c.res_type)
            .where(c.upstream == upstream, c.res_type.in_(list(types)), c.last_updated.is_not(None))
            .limit(1)
        )
    ).first()
    return FirstLoad(
        None if row is None else row.export_url,
        None if row is None else row.export_state,
        started is not None,
    )


async def set_export(
    conn: AsyncConnection, upstream: str, worker: str, *, url: str | None, state: str | None, until_us: int
) -> bool:
    """The export's status URL and state on the pseudo-row, under its lease (renewed); False if lost."""
    result = await conn.execute(
        update(upstream_checkpoint)
        .where(c.upstream == upstream, c.res_type == EXPORT_ROW, c.lease_owner == worker)
        .values(export_url=url, export_state=state, lease_until_us=until_us)
        .returning(c.upstream)
    )
    return result.first() is not None


async def complete_first_load(
    conn: AsyncConnection,
    upstream: str,
    worker: str,
    types: Sequence[str],
    transaction_time: str,
    until_us: int,
) -> bool:
    """The export done and each type's checkpoint at its transactionTime (a type already started keeps
    its own), in one transaction; False (the caller rolls back) when the lease is no longer ours."""
    if not await set_export(conn, upstream, worker, url=None, state=EXPORT_DONE, until_us=until_us):
        return False
    await conn.execute(
        update(upstream_checkpoint)
        .where(c.upstream == upstream, c.res_type.in_(list(types)), c.last_updated.is_(None))
        .values(last_updated=transaction_time, next_poll_us=0)
    )
    return True


async def make_due(conn: AsyncConnection, upstream: str, res_types: Sequence[str], now: int) -> None:
    """Bring the next poll of these types forward to now (notifications stopped, or one was missed)."""
    await conn.execute(
        update(upstream_checkpoint)
        .where(c.upstream == upstream, c.res_type.in_(list(res_types)), c.next_poll_us > now)
        .values(next_poll_us=now)
    )
