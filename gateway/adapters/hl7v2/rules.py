"""The interpreter for resource mappings (`mappings/hl7v2/resources/*.yaml`).

Rules are compiled once into small objects; applying them to a Scope (the segments one resource may read)
fills a resource dict. Converters come in three kinds: value converters read one field repetition (a CWE,
a TS), segment converters read a whole segment (OBX-5 with OBX-2 and OBX-6), and scope converters read
several segments of a group (a dosage from RXE, RXR and TQ1). Every segment a rule reads is marked used,
so that what no rule read can be reported.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.adapters.hl7v2.er7 import Segment, Value
from gateway.adapters.hl7v2.structure import Group
from gateway.fhir.json_types import repeats
from gateway.fhir.validation import model_class

_REF = re.compile(r"^(?P<seg>[A-Z][A-Z0-9]{2})(?:-(?P<field>\d+)(?:\.(?P<comp>\d+))?)?$")
_GROUP_REF = re.compile(r"^[A-Z_]{4,}$")

ValueConverter = Callable[[Value, Any], Any]
SegmentConverter = Callable[[Segment, Any], Any]
ScopeConverter = Callable[["Scope", Any], Any]


class RuleError(ValueError):
    """A rule that names an unknown converter or a malformed source."""


class Scope:
    """The segments (nearest first) and groups a resource's rules may read, and which of them were read."""

    def __init__(self, used: set[int]) -> None:
        self._segments: dict[str, list[Segment]] = {}
        self.groups: dict[str, Group] = {}
        self.used = used

    def add(self, segments: Iterable[Segment]) -> Scope:
        for segment in segments:
            self._segments.setdefault(segment.name, []).append(segment)
        return self

    def add_group(self, name: str, group: Group) -> Scope:
        self.groups[name] = group
        return self

    def segments(self, name: str) -> list[Segment]:
        found = self._segments.get(name)
        if not found:
            return []
        if len(found) == 1:
            self.used.add(found[0].index)
        else:
            self.used.update(s.index for s in found)
        return found

    def first(self, name: str) -> Segment | None:
        found = self.segments(name)
        return found[0] if found else None

    def child(self) -> Scope:
        """A copy sharing the used-set, to extend for a nested resource."""
        scope = Scope(self.used)
        scope._segments = {k: list(v) for k, v in self._segments.items()}
        scope.groups = dict(self.groups)
        return scope


@dataclass(frozen=True, slots=True)
class Source:
    segment: str
    field: int | None = None
    component: int | None = None
    group: str | None = None

    @classmethod
    def parse(cls, text: str) -> Source:
        match = _REF.match(text)
        if match:
            comp = match["comp"]
            return cls(
                match["seg"], int(match["field"]) if match["field"] else None, int(comp) if comp else None
            )
        if _GROUP_REF.match(text):
            return cls("", group=text)
        raise RuleError(f"{text!r} is not a source: use SEG-n, SEG-n.c, SEG or a group name such as ORDER")


