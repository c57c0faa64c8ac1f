"""The base FHIR R4 rules every write must follow, beyond structure: required bindings and invariants.

The rules are data: `profiles/r4/base-rules.json`, derived from the R4 4.0.1 specification by
`profiles/r4/generate.py` (required bindings per element path with their value sets expanded, the
invariants of the served resource types and of the datatypes they use). Loading compiles them into a table
per model class (`table`), which the validator's single walk over a resource reads (`json_types.Walk`):

- a `code` under a required binding is checked with a set lookup (`_Field.codes`); Coding and
  CodeableConcept bindings, and the two value sets defined outside FHIR (MIME types, currencies: by
  syntax), through a `Binding` rule;
- invariants run on each value of the element or datatype that carries them: FHIRPath through the
  gateway's evaluator (`profiles.fhirpath`: native closures, fhirpathpy for the rest), except those written
  here in Python (`_NATIVE`) because they compare dates (the FHIRPath engines here compare them as text)
  or need the whole resource (references to contained resources);
- the DomainResource invariants on contained resources (dom-2 to dom-5) and the narrative (dom-6, a
  warning) are checked once per resource (`resource_done`).

An invariant fails only when it evaluates to false: an empty result (e.g. dates of different precision)
or an evaluation error is not a proof of a problem, and the gateway must not refuse valid content.
"""

from __future__ import annotations

import json
import pathlib
import re
from collections.abc import Callable, Iterator, Mapping
from functools import cache
from typing import Any, Final

from gateway.fhir.dates import DateFormatError, date_range
from gateway.fhir.json_types import Table, Walk, model_fields
from gateway.fhir.profiles.fhirpath import child_model_path, compile_fhirpath, presence_settler, typed_node
from gateway.settings import PROJECT_ROOT
from gateway.types import Issue, Severity

SHIPPED: Final = PROJECT_ROOT / "profiles" / "r4"
DATA_FILE: Final = "base-rules.json"

# Value sets defined outside FHIR, checked by their syntax: RFC 6838 media types (with parameters) and
# ISO 4217 alphabetic codes.
_SYNTAX: Final[dict[str, re.Pattern[str]]] = {
    "mime-type": re.compile(
        r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}"
        r"(?:\s*;\s*[A-Za-z0-9!#$&^_.+-]+=(?:[^\s;\"]+|\"[^\"]*\"))*"
    ),
    "currency": re.compile(r"[A-Z]{3}"),
}
# A date, dateTime or instant written without a time zone is local somewhere: comparing it with another
# allows for the widest offsets (UTC-12 to UTC+14).
_ZONE_SLACK_US: Final = 14 * 3600 * 1_000_000


class Binding:
    """A required binding: the codes of its value set (or the syntax they follow) and how to read them."""

    __slots__ = ("codes", "kind", "pairs", "syntax", "value_set")

    def __init__(self, value_set: str, kind: str, expansion: Mapping[str, Any]) -> None:
        self.value_set = value_set
        self.kind = kind  # "code", "Coding" or "CodeableConcept"
        systems: Mapping[str, list[str]] = expansion.get("systems", {})
        self.pairs = frozenset((system, code) for system, codes in systems.items() for code in codes)
        self.codes = frozenset(code for _, code in self.pairs)
        syntax = expansion.get("syntax")
        self.syntax = _SYNTAX[syntax] if syntax is not None else None

    def check(self, value: Any, expression: str, walk: Walk, shape: Any = None) -> None:
        """Report a value outside the value set."""
        if self.kind == "code":
            if self.syntax is not None:
                if type(value) is str and self.syntax.fullmatch(value):
                    return
            elif value in self.codes:
                return
            shown = f"'{value}'"
        else:
            codings = value.get("coding") if self.kind == "CodeableConcept" else [value]
            codings = [c for c in codings if type(c) is dict] if type(codings) is list else []
            if any((c.get("system"), c.get("code")) in self.pairs for c in codings):
                return
            shown = ", ".join(f"{c.get('system')}|{c.get('code')}" for c in codings) or "no coding"
        message = f"{expression}: {shown} is not in the value set {self.value_set} (required binding)"
        walk.issues.append(Issue("error", "code-invalid", message, (expression,)))


