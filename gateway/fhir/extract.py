"""Search index rows extracted from a resource, following the table in `searchparams`.

The store writes these rows next to each current resource version; search reads them. Extraction is
pure and shape-driven: a token may come from a code, Coding, CodeableConcept, Identifier or boolean; a
date from a date string, Period or Timing; a string from a string, HumanName or Address.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from gateway.fhir.dates import MAX_US, MIN_US, DateFormatError, date_range
from gateway.fhir.references import parse_reference
from gateway.fhir.searchparams import ParamType, SearchParam, params_for

# Longest indexed string or token; longer values are cut (search on them still matches the prefix).
MAX_VALUE_LEN = 200


@dataclass(slots=True)
class IndexRows:
    tokens: set[tuple[str, str | None, str]] = field(default_factory=set)  # (param, system, code)
    references: set[tuple[str, str, str]] = field(default_factory=set)  # (param, type, id)
    dates: set[tuple[str, int, int]] = field(default_factory=set)  # (param, low_us, high_us)
    strings: set[tuple[str, str]] = field(default_factory=set)  # (param, normalised value)


def values_at(resource: dict[str, Any], path: str) -> list[Any]:
    """All values at a dotted path, flattening arrays; `name[x]` matches every choice element."""
    nodes: list[Any] = [resource]
    for step in path.split("."):
        found: list[Any] = []
        for node in nodes:
            if not isinstance(node, dict):
                continue
            if step.endswith("[x]"):
                base = step[:-3]
                for key, value in node.items():
                    if key.startswith(base) and key[len(base) : len(base) + 1].isupper():
                        found.extend(value if isinstance(value, list) else [value])
            elif step in node:
                value = node[step]
                found.extend(value if isinstance(value, list) else [value])
        nodes = found
    return nodes


def normalise_string(text: str) -> str:
    """Case- and accent-insensitive form used by string search (FHIR's default string matching)."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold().strip()[:MAX_VALUE_LEN]


def token_values(value: Any) -> Iterable[tuple[str | None, str]]:
    if isinstance(value, bool):
        yield None, "true" if value else "false"
    elif isinstance(value, str):
        yield None, value[:MAX_VALUE_LEN]
    elif isinstance(value, dict):
        if "coding" in value:  # CodeableConcept
            for coding in value.get("coding") or []:
                yield from token_values(coding)
        elif "code" in value and isinstance(value["code"], str):  # Coding
            yield value.get("system"), value["code"][:MAX_VALUE_LEN]
        elif "value" in value and isinstance(value["value"], str):  # Identifier, ContactPoint
            yield value.get("system"), value["value"][:MAX_VALUE_LEN]


def date_values(value: Any) -> Iterable[tuple[int, int]]:
    try:
        if isinstance(value, str):
            yield date_range(value)
        elif isinstance(value, dict):
            if "start" in value or "end" in value:  # Period
                low = date_range(value["start"])[0] if "start" in value else MIN_US
                high = date_range(value["end"])[1] if "end" in value else MAX_US
                yield low, high
            for event in value.get("event") or []:  # Timing
                yield date_range(event)
    except DateFormatError:
        return  # structural validation has already rejected malformed dates on write


_NAME_PARTS = ("text", "family", "given", "prefix", "suffix")
_ADDRESS_PARTS = ("text", "line", "city", "district", "state", "postalCode", "country")


def string_values(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield normalise_string(value)
    elif isinstance(value, dict):
        for part in _NAME_PARTS + _ADDRESS_PARTS:
            item = value.get(part)
            for text in item if isinstance(item, list) else [item]:
                if isinstance(text, str):
                    yield normalise_string(text)


def reference_values(
    value: Any, param: SearchParam, local_bases: tuple[str, ...]
) -> Iterable[tuple[str, str]]:
    if isinstance(value, dict) and isinstance(value.get("reference"), str):
        parsed = parse_reference(value["reference"], local_bases)
        if parsed and (not param.targets or parsed[0] in param.targets):
            yield parsed


@dataclass(frozen=True, slots=True)
class _Plan:
    """One parameter path, split once: the first step is matched against the resource's keys."""

    param: SearchParam
    rest: str  # the path below the first step ("" when the first step is the whole path)


@cache
def _plans(resource_type: str) -> tuple[dict[str, list[_Plan]], list[tuple[str, _Plan]]]:
    """(plans by exact first key, plans by choice prefix) for a resource type."""
    exact: dict[str, list[_Plan]] = {}
    choices: list[tuple[str, _Plan]] = []
    for param in params_for(resource_type).values():
        for path in param.paths:
            first, _, rest = path.partition(".")
            plan = _Plan(param, rest)
            if first.endswith("[x]"):
                choices.append((first[:-3], plan))
            else:
                exact.setdefault(first, []).append(plan)
    return exact, choices


def extract(resource: dict[str, Any], local_bases: tuple[str, ...] = ()) -> IndexRows:
    """The index rows for one resource of a supported type."""
    rows = IndexRows()
    exact, choices = _plans(resource["resourceType"])
    for key, value in resource.items():
        plans = exact.get(key, [])
        if choices:
            plans = plans + [
                p for base, p in choices if key.startswith(base) and key[len(base) : len(base) + 1].isupper()
            ]
        for plan in plans:
            top = value if isinstance(value, list) else [value]
            values = top if not plan.rest else [v for item in top for v in values_at(item, plan.rest)]
            for item in values:
                _add(rows, plan.param, item, local_bases)
    return rows


def _add(rows: IndexRows, param: SearchParam, value: Any, local_bases: tuple[str, ...]) -> None:
    """Index one value. The common shapes are handled inline: this runs for every indexed value of every
    write, and the generic generators above cost more than the rows they produce."""
    name, kind = param.name, param.type
    if kind is ParamType.TOKEN:
        if type(value) is dict:
            codings = value.get("coding")
            if codings is not None:
                for coding in codings:
                    code = coding.get("code")
                    if type(code) is str:
                        rows.tokens.add((name, coding.get("system"), code[:MAX_VALUE_LEN]))
                return
        elif type(value) is str:
            rows.tokens.add((name, None, value[:MAX_VALUE_LEN]))
            return
        rows.tokens.update((name, system, code) for system, code in token_values(value))
    elif kind is ParamType.REFERENCE:
        reference = value.get("reference") if type(value) is dict else None
        if type(reference) is str:
            parsed = parse_reference(reference, local_bases)
            if parsed is not None and (not param.targets or parsed[0] in param.targets):
                rows.references.add((name, parsed[0], parsed[1]))
    elif kind is ParamType.DATE:
        if type(value) is str:
            try:
                low, high = date_range(value)
            except DateFormatError:
                return
            rows.dates.add((name, low, high))
            return
        rows.dates.update((name, low, high) for low, high in date_values(value))
    else:
        rows.strings.update((name, s) for s in string_values(value) if s)