@dataclass(slots=True)
class Rule:
    element: str
    sources: tuple[Source, ...]
    convert: Callable[[Any, Any], Any] | None
    kind: str  # value | segment | scope | fixed
    repeat: bool = False
    table: str | None = None
    key: str | None = None
    default: Any = None
    fixed: Any = None
    merge: dict[str, Any] | None = None
    defaults: dict[str, Any] | None = None  # keys added to each value that lacks them
    system: str | None = None  # for codes sent without a coding system (an IS/ID field's HL7 table)
    as_name: str | None = None  # for choice elements (deceased[x]): the concrete element this rule fills
    _fixed_json: bytes = field(default=b"", init=False, repr=False)
    _default_json: bytes = field(default=b"", init=False, repr=False)
    _merge_json: bytes = field(default=b"", init=False, repr=False)
    _defaults_json: bytes = field(default=b"", init=False, repr=False)
    _plain: bool = field(default=False, init=False, repr=False)
    _finishing: bool = field(default=False, init=False, repr=False)

    def __post_init__(self) -> None:
        # Most rules read the first value of a field or component (with fallbacks): they take the direct
        # path in `results`, without the generator `inputs` that the other kinds need.
        self._plain = (
            self.kind == "value"
            and not self.repeat
            and all(s.group is None and s.field is not None for s in self.sources)
        )
        self._finishing = bool(self.table is not None or self.merge or self.defaults or self.system)
        # Literal values are copied per use (resources are edited later); a JSON round trip is the cheap copy.
        self._fixed_json = orjson.dumps(self.fixed) if self.kind == "fixed" else b""
        self._default_json = orjson.dumps(self.default) if self.default is not None else b""
        self._merge_json = orjson.dumps(self.merge) if self.merge else b""
        self._defaults_json = orjson.dumps(self.defaults) if self.defaults else b""

    def inputs(self, scope: Scope) -> Iterator[Any]:
        """What the converter reads, in order: field values, whole segments, or the scope.

        Lazily: a rule whose first source has a value never reads (nor marks as mapped) its fallbacks.
        """
        for source in self.sources:
            if source.group is not None:
                if self.kind == "scope":
                    yield scope
                continue
            for segment in scope.segments(source.segment):
                if source.field is None:
                    yield segment
                    continue
                if self.repeat:
                    reps = segment.repetitions(source.field)
                    yield from ([v.part(source.component) for v in reps] if source.component else reps)
                    continue
                first = segment.get(source.field)  # only the first repetition counts as mapped
                if not first:
                    continue
                yield first.part(source.component) if source.component else first
                break

    def results(self, scope: Scope, ctx: Any) -> list[Any]:
        if self.kind == "fixed":
            if isinstance(self.fixed, str):
                return [self.fixed]  # immutable: no copy needed
            fixed = orjson.loads(self._fixed_json)
            return fixed if isinstance(fixed, list) else [fixed]  # a list: the values of a list element
        if self._plain:
            return self._first_value(scope, ctx)
        found: list[Any] = []
        convert = self.convert
        assert convert is not None
        finish = self._finishing
        for item in self.inputs(scope):
            if type(item) is Value and not item:
                continue
            converted = convert(item, ctx)
            if converted is None or converted == []:
                continue
            values = converted if type(converted) is list else [converted]
            if finish:
                values = [v for v in (self._finish(v, ctx) for v in values) if v is not None]
            found += values
            if found and not self.repeat:
                break
        if not found and self.default is not None:
            found = [orjson.loads(self._default_json)]
        return found

    def _first_value(self, scope: Scope, ctx: Any) -> list[Any]:
        """`results` of a plain value rule: the first source whose first repetition converts to something
        (what `inputs` and `results` do together for these rules, read and marked the same way)."""
        convert = self.convert
        assert convert is not None
        for source in self.sources:
            assert source.field is not None
            for segment in scope.segments(source.segment):
                first = segment.get(source.field)
                if not first:
                    continue
                item = first.part(source.component) if source.component else first
                if item:
                    converted = convert(item, ctx)
                    if converted is not None and converted != []:
                        values = converted if type(converted) is list else [converted]
                        if self._finishing:
                            values = [v for v in (self._finish(v, ctx) for v in values) if v is not None]
                        if values:
                            return values
                break  # this source had its say; the next one is a fallback
        if self.default is not None:
            return [orjson.loads(self._default_json)]
        return []

    def _finish(self, value: Any, ctx: Any) -> Any:
        if self.table is not None:
            mapped = ctx.tables.map(self.table, str(value))
            if isinstance(mapped, dict) and self.key is not None:
                mapped = mapped.get(self.key)
            if mapped is None:
                if self.key is None or ctx.tables.map(self.table, str(value)) is None:
                    ctx.problems.append(f"{self.element}: code {value!r} is not in table {self.table}")
                return None
            value = mapped
        if self._merge_json and isinstance(value, dict):
            value = {**value, **orjson.loads(self._merge_json)}
        if self._defaults_json and isinstance(value, dict):
            value = {**orjson.loads(self._defaults_json), **value}
        if self.system is not None and isinstance(value, dict):
            _default_system(value, self.system)
        return value


def _default_system(value: dict[str, Any], system: str) -> None:
    """Give a Coding, or each coding of a CodeableConcept, the rule's system when it has none."""
    codings: list[Any] = (
        value.get("coding") or [] if "coding" in value else [value] if "code" in value else []
    )
    for coding in codings:
        if isinstance(coding, dict) and "code" in coding and "system" not in coding:
            coding["system"] = system


# Converted values remembered per rule's converter; a memo is cleared when it holds this many results or
# this many bytes of them. The byte cap matters: a converter whose input is new in every message (a whole
# OBR: order numbers, times) gains nothing from its memo, and at several KB a result, 50,000 of them per
# rule made a long-running gateway grow by hundreds of MB (the memory soak, `python -m bench soak`).
MEMO_LIMIT = 50_000
MEMO_BYTES = 1 << 18  # 79 rules remember values with the shipped mappings: about 20 MB of results at most


# A memo earns its keep only where inputs repeat (codes, units, ranges); where they do not (order numbers,
# each message's own times) a miss costs more than converting: the key, the kept copy and its size. So each
# memo judges itself every PROBE lookups: hits under USEFUL of them, and it converts directly for the next
# REST calls (its results dropped), then tries again; feeds change.
PROBE = 1000
USEFUL = 0.1
REST = 20_000


