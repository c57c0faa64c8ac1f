"""The gateway's profiles: FHIR StructureDefinitions (differentials) applied to resources as plain dicts.

`ProfileSet.load` reads `profiles/` once and compiles every differential into a tree of rule nodes (one per
constrained element), value sets into frozensets of (system, code) and every FHIRPath expression into a
callable. `validate` then walks only the branches of a resource that carry rules, so its cost grows with the
number of rules, not with the size of the resource.

Supported in a differential: min/max at any depth, choice elements and `type` restrictions on them,
fixed[x], pattern[x], bindings (required; extensible and preferred as warnings), Reference targetProfile,
FHIRPath constraints and slicing by `pattern`/`value` on `$this`. Anything else that would constrain the
content (maxLength, minValue[x], other discriminators, re-slicing) is rejected at load: a rule the gateway
cannot enforce must not look enforced.
"""

from __future__ import annotations

import copy
import importlib
import json
import pathlib
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import fhirpathpy
from fhirpathpy.engine.invocations import invocation_registry
from fhirpathpy.engine.nodes import ResourceNode
from fhirpathpy.models import models as _fhirpath_models
from fhirpathpy.parser import parse
from fhirpathpy.parser.generated.FHIRPathLexer import FHIRPathLexer
from fhirpathpy.parser.generated.FHIRPathParser import FHIRPathParser

from gateway.fhir.references import parse_reference
from gateway.types import Issue, Severity

# antlr4 (fhirpathpy's parser runtime) has no type information; reached through importlib so that mypy
# does not need it, and fhirpathpy's untyped helpers are called through Any-typed aliases for the same reason.
_antlr: Any = importlib.import_module("antlr4")
_parse_tree: Callable[[str], Any] = parse
_typed_node: Callable[[Any, str], Any] = ResourceNode.create_node

JSON = dict[str, Any]
Evaluator = Callable[[Any, Mapping[str, Any]], list[Any]]

ENFORCEMENT_FILE: Final = "enforcement.json"
_CORE_SD: Final = "http://hl7.org/fhir/StructureDefinition/"
_STRENGTH_SEVERITY: Final[dict[str, Severity]] = {
    "required": "error",
    "extensible": "warning",
    "preferred": "information",
}
# Element properties that constrain content but are not implemented: refusing them beats ignoring them.
_UNSUPPORTED: Final = ("maxLength", "minValue", "maxValue", "contentReference", "defaultValue")
# Variables the evaluator supplies to every expression (see _Walk.env).
_FHIRPATH_VARIABLES: Final = frozenset({"resource", "rootResource", "context", "ucum"})

# fhirpathpy's R4 model resolves choice elements (`value` -> valueQuantity) and element types (`is Quantity`).
_MODEL: Final[dict[str, Any]] = _fhirpath_models["r4"]
_PATH_TO_TYPE: Final[dict[str, str]] = _MODEL["path2Type"]
_CHOICE_TYPES: Final[dict[str, list[str]]] = _MODEL["choiceTypePaths"]
_DEFINED_ELSEWHERE: Final[dict[str, str]] = _MODEL["pathsDefinedElsewhere"]


class _Nothing:
    """Marks an absent fixed[x]/pattern[x] (None and False are legitimate JSON values)."""


_NOTHING: Final = _Nothing()


# --------------------------------------------------------------------------------------------- FHIRPath


class _RaisingListener:
    """ANTLR error listener that turns syntax errors into ValueError (fhirpathpy's own listener is silent)."""

    def syntaxError(self, recognizer: Any, symbol: Any, line: int, column: int, msg: str, e: Any) -> None:
        raise ValueError(f"FHIRPath syntax error at column {column}: {msg}")

    def reportAmbiguity(self, *args: Any) -> None:
        """Ambiguity reports are diagnostics, not errors."""

    def reportAttemptingFullContext(self, *args: Any) -> None:
        """Not an error."""

    def reportContextSensitivity(self, *args: Any) -> None:
        """Not an error."""


def _check_syntax(expression: str) -> None:
    """Raise ValueError unless `expression` parses completely (fhirpathpy drops what it cannot parse)."""
    lexer: Any = FHIRPathLexer(_antlr.InputStream(expression))
    lexer.removeErrorListeners()
    lexer.addErrorListener(_RaisingListener())
    parser: Any = FHIRPathParser(_antlr.CommonTokenStream(lexer))
    parser.removeErrorListeners()
    parser.addErrorListener(_RaisingListener())
    parser.expression()
    trailing = parser.getCurrentToken()
    if trailing.type != -1:  # -1 is ANTLR's EOF: anything left over was not part of the expression
        raise ValueError(f"FHIRPath syntax error at column {trailing.column}: unexpected {trailing.text!r}")


def _check_names(node: Any) -> None:
    """Raise ValueError for unknown functions or %variables, which fhirpathpy reports only when reached."""
    if isinstance(node, list):
        for item in node:
            _check_names(item)
        return
    if not isinstance(node, dict):
        return
    kind = node.get("type")
    if kind in ("Functn", "ExternalConstant"):
        identifiers = [c for c in node.get("children", []) if c.get("type") == "Identifier"]
        name = str(identifiers[0].get("text", "")).strip("`") if identifiers else ""
        if kind == "Functn" and name not in invocation_registry:
            raise ValueError(f"unknown FHIRPath function {name}()")
        if kind == "ExternalConstant" and name not in _FHIRPATH_VARIABLES:
            raise ValueError(f"unknown FHIRPath variable %{name or '?'}")
    _check_names(node.get("children", []))


