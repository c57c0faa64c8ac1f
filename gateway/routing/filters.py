"""Subscription filters (`backport-filter-criteria`) and the keys events are matched by.

A filter such as `patient=Patient/123` or `Observation.code=http://loinc.org|751-8` becomes a set of
*keys* (`patient=Patient/123`, `code=http://loinc.org|751-8`); an event carries the keys of its focus
resource (from its search index) plus any the topic adds (e.g. the drug of a monitoring alert). A
subscription matches an event when, for every filter, one of the filter's keys is among the event's
keys. Keys are plain strings so that a dictionary from key to subscriptions finds candidates in O(1)
whatever the number of subscriptions.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import unquote

from gateway.fhir.extract import IndexRows
from gateway.routing.topics import Topic

ANY_SYSTEM = "*"


class FilterError(ValueError):
    """A filter the topic does not offer, or one that cannot be read."""


@dataclass(frozen=True, slots=True)
class Filter:
    parameter: str
    keys: frozenset[str]  # any one of them satisfies the filter (comma-separated values are ORed)
    text: str  # as the client wrote it


def token_keys(parameter: str, system: str | None, code: str) -> tuple[str, str]:
    """The keys a coded value is found by: with its system, and with any system."""
    return f"{parameter}={system or ''}|{code}", f"{parameter}={ANY_SYSTEM}|{code}"


def _token_key(parameter: str, value: str) -> str:
    if "|" in value:
        system, code = value.split("|", 1)
        return f"{parameter}={system}|{code}"
    return f"{parameter}={ANY_SYSTEM}|{value}"


def _reference_key(parameter: str, value: str, default_type: str | None) -> str:
    if "/" not in value and default_type is not None:
        value = f"{default_type}/{value}"
    return f"{parameter}={value}"


# Filter parameters whose values are references, and the type a bare id refers to.
REFERENCE_PARAMETERS: dict[str, str | None] = {
    "patient": "Patient",
    "subject": "Patient",
    "focus": None,
    "based-on": None,
}


# Token parameters that may also name a resource: the prefix such a value starts with.
REFERENCE_VALUES = {"medication": "Medication/"}


def _value_key(parameter: str, value: str) -> str:
    """`medication` takes codes and, for orders that reference one, `Medication/id`."""
    prefix = REFERENCE_VALUES.get(parameter)
    if prefix is not None and value.startswith(prefix):
        return f"{parameter}={value}"
    return _token_key(parameter, value)


def parse_filters(criteria: Iterable[str], topic: Topic) -> list[Filter]:
    """Filters from the criteria strings; raises FilterError for anything the topic does not offer.

    Accepted forms: `param=value`, `Type.param=value`, `Type?param=value&param2=value2`; a value may list
    alternatives separated by commas.
    """
    filters: list[Filter] = []
    for text in criteria:
        resource_type: str | None = None
        body = text.strip()
        if "?" in body:
            resource_type, body = body.split("?", 1)
        for part in body.split("&"):
            if not part:
                continue
            if "=" not in part:
                raise FilterError(f"Filter {text!r} is not of the form [Type.]parameter=value")
            name, raw_value = part.split("=", 1)
            part_type = resource_type
            if "." in name.split(":", 1)[0]:
                part_type, name = name.split(".", 1)
            parameter, _, modifier = name.partition(":")
            offered = topic.filter_named(part_type, parameter)
            if offered is None:
                allowed = ", ".join(sorted({f.parameter for f in topic.filters})) or "none"
                raise FilterError(
                    f"Topic {topic.url} has no filter {parameter!r}"
                    + (f" on {part_type}" if part_type else "")
                    + f" (offered: {allowed})"
                )
            if modifier and modifier not in offered.modifiers:
                raise FilterError(f"Filter modifier :{modifier} is not supported for {parameter!r}")
            values = [unquote(v) for v in raw_value.split(",") if v]
            if not values:
                raise FilterError(f"Filter {text!r} has no value")
            if parameter in REFERENCE_PARAMETERS:
                default_type = REFERENCE_PARAMETERS[parameter]
                keys = frozenset(_reference_key(parameter, v, default_type) for v in values)
            else:
                keys = frozenset(_value_key(parameter, v) for v in values)
            filters.append(Filter(parameter, keys, text))
    return filters


def index_keys(index: IndexRows | None) -> set[str]:
    """The keys of a resource's search index rows (tokens and references)."""
    keys: set[str] = set()
    if index is None:
        return keys
    for parameter, system, code in index.tokens:
        keys.update(token_keys(parameter, system, code))
    for parameter, target_type, target_id in index.references:
        keys.add(f"{parameter}={target_type}/{target_id}")
    return keys


def matches(filters: Iterable[Filter], keys: set[str] | frozenset[str]) -> bool:
    return all(not f.keys.isdisjoint(keys) for f in filters)