def memoized(convert: Callable[[Any, Any], Any], key: Callable[[Any], Any]) -> Callable[[Any, Any], Any]:
    """A converter that remembers results: feeds repeat the same codes, units, ranges and times endlessly.

    The key is the raw input plus what the context contributes (the sender's time zone, the code tables);
    results are kept as JSON and handed out as fresh copies (resources are edited later), and the problems a
    conversion reported are reported again on every reuse. A memo that rarely hits rests (see PROBE).
    """
    memo: dict[Any, tuple[_Kept, list[str]]] = {}
    kept_bytes = 0
    lookups = hits = resting = 0

    def run(item: Any, ctx: Any) -> Any:
        nonlocal kept_bytes, lookups, hits, resting
        if resting:
            resting -= 1
            return convert(item, ctx)
        lookups += 1
        if lookups >= PROBE:
            if hits < USEFUL * lookups:
                resting = REST
                memo.clear()
                kept_bytes = 0
            lookups = hits = 0
        memo_key = (key(item), ctx.zone.key, id(ctx.tables))
        hit = memo.get(memo_key)
        if hit is None:
            before = len(ctx.problems)
            result = convert(item, ctx)
            hit = (_Kept.of(result), ctx.problems[before:])
            if len(memo) >= MEMO_LIMIT or kept_bytes >= MEMO_BYTES:
                memo.clear()
                kept_bytes = 0
            memo[memo_key] = hit
            kept_bytes += hit[0].size() + _key_size(memo_key)
        else:
            hits += 1
            if hit[1]:
                ctx.problems.extend(hit[1])
        return hit[0].copy()

    return run


def _key_size(key: Any) -> int:
    """Roughly the bytes a memo key holds (its strings and bytes; nested tuples of them)."""
    if isinstance(key, str | bytes):
        return len(key) + 48
    if isinstance(key, tuple | list):
        return 56 + sum(_key_size(k) for k in key)
    return 32


_SCALARS = (str, int, float, bool, type(None))
_CONTAINERS = (dict, list, tuple)


@dataclass(frozen=True, slots=True)
class _Kept:
    """A remembered converter result, handed out as a fresh copy each time (resources are edited later).

    Scalars are immutable and shared; other values are kept as orjson bytes (its parser copies fastest),
    except those holding a decimal written with its precision, which a JSON round trip would lose.
    """

    value: Any
    form: str  # scalar | json | tree
    is_tuple: bool = False

    @classmethod
    def of(cls, result: Any) -> _Kept:
        if isinstance(result, _SCALARS):
            return cls(result, "scalar")
        if _has_literal(result):
            return cls(copy_json(result), "tree")
        # A tuple (element name, value) must stay a tuple: a list means several values.
        # Copied to its exact length: orjson's output keeps the capacity of the buffer it was written in
        # (32 KB for a 4 KB result, measured with tracemalloc), and a memo keeps results for long.
        return cls(bytes(memoryview(orjson.dumps(result))), "json", type(result) is tuple)

    def size(self) -> int:
        """Roughly the bytes this result holds (JSON bytes; a string's length; a tree's JSON length)."""
        if self.form == "json":
            return len(self.value) + 64
        if self.form == "tree":
            return len(orjson.dumps(self.value, default=str)) + 64
        return len(self.value) + 64 if isinstance(self.value, str) else 64

    def copy(self) -> Any:
        if self.form == "scalar":
            return self.value
        if self.form == "tree":
            return copy_json(self.value)
        found = orjson.loads(self.value)
        return tuple(found) if self.is_tuple else found


def _has_literal(value: Any) -> bool:
    """Whether a converted value holds a number orjson would not write back as it was written."""
    kind = type(value)
    if kind is dict:
        return any(_has_literal(v) for v in value.values())
    if kind in (list, tuple):
        return any(_has_literal(v) for v in value)
    return kind is not float and isinstance(value, float)


def copy_json(value: Any) -> Any:
    """A deep copy of converted JSON: dicts, lists and the (element, value) tuples converters return.

    Numbers and strings are immutable (a DecimalLiteral too), so they are shared; faster than a JSON
    round trip, and it keeps decimal literals as written.
    """
    kind = type(value)
    if kind is dict:
        return {k: copy_json(v) for k, v in value.items()}
    if kind is list:
        return [copy_json(v) for v in value]
    if kind is tuple:
        return tuple(copy_json(v) for v in value)
    return value


def value_key(value: Value) -> Any:
    return (value.raw, value.level, value.enc)