# `a.b.where(x = 'y' and z = 'w').exists()`: the usual shape of an enforcement `when`. fhirpathpy needs about
# 200 us for it; the native version below about 2 us, and it runs on every write of the type.
_SIMPLE_EXISTS: Final = re.compile(
    r"^(?P<path>[a-z][A-Za-z0-9]*(?:\.[a-z][A-Za-z0-9]*)*)"
    r"\.where\((?P<conds>[a-z][A-Za-z0-9]* = '[^'\\]*'(?: and [a-z][A-Za-z0-9]* = '[^'\\]*')*)\)\.exists\(\)$"
)
_CONDITION: Final = re.compile(r"([a-z][A-Za-z0-9]*) = '([^'\\]*)'")


def _model_path(parent: str, key: str) -> str:
    """fhirpathpy's type path of the child `key` of an element whose type path is `parent`."""
    path = f"{parent}.{key}"
    path = _DEFINED_ELSEWHERE.get(path, path)
    return _PATH_TO_TYPE.get(path, path)


def _fast_exists(expression: str, model_path: str) -> Evaluator | None:
    """A native evaluator for `_SIMPLE_EXISTS` expressions, or None when the expression has another shape.

    Only plain member names qualify: a name that is a choice element (`value`) needs the model, so those
    expressions stay with fhirpathpy.
    """
    match = _SIMPLE_EXISTS.match(expression)
    if not match or not model_path:  # without the element's type, choice names cannot be ruled out
        return None
    steps = match["path"].split(".")
    conditions = tuple(_CONDITION.findall(match["conds"]))
    current = model_path
    for name in steps:
        if f"{current}.{name}" in _CHOICE_TYPES:
            return None
        current = _model_path(current, name)
    if any(f"{current}.{name}" in _CHOICE_TYPES for name, _ in conditions):
        return None

    def evaluate(context: Any, env: Mapping[str, Any]) -> list[Any]:
        """True when some item at the path has every condition's field equal to its literal."""
        items = [context.data if isinstance(context, ResourceNode) else context]
        for step in steps:
            items = [child for item in items for child in _children(item, step)]
        return [any(all(_string_equals(item, f, v) for f, v in conditions) for item in items)]

    return evaluate


def _children(item: Any, name: str) -> list[Any]:
    """FHIRPath member navigation on plain JSON: the value of `name`, flattened when it repeats."""
    if not isinstance(item, dict) or name not in item:
        return []
    value = item[name]
    return value if isinstance(value, list) else [value]


def _string_equals(item: Any, name: str, literal: str) -> bool:
    """FHIRPath `name = 'literal'` on one item: a singleton string equal to the literal."""
    values = _children(item, name)
    return len(values) == 1 and values[0] == literal


def _this_equals_guard(tree: Any) -> str | None:
    """'lit' when the parsed expression is `iif($this = 'lit', <anything>, true)`, else None."""
    try:
        (term,) = tree["children"]
        # TermExpression > InvocationTerm > FunctionInvocation > Functn(Identifier, ParamList)
        functn = term["children"][0]["children"][0]["children"][0]
        name, params = functn["children"]
        condition, _, otherwise = params["children"]
        this, literal = condition["children"]
        string = literal["children"][0]["children"][0]  # LiteralTerm > StringLiteral
    except (KeyError, IndexError, TypeError, ValueError):
        return None
    shape_ok = (
        term.get("type") == "TermExpression"
        and functn.get("type") == "Functn"
        and name.get("text") == "iif"
        and condition.get("type") == "EqualityExpression"
        and condition.get("terminalNodeText") == ["="]
        and this.get("text") == "$this"
        and string.get("type") == "StringLiteral"
        and otherwise.get("text") == "true"
    )
    text = str(string.get("text", ""))
    if not shape_ok or len(text) < 2 or "\\" in text:
        return None
    return text[1:-1]


def _guarded(literal: str, evaluate: Evaluator) -> Evaluator:
    """Skip fhirpathpy when the guard `$this = 'literal'` is plainly false: the iif then yields true.

    A context that is a string other than the literal makes the condition false, so the whole expression is
    [true]; anything else goes to the full evaluation. This saves about 30 us per guarded invariant.
    """

    def evaluate_guarded(context: Any, env: Mapping[str, Any]) -> list[Any]:
        data = context.data if isinstance(context, ResourceNode) else context
        if isinstance(data, str) and data != literal:
            return [True]
        return evaluate(context, env)

    return evaluate_guarded


def _compile_fhirpath(expression: str, model_path: str) -> Evaluator:
    """Check and compile an expression once; raise ValueError when it cannot work."""
    _check_syntax(expression)
    tree = _parse_tree(expression)
    _check_names(tree)
    fast = _fast_exists(expression, model_path)
    if fast is not None:
        return fast
    compiled: Evaluator = fhirpathpy.compile(expression, _MODEL)
    literal = _this_equals_guard(tree)
    return compiled if literal is None else _guarded(literal, compiled)


# ---------------------------------------------------------------------------------------------- rules


@dataclass(frozen=True, slots=True)
class _Constraint:
    key: str
    severity: Severity
    human: str
    evaluate: Evaluator


