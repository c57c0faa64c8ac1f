"""Who is asking and how they want the answer, passed down from a transport to the interactions."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from gateway.exceptions import Forbidden
from gateway.fhir.audit import AuditRecord
from gateway.service.access.people import PersonAccess, Reach

# SMART v2 permission letters per FHIR interaction.
CREATE, READ, UPDATE, DELETE, SEARCH = "c", "r", "u", "d", "s"

PreferReturn = Literal["minimal", "representation", "OperationOutcome"]


class GrantsLike(Protocol):
    def allows(self, resource_type: str, permission: str) -> bool: ...

    def has(self, operation: str) -> bool: ...

    def scope_string(self) -> str: ...


@dataclass(frozen=True, slots=True)
class RequestContext:
    base_url: str  # e.g. http://127.0.0.1:8080/fhir
    grants: GrantsLike | None = None  # None: a trusted internal caller (adapters, CLI)
    client_id: str | None = None
    prefer_return: PreferReturn = "representation"
    strict_handling: bool = False
    # What this request did, for the audit trail (filled in by the interactions, completed and queued by
    # the transport); None for internal callers, whose transport (pipeline, deliverer) audits itself.
    audit: AuditRecord | None = None
    # A person (a console session, or a SMART app with their token): what they reach beyond the scopes.
    person: PersonAccess | None = None

    def note(self, resource_type: str, resource_id: str, content: bytes | None = None) -> None:
        """For the audit trail: this request read or wrote this resource (content: its Patient is found)."""
        if self.audit is not None:
            self.audit.touch(resource_type, resource_id, content)

    def note_search(
        self, resource_type: str, params: Sequence[tuple[str, str]], found: Iterable[bytes | None]
    ) -> None:
        """For the audit trail: a search, with the content of what it returned (for their Patients)."""
        if self.audit is not None:
            self.audit.searched(resource_type, params)
            self.audit.saw(found)

    def audit_as(self, interaction: str) -> None:
        """For the audit trail: what the request turned out to be (`transaction` or `batch`)."""
        if self.audit is not None:
            self.audit.subtype = interaction

    def can(self, resource_type: str, permission: str) -> bool:
        """Scopes allow it, and for a person, the type is within their reach at all (people.py)."""
        if self.person is not None and self.person.reach(resource_type) is Reach.NONE:
            return False
        return self.grants is None or self.grants.allows(resource_type, permission)

    def may(self, operation: str) -> bool:
        """Whether an operation scope (`hl7v2/messages.read`, `subscriptions/admin`...) is held."""
        return self.grants is None or self.grants.has(operation)

    def require_operation(self, operation: str) -> None:
        if not self.may(operation):
            raise Forbidden(
                f"The access token's scopes do not include {operation} (it must be granted by name)"
            )

    @property
    def _context_name(self) -> str:
        return "system" if self.person is None else "user"

    def require(self, resource_type: str, permission: str) -> None:
        if self.person is not None and self.person.reach(resource_type) is Reach.NONE:
            raise Forbidden(f"A user with the {self.person.role.value} role does not reach {resource_type}")
        if not self.can(resource_type, permission):
            names = {"c": "create", "r": "read", "u": "update", "d": "delete", "s": "search"}
            raise Forbidden(
                f"The access token's scopes do not allow {names[permission]} on {resource_type}"
                f" (needs {self._context_name}/{resource_type}.{permission} or a wider scope)"
            )
