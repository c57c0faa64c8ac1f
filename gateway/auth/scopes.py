"""SMART App Launch v2 scopes: parsing, enforcement (`Grants`) and narrowing a token request (`grant`).

A resource scope is `context/Type.perms`:

* context: `system` (what backend clients get), `user` or `patient` (what a person's token gets). A
  client's `Grants` honour `system`; a person's honour `user` and `patient`, and the person's reach
  (their patients) narrows what those allow.
* Type: a FHIR resource type name or `*` for every type.
* perms: a non-empty subset of `c r u d s` written in that order (`rs`, `cud`, `cruds`; `sr` is malformed).
  The SMART v1 forms `read`, `write` and `*` are accepted and mapped to `rs`, `cud` and `cruds`.

Granular v2 scopes (`system/Observation.rs?category=laboratory`) are refused rather than silently widened.
Identity and launch scopes (`openid`, `fhirUser`, ...) are kept as opaque strings that grant nothing.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

PERMISSIONS = "cruds"

CONTEXTS = frozenset({"system", "user", "patient"})

# Scopes with no resource access: accepted (clients send them by habit) and passed through, never enforced.
NON_RESOURCE_SCOPES = frozenset(
    {
        "openid",
        "fhirUser",
        "profile",
        "launch",
        "launch/patient",
        "launch/encounter",
        "offline_access",
        "online_access",
    }
)

# Scopes for the gateway's own operations. No resource scope implies them (not even `system/*.cruds`):
# a client holds one only when it was registered with it by name.
OPERATION_SCOPES = frozenset(
    {
        "hl7v2/messages.read",  # the HL7 v2 message log (raw content only with read on what it made)
        "hl7v2/messages.reprocess",  # run a logged message again
        "subscriptions/admin",  # read and operate on every client's Subscriptions
        "audit/events.read",  # the audit trail (AuditEvent)
    }
)

_V1_PERMISSIONS = {"read": "rs", "write": "cud", "*": "cruds"}

_RESOURCE_SCOPE_RE = re.compile(r"(?P<context>[A-Za-z]+)/(?P<type>\*|[A-Z][A-Za-z]*)\.(?P<perms>[^?]+)")

# Each letter at most once and in canonical order; the empty match is rejected separately.
_V2_PERMISSIONS_RE = re.compile(r"c?r?u?d?s?")


class InvalidScope(ValueError):
    """A scope is malformed or unsupported, or nothing requested is allowed (OAuth `invalid_scope`)."""


@dataclass(frozen=True)
class Scope:
    """One resource scope; `permissions` is a non-empty subset of `PERMISSIONS`."""

    context: str
    resource_type: str
    permissions: frozenset[str]

    def __post_init__(self) -> None:
        # Scopes built by hand (not parsed) must still render to something `parse_scopes` accepts.
        if self.context not in CONTEXTS or not self.permissions or not self.permissions <= set(PERMISSIONS):
            perms = "".join(sorted(self.permissions))
            raise InvalidScope(f"invalid scope: context {self.context!r}, permissions {perms!r}")

    def __str__(self) -> str:
        return f"{self.context}/{self.resource_type}.{_perm_string(self.permissions)}"


def _perm_string(permissions: Iterable[str]) -> str:
    present = set(permissions)
    return "".join(p for p in PERMISSIONS if p in present)


def _parse_permissions(text: str, token: str) -> frozenset[str]:
    mapped = _V1_PERMISSIONS.get(text, text)
    if not mapped or not _V2_PERMISSIONS_RE.fullmatch(mapped):
        raise InvalidScope(f"malformed scope {token!r}: permissions must be letters of 'cruds' in that order")
    return frozenset(mapped)


def _parse_token(token: str) -> Scope | str:
    """One space-separated scope: a `Scope`, or the token itself when it is a known non-resource scope."""
    if token in NON_RESOURCE_SCOPES or token in OPERATION_SCOPES:
        return token
    match = _RESOURCE_SCOPE_RE.match(token)
    if match is None or match.group("context") not in CONTEXTS:
        raise InvalidScope(f"malformed scope {token!r}")
    if match.end() != len(token):
        # The only thing the pattern stops short of is a `?query`: a granular v2 scope.
        raise InvalidScope(f"granular scopes are not supported yet: {token!r}")
    permissions = _parse_permissions(match.group("perms"), token)
    return Scope(match.group("context"), match.group("type"), permissions)


def parse_token(token: str) -> Scope | str:
    """One scope: a `Scope`, or the token itself when it is a known non-resource or operation scope;
    `InvalidScope` when it is malformed or unsupported."""
    return _parse_token(token)


def _split(text: str) -> tuple[list[Scope], list[str]]:
    resources: list[Scope] = []
    others: list[str] = []
    for token in text.split():
        parsed = _parse_token(token)
        if isinstance(parsed, Scope):
            resources.append(parsed)
        else:
            others.append(parsed)
    return resources, others


def parse_scopes(text: str) -> list[Scope]:
    """The resource scopes in a space-separated scope string, in order.

    Non-resource scopes are validated and left out (they grant nothing). Raises `InvalidScope` naming the
    first malformed or unsupported scope.
    """
    return _split(text)[0]


class Grants:
    """What a token's `system` scopes allow, precomputed so each check is one dictionary lookup."""

    __slots__ = ("_by_type", "_wildcard", "operations")

    def __init__(
        self, scopes: Iterable[Scope], operations: Iterable[str] = (), contexts: Iterable[str] = ("system",)
    ) -> None:
        self.operations = frozenset(o for o in operations if o in OPERATION_SCOPES)
        honoured = frozenset(contexts)
        wildcard: set[str] = set()
        by_type: dict[str, set[str]] = {}
        for scope in scopes:
            if scope.context not in honoured:
                continue
            if scope.resource_type == "*":
                wildcard |= scope.permissions
            else:
                by_type.setdefault(scope.resource_type, set()).update(scope.permissions)
        self._wildcard = frozenset(wildcard)
        # Fold the wildcard into each named type so `allows` never has to consult both.
        self._by_type = {name: frozenset(perms | wildcard) for name, perms in by_type.items()}

    @classmethod
    def from_string(cls, text: str) -> Grants:
        """Grants for a client's token's `scope` claim (its `system` scopes)."""
        resources, others = _split(text)
        return cls(resources, others)

    @classmethod
    def for_person(cls, text: str) -> Grants:
        """Grants for a person's token or session: its `user` and `patient` scopes, which say what types
        it may touch; which instances is the person's reach (gateway/service/access/people.py)."""
        resources, others = _split(text)
        return cls(resources, others, contexts=("user", "patient"))

    def has(self, operation: str) -> bool:
        """Whether an operation scope (`hl7v2/messages.read`, ...) was granted by name."""
        return operation in self.operations

    def intersect(self, other: Grants) -> Grants:
        """What both allow (a notification built for one client and read by another gets the lesser)."""
        scopes: list[Scope] = []
        for name in {*self._by_type, *other._by_type} or set():
            permissions = frozenset(p for p in PERMISSIONS if self.allows(name, p) and other.allows(name, p))
            if permissions:
                scopes.append(Scope("system", name, permissions))
        wildcard = self._wildcard & other._wildcard
        if wildcard:
            scopes.append(Scope("system", "*", wildcard))
        return Grants(scopes, self.operations & other.operations)

    def allows(self, resource_type: str, permission: str) -> bool:
        """Whether `permission` (one of c r u d s) is granted on `resource_type`."""
        if len(permission) != 1 or permission not in PERMISSIONS:
            raise ValueError(f"unknown permission {permission!r}; expected one of {PERMISSIONS!r}")
        return permission in self._by_type.get(resource_type, self._wildcard)

    def allows_all(self, resource_type: str, permissions: str) -> bool:
        """Whether every permission letter in `permissions` (e.g. "rs") is granted on `resource_type`."""
        if not permissions:
            raise ValueError("no permissions to check")
        return all(self.allows(resource_type, p) for p in permissions)

    def scope_string(self) -> str:
        """The grants as a SMART v2 scope string (what a stored subscription remembers of its owner)."""
        scopes = [f"system/*.{_perm_string(self._wildcard)}"] if self._wildcard else []
        scopes += [f"system/{name}.{_perm_string(perms)}" for name, perms in self._by_type.items()]
        scopes += sorted(self.operations)
        return " ".join(scopes)

    def __repr__(self) -> str:
        return f"Grants({self.scope_string()!r})"