@dataclass(frozen=True, slots=True)
class _Binding:
    strength: str
    value_set: str
    pairs: frozenset[tuple[str | None, str]]
    codes: frozenset[str]  # the codes alone, for `code` elements whose system the binding implies
    kind: str | None  # "code", "Coding", "CodeableConcept" or None to decide from the JSON shape


@dataclass(eq=False, slots=True)
class _Node:
    """The rules on one element (or one slice) of a profile, and the nodes of its constrained children."""

    name: str  # JSON property; for a choice, the name without [x]
    model_path: str | None  # fhirpathpy type path; None under a choice, where it is known only at run time
    slice_name: str | None = None
    min: int = 0
    max: int | None = None  # None: unbounded
    choice: tuple[str, ...] | None = None  # type suffixes in the base (valueQuantity -> "Quantity")
    allowed: frozenset[str] | None = None  # suffixes the profile allows; None: every one
    fixed: Any = _NOTHING
    pattern: Any = _NOTHING
    binding: _Binding | None = None
    targets: frozenset[str] | None = None  # resource types a Reference may point at; None: any
    constraints: list[_Constraint] = field(default_factory=list)
    sliced: bool = False
    closed: bool = False
    slices: list[_Node] = field(default_factory=list)
    children: list[_Node] = field(default_factory=list)

    checks_items: bool = False  # whether any rule looks inside the values (else only the count matters)

    def finish(self) -> None:
        """Precompute `checks_items` for this subtree once the differential is read."""
        for child in (*self.children, *self.slices):
            child.finish()
        self.checks_items = bool(
            self.fixed is not _NOTHING
            or self.pattern is not _NOTHING
            or self.binding
            or self.targets is not None
            or self.constraints
            or self.slices
            or self.children
        )


@dataclass(frozen=True, slots=True)
class _Profile:
    url: str
    name: str
    type: str
    base: str
    root: _Node


@dataclass(frozen=True, slots=True)
class _Rule:
    profile: str
    when: Evaluator | None


# ------------------------------------------------------------------------------------------ JSON helpers


