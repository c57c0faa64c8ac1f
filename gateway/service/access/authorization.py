"""The one place that decides what a caller may ask and see beyond `RequestContext.require`.

Scopes say which types a token may read, search or write. Criteria reach further than their own type: a
chained parameter (`Observation?patient.birthdate=1970`) answers yes or no about Patients, and a
conditional reference (`subject: Patient?family=Doe`) or conditional operation reveals which Patient
matches. So every criterion needs search rights on every type it touches: `check_query` is called
wherever a query is parsed for a caller (searches, conditional create, update, delete, conditional
references in Bundles).

Some types have rules beyond scopes: a Subscription belongs to the client that created it. A
`ResourcePolicy` per type says which instances a caller may see or change (`visible`, None meaning all)
and what of their content it may see (`redact`: secrets are write-only). FhirService consults them on
every read, search, history, include and write.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.exceptions import Forbidden
from gateway.fhir.query import Filter, SearchQuery, TokenValue
from gateway.fhir.searchparams import ParamType
from gateway.service.access.context import SEARCH, RequestContext


class ResourcePolicy(Protocol):
    """Per-type rules beyond scopes."""

    async def visible(self, conn: AsyncConnection, ctx: RequestContext) -> set[str] | None:
        """Ids of this type the caller may see or change; None when it may see every one."""
        ...

    def redact(self, ctx: RequestContext, content: bytes) -> bytes:
        """The stored content as this caller may see it."""
        ...

    def restore(self, previous: bytes | None, content: dict[str, object]) -> dict[str, object]:
        """A written resource with what `redact` hid filled back in from the stored version."""
        ...


def touched_types(query: SearchQuery) -> set[str]:
    """Types other than the searched one whose resources the query's criteria test."""
    return {f.chain.target_type for f in query.filters if f.chain is not None}


def check_query(ctx: RequestContext, query: SearchQuery) -> None:
    """Search rights on the searched type and on every type a chained criterion looks into."""
    ctx.require(query.resource_type, SEARCH)
    for resource_type in sorted(touched_types(query)):
        ctx.require(resource_type, SEARCH)


def restrict_to(query: SearchQuery, ids: set[str]) -> bool:
    """Narrow a query to the given ids (an `_id` criterion ANDed with the others); False if none."""
    if not ids:
        return False
    query.filters.append(
        Filter("_id", ParamType.TOKEN, None, tuple(TokenValue(None, i) for i in sorted(ids)))
    )
    return True


_LETTERS = "cruds"


def require_all(ctx: RequestContext, operation: str, needs: Iterable[tuple[str, str]]) -> None:
    """Every (type, permission) an operation needs, checked before it reads anything: one 403 that names
    each scope missing (`system/PractitionerRole.r`), never a partial answer."""
    missing: dict[str, set[str]] = {}
    for resource_type, permission in needs:
        if not ctx.can(resource_type, permission):
            missing.setdefault(resource_type, set()).add(permission)
    if missing:
        lacking = ", ".join(
            f"system/{t}.{''.join(p for p in _LETTERS if p in permissions)}"
            for t, permissions in sorted(missing.items())
        )
        raise Forbidden(f"{operation} needs scopes the access token does not hold: {lacking}")