Evaluate = Callable[[Any, Walk], "bool | None"]
# A verdict from the value alone: True holds, False fails, None needs the full evaluation.
Settle = Callable[[Any], "bool | None"]
# Verdicts remembered per invariant, by the shape of the value; cleared when they grow past this many.
_VERDICT_LIMIT: Final = 4096
_UNKNOWN: Final = object()


class Invariant:
    """One invariant of the specification, ready to run on a value.

    `evaluate(value, walk)` gives True (holds), False (fails) or None (no answer: not reported). Most
    invariants are settled by which elements are present (`settle`); when that depends on nothing else
    (`by_shape`), the verdict is remembered per shape of the value, so the same shapes of Quantity or
    reference range cost a dict lookup.
    """

    __slots__ = ("by_shape", "evaluate", "human", "issues", "key", "settle", "severity", "verdicts")

    def __init__(
        self,
        key: str,
        severity: Severity,
        human: str,
        evaluate: Evaluate,
        settle: Settle | None = None,
        by_shape: bool = False,
    ) -> None:
        self.key = key
        self.severity = severity
        self.human = human
        self.evaluate = evaluate
        self.settle = settle
        self.by_shape = by_shape and settle is not None
        self.verdicts: dict[Any, bool | None] = {}
        # Issues are immutable: the same failure at the same place is one object (dom-6 is on every write).
        self.issues: dict[str, Issue] = {}

    def check(self, value: Any, expression: str, walk: Walk, shape: Any) -> None:
        verdict: Any = _UNKNOWN
        if self.by_shape and shape is not None:
            verdict = self.verdicts.get(shape, _UNKNOWN)
            if verdict is _UNKNOWN:
                verdict = self._settled(value)
                if len(self.verdicts) >= _VERDICT_LIMIT:
                    self.verdicts.clear()
                self.verdicts[shape] = verdict
        if verdict is None or verdict is _UNKNOWN:
            try:
                verdict = self.evaluate(value, walk)
            except Exception:  # malformed content the structure checks report; not this invariant's to judge
                verdict = None
        if verdict is False:
            self.report(walk, expression)

    def _settled(self, value: Any) -> bool | None:
        try:
            return self.settle(value) if self.settle is not None else None
        except Exception:
            return None

    def report(self, walk: Walk, expression: str) -> None:
        issue = self.issues.get(expression)
        if issue is None:
            message = f"{expression}: {self.key}: {self.human}"
            issue = Issue(self.severity, "invariant", message, (expression,))
            if len(self.issues) >= _VERDICT_LIMIT:
                self.issues.clear()
            self.issues[expression] = issue
        walk.issues.append(issue)


class ElementRules:
    """The rules on the values of one element that its type does not carry (a binding on a Coding, the
    invariants an element or a datatype profile adds)."""

    __slots__ = ("rules",)

    def __init__(self, rules: tuple[Binding | Invariant, ...]) -> None:
        self.rules = rules

    def check(self, value: Any, expression: str, walk: Walk, shape: Any) -> None:
        for rule in self.rules:
            rule.check(value, expression, walk, shape)


def _fhirpath(key: str, severity: Severity, human: str, expression: str, model_path: str) -> Invariant:
    """An invariant written in FHIRPath, evaluated with the value as context and the walk's %resource."""
    compiled = compile_fhirpath(expression, model_path)

    def context(value: Any) -> Any:
        return value if "resourceType" in value else typed_node(value, model_path)

    def evaluate(value: Any, walk: Walk) -> bool | None:
        result = compiled(context(value), walk.env)
        return False if result == [False] else True if result == [True] else None

    settler = presence_settler(expression)
    if settler is None:
        return Invariant(key, severity, human, evaluate)
    decide, by_shape = settler

    def settle(value: Any) -> bool | None:
        verdict = decide(context(value))
        return verdict if type(verdict) is bool else None

    return Invariant(key, severity, human, evaluate, settle, by_shape)


def _moment_range(value: Any) -> tuple[int, int] | None:
    """The instants a date, dateTime or instant may stand for (None: absent or not a date)."""
    if type(value) is not str:
        return None
    try:
        low, high = date_range(value)
    except DateFormatError:
        return None
    if "T" not in value or not (value.endswith("Z") or value[-6] in "+-"):
        return low - _ZONE_SLACK_US, high + _ZONE_SLACK_US
    return low, high