def _equal(a: Any, b: Any) -> bool:
    """JSON equality: unlike Python's ==, true is not 1."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return (
            isinstance(b, list) and len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
        )
    return isinstance(a, bool) == isinstance(b, bool) and a == b


def _contains(value: Any, pattern: Any) -> bool:
    """pattern[x] semantics: every property of the pattern present with a matching value; each array item
    of the pattern matched by some item of the value."""
    if isinstance(pattern, dict):
        return isinstance(value, dict) and all(
            k in value and _contains(value[k], p) for k, p in pattern.items()
        )
    if isinstance(pattern, list):
        return isinstance(value, list) and all(any(_contains(v, p) for v in value) for p in pattern)
    return _equal(value, pattern)


def _choice_value(element: Mapping[str, Any], prefix: str) -> Any:
    """The fixed[x]/pattern[x] value of an element definition, or _NOTHING."""
    for key, value in element.items():
        if key.startswith(prefix) and key[len(prefix) : len(prefix) + 1].isupper():
            return value
    return _NOTHING


def _upper_first(name: str) -> str:
    """A type code as it appears in a choice property name: dateTime -> DateTime."""
    return name[:1].upper() + name[1:]


# ------------------------------------------------------------------------------------------- terminology


class _Terminology:
    """ValueSet expansion over the shipped CodeSystems; expansions are cached (they never change)."""

    def __init__(self, value_sets: dict[str, JSON], code_systems: dict[str, JSON]) -> None:
        self.value_sets = value_sets
        self.code_systems = code_systems
        self._cache: dict[str, frozenset[tuple[str | None, str]]] = {}

    def expand(self, url: str, seen: frozenset[str] = frozenset()) -> frozenset[tuple[str | None, str]]:
        """(system, code) pairs of a value set; KeyError if unknown, ValueError if not expandable here."""
        url = url.split("|", 1)[0]
        if url in self._cache:
            return self._cache[url]
        if url in seen:
            raise ValueError(f"ValueSet {url} includes itself")
        vs = self.value_sets[url]
        compose = vs.get("compose")
        if isinstance(compose, dict):
            pairs = self._union(compose.get("include", []), url, seen | {url})
            pairs -= self._union(compose.get("exclude", []), url, seen | {url})
        elif isinstance(vs.get("expansion"), dict):
            pairs = set(_flatten_contains(vs["expansion"].get("contains", [])))
        else:
            raise ValueError(f"ValueSet {url} has neither compose nor expansion")
        self._cache[url] = frozenset(pairs)
        return self._cache[url]

    def _union(self, parts: Iterable[JSON], url: str, seen: frozenset[str]) -> set[tuple[str | None, str]]:
        """All pairs of several include (or exclude) entries."""
        result: set[tuple[str | None, str]] = set()
        for part in parts:
            result |= self._include(part, url, seen)
        return result

    def _include(self, part: JSON, url: str, seen: frozenset[str]) -> set[tuple[str | None, str]]:
        """One compose.include (or exclude): concepts or a whole system, intersected with its valueSets."""
        if "filter" in part:
            raise ValueError(f"ValueSet {url}: compose filters are not supported")
        system = part.get("system")
        selected: set[tuple[str | None, str]] | None = None
        if part.get("concept"):
            selected = {(system, c["code"]) for c in part["concept"]}
        elif system:
            selected = {(system, code) for code in self._all_codes(system, url)}
        for other in part.get("valueSet", []):
            try:
                included = set(self.expand(other, seen))
            except KeyError:
                raise ValueError(f"ValueSet {url} includes unknown ValueSet {other}") from None
            selected = included if selected is None else selected & included
        return selected or set()

    def _all_codes(self, system: str, url: str) -> list[str]:
        """Every code of a shipped, complete CodeSystem (a partial one cannot stand for the whole)."""
        cs = self.code_systems.get(system)
        if cs is None or cs.get("content") != "complete":
            raise ValueError(f"ValueSet {url} includes all of {system}, which is not shipped in full")
        return list(_concept_codes(cs.get("concept", [])))


def _concept_codes(concepts: Iterable[JSON]) -> Iterable[str]:
    """Every code of a CodeSystem, including nested (child) concepts."""
    for concept in concepts:
        yield concept["code"]
        yield from _concept_codes(concept.get("concept", []))


def _flatten_contains(contains: Iterable[JSON]) -> Iterable[tuple[str | None, str]]:
    """(system, code) of a ValueSet.expansion.contains tree (abstract grouping entries have no code)."""
    for item in contains:
        if "code" in item:
            yield item.get("system"), item["code"]
        yield from _flatten_contains(item.get("contains", []))


# ------------------------------------------------------------------------------------------- compiling


class _Compiler:
    """Turns one StructureDefinition's differential into a `_Profile`; errors name `source`."""

    def __init__(
        self, source: str, sd: JSON, terminology: _Terminology, profile_types: dict[str, str]
    ) -> None:
        self.source = source
        self.sd = sd
        self.terminology = terminology
        self.profile_types = profile_types

    def fail(self, message: str) -> ValueError:
        """An error that names the file (or list position) the profile came from."""
        return ValueError(f"{self.source}: {message}")

    def compile(self) -> _Profile:
        """Build the rule tree from the differential, in order (parents before children, as FHIR requires)."""
        sd = self.sd
        for key in ("url", "type", "differential"):
            if key not in sd:
                raise self.fail(f"StructureDefinition has no {key}")
        if sd.get("derivation", "constraint") != "constraint":
            raise self.fail("only derivation=constraint profiles can be applied")
        rtype = sd["type"]
        root = _Node(name=rtype, model_path=rtype)
        nodes: dict[str, _Node] = {rtype: root}
        elements = sd["differential"].get("element")
        if not isinstance(elements, list):
            raise self.fail("differential.element must be a list")
        for index, element in enumerate(elements):
            if not isinstance(element, dict):
                raise self.fail(f"differential.element[{index}] is not an object")
            try:
                self.add_element(element, rtype, nodes)
            except (KeyError, TypeError, AttributeError) as exc:
                raise self.fail(f"element {element.get('id')!r} is malformed: {exc!r}") from None
        root.finish()
        return _Profile(
            sd["url"],
            str(sd.get("id") or sd.get("name") or sd["url"]),
            rtype,
            str(sd.get("baseDefinition", "")),
            root,
        )

    def add_element(self, element: JSON, rtype: str, nodes: dict[str, _Node]) -> None:
        """Place one differential element in the tree (creating unconstrained ancestors) and compile it."""
        path = element.get("path")
        if not isinstance(path, str):
            raise self.fail(f"element {element.get('id')!r} has no path")
        eid = element.get("id") or (path + (f":{element['sliceName']}" if element.get("sliceName") else ""))
        segments = [part.partition(":") for part in eid.split(".")]
        if ".".join(s[0] for s in segments) != path or segments[0][0] != rtype:
            raise self.fail(f"element id {eid!r} does not match path {path!r} of a {rtype} profile")
        for unsupported in _UNSUPPORTED:
            if any(k.startswith(unsupported) for k in element):
                raise self.fail(f"{eid}: {unsupported} is not supported")
        if len(segments) == 1:
            self.add_rules(nodes[rtype], element, eid)
            return
        parent = nodes[rtype]
        for depth in range(1, len(segments)):
            key = ".".join("".join(s) for s in segments[: depth + 1])
            node = nodes.get(key)
            if node is None:
                node = self.new_node(parent, segments[depth][0], segments[depth][2] or None, key)
                nodes[key] = node
            parent = node
        self.add_rules(parent, element, eid)

    def new_node(self, parent: _Node, name: str, slice_name: str | None, key: str) -> _Node:
        """A node for a child element or a slice of `parent`'s child."""
        if slice_name is not None:
            if "/" in slice_name or "@" in slice_name:
                raise self.fail(f"{key}: re-slicing and @default slices are not supported")
            sliced = next((c for c in parent.children if c.name == name.removesuffix("[x]")), None)
            if sliced is None or not sliced.sliced:
                raise self.fail(f"{key}: slice without a slicing definition on the same path earlier")
            node = _Node(
                name=sliced.name, model_path=sliced.model_path, slice_name=slice_name, choice=sliced.choice
            )
            sliced.slices.append(node)
            return node
        stem = name.removesuffix("[x]")
        model_path = _model_path(parent.model_path, stem) if parent.model_path else None
        node = _Node(name=stem, model_path=model_path)
        if name.endswith("[x]"):
            choice_key = f"{parent.model_path}.{stem}" if parent.model_path else ""
            node.choice = tuple(_CHOICE_TYPES.get(_DEFINED_ELSEWHERE.get(choice_key, choice_key), ()))
            node.model_path = None  # depends on which type the resource chose
        parent.children.append(node)
        return node

    def add_rules(self, node: _Node, element: JSON, eid: str) -> None:
        """Compile the constraining properties of one element definition onto its node."""
        try:
            node.min = int(element.get("min", node.min))
            if "max" in element:
                node.max = None if element["max"] == "*" else int(element["max"])
        except ValueError:
            raise self.fail(f"{eid}: min must be a number and max a number or '*'") from None
        node.fixed = _choice_value(element, "fixed")
        node.pattern = _choice_value(element, "pattern")
        types = element.get("type") or []
        if types and node.choice is not None:
            node.allowed = frozenset(_upper_first(t["code"]) for t in types)
            if not node.choice:  # the model does not know this choice: the profile's list is all we have
                node.choice = tuple(sorted(node.allowed))
        node.targets = self.reference_targets(types)
        if "binding" in element:
            node.binding = self.binding(element["binding"], node, eid)
        for constraint in element.get("constraint", []):
            node.constraints.append(self.constraint(constraint, node, eid))
        if "slicing" in element:
            self.slicing(node, element["slicing"], eid)
        if node.slice_name is not None and node.fixed is _NOTHING and node.pattern is _NOTHING:
            raise self.fail(f"{eid}: a slice needs pattern[x] or fixed[x] (discriminator on $this)")

    def slicing(self, node: _Node, slicing: JSON, eid: str) -> None:
        """Mark `node` as sliced; only discriminators this module can evaluate are accepted."""
        for discriminator in slicing.get("discriminator", []):
            if discriminator.get("type") not in ("pattern", "value") or discriminator.get("path") != "$this":
                raise self.fail(f"{eid}: only pattern/value discriminators on $this are supported")
        node.sliced = True
        node.closed = slicing.get("rules") == "closed"

    def reference_targets(self, types: list[JSON]) -> frozenset[str] | None:
        """Resource types allowed by Reference(...) targetProfiles; None when any type is allowed."""
        refs = [t for t in types if t.get("code") == "Reference"]
        if not refs:
            return None
        targets: set[str] = set()
        for ref in refs:
            profiles = ref.get("targetProfile")
            if not profiles:
                return None
            for url in profiles:
                url = url.split("|", 1)[0]
                if url in self.profile_types:
                    targets.add(self.profile_types[url])
                elif url.startswith(_CORE_SD):
                    targets.add(url.removeprefix(_CORE_SD))
                else:
                    return None  # a profile we do not have: cannot tell its type, so do not judge
        return frozenset(targets)

    def binding(self, binding: JSON, node: _Node, eid: str) -> _Binding | None:
        """Precompute the value set; required bindings must be expandable from the shipped resources."""
        strength = binding.get("strength")
        url = binding.get("valueSet")
        if strength not in _STRENGTH_SEVERITY or not isinstance(url, str):
            return None  # example bindings, or none: nothing to check
        try:
            pairs = self.terminology.expand(url)
        except (KeyError, ValueError) as exc:
            if strength == "required":
                raise self.fail(f"{eid}: required binding to {url} cannot be checked: {exc}") from None
            return None  # advisory binding to a value set not shipped: there is nothing to advise with
        model_type = node.model_path if node.model_path and "." not in node.model_path else None
        kind = model_type if model_type in ("Coding", "CodeableConcept") else None
        if model_type in ("code", "string", "uri"):
            kind = "code"
        return _Binding(strength, url.split("|", 1)[0], pairs, frozenset(c for _, c in pairs), kind)

    def constraint(self, constraint: JSON, node: _Node, eid: str) -> _Constraint:
        """Compile one invariant; a broken expression fails the load, not the first write it meets."""
        key = constraint.get("key")
        expression = constraint.get("expression")
        severity = constraint.get("severity")
        if not key or not isinstance(expression, str) or severity not in ("error", "warning"):
            raise self.fail(f"{eid}: constraint needs key, expression and severity error|warning")
        try:
            evaluate = _compile_fhirpath(expression, node.model_path or "")
        except ValueError as exc:
            raise self.fail(f"{eid}: constraint {key}: {exc}") from None
        return _Constraint(key, severity, str(constraint.get("human", "")), evaluate)