# (context, resource type) -> permissions; dicts keep insertion order, so the output follows the request.
_ScopeMap = dict[tuple[str, str], frozenset[str]]


def _covered(request: Scope, registered: list[Scope]) -> _ScopeMap:
    """The part of one requested scope that the registered scopes allow, per resource type."""
    out: _ScopeMap = {}
    for reg in registered:
        if reg.context != request.context:
            continue
        if request.resource_type == "*":
            # A wildcard request is narrowed to whatever each registered scope covers, wildcard or named.
            key = (reg.context, reg.resource_type)
        elif reg.resource_type in ("*", request.resource_type):
            key = (request.context, request.resource_type)
        else:
            continue
        permissions = request.permissions & reg.permissions
        if permissions:
            out[key] = out.get(key, frozenset()) | permissions
    return out


def _merge(scopes: Iterable[_ScopeMap]) -> _ScopeMap:
    merged: _ScopeMap = {}
    for scope_map in scopes:
        for key, permissions in scope_map.items():
            merged[key] = merged.get(key, frozenset()) | permissions
    return merged


def _drop_redundant(scope_map: _ScopeMap) -> list[Scope]:
    """Canonical scopes, leaving out named types whose permissions a same-context wildcard already gives."""
    out: list[Scope] = []
    for (context, resource_type), permissions in scope_map.items():
        wildcard = scope_map.get((context, "*"), frozenset())
        if resource_type != "*" and permissions <= wildcard:
            continue
        out.append(Scope(context, resource_type, permissions))
    return out


def _render(resources: Iterable[Scope], others: Iterable[str]) -> str:
    return " ".join([*(str(s) for s in resources), *dict.fromkeys(others)])


def grant(registered: str, requested: str | None) -> str:
    """The scope string for a new token: what was requested, narrowed to what the client is registered for.

    With nothing requested, the client gets all its registered scopes (in canonical v2 form). Raises
    `InvalidScope` when a requested scope is malformed or when none of the request is covered.
    """
    reg_resources, reg_others = _split(registered)
    if requested is None or not requested.strip():
        if not reg_resources and not reg_others:
            raise InvalidScope("the client has no registered scopes")
        merged = _merge({(s.context, s.resource_type): s.permissions} for s in reg_resources)
        return _render(_drop_redundant(merged), reg_others)
    req_resources, req_others = _split(requested)
    resources = _drop_redundant(_merge(_covered(s, reg_resources) for s in req_resources))
    # Non-resource scopes grant nothing, so one is passed on only if the client was registered with it.
    others = [s for s in req_others if s in reg_others]
    if not resources and not others:
        raise InvalidScope(f"none of the requested scopes is allowed for this client: {requested.strip()!r}")
    return _render(resources, others)
