"""Parsing a FHIR search query string into a `SearchQuery` the store can run.

Repeated parameters are ANDed, comma-separated values are ORed (https://hl7.org/fhir/R4/search.html).
Unknown parameters are reported back, never silently dropped: the caller either refuses them
(Prefer: handling=strict) or lists them in the Bundle's outcome.

Before anything is parsed, the whole query is held to `SearchLimits` and refused (400) past them, so that
no query reaches the database that it cannot run or that would keep it busy for long.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from gateway.exceptions import BadRequest
from gateway.fhir.dates import DateFormatError, date_range
from gateway.fhir.extract import normalise_string
from gateway.fhir.references import ID_RE, parse_reference
from gateway.fhir.searchparams import ParamType, SearchParam, is_supported, params_for

_MODIFIERS: dict[ParamType, set[str | None]] = {
    ParamType.TOKEN: {None, "not"},
    ParamType.STRING: {None, "exact", "contains"},
    ParamType.DATE: {None},
    ParamType.REFERENCE: {None},
}
# Plain ASCII digits: int() also takes "1_000", " 5" and digits of other scripts.
_WHOLE_NUMBER = re.compile(r"[0-9]{1,19}")
DATE_PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb")
SORTABLE_SPECIAL = ("_id", "_lastUpdated")


@dataclass(frozen=True, slots=True)
class SearchLimits:
    """Bounds on one search query (settings `search_max_*`), checked before it is parsed.

    They keep every query inside what both databases take and bound the work one request can ask for:
    SQLite refuses expressions nested deeper than 1000 (each ORed value and each ANDed criterion adds a
    level) and statements with too many variables (32766 in current releases; a value takes at most two
    and the defaults stay far below), asyncpg takes at most 32767 arguments, and PostgreSQL's planning time
    grows steeply with the number of ANDed criteria (measured on an empty store: 0.4 s at 50, 1 s at 64,
    3 s at 100, 94 s at 200). An offset is a count of rows the database reads and skips.
    """

    max_parameters: int = 50  # (name, value) pairs, whatever the name: each is a criterion or more work
    max_values: int = 100  # comma-separated (ORed) values in one parameter
    max_total_values: int = 1000  # values in all the parameters together
    max_offset: int = 1_000_000


def check_limits(params: list[tuple[str, str]], limits: SearchLimits) -> None:
    """Refuses (400) a query past its limits, or holding a NUL character (U+0000) anywhere.

    PostgreSQL cannot hold a NUL in text and fails the statement; SQLite can. Refusing it here, before any
    SQL, answers alike on both backends. Values are counted by their commas, escaped ones included: an
    upper bound of what the parsed query holds, known without parsing it.
    """
    if len(params) > limits.max_parameters:
        raise BadRequest(
            f"A search may have at most {limits.max_parameters} parameters; this one has {len(params)}"
        )
    total = 0
    for key, raw in params:
        if "\x00" in key or "\x00" in raw:
            shown = key.replace("\x00", "\\u0000")[:80]
            raise BadRequest(
                f"Search parameter {shown!r} holds a NUL character (U+0000), which is not allowed"
            )
        values = raw.count(",") + 1
        if values > limits.max_values:
            raise BadRequest(
                f"Search parameter {key[:80]!r} may have at most {limits.max_values} values; it has {values}"
            )
        total += values
    if total > limits.max_total_values:
        raise BadRequest(
            f"A search may have at most {limits.max_total_values} values in all; this one has {total}"
        )


def parse_offset(raw: str, maximum: int) -> int:
    """`_offset`: a whole number from 0 to `maximum` (400 otherwise; far larger ones overflow SQL's
    64-bit integers)."""
    if _WHOLE_NUMBER.fullmatch(raw) is None or int(raw) > maximum:
        raise BadRequest(
            f"_offset must be a whole number from 0 to {maximum}, got {raw[:40]!r}; "
            "narrow the search (for example by _lastUpdated) to reach results further on"
        )
    return int(raw)


@dataclass(frozen=True, slots=True)
class TokenValue:
    system: str | None  # None: any system
    code: str | None  # None: any code in the system ("system|")
    system_absent: bool = False  # "|code": the value has no system


@dataclass(frozen=True, slots=True)
class DateValue:
    prefix: str
    low: int
    high: int


@dataclass(frozen=True, slots=True)
class ReferenceValue:
    type: str | None
    id: str


@dataclass(frozen=True, slots=True)
class Filter:
    """One ANDed criterion; `values` are ORed. `param` None means a special (_id, _lastUpdated)."""

    name: str
    kind: ParamType
    param: SearchParam | None
    values: tuple[TokenValue | DateValue | ReferenceValue | str, ...]
    modifier: str | None = None  # not, exact, contains, missing
    missing: bool | None = None
    chain: ChainedFilter | None = None


@dataclass(frozen=True, slots=True)
class ChainedFilter:
    """`subject:Patient.identifier=x`: the reference must point at a target matching `inner`."""

    target_type: str
    inner: Filter


@dataclass(frozen=True, slots=True)
class Include:
    source_type: str
    param: SearchParam
    target_type: str | None


@dataclass(frozen=True, slots=True)
class PatientRestriction:
    """A search narrowed to the records of some patients (a person's reach): a Patient by its id; a
    resource of another type when linked through its compartment `params` to one of `patient_ids`, and
    to no other Patient."""

    params: tuple[str, ...]
    patient_ids: frozenset[str]


@dataclass(slots=True)
class SearchQuery:
    resource_type: str
    filters: list[Filter] = field(default_factory=list)
    sort: list[tuple[str, bool]] = field(default_factory=list)  # (key, descending)
    count: int = 20
    offset: int = 0
    includes: list[Include] = field(default_factory=list)
    revincludes: list[Include] = field(default_factory=list)
    total: Literal["accurate", "none"] = "accurate"
    summary_count: bool = False
    unknown: list[str] = field(default_factory=list)
    # The parameters that were used, for the Bundle's self link.
    used: list[tuple[str, str]] = field(default_factory=list)
    # Set by the authorization, never by a parameter: only these patients' records.
    restriction: PatientRestriction | None = None


def split_values(raw: str) -> list[str]:
    """Comma-separated alternatives; `\\,` is a literal comma."""
    parts = re.split(r"(?<!\\),", raw)
    return [p.replace("\\,", ",") for p in parts]


def parse_token(raw: str) -> TokenValue:
    if "|" not in raw:
        return TokenValue(None, raw)
    system, code = raw.split("|", 1)
    if system == "":
        return TokenValue(None, code, system_absent=True)
    return TokenValue(system, code or None)


def parse_date(raw: str, name: str) -> DateValue:
    prefix = "eq"
    if raw[:2] in DATE_PREFIXES and not raw[:2].isdigit():
        prefix, raw = raw[:2], raw[2:]
    elif raw[:2] == "ap":
        raise BadRequest(f"Date prefix 'ap' (approximately) is not supported for {name}")
    try:
        low, high = date_range(raw)
    except DateFormatError as exc:
        raise BadRequest(f"Invalid date in search parameter {name}: {exc}") from exc
    return DateValue(prefix, low, high)


def parse_reference_value(
    raw: str, type_modifier: str | None, local_bases: tuple[str, ...]
) -> ReferenceValue:
    parsed = parse_reference(raw, local_bases)
    if parsed:
        if type_modifier and parsed[0] != type_modifier:
            raise BadRequest(f"Reference {raw!r} does not match the type modifier :{type_modifier}")
        return ReferenceValue(parsed[0], parsed[1])
    if ID_RE.match(raw):
        return ReferenceValue(type_modifier, raw)
    raise BadRequest(f"Invalid reference value {raw!r}")


def _parse_int(name: str, raw: str, minimum: int, maximum: int | None = None) -> int:
    try:
        value = int(raw)
    except ValueError as exc:
        raise BadRequest(f"{name} must be a whole number, got {raw!r}") from exc
    if value < minimum:
        raise BadRequest(f"{name} must be at least {minimum}")
    return min(value, maximum) if maximum is not None else value


class QueryParser:
    """Turns (name, value) pairs into a SearchQuery for one resource type."""

    def __init__(
        self,
        *,
        default_count: int = 20,
        max_count: int = 1000,
        local_bases: tuple[str, ...] = (),
        limits: SearchLimits | None = None,
    ) -> None:
        self.default_count = default_count
        self.max_count = max_count
        self.local_bases = local_bases
        self.limits = limits or SearchLimits()

    def parse(self, resource_type: str, params: list[tuple[str, str]]) -> SearchQuery:
        check_limits(params, self.limits)
        query = SearchQuery(resource_type, count=self.default_count)
        for key, raw in params:
            self._parse_one(query, key, raw)
        return query

    def _parse_one(self, query: SearchQuery, key: str, raw: str) -> None:
        name = key.split(":", 1)[0]
        if name in ("_format", "_pretty"):
            return  # only JSON is served; _pretty changes nothing that matters
        if name == "_count":
            query.count = _parse_int("_count", raw, 0, self.max_count)
            query.summary_count = query.summary_count or query.count == 0
        elif name == "_offset":
            query.offset = parse_offset(raw, self.limits.max_offset)
        elif name == "_total":
            if raw not in ("none", "estimate", "accurate"):
                raise BadRequest("_total must be none, estimate or accurate")
            query.total = "none" if raw == "none" else "accurate"
        elif name == "_summary":
            if raw != "count":
                query.unknown.append(f"{key}={raw}")
                return
            query.summary_count = True
        elif name == "_sort":
            query.sort.extend(self._parse_sort(query.resource_type, raw))
        elif name in ("_include", "_revinclude"):
            include = self._parse_include(raw, key)
            if name == "_include":
                if include.source_type != query.resource_type:
                    raise BadRequest(f"_include={raw} does not start with {query.resource_type}")
                query.includes.append(include)
            else:
                query.revincludes.append(include)
        else:
            parsed = self.parse_filter(query.resource_type, key, raw)
            if parsed is None:
                query.unknown.append(key)
                return
            query.filters.append(parsed)
        query.used.append((key, raw))

    def _parse_sort(self, resource_type: str, raw: str) -> list[tuple[str, bool]]:
        keys = []
        for item in raw.split(","):
            desc = item.startswith("-")
            name = item.lstrip("-")
            param = params_for(resource_type).get(name)
            if name not in SORTABLE_SPECIAL and not (param and param.type is ParamType.DATE):
                raise BadRequest(
                    f"Sorting by {name!r} is not supported; use _id, _lastUpdated or a date parameter"
                )
            keys.append((name, desc))
        return keys

    def _parse_include(self, raw: str, key: str) -> Include:
        if ":iterate" in key or ":recurse" in key:
            raise BadRequest(f"{key} is not supported")
        parts = raw.split(":")
        if len(parts) not in (2, 3) or not is_supported(parts[0]):
            raise BadRequest(f"Invalid {key} value {raw!r}: expected SourceType:param[:TargetType]")
        param = params_for(parts[0]).get(parts[1])
        if param is None or param.type is not ParamType.REFERENCE:
            raise BadRequest(f"Invalid {key} value {raw!r}: {parts[1]!r} is not a reference parameter")
        target = parts[2] if len(parts) == 3 else None
        return Include(parts[0], param, target)

    def parse_filter(self, resource_type: str, key: str, raw: str) -> Filter | None:
        """One criterion, or None when the parameter is not known for this type."""
        if "." in key:
            return self._parse_chain(resource_type, key, raw)
        name, _, modifier = key.partition(":")
        modifier_or_none = modifier or None
        if name in ("_id", "_lastUpdated"):
            kind = ParamType.TOKEN if name == "_id" else ParamType.DATE
            param = None
        else:
            param = params_for(resource_type).get(name)
            if param is None:
                return None
            kind = param.type
        if modifier == "missing":
            if raw not in ("true", "false"):
                raise BadRequest(f"{key} must be true or false")
            if param is None:
                raise BadRequest(f"{key} is not supported")
            return Filter(name, kind, param, (), "missing", missing=raw == "true")
        values = [v for v in split_values(raw) if v != ""]
        if not values:
            raise BadRequest(f"Search parameter {key} has no value")
        return Filter(
            name,
            kind,
            param,
            tuple(self._value(kind, name, modifier_or_none, v) for v in values),
            self._check_modifier(kind, key, modifier_or_none),
        )

    def _check_modifier(self, kind: ParamType, key: str, modifier: str | None) -> str | None:
        allowed = _MODIFIERS[kind]
        if kind is ParamType.REFERENCE and modifier and modifier[0].isupper():
            return None  # a type modifier, already applied to the values
        if modifier not in allowed:
            raise BadRequest(f"Modifier :{modifier} is not supported on {key}")
        return modifier

    def _value(
        self, kind: ParamType, name: str, modifier: str | None, raw: str
    ) -> TokenValue | DateValue | ReferenceValue | str:
        if kind is ParamType.TOKEN:
            return parse_token(raw)
        if kind is ParamType.DATE:
            return parse_date(raw, name)
        if kind is ParamType.REFERENCE:
            type_modifier = modifier if modifier and modifier[0].isupper() else None
            return parse_reference_value(raw, type_modifier, self.local_bases)
        # Stored strings are case- and accent-folded, so :exact compares folded values for equality.
        return normalise_string(raw)

    def _parse_chain(self, resource_type: str, key: str, raw: str) -> Filter | None:
        head, inner_key = key.split(".", 1)
        name, _, type_modifier = head.partition(":")
        param = params_for(resource_type).get(name)
        if param is None or param.type is not ParamType.REFERENCE:
            return None
        if type_modifier:
            target = type_modifier
        elif len(param.targets) == 1:
            target = param.targets[0]
        else:
            raise BadRequest(
                f"Chained parameter {key}: name the target type, e.g. {name}:Patient.{inner_key}"
            )
        if not is_supported(target):
            raise BadRequest(f"Chained parameter {key}: {target} is not a supported type")
        if "." in inner_key:
            raise BadRequest(f"Chained parameter {key}: only one level of chaining is supported")
        inner = self.parse_filter(target, inner_key, raw)
        if inner is None:
            raise BadRequest(f"Chained parameter {key}: {target} has no search parameter {inner_key!r}")
        return Filter(name, ParamType.REFERENCE, param, (), None, chain=ChainedFilter(target, inner))