# ------------------------------------------------------------------------------------------ validating


class _Walk:
    """One profile applied to one resource: collects issues while walking the rule tree."""

    __slots__ = ("env", "issues", "root", "tag")

    def __init__(self, root: JSON, tag: str, issues: list[Issue]) -> None:
        self.root = root
        self.tag = f" (profile {tag})"
        self.issues = issues
        self.env = {"resource": root, "rootResource": root}

    def issue(self, severity: Severity, code: str, message: str, expression: str) -> None:
        """Record one issue; the profile's name goes into the text so a reader knows which rule set spoke."""
        self.issues.append(Issue(severity, code, message + self.tag, (expression,)))

    def element(self, node: _Node, parent: Mapping[str, Any], parent_expr: str, parent_model: str) -> None:
        """Cardinality and types of `node` under one parent value, then the rules on each value."""
        found = self.find(node, parent, parent_expr, parent_model)
        if not found:
            # A primitive carrying only extensions (`_status`, e.g. a data-absent-reason) is present.
            count = 1 if node.choice is None and f"_{node.name}" in parent else 0
            self.count(node, count, parent_expr)
            return
        items: list[tuple[Any, str, str]] = []
        for expr, value, model in found:
            if isinstance(value, list):
                items.extend((v, f"{expr}[{i}]", model) for i, v in enumerate(value))
            else:
                items.append((value, expr, model))
        self.count(node, len(items), parent_expr)
        if not node.checks_items:
            return
        for value, expr, model in items:
            self.item(node, value, expr, model)
        if node.slices:
            self.slices(node, items, f"{parent_expr}.{node.name}")

    def count(self, node: _Node, count: int, parent_expr: str) -> None:
        """min/max of an element: the issue names the element without an index."""
        if count < node.min:
            path = f"{parent_expr}.{node.name}"
            self.issue("error", "required", f"{path}: at least {node.min} required, found {count}", path)
        elif node.max is not None and count > node.max:
            path = f"{parent_expr}.{node.name}"
            self.issue("error", "structure", f"{path}: at most {node.max} allowed, found {count}", path)

    def find(
        self, node: _Node, parent: Mapping[str, Any], parent_expr: str, parent_model: str
    ) -> list[tuple[str, Any, str]]:
        """(expression, value, model path) of the property (or chosen choice properties) present."""
        if node.choice is None:
            value = parent.get(node.name)
            if value is None:
                return []
            model = node.model_path or _model_path(parent_model, node.name)
            return [(f"{parent_expr}.{node.name}", value, model)]
        found = []
        if node.choice:
            keys = [node.name + suffix for suffix in node.choice if node.name + suffix in parent]
        else:  # a choice the model does not list: any key `name` + TypeName
            n = len(node.name)
            keys = [k for k in parent if k.startswith(node.name) and k[n : n + 1].isupper()]
        for key in keys:
            suffix = key[len(node.name) :]
            model = _model_path(parent_model, key)
            type_name = model if "." not in model else suffix
            expr = f"{parent_expr}.{node.name}.ofType({type_name})"
            if node.allowed is not None and suffix not in node.allowed:
                allowed = ", ".join(sorted(node.allowed))
                message = f"{expr}: type {type_name} not allowed here ({allowed})"
                self.issue("error", "structure", message, expr)
            found.append((expr, parent[key], model))
        return found

    def item(self, node: _Node, value: Any, expr: str, model: str) -> None:
        """The rules that apply to each value of an element."""
        if node.slice_name is None:
            if node.fixed is not _NOTHING and not _equal(value, node.fixed):
                self.issue("error", "value", f"{expr}: must be exactly {json.dumps(node.fixed)}", expr)
            if node.pattern is not _NOTHING and not _contains(value, node.pattern):
                self.issue(
                    "error", "value", f"{expr}: must match the pattern {json.dumps(node.pattern)}", expr
                )
        if node.binding is not None:
            self.binding(node.binding, value, expr)
        if node.targets is not None and isinstance(value, dict):
            self.reference(node.targets, value, expr)
        if node.constraints:
            self.constraints(node.constraints, value, expr, model)
        if node.children and isinstance(value, dict):
            for child in node.children:
                self.element(child, value, expr, model)

    def slices(self, node: _Node, items: list[tuple[Any, str, str]], path: str) -> None:
        """Count the values matching each slice, check each slice's cardinality and apply its rules."""
        counts = dict.fromkeys(range(len(node.slices)), 0)
        for value, expr, model in items:
            matched = False
            for index, piece in enumerate(node.slices):
                if _slice_matches(piece, value):
                    matched = True
                    counts[index] += 1
                    self.item(piece, value, expr, model)
            if not matched and node.closed:
                self.issue("error", "structure", f"{expr}: matches no slice and the slicing is closed", expr)
        for index, piece in enumerate(node.slices):
            count = counts[index]
            what = f"{path}: slice '{piece.slice_name}'"
            if count < piece.min:
                self.issue(
                    "error",
                    "required",
                    f"{what} needs at least {piece.min} matching item(s), found "
                    f"{count} (pattern {json.dumps(_slice_key(piece))})",
                    path,
                )
            if piece.max is not None and count > piece.max:
                self.issue(
                    "error", "structure", f"{what} allows at most {piece.max} item(s), found {count}", path
                )

    def binding(self, binding: _Binding, value: Any, expr: str) -> None:
        """The code, Coding or CodeableConcept must be in the value set (a warning unless required)."""
        kind = binding.kind or _binding_kind(value)
        if kind == "code":
            if not isinstance(value, str) or value in binding.codes:
                return
            shown = f"'{value}'"
        elif kind == "Coding":
            if not isinstance(value, dict) or (value.get("system"), value.get("code")) in binding.pairs:
                return
            shown = f"{value.get('system')}|{value.get('code')}"
        else:
            codings = (
                [c for c in value.get("coding", []) if isinstance(c, dict)] if isinstance(value, dict) else []
            )
            if any((c.get("system"), c.get("code")) in binding.pairs for c in codings):
                return
            if not codings and binding.strength != "required":
                return  # text alone is acceptable outside required bindings
            shown = ", ".join(f"{c.get('system')}|{c.get('code')}" for c in codings) or "no coding"
        severity = _STRENGTH_SEVERITY[binding.strength]
        message = f"{expr}: {shown} is not in the value set {binding.value_set} ({binding.strength} binding)"
        self.issue(severity, "code-invalid", message, expr)

    def reference(self, targets: frozenset[str], value: Mapping[str, Any], expr: str) -> None:
        """A relative literal reference (and Reference.type) must name an allowed resource type."""
        allowed = ", ".join(sorted(targets))
        reference = value.get("reference")
        if isinstance(reference, str):
            parsed = parse_reference(reference)  # None for #contained, urn:uuid: and absolute URLs
            if parsed is not None and parsed[0] not in targets:
                self.issue(
                    "error", "structure", f"{expr}: '{reference}' is a {parsed[0]}; allowed: {allowed}", expr
                )
                return
        declared = value.get("type")
        if isinstance(declared, str) and declared.rsplit("/", 1)[-1] not in targets:
            self.issue(
                "error", "structure", f"{expr}: type '{declared}' not allowed; allowed: {allowed}", expr
            )

    def constraints(self, constraints: list[_Constraint], value: Any, expr: str, model: str) -> None:
        """Each invariant must evaluate to exactly [true] with the value as context."""
        # The root is passed as is (fhirpathpy types it from resourceType); inner values are wrapped in a
        # typed node so that choice names (`value`) and type tests (`is Quantity`) resolve.
        context = value if value is self.root else _typed_node(value, model)
        for constraint in constraints:
            try:
                result = constraint.evaluate(context, self.env)
            except Exception as exc:  # a broken expression must not turn into a 500 on every write
                message = f"{expr}: {constraint.key} could not be evaluated: {exc}"
                self.issue(constraint.severity, "exception", message, expr)
                continue
            if result != [True]:
                message = f"{expr}: {constraint.key}: {constraint.human}"
                self.issue(constraint.severity, "invariant", message, expr)