def _in_order(first: str, then: str) -> Evaluate:
    """`first <= then` for two date elements: false only when every instant `first` may stand for comes
    after every instant `then` may stand for (FHIRPath gives no answer for different precisions)."""

    def evaluate(value: Any, walk: Walk) -> bool | None:
        start, end = _moment_range(value.get(first)), _moment_range(value.get(then))
        if start is None or end is None:
            return True
        return not start[0] > end[1]

    return evaluate


def _extension_has_value_or_extensions(value: Any) -> bool | None:
    """ext-1: an extension has a value[x] or nested extensions, not both (and not neither)."""
    nested = bool(value.get("extension"))
    valued = any(key.startswith("value") and item is not None for key, item in value.items())
    return nested != valued


def _local_reference_resolves(value: Any, walk: Walk) -> bool | None:
    """ref-1: `#id` names a resource contained in the root resource; `#` alone (the container) is only
    meaningful inside a contained resource."""
    reference = value.get("reference")
    if type(reference) is not str or not reference.startswith("#"):
        return True
    if reference == "#":
        return walk.env["resource"] is not walk.env["rootResource"]
    return reference[1:] in _contained_ids(walk.env["rootResource"])


def _contained_ids(resource: Mapping[str, Any]) -> set[str]:
    contained = resource.get("contained")
    if type(contained) is not list:
        return set()
    return {c["id"] for c in contained if type(c) is dict and type(c.get("id")) is str}


def _on_value(settle: Settle) -> Evaluate:
    """An evaluation that needs nothing but the value."""
    return lambda value, walk: settle(value)


# Invariants written here rather than run as FHIRPath (see the module docstring): their evaluation, and
# for those whose verdict depends only on which elements are present, that verdict (remembered per shape).
_NATIVE: Final[dict[str, tuple[Evaluate, Settle | None]]] = {
    "ext-1": (_on_value(_extension_has_value_or_extensions), _extension_has_value_or_extensions),
    "ref-1": (_local_reference_resolves, None),
    "per-1": (_in_order("start", "end"), None),
    "mdd-1": (_in_order("whenPrepared", "whenHandedOver"), None),
    "inv-1": (_in_order("authoredOn", "lastModified"), None),
}
# Checked on whole resources by `resource_done`, with the specification's texts.
_RESOURCE_LEVEL: Final = ("dom-2", "dom-3", "dom-4", "dom-5", "dom-6")


