"""Bulk Data `$export` jobs and their files (tables `export_job`, `export_file`). All SQL of the export.

Any process answers status and file requests (they read rows); one process at a time builds a job: it
`claim`s the job's lease (the pattern of store/upstreams.py), and each part it writes goes in with
`save_part`, which moves the job's place only while the lease is still its own, in the part's
transaction. A job deleted meanwhile (cancelled) makes `save_part` fail, so no file outlives its job.

What goes into a file is read by `page`: current, not deleted resources of one type, by row id after the
last part's, optionally only those updated after `since_us` and in the compartments of some Patients (the
same index rows `$everything` reads, store/everything.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, delete, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.fhir.compartment import PATIENT_COMPARTMENT, PATIENT_LINK
from gateway.store.resources import Stored, current_select, to_stored
from gateway.store.tables import export_file, export_job, resource, sp_reference

j = export_job.c
f = export_file.c

QUEUED, RUNNING, DONE, FAILED = "queued", "running", "done", "failed"


@dataclass(frozen=True, slots=True)
class Job:
    id: str
    client_id: str
    status: str
    request: str
    level: str  # system | patient | group
    group_id: str | None
    types: list[str]
    since_us: int | None
    created_us: int
    transaction_us: int | None
    expires_us: int | None
    type_index: int
    after_rid: int | None
    written: int
    error: str | None


@dataclass(frozen=True, slots=True)
class FileInfo:
    seq: int
    res_type: str
    count: int


_JOB_COLUMNS = (
    j.id,
    j.client_id,
    j.status,
    j.request,
    j.level,
    j.group_id,
    j.types,
    j.since_us,
    j.created_us,
    j.transaction_us,
    j.expires_us,
    j.type_index,
    j.after_rid,
    j.written,
    j.error,
)


def _job(row: Any) -> Job:
    values = list(row)
    values[6] = [t for t in str(values[6]).split(",") if t]
    return Job(*values)


async def create(
    conn: AsyncConnection,
    *,
    job_id: str,
    client_id: str,
    request: str,
    level: str,
    group_id: str | None,
    types: Sequence[str],
    since_us: int | None,
    now: int,
) -> None:
    await conn.execute(
        insert(export_job).values(
            id=job_id,
            client_id=client_id,
            status=QUEUED,
            request=request,
            level=level,
            group_id=group_id,
            types=",".join(types),
            since_us=since_us,
            created_us=now,
            type_index=0,
            written=0,
        )
    )


async def get(conn: AsyncConnection, job_id: str) -> Job | None:
    row = (await conn.execute(select(*_JOB_COLUMNS).where(j.id == job_id))).first()
    return None if row is None else _job(row)


async def files(conn: AsyncConnection, job_id: str) -> list[FileInfo]:
    rows = await conn.execute(select(f.seq, f.res_type, f.count).where(f.job_id == job_id).order_by(f.seq))
    return [FileInfo(*row) for row in rows]


async def file_content(conn: AsyncConnection, job_id: str, seq: int) -> str | None:
    row = (await conn.execute(select(f.content).where(f.job_id == job_id, f.seq == seq))).first()
    return None if row is None else str(row.content)


async def remove(conn: AsyncConnection, job_id: str) -> bool:
    """The job and its files gone (a cancel); whether there was such a job."""
    await conn.execute(delete(export_file).where(f.job_id == job_id))
    result = await conn.execute(delete(export_job).where(j.id == job_id).returning(j.id))
    return result.first() is not None


async def expire(conn: AsyncConnection, now: int) -> int:
    """Jobs past their expiry removed with their files; how many."""
    gone = select(j.id).where(j.expires_us.is_not(None), j.expires_us < now)
    await conn.execute(delete(export_file).where(f.job_id.in_(gone)))
    result = await conn.execute(delete(export_job).where(j.id.in_(gone)).returning(j.id))
    return len(result.all())


async def claim(conn: AsyncConnection, worker: str, now: int, lease_us: int) -> Job | None:
    """The oldest queued or running job no live process holds, now leased to `worker`; None if none."""
    free = or_(j.lease_owner.is_(None), j.lease_owner == worker, j.lease_until_us < now)
    candidate = (
        await conn.execute(
            select(j.id).where(j.status.in_((QUEUED, RUNNING)), free).order_by(j.created_us).limit(1)
        )
    ).first()
    if candidate is None:
        return None
    result = await conn.execute(
        update(export_job)
        .where(j.id == candidate.id, j.status.in_((QUEUED, RUNNING)), free)
        .values(lease_owner=worker, lease_until_us=now + lease_us, status=RUNNING)
        .returning(*_JOB_COLUMNS)
    )
    row = result.first()
    return None if row is None else _job(row)


async def start(conn: AsyncConnection, job_id: str, worker: str, transaction_us: int) -> bool:
    """The builder's first step: the manifest's transactionTime fixed; False when the lease is lost."""
    result = await conn.execute(
        update(export_job)
        .where(j.id == job_id, j.lease_owner == worker, j.transaction_us.is_(None))
        .values(transaction_us=transaction_us)
        .returning(j.id)
    )
    return result.first() is not None


async def save_part(
    conn: AsyncConnection,
    job_id: str,
    worker: str,
    *,
    seq: int | None,
    res_type: str,
    lines: list[str],
    type_index: int,
    after_rid: int | None,
    until_us: int,
) -> bool:
    """A file part (when `lines`) and the job's new place, under the lease; False (nothing written, the
    caller rolls back) when the job is gone or another process holds it."""
    result = await conn.execute(
        update(export_job)
        .where(j.id == job_id, j.lease_owner == worker, j.status == RUNNING)
        .values(
            type_index=type_index,
            after_rid=after_rid,
            written=j.written + len(lines),
            lease_until_us=until_us,
        )
        .returning(j.id)
    )
    if result.first() is None:
        return False
    if lines:
        assert seq is not None
        content = "\n".join(lines) + "\n"
        await conn.execute(
            insert(export_file).values(
                job_id=job_id, seq=seq, res_type=res_type, count=len(lines), content=content
            )
        )
    return True


async def next_seq(conn: AsyncConnection, job_id: str) -> int:
    row = (
        await conn.execute(select(f.seq).where(f.job_id == job_id).order_by(f.seq.desc()).limit(1))
    ).first()
    return 1 if row is None else int(row.seq) + 1


async def finish(
    conn: AsyncConnection, job_id: str, worker: str, *, now: int, expires_us: int, error: str | None
) -> bool:
    """Done (or failed with `error`), the lease released, to be deleted at `expires_us`."""
    result = await conn.execute(
        update(export_job)
        .where(j.id == job_id, j.lease_owner == worker)
        .values(
            status=DONE if error is None else FAILED,
            error=None if error is None else error[:500],
            finished_us=now,
            expires_us=expires_us,
            lease_owner=None,
            lease_until_us=None,
        )
        .returning(j.id)
    )
    return result.first() is not None


async def release(conn: AsyncConnection, job_id: str, worker: str) -> None:
    """Let another process (or a later round) continue the job from its place."""
    await conn.execute(
        update(export_job)
        .where(j.id == job_id, j.lease_owner == worker)
        .values(lease_owner=None, lease_until_us=None)
    )


def _pointing_at_any(patient_ids: Sequence[str] | None, resource_type: str, params: Sequence[str]) -> Any:
    """Row ids of resources of a type whose compartment parameters name one of the Patients (any Patient
    when `patient_ids` is None)."""
    r = sp_reference.c
    stmt = select(r.rid).where(
        r.res_type == resource_type, r.param.in_(list(params)), r.target_type == "Patient"
    )
    if patient_ids is not None:
        stmt = stmt.where(r.target_id.in_(list(patient_ids)))
    return stmt


def compartments_condition(resource_type: str, patient_ids: Sequence[str] | None) -> ColumnElement[bool]:
    """Resources of the type in the compartment of one of the Patients (None: of any Patient). A Patient
    is in its own; Patients `link`ed to a listed Patient come along, as in `$everything`."""
    if resource_type == "Patient":
        if patient_ids is None:
            return resource.c.res_type == "Patient"
        return or_(
            resource.c.res_id.in_(list(patient_ids)),
            resource.c.rid.in_(_pointing_at_any(patient_ids, "Patient", (PATIENT_LINK,))),
        )
    return resource.c.rid.in_(
        _pointing_at_any(patient_ids, resource_type, PATIENT_COMPARTMENT[resource_type])
    )


async def page(
    conn: AsyncConnection,
    resource_type: str,
    *,
    condition: ColumnElement[bool] | None,
    since_us: int | None,
    after_rid: int | None,
    limit: int,
) -> list[Stored]:
    """Up to `limit` current resources of the type (meeting `condition`), by row id after `after_rid`;
    with `since_us`, only those last updated after it."""
    where: list[ColumnElement[bool]] = [resource.c.res_type == resource_type, resource.c.deleted.is_(False)]
    if condition is not None:
        where.append(condition)
    if since_us is not None:
        where.append(resource.c.updated_us > since_us)
    if after_rid is not None:
        where.append(resource.c.rid > after_rid)
    stmt = current_select().where(*where).order_by(resource.c.rid).limit(limit)
    return [to_stored(row) for row in await conn.execute(stmt)]
