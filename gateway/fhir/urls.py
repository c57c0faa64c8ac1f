"""Parsing the request part of a FHIR interaction: Bundle entry `request.url` values and REST paths."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import parse_qsl, urlsplit

from gateway.exceptions import BadRequest, NotFound
from gateway.fhir.references import ID_RE
from gateway.fhir.searchparams import is_supported

Kind = Literal[
    "read",
    "vread",
    "update",
    "patch",
    "delete",
    "create",
    "search",
    "history-instance",
    "history-type",
    "conditional-update",
    "conditional-delete",
]


@dataclass(frozen=True, slots=True)
class Target:
    """What a method + relative URL addresses."""

    kind: Kind
    resource_type: str
    id: str | None = None
    version: str | None = None
    params: list[tuple[str, str]] = field(default_factory=list)


def check_type(resource_type: str) -> None:
    if not is_supported(resource_type):
        raise NotFound(f"Resource type {resource_type!r} is not supported by this server", expression=None)


def check_id(resource_id: str) -> None:
    if not ID_RE.match(resource_id):
        raise BadRequest(
            f"Invalid resource id {resource_id!r}: 1-64 characters from A-Z, a-z, 0-9, '-' and '.'"
        )


def parse_target(method: str, url: str, base_urls: tuple[str, ...] = ()) -> Target:
    """The interaction a Bundle entry (or REST call) asks for, e.g. ("PUT", "Patient/1")."""
    for base in base_urls:
        if url.startswith(base.rstrip("/") + "/"):
            url = url[len(base.rstrip("/")) + 1 :]
            break
    split = urlsplit(url)
    params = parse_qsl(split.query, keep_blank_values=True)
    parts = [p for p in split.path.strip("/").split("/") if p]
    if not parts:
        raise BadRequest(f"Request URL {url!r} names no resource type")
    resource_type = parts[0]
    check_type(resource_type)
    method = method.upper()
    rest = parts[1:]
    if rest == ["_search"] and method in ("GET", "POST"):
        return Target("search", resource_type, params=params)
    if not rest:
        kinds: dict[str, Kind] = {
            "GET": "search",
            "POST": "create",
            "PUT": "conditional-update",
            "DELETE": "conditional-delete",
        }
        if method not in kinds:
            raise BadRequest(f"{method} {url} is not a FHIR interaction")
        if kinds[method].startswith("conditional") and not params:
            raise BadRequest(f"{method} on a type needs search parameters (conditional {method.lower()})")
        return Target(kinds[method], resource_type, params=params)
    if rest == ["_history"] and method == "GET":
        return Target("history-type", resource_type, params=params)
    check_id(rest[0])
    if len(rest) == 1:
        kinds = {"GET": "read", "PUT": "update", "DELETE": "delete", "PATCH": "patch"}
        if method not in kinds:
            raise BadRequest(f"{method} {url} is not a FHIR interaction")
        return Target(kinds[method], resource_type, rest[0], params=params)
    if rest[1] == "_history" and method == "GET":
        if len(rest) == 2:
            return Target("history-instance", resource_type, rest[0], params=params)
        if len(rest) == 3:
            return Target("vread", resource_type, rest[0], rest[2], params=params)
    raise BadRequest(f"{method} {url} is not a FHIR interaction this server supports")