@dataclass
class Converters:
    value: Mapping[str, ValueConverter]
    segment: Mapping[str, SegmentConverter]
    scope: Mapping[str, ScopeConverter]
    # Segment converters that may be remembered, with the fields their result depends on.
    segment_keys: Mapping[str, Callable[[Segment], Any]] = field(default_factory=dict)

    def find(self, name: str) -> tuple[Callable[[Any, Any], Any], str]:
        if name in self.value:
            return memoized(self.value[name], value_key), "value"
        if name in self.segment:
            key = self.segment_keys.get(name)
            convert = self.segment[name]
            return (memoized(convert, key) if key else convert), "segment"
        if name in self.scope:
            return self.scope[name], "scope"
        raise RuleError(f"unknown converter {name!r}")


def compile_rule(element: str, spec: Mapping[str, Any], converters: Converters) -> Rule:
    if "fixed" in spec:
        return Rule(element, (), None, "fixed", fixed=spec["fixed"], as_name=spec.get("as"))
    raw = spec.get("from", [])
    sources = tuple(Source.parse(s) for s in (raw if isinstance(raw, list) else [raw]))
    convert, kind = converters.find(spec.get("with", "string"))
    for source in sources:
        if kind == "value" and source.field is None:
            raise RuleError(f"{element}: converter {spec.get('with')!r} needs a field (SEG-n), not {source}")
        if kind == "segment" and (source.field is not None or source.group):
            raise RuleError(f"{element}: converter {spec.get('with')!r} reads a whole segment (from: SEG)")
    return Rule(
        element,
        sources,
        convert,
        kind,
        repeat=bool(spec.get("repeat", False)),
        table=spec.get("table"),
        key=spec.get("key"),
        default=spec.get("default"),
        merge=spec.get("merge"),
        defaults=spec.get("defaults"),
        system=spec.get("system"),
        as_name=spec.get("as"),
    )


@dataclass
class Element:
    """The rules for one element and whether it holds a list (from the FHIR model, or `repeat: true`)."""

    path: str
    rules: list[Rule]
    is_list: bool


@dataclass
class ResourceMapping:
    """The compiled rules of one resource type, element by element in file order."""

    resource_type: str
    elements: list[Element] = field(default_factory=list)

    @classmethod
    def compile(
        cls, resource_type: str, elements: Mapping[str, Any], converters: Converters
    ) -> ResourceMapping:
        mapping = cls(resource_type)
        for path, specs in elements.items():
            mapping.elements.append(mapping._element(path, specs, converters))
        return mapping

    def _element(self, path: str, specs: Any, converters: Converters) -> Element:
        rules = [compile_rule(path, s, converters) for s in (specs if isinstance(specs, list) else [specs])]
        top = path.split(".", 1)[0]
        model_says = (
            None if "." in path or top.endswith("[x]") else repeats(model_class(self.resource_type), top)
        )
        if model_says is None and "." not in path and not top.endswith("[x]"):
            raise RuleError(f"{self.resource_type} has no element {top!r}")
        return Element(path, rules, bool(model_says) or any(r.repeat for r in rules))

    def with_overrides(self, overrides: Mapping[str, Any], converters: Converters) -> ResourceMapping:
        """A copy where a site's rules replace (or add) elements."""
        replaced = {e.path: e for e in self.elements}
        for path, specs in overrides.items():
            replaced[path] = self._element(path, specs, converters)
        return ResourceMapping(self.resource_type, list(replaced.values()))

    def apply(self, scope: Scope, ctx: Any) -> dict[str, Any]:
        resource: dict[str, Any] = {"resourceType": self.resource_type}
        for element in self.elements:
            values: list[Any] = []
            producer: Rule | None = None
            for rule in element.rules:
                found = rule.results(scope, ctx)
                if found and producer is None:
                    producer = rule
                values += found
                if values and not element.is_list:
                    break
            if not values or producer is None:
                continue
            if element.path.endswith("[x]"):
                first = values[0]
                if producer.as_name:
                    resource[producer.as_name] = first
                elif isinstance(first, tuple):
                    resource[first[0]] = first[1]  # (element name, value), e.g. from observation-value
                continue
            _set(resource, element.path, values if element.is_list else values[0])
        return resource


def _set(resource: dict[str, Any], path: str, value: Any) -> None:
    """Set a dotted path (`dispenseRequest.quantity`, `dosageInstruction.0.text`)."""
    parts = path.split(".")
    node: Any = resource
    for i, part in enumerate(parts[:-1]):
        nxt = parts[i + 1]
        if part.isdigit():
            index = int(part)
            while len(node) <= index:
                node.append({} if not nxt.isdigit() else [])
            node = node[index]
        else:
            node = node.setdefault(part, [] if nxt.isdigit() else {})
    last = parts[-1]
    if last.isdigit():
        index = int(last)
        while len(node) <= index:
            node.append(None)
        node[index] = value
    else:
        node[last] = value
