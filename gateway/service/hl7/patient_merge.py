"""Merging two Patients (ADT^A40, `gateway identity merge`): what changes, as new resource contents.

The prior Patient becomes inactive with a `replaced-by` link to the survivor, the survivor gets a
`replaces` link, and every resource that pointed at the prior Patient points at the survivor instead.
The caller writes them (in its own transaction, so subscriptions see the moves) and records Provenance.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.fhir import jsonio
from gateway.fhir.references import iter_references
from gateway.store import resources as store
from gateway.store.resources import Stored
from gateway.store.tables import sp_reference
from gateway.types import JSON


def _live(stored: Stored | None) -> bool:
    return stored is not None and stored.content is not None and not stored.deleted


async def merged_versions(
    conn: AsyncConnection, prior_id: str, survivor_id: str
) -> list[tuple[JSON, Stored | None]]:
    """(new content, its current version) of every resource a merge changes; Patients first."""
    found = await store.current_many(conn, [("Patient", prior_id), ("Patient", survivor_id)])
    changes: list[tuple[JSON, Stored | None]] = []
    prior = found.get(("Patient", prior_id))
    if _live(prior):
        assert prior is not None and prior.content is not None
        content = jsonio.loads(prior.content)
        content["active"] = False
        content["link"] = [{"other": {"reference": f"Patient/{survivor_id}"}, "type": "replaced-by"}]
        changes.append((content, prior))
    survivor = found.get(("Patient", survivor_id))
    if _live(survivor):
        assert survivor is not None and survivor.content is not None
        content = jsonio.loads(survivor.content)
        links = [
            link
            for link in content.get("link", [])
            if link.get("other", {}).get("reference") != f"Patient/{prior_id}"
        ]
        content["link"] = [*links, {"other": {"reference": f"Patient/{prior_id}"}, "type": "replaces"}]
        changes.append((content, survivor))
    changes += await repointed(conn, prior_id, survivor_id)
    return changes


async def repointed(conn: AsyncConnection, old_id: str, new_id: str) -> list[tuple[JSON, Stored | None]]:
    """Every live resource (but Patients) that refers to Patient/old_id, referring to Patient/new_id."""
    rows = await conn.execute(
        select(sp_reference.c.rid)
        .where(sp_reference.c.target_type == "Patient", sp_reference.c.target_id == old_id)
        .distinct()
    )
    movers = await store.load_by_rids(conn, [row.rid for row in rows])
    changes: list[tuple[JSON, Stored | None]] = []
    for stored in movers.values():
        if not _live(stored) or stored.type == "Patient":
            continue
        assert stored.content is not None
        content = jsonio.loads(stored.content)
        for reference in iter_references(content):
            if reference["reference"] == f"Patient/{old_id}":
                reference["reference"] = f"Patient/{new_id}"
        changes.append((content, stored))
    return changes