def _binding_kind(value: Any) -> str:
    """Decide code / Coding / CodeableConcept from the JSON when the element's type is unknown."""
    if isinstance(value, str):
        return "code"
    if isinstance(value, dict) and "coding" not in value and ("code" in value or "system" in value):
        return "Coding"
    return "CodeableConcept"


def _slice_key(piece: _Node) -> Any:
    """The value that decides membership of a slice (its fixed[x], else its pattern[x])."""
    return piece.fixed if piece.fixed is not _NOTHING else piece.pattern


def _slice_matches(piece: _Node, value: Any) -> bool:
    """Whether one item belongs to a slice (discriminator on $this: the item matches fixed or pattern)."""
    if piece.fixed is not _NOTHING:
        return _equal(value, piece.fixed)
    return _contains(value, piece.pattern)


# --------------------------------------------------------------------------------------------- the set


class ProfileSet:
    """The gateway's conformance resources, compiled for validation. Build with `load` or `from_resources`;
    immutable afterwards, so one instance can serve every request."""

    def __init__(
        self,
        resources: list[JSON],
        profiles: dict[str, _Profile],
        rules: dict[str, list[_Rule]],
        terminology: _Terminology,
    ) -> None:
        self._resources = resources
        self._profiles = profiles
        self._rules = rules
        self._terminology = terminology
        self._lineage = {url: _lineage(url, profiles) for url in profiles}

    @classmethod
    def load(cls, directory: pathlib.Path) -> ProfileSet:
        """Read every *.json in `directory` (and its enforcement.json); ValueError names a bad file."""
        named: list[tuple[str, JSON]] = []
        rules: list[JSON] = []
        for path in sorted(directory.glob("*.json")):
            try:
                content = json.loads(path.read_bytes())
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise ValueError(f"{path.name}: not valid JSON: {exc}") from None
            if path.name == ENFORCEMENT_FILE:
                if not isinstance(content, list):
                    raise ValueError(f"{path.name}: must be a list of rules")
                rules = content
            else:
                named.append((path.name, content))
        return cls._build(named, rules, ENFORCEMENT_FILE)

    @classmethod
    def from_resources(cls, resources: list[JSON], rules: list[JSON]) -> ProfileSet:
        """Build from resources and enforcement rules already in memory (pure)."""
        named = [(f"resources[{i}]", resource) for i, resource in enumerate(resources)]
        return cls._build(named, rules, "rules")

    @classmethod
    def _build(cls, named: list[tuple[str, JSON]], rules: list[JSON], rules_source: str) -> ProfileSet:
        """Index, check and compile; works on copies so later changes to the caller's dicts cannot leak in."""
        named = copy.deepcopy(named)
        by_type: dict[str, dict[str, tuple[str, JSON]]] = {
            "StructureDefinition": {},
            "ValueSet": {},
            "CodeSystem": {},
        }
        for source, resource in named:
            if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
                raise ValueError(f"{source}: not a FHIR resource (no resourceType)")
            kind = resource["resourceType"]
            if kind not in by_type:
                continue  # other conformance resources are kept (resources()) but do not take part here
            url = resource.get("url")
            if not isinstance(url, str):
                raise ValueError(f"{source}: {kind} has no url")
            _check_shape(source, resource)
            if url in by_type[kind]:
                raise ValueError(f"{source}: duplicate {kind} url {url} (also in {by_type[kind][url][0]})")
            by_type[kind][url] = (source, resource)
        terminology = _Terminology(
            {url: r for url, (_, r) in by_type["ValueSet"].items()},
            {url: r for url, (_, r) in by_type["CodeSystem"].items()},
        )
        profile_sources = {
            url: (source, sd)
            for url, (source, sd) in by_type["StructureDefinition"].items()
            if sd.get("kind") == "resource"  # datatype and extension definitions do not apply to resources
        }
        profile_types = {url: str(sd.get("type")) for url, (_, sd) in profile_sources.items()}
        profiles = {
            url: _Compiler(source, sd, terminology, profile_types).compile()
            for url, (source, sd) in profile_sources.items()
        }
        compiled_rules = _compile_rules(rules, rules_source, profiles)
        return cls([r for _, r in named], profiles, compiled_rules, terminology)

    def validate(self, resource: JSON) -> list[Issue]:
        """Issues against the declared profiles we know and the profiles enforced for this resource."""
        issues: list[Issue] = []
        rtype = resource.get("resourceType")
        if not isinstance(rtype, str):
            return [Issue("error", "structure", "resourceType missing", ())]
        applied: dict[str, None] = {}  # an ordered set of profile URLs
        meta = resource.get("meta")
        declared = meta.get("profile", []) if isinstance(meta, dict) else []
        for index, canonical in enumerate(declared if isinstance(declared, list) else []):
            url = str(canonical).split("|", 1)[0]
            where = f"{rtype}.meta.profile[{index}]"
            profile = self._profiles.get(url)
            if profile is None:
                issues.append(
                    Issue(
                        "information",
                        "not-supported",
                        f"Profile {url} is not known here; not checked",
                        (where,),
                    )
                )
            elif profile.type != rtype:
                issues.append(
                    Issue("error", "invalid", f"Profile {url} is for {profile.type}, not {rtype}", (where,))
                )
            else:
                applied.update(dict.fromkeys(self._lineage[url]))
        for rule in self._rules.get(rtype, ()):
            if rule.profile not in applied and _rule_applies(rule, resource):
                applied.update(dict.fromkeys(self._lineage[rule.profile]))
        for url in applied:
            profile = self._profiles[url]
            walk = _Walk(resource, profile.name, issues)
            if profile.root.constraints:
                walk.constraints(profile.root.constraints, resource, rtype, rtype)
            for child in profile.root.children:
                walk.element(child, resource, rtype, rtype)
        return issues

    def profiles_for(self, resource_type: str) -> list[str]:
        """Canonical URLs of the profiles on `resource_type` (for CapabilityStatement.supportedProfile)."""
        return sorted(url for url, p in self._profiles.items() if p.type == resource_type)

    def resources(self) -> list[JSON]:
        """The conformance resources as read (copies: callers cannot alter what validation uses)."""
        return copy.deepcopy(self._resources)

    def value_set_codes(self, url: str) -> set[tuple[str | None, str]]:
        """The (system, code) pairs of a shipped value set; KeyError if unknown."""
        return set(self._terminology.expand(url))


