"""The reads behind `Patient/{id}/$timeline`: a patient's compartment rows of one type, the versions of
some resources (the PA moves), and the Provenances naming some resources; and the change log behind its
live form (`_stream=true`): versions per Patient, numbered in commit order.

Numbering. As its last statements, a writer's transaction moves each Patient's `timeline_counter` on by
the number of its versions about that Patient (`INSERT ... ON CONFLICT DO UPDATE ... RETURNING`,
Patients in sorted order, so two writers never wait on each other in a cycle) and adds their rows under
the numbers it got. The counter row stays locked until the commit, so on PostgreSQL a second writer of
the same Patient gets its numbers only after the first has committed: once a number is visible, every
smaller number of that Patient is visible too. SQLite has one writer at a time. A reader that has read
up to `seq` n therefore never misses a row by asking for `seq > n`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, tuple_
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.store import driver_sql
from gateway.store.everything import compartment_condition
from gateway.store.resources import Stored, bulk_insert, current_select, to_stored
from gateway.store.tables import (
    resource,
    resource_version,
    sp_reference,
    timeline_change,
    timeline_counter,
)

CHUNK = 400  # keys per statement: far below SQLite's and asyncpg's variable limits


async def compartment(conn: AsyncConnection, patient_id: str, resource_type: str, limit: int) -> list[Stored]:
    """Up to `limit` current, not deleted resources of a type in the Patient's compartment, by row id."""
    stmt = (
        current_select()
        .where(resource.c.deleted.is_(False), compartment_condition(patient_id, resource_type))
        .order_by(resource.c.rid)
        .limit(limit)
    )
    return [to_stored(row) for row in await conn.execute(stmt)]


async def versions(conn: AsyncConnection, rids: Sequence[int]) -> list[Stored]:
    """Every version of the resources with these row ids, by row id then version."""
    v = resource_version.c
    found: list[Stored] = []
    for start in range(0, len(rids), CHUNK):
        stmt = (
            select(v.rid, v.res_type, v.res_id, v.version, v.updated_us, v.deleted, v.content, v.method)
            .where(v.rid.in_(list(rids[start : start + CHUNK])))
            .order_by(v.rid, v.version)
        )
        found += [to_stored(row) for row in await conn.execute(stmt)]
    return found


async def provenances_naming(conn: AsyncConnection, keys: Sequence[tuple[str, str]]) -> list[Stored]:
    """Current Provenances whose `target` names one of these (type, id) resources (any version)."""
    r = sp_reference.c
    found: dict[int, Stored] = {}
    for start in range(0, len(keys), CHUNK):
        part = list(keys[start : start + CHUNK])
        naming = select(r.rid).where(
            r.res_type == "Provenance",
            r.param == "target",
            tuple_(r.target_type, r.target_id).in_(part),
        )
        stmt = current_select().where(
            resource.c.res_type == "Provenance", resource.c.deleted.is_(False), resource.c.rid.in_(naming)
        )
        for row in await conn.execute(stmt):
            found[row.rid] = to_stored(row)
    return [found[rid] for rid in sorted(found)]


# -- the change log of the live timeline -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Change:
    """A version in a Patient's compartment, with its number in that Patient's commit order."""

    seq: int
    rid: int
    type: str
    id: str
    version: int


async def record_changes(
    conn: AsyncConnection, versions: Mapping[str, Sequence[tuple[int, str, str, int]]]
) -> None:
    """This transaction's versions, Patient -> [(rid, type, id, version)] in write order, numbered and
    written to the change log (see the module notes). Its last statements: run just before the commit.

    Two statements per 400 Patients in the driver's own SQL (no compilation on this path): the counters,
    moved on in Patient order and read back, then the rows.
    """
    patients = sorted(p for p, found in versions.items() if found)
    for start in range(0, len(patients), CHUNK):
        part = patients[start : start + CHUNK]
        values = ", ".join(["(?, ?)"] * len(part))
        returned: list[Any] = await driver_sql.fetch(
            conn,
            f"INSERT INTO timeline_counter (patient_id, last) VALUES {values}"
            " ON CONFLICT (patient_id) DO UPDATE SET last = timeline_counter.last + excluded.last"
            " RETURNING patient_id, last",
            tuple(value for p in part for value in (p, len(versions[p]))),
        )
        lasts = {str(row[0]): int(row[1]) for row in returned}
        rows = [
            (patient, lasts[patient] - len(versions[patient]) + n, *version)
            for patient in part
            for n, version in enumerate(versions[patient], start=1)
        ]
        await bulk_insert(
            conn, timeline_change, ("patient_id", "seq", "rid", "res_type", "res_id", "version"), rows
        )


async def last_seq(conn: AsyncConnection, patient_id: str) -> int:
    """The highest number given to the Patient's changes (0: none yet)."""
    found = (
        await conn.execute(select(timeline_counter.c.last).where(timeline_counter.c.patient_id == patient_id))
    ).scalar_one_or_none()
    return int(found or 0)


async def last_seqs(conn: AsyncConnection, patient_ids: Sequence[str]) -> dict[str, int]:
    """`last_seq` for several Patients (those without changes are left out)."""
    found: dict[str, int] = {}
    c = timeline_counter.c
    for start in range(0, len(patient_ids), CHUNK):
        stmt = select(c.patient_id, c.last).where(c.patient_id.in_(list(patient_ids[start : start + CHUNK])))
        found.update({row.patient_id: int(row.last) for row in await conn.execute(stmt)})
    return found


async def changes_after(conn: AsyncConnection, patient_id: str, after: int, limit: int) -> list[Change]:
    """The Patient's numbered changes after `after`, in order, at most `limit`."""
    c = timeline_change.c
    stmt = (
        select(c.seq, c.rid, c.res_type, c.res_id, c.version)
        .where(c.patient_id == patient_id, c.seq > after)
        .order_by(c.seq)
        .limit(limit)
    )
    return [Change(int(r.seq), r.rid, r.res_type, r.res_id, r.version) for r in await conn.execute(stmt)]


async def versions_at(
    conn: AsyncConnection, keys: Sequence[tuple[int, int]]
) -> dict[tuple[int, int], Stored]:
    """Stored versions by (rid, version); keys that name no version are left out."""
    v = resource_version.c
    found: dict[tuple[int, int], Stored] = {}
    unique = sorted(set(keys))
    for start in range(0, len(unique), CHUNK):
        stmt = select(
            v.rid, v.res_type, v.res_id, v.version, v.updated_us, v.deleted, v.content, v.method
        ).where(tuple_(v.rid, v.version).in_(unique[start : start + CHUNK]))
        for row in await conn.execute(stmt):
            found[(row.rid, row.version)] = to_stored(row)
    return found