class BaseRules:
    """The base R4 rules, compiled; immutable after loading, so one instance serves every request."""

    def __init__(self, data: Mapping[str, Any], source: str) -> None:
        try:
            self.resource_types: dict[str, str] = dict(data["resourceTypes"])
            self.datatypes = frozenset(data["datatypes"])
            self.content_references: dict[str, str] = dict(data["contentReferences"])
            value_sets: Mapping[str, Any] = data["valueSets"]
            self.bindings = {
                path: Binding(b["valueSet"], b["type"], value_sets[b["valueSet"]])
                for path, b in data["bindings"].items()
            }
            self.invariants = {
                path: tuple(self._invariant(path, i) for i in listed if i["key"] not in _RESOURCE_LEVEL)
                for path, listed in data["invariants"].items()
                if path != "Element"
            }
            self.resource_rules = {
                i["key"]: Invariant(i["key"], _severity(i["severity"]), i["human"], _checked_elsewhere)
                for i in data["invariants"]["DomainResource"]
            }
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{source}: not a base rules file: {exc!r}") from None
        missing = [key for key in _RESOURCE_LEVEL if key not in self.resource_rules]
        if missing:
            raise ValueError(f"{source}: DomainResource invariants missing: {', '.join(missing)}")
        self.tables: dict[type, Table] = {}

    @classmethod
    def load(cls, directory: pathlib.Path) -> BaseRules:
        """Read `base-rules.json` from `directory`; ValueError when it is missing or malformed."""
        path = directory / DATA_FILE
        try:
            data = json.loads(path.read_bytes())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: cannot be read: {exc}") from None
        return cls(data, str(path))

    @staticmethod
    @cache
    def shipped() -> BaseRules:
        """The rules shipped with the gateway (the specification's; not site configuration)."""
        return BaseRules.load(SHIPPED)

    def _invariant(self, path: str, spec: Mapping[str, str]) -> Invariant:
        key, severity, human = spec["key"], _severity(spec["severity"]), spec["human"]
        native = _NATIVE.get(key)
        if native is not None:
            evaluate, settle = native
            return Invariant(key, severity, human, evaluate, settle, by_shape=settle is not None)
        try:
            return _fhirpath(key, severity, human, spec["expression"], self._model_path(path))
        except ValueError as exc:
            raise ValueError(f"{path} {key}: {exc}") from None

    @staticmethod
    def _model_path(path: str) -> str:
        """The FHIRPath type of an element path's values: its datatype, or the path of a backbone element."""
        if "." not in path:
            return path
        parent, _, name = path.rpartition(".")
        return child_model_path(parent, name)

    # -- the walk's interface (json_types.Rules) --------------------------------------------------

    def table(self, model: type, path: str) -> Table:
        """The elements of a model class with the rules they carry as children of `path`."""
        found = self.tables.get(model)
        if found is None:
            found = self._table(model, path)
            self.tables[model] = found
        return found

    def _table(self, model: type, path: str) -> Table:
        fields = {}
        for name, field in model_fields(model).items():
            element = f"{path}.{name}"
            kind = field.kind
            child_path = None
            if type(kind) is not str:
                child_path = kind.__name__ if kind.__name__ in self.datatypes else self._canonical(element)
            rules: list[Binding | Invariant] = []
            binding = self.bindings.get(element)
            if binding is not None:
                rules.append(binding)
            if child_path != element:  # a backbone element's invariants are its class's (below)
                rules += self.invariants.get(element, ())
            codes = None
            rule: Any = None
            if len(rules) == 1:
                rule = rules[0]
                if binding is not None and binding.kind == "code" and binding.syntax is None:
                    codes = binding.codes  # the walk looks the code up itself, calling the rule on a miss
            elif rules:
                rule = ElementRules(tuple(rules))
            fields[name] = field._replace(codes=codes, rule=rule, path=child_path)
        return Table(fields, self.invariants.get(path, ()), path)

    def _canonical(self, element: str) -> str:
        """An element path with content references followed (Bundle.entry.link -> Bundle.link)."""
        return self.content_references.get(element, element)

    def resource_problem(self, resource_type: Any, model: type | None) -> str | None:
        if not isinstance(resource_type, str):
            return "A resource needs a resourceType"
        if resource_type not in self.resource_types:
            return f"'{resource_type}' is not a FHIR R4 resource type"
        if model is None:
            return f"{resource_type} resources cannot be validated here"
        return None

    def resource_done(self, resource: dict[str, Any], expression: str, walk: Walk, contained: bool) -> None:
        """dom-2 to dom-6: contained resources (nested, referenced, without versions or security labels)
        and the narrative."""
        if self.resource_types.get(str(resource.get("resourceType"))) != "DomainResource":
            return
        rules = self.resource_rules
        items = resource.get("contained")
        if contained:
            if items:
                rules["dom-2"].report(walk, f"{expression}.contained")
            return
        text = resource.get("text")
        if not (type(text) is dict and text.get("div")):
            rules["dom-6"].report(walk, f"{expression}.text")
        if type(items) is not list or not items:
            return
        references = set(_local_references(resource))
        for index, item in enumerate(items):
            if type(item) is not dict:
                continue
            where = f"{expression}.contained[{index}]"
            meta = item.get("meta")
            if type(meta) is dict:
                for key in ("versionId", "lastUpdated"):
                    if key in meta:
                        rules["dom-4"].report(walk, f"{where}.meta.{key}")
                if meta.get("security"):
                    rules["dom-5"].report(walk, f"{where}.meta.security")
            rtype = item.get("resourceType")
            if not isinstance(rtype, str) or rtype not in self.resource_types:
                continue  # reported as unknown already (a list or an object is no key to look up)
            if f"#{item.get('id')}" not in references and "#" not in set(_local_references(item)):
                rules["dom-3"].report(walk, where)


def _severity(text: str) -> Severity:
    return "error" if text == "error" else "warning"


def _checked_elsewhere(value: Any, walk: Walk) -> bool | None:
    """The evaluation of the resource-level invariants, which `BaseRules.resource_done` checks itself."""
    return None


def _local_references(node: Any) -> Iterator[str]:
    """Every string in a resource that starts with '#': local references, and canonicals or uris to
    contained resources."""
    if type(node) is dict:
        for value in node.values():
            yield from _local_references(value)
    elif type(node) is list:
        for value in node:
            yield from _local_references(value)
    elif type(node) is str and node.startswith("#"):
        yield node