def _check_shape(source: str, resource: JSON) -> None:
    """The few structural facts compilation relies on; ValueError names the file otherwise."""
    kind = resource["resourceType"]
    if kind == "StructureDefinition" and resource.get("kind") not in (
        "resource",
        "complex-type",
        "primitive-type",
        "logical",
    ):
        raise ValueError(f"{source}: StructureDefinition.kind is missing or unknown")
    if kind == "CodeSystem" and not _codes_well_formed(resource.get("concept", [])):
        raise ValueError(f"{source}: every CodeSystem concept needs a string code")
    if kind == "ValueSet":
        compose = resource.get("compose", {})
        parts = (
            [*compose.get("include", []), *compose.get("exclude", [])] if isinstance(compose, dict) else None
        )
        if parts is None or not all(
            isinstance(p, dict) and _codes_well_formed(p.get("concept", [])) for p in parts
        ):
            raise ValueError(f"{source}: ValueSet.compose must list objects whose concepts have string codes")


def _codes_well_formed(concepts: Any) -> bool:
    """Whether a (possibly nested) concept list has a string code on every concept."""
    return isinstance(concepts, list) and all(
        isinstance(c, dict) and isinstance(c.get("code"), str) and _codes_well_formed(c.get("concept", []))
        for c in concepts
    )


