"""Which patients a person reaches, read from the index: the patients of the CareTeams naming their
Practitioner, and the patients with prior-authorization Tasks. The rules (who gets which) are
gateway/service/access/people.py; this only answers the two questions, current resources only."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import and_, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.store import resources as resources_store
from gateway.store.resources import Stored
from gateway.store.tables import resource, sp_reference, sp_token


async def roles_of(conn: AsyncConnection, practitioner_id: str) -> list[str]:
    """The ids of the current PractitionerRoles of `Practitioner/{practitioner_id}`."""
    query = (
        select(resource.c.res_id)
        .join(sp_reference, sp_reference.c.rid == resource.c.rid)
        .where(
            resource.c.res_type == "PractitionerRole",
            resource.c.deleted.is_(False),
            sp_reference.c.res_type == "PractitionerRole",
            sp_reference.c.param == "practitioner",
            sp_reference.c.target_type == "Practitioner",
            sp_reference.c.target_id == practitioner_id,
        )
    )
    return [rid for (rid,) in (await conn.execute(query)).all()]


async def active_care_teams(conn: AsyncConnection, members: Iterable[tuple[str, str]]) -> list[Stored]:
    """The current, active CareTeams with one of `members` ((type, id): a Practitioner or their roles)
    among their participants (the caller checks each participant's period: the index does not know it)."""
    wanted = list(members)
    if not wanted:
        return []
    member = sp_reference.alias("member")
    status = sp_token.alias("status")
    rids = (
        select(resource.c.rid)
        .join(member, member.c.rid == resource.c.rid)
        .join(status, status.c.rid == resource.c.rid)
        .where(
            resource.c.res_type == "CareTeam",
            resource.c.deleted.is_(False),
            member.c.res_type == "CareTeam",
            member.c.param == "participant",
            or_(*[and_(member.c.target_type == t, member.c.target_id == i) for t, i in wanted]),
            status.c.res_type == "CareTeam",
            status.c.param == "status",
            status.c.code == "active",
        )
    )
    found = [r for (r,) in (await conn.execute(rids.distinct())).all()]
    loaded = await resources_store.load_by_rids(conn, found)
    return [s for s in loaded.values() if s.content is not None and not s.deleted]


async def patients_with_tasks(conn: AsyncConnection, system: str, codes: Iterable[str]) -> set[str]:
    """The ids of the Patients named by `Task.for` of current Tasks coded `system|code` (any of `codes`)."""
    code = sp_token.alias("code")
    patient = sp_reference.alias("patient")
    query = (
        select(patient.c.target_id)
        .join(code, and_(code.c.rid == patient.c.rid))
        .join(resource, resource.c.rid == patient.c.rid)
        .where(
            patient.c.res_type == "Task",
            patient.c.param == "patient",
            patient.c.target_type == "Patient",
            code.c.res_type == "Task",
            code.c.param == "code",
            code.c.system == system,
            code.c.code.in_(sorted(set(codes))),
            resource.c.deleted.is_(False),
        )
        .distinct()
    )
    return {pid for (pid,) in (await conn.execute(query)).all()}