def _lineage(url: str, profiles: dict[str, _Profile]) -> list[str]:
    """A profile and the profiles it derives from that are in the set, base first."""
    chain: list[str] = []
    while url in profiles and url not in chain:
        chain.insert(0, url)
        url = profiles[url].base
    return chain


def _compile_rules(rules: list[JSON], source: str, profiles: dict[str, _Profile]) -> dict[str, list[_Rule]]:
    """Enforcement rules by resource type; each must name a loaded profile of the same type."""
    compiled: dict[str, list[_Rule]] = {}
    for index, rule in enumerate(rules):
        where = f"{source}[{index}]"
        if not isinstance(rule, dict):
            raise ValueError(f"{where}: a rule must be an object")
        url, rtype, when = rule.get("profile"), rule.get("resourceType"), rule.get("when")
        if url not in profiles:
            raise ValueError(f"{where}: unknown profile {url}")
        if profiles[url].type != rtype:
            raise ValueError(f"{where}: profile {url} is for {profiles[url].type}, not {rtype}")
        evaluator = None
        if when is not None:
            try:
                evaluator = _compile_fhirpath(str(when), str(rtype))
            except ValueError as exc:
                raise ValueError(f"{where}: when: {exc}") from None
        compiled.setdefault(str(rtype), []).append(_Rule(str(url), evaluator))
    return compiled


def _rule_applies(rule: _Rule, resource: JSON) -> bool:
    """Whether the rule's `when` holds; a `when` that fails to evaluate enforces the profile (fail closed)."""
    if rule.when is None:
        return True
    try:
        return rule.when(resource, {"resource": resource, "rootResource": resource}) == [True]
    except Exception:
        return True
