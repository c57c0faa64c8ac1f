"""A native evaluator for the subset of FHIRPath that the gateway's invariants use.

Why: invariants run on every write, and fhirpathpy interprets its parse tree anew on every call (40-250 us
per expression). This module compiles the same parse tree once into nested Python closures that answer in
a few microseconds. fhirpathpy stays the reference: `compile_native` refuses (`NotNative`) anything outside
the subset, and a compiled program raises `Defer` on the rare inputs whose result it does not reproduce
itself, for the caller to ask fhirpathpy; so a result is always what fhirpathpy returns.

The subset:

- terms: member names (starting lower-case, not `length`), `$this`, `%resource`, `%rootResource`,
  `%context`, `%ucum`, string literals without escapes, numbers (also negated), `true`/`false`, `{}`,
  `(...)`, `[n]` with an integer literal;
- functions: `exists()`, `exists(criteria)`, `empty()`, `not()`, `count()`, `where(criteria)`,
  `select(projection)`, `iif(criterion, a[, b])`, `ofType(T)`, `intersect(other)`;
- operators: `=`, `!=`, `<`, `<=`, `>`, `>=`, `in`, `contains`, `|`, `&`, `is T`, `and`, `or`, `xor`,
  `implies`.

Collections behave as in fhirpathpy: a member name resolves a choice element through the R4 model
(`value` on an Observation is whichever value[x] is present, first in the model's order) and also yields
a primitive's `_name` extension object; items read from the resource carry their model type path (for
`is`/`ofType`: FHIR types by the model's hierarchy), while literals, variables and computed values are
plain Python values (System types); `=`, `in` and `intersect` compare JSON values; and, or, xor and
implies use three-valued logic with {} as unknown; `|` removes duplicates by JSON value.

fhirpathpy keeps `$this` in one variable that iterating functions overwrite and do not restore, so what it
means depends on evaluation order. The subset therefore takes `$this` only where it is the focus (at the
start of an operator's operand or of a where/select/exists/iif argument, not at the top of an
expression, where fhirpathpy has none), and `intersect`'s argument must not read the focus at all (it
starts from a %variable or a literal). At run time these defer: `=`/`!=` on a Quantity or on collections
of several items; `<`... on anything but two numbers or two strings; a logical operand, `&` operand,
`is`/`in` left side that is not a single boolean/string/item; a criterion that is not a computed boolean
(where) or boolean (iif); `|` mixing resource items with computed values; type tests of untyped items.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final, NamedTuple

from fhirpathpy.engine.nodes import ResourceNode

UCUM: Final = "http://unitsofmeasure.org"

Program = Callable[[Any, Mapping[str, Any]], list[Any]]
# A compiled sub-expression: (focus collection, variables, the evaluated context) -> collection.
Run = Callable[[list[Any], Mapping[str, Any], Any], list[Any]]
Fields = tuple[tuple[str, str, str], ...]

# fhirpathpy treats names starting with a capital or "_" as resource types, and `length` specially.
_MEMBER: Final = re.compile(r"[a-z][A-Za-z0-9_]*")
_TYPE_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)?")
_VARIABLES: Final = frozenset({"resource", "rootResource", "context", "ucum"})
_QUANTITY_PATHS: Final = frozenset({"Quantity", "System.Quantity"})
_SCALARS: Final = (str, int, float, bool, type(None))
# Type paths come from the model, but also from resourceTypes in the data: caches keyed by them are bounded.
_CACHE_LIMIT: Final = 512


class NotNative(ValueError):
    """The expression uses something outside the native subset; the message says what."""


class Defer(Exception):
    """Raised at run time when an input needs fhirpathpy's own evaluation to get its exact result."""


class Node:
    """An item read from the resource: its JSON value and its type path in the model (None: unknown)."""

    __slots__ = ("data", "path")

    def __init__(self, data: Any, path: Any) -> None:
        self.data = data
        self.path = path


def make_node(data: Any, path: Any) -> Node:
    """A resource item, or a context typed by the caller; a (contained) resource is typed by its
    resourceType, as fhirpathpy does."""
    if type(data) is dict:
        if "resourceType" in data:
            path = data["resourceType"]
    elif not isinstance(data, _SCALARS) and isinstance(data, Mapping) and "resourceType" in data:
        path = data["resourceType"]
    return Node(data, path)


def _adapt(value: Any) -> Any:
    """An item from a value handed in by the caller: fhirpathpy's typed nodes become `Node`s."""
    if isinstance(value, ResourceNode):
        return make_node(value.data, value.path)
    return value


def _data(item: Any) -> Any:
    """The JSON value of an item (a computed value is its own value)."""
    return item.data if type(item) is Node else item


class _Scope(NamedTuple):
    """What the start of an expression may read: the focus, and `$this` (the focus, where valid)."""

    focus: bool
    this: bool


_ROOT: Final = _Scope(focus=True, this=False)  # fhirpathpy has no $this until an operator or function sets it
_ARGUMENT: Final = _Scope(focus=True, this=True)  # operands and iterating arguments: $this is the focus
_DETACHED: Final = _Scope(focus=False, this=False)  # intersect's argument: the focus there is stale state


class _Step:
    """One member name: finds the children of items, with the model lookups cached per parent type path."""

    __slots__ = ("fields", "lookup", "name")

    def __init__(self, name: str, lookup: Callable[[Any, str], Fields]) -> None:
        self.name = name
        self.lookup = lookup
        self.fields: dict[Any, Fields] = {}

    def present(self, item: Any) -> tuple[Any, Any, str] | None:
        """(value, `_` extension value, child type path) of the first candidate property present."""
        if type(item) is Node:
            data = item.data
            path = item.path
            if type(data) is not dict and not isinstance(data, Mapping):
                return None
        else:
            data = item
            if type(data) is not dict and not isinstance(data, Mapping):
                return None
            path = data.get("resourceType")
        fields = self.fields.get(path)
        if fields is None:
            fields = self.lookup(path, self.name)
            if len(self.fields) < _CACHE_LIMIT:
                self.fields[path] = fields
        for key, extension_key, child_type in fields:
            value = data.get(key)
            extension = data.get(extension_key)
            if value is not None or extension is not None:
                return value, extension, child_type
        return None

    def children(self, items: list[Any]) -> list[Any]:
        """The child items (a repeating property contributes each of its values)."""
        out: list[Any] = []
        for item in items:
            found = self.present(item)
            if found is None:
                continue
            value, extension, child_type = found
            if isinstance(value, list):
                for v in value:
                    out.append(make_node(v, child_type))
            elif value is not None:
                out.append(make_node(value, child_type))
            if extension is not None:
                _append_nodes(out, extension, child_type)
        return out

    def first(self, items: list[Any]) -> tuple[int, Any]:
        """How many children `children` would return, and the first one (None if there is none); only the
        first is built."""
        total = 0
        first: Any = None
        for item in items:
            found = self.present(item)
            if found is None:
                continue
            value, extension, child_type = found
            for part in (value, extension):
                if isinstance(part, list):
                    if part and first is None:
                        first = make_node(part[0], child_type)
                    total += len(part)
                elif part is not None:
                    if first is None:
                        first = make_node(part, child_type)
                    total += 1
        return total, first

    def count(self, items: list[Any]) -> int:
        """How many children `children` would return, without building them."""
        total = 0
        for item in items:
            found = self.present(item)
            if found is None:
                continue
            for part in found[:2]:
                if isinstance(part, list):
                    total += len(part)
                elif part is not None:
                    total += 1
        return total


def _append_nodes(out: list[Any], value: Any, child_type: str) -> None:
    """Append the items of one property value (each value of a list)."""
    if isinstance(value, list):
        out.extend(make_node(v, child_type) for v in value)
    else:
        out.append(make_node(value, child_type))


@dataclass(frozen=True, slots=True)
class _Code:
    """A compiled sub-expression and what is statically known about its results."""

    run: Run
    safe: bool = False  # fhirpathpy cannot fail on it (so an operator whose result is decided may skip it)
    boolean: bool = False  # always [] or [a Python bool]
    constant: tuple[Any, ...] | None = None  # the items of a literal
    chain: tuple[_Code, tuple[_Step, ...]] | None = None  # a member path: the code it starts from, names


def _constant(*items: Any) -> _Code:
    """A literal collection (a fresh list on every call: callers may keep what they get)."""

    def run(focus: list[Any], env: Mapping[str, Any], context: Any) -> list[Any]:
        return list(items)

    boolean = len(items) < 2 and all(type(i) is bool for i in items)
    return _Code(run, safe=True, boolean=boolean, constant=items)


def _focus(focus: list[Any], env: Mapping[str, Any], context: Any) -> list[Any]:
    """The focus itself (`$this`, or the input of a function at the start of an expression)."""
    return focus


_FOCUS: Final = _Code(_focus, safe=True)


def _chain_run(start: _Code, steps: tuple[_Step, ...]) -> Run:
    """Member navigation from `start` through `steps`, in one closure."""
    navigate = tuple(step.children for step in steps)
    if start is _FOCUS:

        def from_focus(focus: list[Any], env: Mapping[str, Any], context: Any) -> list[Any]:
            items = focus
            for children in navigate:
                items = children(items)
            return items

        return from_focus
    get = start.run

    def run(focus: list[Any], env: Mapping[str, Any], context: Any) -> list[Any]:
        items = get(focus, env, context)
        for children in navigate:
            items = children(items)
        return items

    return run


def _counter(source: _Code) -> Callable[[list[Any], Mapping[str, Any], Any], int]:
    """The size of `source`'s result; a member path's last step is counted without building items."""
    if source.chain is not None:
        start, steps = source.chain
        last = steps[-1].count
        if len(steps) == 1 and start is _FOCUS:
            return lambda focus, env, context: last(focus)
        parents = _chain_run(start, steps[:-1]) if len(steps) > 1 else start.run
        return lambda focus, env, context: last(parents(focus, env, context))
    get = source.run
    return lambda focus, env, context: len(get(focus, env, context))


def _single(code: _Code) -> Callable[[list[Any], Mapping[str, Any], Any], tuple[int, Any]]:
    """(size, first item or None) of `code`'s result; of a member path, without building the other items."""
    if code.chain is not None:
        start, steps = code.chain
        last = steps[-1].first
        if len(steps) == 1 and start is _FOCUS:
            return lambda focus, env, context: last(focus)
        parents = _chain_run(start, steps[:-1]) if len(steps) > 1 else start.run
        return lambda focus, env, context: last(parents(focus, env, context))
    get = code.run

    def single(focus: list[Any], env: Mapping[str, Any], context: Any) -> tuple[int, Any]:
        items = get(focus, env, context)
        return len(items), items[0] if items else None

    return single


def _source(code: _Code) -> Run | None:
    """How a function or operator gets its input: None when it is the focus itself (no call needed)."""
    return None if code is _FOCUS else code.run


# ------------------------------------------------------------------------------------------ runtime helpers


def _single_boolean(items: list[Any]) -> bool:
    """The one boolean in a non-empty collection (also one read from the resource); else defer."""
    if len(items) == 1:
        value = _data(items[0])
        if value is True or value is False:
            return value
    raise Defer


def _truth(items: list[Any]) -> bool | None:
    """An operand of and/or/xor/implies: None for {}, else its single boolean (fhirpathpy fails otherwise)."""
    return _single_boolean(items) if items else None


def _criterion(items: list[Any]) -> bool:
    """An iif criterion: {} is false; a single boolean decides (also one read from the resource)."""
    return _single_boolean(items) if items else False


def _filter(items: list[Any]) -> bool:
    """A where/exists criterion: {} is false; a computed boolean decides. fhirpathpy keeps an item whenever
    the first result is truthy in Python, so a resource item (even `false`) would keep it: deferred."""
    if not items:
        return False
    if len(items) == 1 and type(items[0]) is bool:
        return bool(items[0])
    raise Defer


def _string(items: list[Any]) -> str:
    """An operand of `&`: {} is ''; otherwise a single string."""
    if not items:
        return ""
    if len(items) == 1:
        value = _data(items[0])
        if isinstance(value, str):
            return value
    raise Defer


def _comparable(item: Any) -> Any:
    """The value `<` and friends compare (JSON floats are compared as decimals, as fhirpathpy reads them)."""
    value = _data(item)
    return Decimal(str(value)) if isinstance(value, float) else value


def _is_number(value: Any) -> bool:
    """An integer or decimal, not a boolean."""
    return isinstance(value, int | Decimal) and not isinstance(value, bool)


def _equatable(item: Any) -> Any:
    """The value `=` compares; fhirpathpy compares Quantity items as quantities (units and all): deferred."""
    if type(item) is Node:
        if item.path in _QUANTITY_PATHS:
            raise Defer
        return item.data
    return item


def _json_key(value: Any) -> str:
    """The identity `|` uses to drop duplicates: the canonical JSON text (or str() if not JSON)."""
    try:
        return json.dumps(value, sort_keys=True)
    except TypeError:
        return str(value)


def _distinct(items: list[Any]) -> list[Any]:
    """`|`: duplicates removed by JSON value (first position, last value); resource items lose their type."""
    nodes = [type(i) is Node for i in items]
    if any(nodes) and not all(nodes):
        raise Defer
    unique: dict[str, Any] = {}
    for item in items:
        unique[_json_key(_data(item))] = item
    if not items or not nodes[0]:
        return list(unique.values())
    return [make_node(item.data, None) for item in unique.values()]


def _extension_only(value: Any) -> bool:
    """A primitive's `_name` object alone: fhirpathpy leaves these out of a result."""
    return isinstance(value, dict) and list(value) == ["extension"]


def _plain(item: Any) -> Any:
    """A result item as fhirpathpy returns it: the JSON value, with floats as Decimal (recursively)."""
    if type(item) is Node:
        data = item.data
        if isinstance(data, list):
            return data  # fhirpathpy returns a list-valued item as it is
    else:
        data = item
        if isinstance(data, list):
            return [v for v in map(_plain, data) if not _extension_only(v)]
    if isinstance(data, float):
        return Decimal(str(data))
    if isinstance(data, dict):
        return {key: _plain(value) for key, value in data.items()}
    return data


def _output(items: list[Any]) -> list[Any]:
    """The final result in fhirpathpy's form."""
    return [v for v in map(_plain, items) if not _extension_only(v)]


# ------------------------------------------------------------------------------------------ the compiler


Handler = Callable[["_Compiler", Mapping[str, Any], _Scope], _Code]
FunctionHandler = Callable[["_Compiler", _Code, list[Mapping[str, Any]]], _Code]


class _Compiler:
    """Turns fhirpathpy's parse tree (nested dicts) into closures; raises NotNative outside the subset."""

    def __init__(self, model: Mapping[str, Any]) -> None:
        self.elsewhere: Mapping[str, str] = model["pathsDefinedElsewhere"]
        self.choices: Mapping[str, list[str]] = model["choiceTypePaths"]
        self.path_type: Mapping[str, str] = model["path2Type"]
        self.parent_type: Mapping[str, str] = model["type2Parent"]

    # --------------------------------------------------------------------------- expressions and terms

    def expression(self, node: Mapping[str, Any], scope: _Scope) -> _Code:
        """Compile any expression node."""
        kind = node.get("type")
        handler = _HANDLERS.get(str(kind))
        if handler is None:
            raise NotNative(f"{kind} is outside the native subset")
        return handler(self, node, scope)

    def term_expression(self, node: Mapping[str, Any], scope: _Scope) -> _Code:
        """A term: an invocation at the start of a path, a literal, a %variable or a parenthesis."""
        (term,) = node["children"]
        kind = term.get("type")
        if kind == "InvocationTerm":
            return self.invocation(_FOCUS, term["children"][0], scope, start=True)
        if kind == "LiteralTerm":
            return self.literal(term["children"][0])
        if kind == "ExternalConstantTerm":
            return self.variable(term["children"][0])
        if kind == "ParenthesizedTerm":
            return self.expression(term["children"][0], scope)
        raise NotNative(f"{kind} is outside the native subset")

    def invocation_expression(self, node: Mapping[str, Any], scope: _Scope) -> _Code:
        """`left.member` or `left.function(...)`."""
        left, invocation = node["children"]
        return self.invocation(self.expression(left, scope), invocation, scope, start=False)

    def invocation(self, source: _Code, node: Mapping[str, Any], scope: _Scope, start: bool) -> _Code:
        """A member, function or $this applied to `source` (the focus when `start`)."""
        kind = node.get("type")
        if kind == "ThisInvocation" and start:
            if not scope.this:
                raise NotNative("$this is only native at the start of an operand or a function argument")
            return _FOCUS
        if start and not scope.focus:
            raise NotNative("the argument of intersect() must not depend on the focus (fhirpathpy state)")
        if kind == "MemberInvocation":
            return self.member(source, _identifier(node["children"][0]))
        if kind == "FunctionInvocation":
            return self.function(source, node["children"][0])
        raise NotNative(f"{kind} is outside the native subset")

    def literal(self, node: Mapping[str, Any]) -> _Code:
        """String (no escapes), number, boolean and {} literals."""
        kind = node.get("type")
        text = str(node.get("text", ""))
        if kind == "StringLiteral":
            if "\\" in text or len(text) < 2:
                raise NotNative("string literals with escapes are left to fhirpathpy")
            return _constant(text[1:-1])
        if kind == "NumberLiteral":
            return _constant(_number(text))
        if kind == "BooleanLiteral":
            return _constant(text == "true")
        if kind == "NullLiteral":
            return _constant()
        raise NotNative(f"{kind} is outside the native subset")

    def variable(self, node: Mapping[str, Any]) -> _Code:
        """%resource, %rootResource, %context (the evaluated item unless given) and %ucum."""
        children = node.get("children") or []
        if len(children) != 1 or children[0].get("type") != "Identifier":
            raise NotNative("only %name variables are native")
        name = _identifier(children[0])
        if name not in _VARIABLES:
            raise NotNative(f"%{name} is outside the native subset")

        def run(focus: list[Any], env: Mapping[str, Any], context: Any) -> list[Any]:
            if name in env:
                value = env[name]
            elif name == "context":
                value = context
            elif name == "ucum":
                value = UCUM
            else:
                raise Defer  # fhirpathpy reports the undefined variable
            if value is None:
                return []
            if isinstance(value, list):
                return [_adapt(v) for v in value]
            return [_adapt(value)]

        return _Code(run, safe=name in ("context", "ucum"))  # the others may be missing

    def polarity_expression(self, node: Mapping[str, Any], scope: _Scope) -> _Code:
        """A signed number literal."""
        operand = self.expression(node["children"][0], scope)
        if operand.constant is None or len(operand.constant) != 1 or not _is_number(operand.constant[0]):
            raise NotNative("unary +/- is native on number literals only")
        value = operand.constant[0]
        return _constant(-value if node["terminalNodeText"][0] == "-" else value)

    def indexer_expression(self, node: Mapping[str, Any], scope: _Scope) -> _Code:
        """`collection[n]` with an integer literal n."""
        collection = self.expression(node["children"][0], scope)
        index = self.expression(node["children"][1], scope)
        if index.constant is None or len(index.constant) != 1 or type(index.constant[0]) is not int:
            raise NotNative("indexing is native with an integer literal only")
        position: int = index.constant[0]
        get = collection.run

        def run(focus: list[Any], env: Mapping[str, Any], context: Any) -> list[Any]:
            items = get(focus, env, context)
            return [items[position]] if 0 <= position < len(items) else []

        return _Code(run, safe=collection.safe)

    # --------------------------------------------------------------------------- navigation

    def member(self, source: _Code, name: str) -> _Code:
        """`source.name`: the children called `name` (or the present type of the choice `name[x]`)."""
        if not _MEMBER.fullmatch(name) or name == "length":
            raise NotNative(f"member {name!r} is outside the native subset")
        start, steps = source.chain if source.chain is not None else (source, ())
        steps = (*steps, _Step(name, self.fields))
        return _Code(_chain_run(start, steps), safe=source.safe, chain=(start, steps))

    def fields(self, path: Any, name: str) -> Fields:
        """(property, extension property, child type path) to look for, in order, under a `path` item."""
        child = f"{path}.{name}" if path else f"_.{name}"
        child = self.elsewhere.get(child, child)
        types = self.choices.get(child)
        if types:
            return tuple((name + t, f"_{name}{t}", self.path_type.get(child + t, child + t)) for t in types)
        if name == "extension":
            child = "Extension"
        return ((name, f"_{name}", self.path_type.get(child, child)),)

    # --------------------------------------------------------------------------- functions

    def function(self, source: _Code, node: Mapping[str, Any]) -> _Code:
        """A function call on `source`; arguments are compiled in the scope fhirpathpy gives them."""
        children = node["children"]
        name = _identifier(children[0])
        params: list[Mapping[str, Any]] = list(children[1]["children"]) if len(children) > 1 else []
        handler = _FUNCTIONS.get((name, len(params)))
        if handler is None:
            raise NotNative(f"{name}() with {len(params)} argument(s) is outside the native subset")
        return handler(self, source, params)

    def exists(self, source: _Code, params: list[Mapping[str, Any]]) -> _Code:
        """exists() and exists(criteria)."""
        if params:
            source = self.where(source, params)
        size = _counter(source)

        def run(focus: list[Any], env: Mapping[str, Any], context: Any) -> list[Any]:
            return [size(focus, env, context) > 0]

        return _Code(run, safe=source.safe, boolean=True)

    def empty(self, source: _Code, params: list[Mapping[str, Any]]) -> _Code:
        """empty()."""
        size = _counter(source)

        def run(focus: list[Any], env: Mapping[str, Any], context: Any) -> list[Any]:
            return [size(focus, env, context) == 0]

        return _Code(run, safe=source.safe, boolean=True)

    def count(self, source: _Code, params: list[Mapping[str, Any]]) -> _Code:
        """count()."""
        size = _counter(source)

        def run(focus: list[Any], env: Mapping[str, Any], context: Any) -> list[Any]:
            return [size(focus, env, context)]

        return _Code(run, safe=source.safe)

    def not_(self, source: _Code, params: list[Mapping[str, Any]]) -> _Code:
        """not(): {} unless one item; a single item that is not a boolean counts as true."""
        get = source.run

        def run(focus: list[Any], env: Mapping[str, Any], context: Any) -> list[Any]:
            items = get(focus, env, context)
            if len(items) != 1:
                return []
            value = _data(items[0])
            return [not value] if isinstance(value, bool) else [False]

        return _Code(run, safe=source.safe, boolean=True)

    def where(self, source: _Code, params: list[Mapping[str, Any]]) -> _Code:
        """where(criteria): the items for which the criteria give true."""
        criteria = self.expression(params[0], _ARGUMENT)
        get, test = source.run, criteria.run
        boolean = criteria.boolean

        def run(focus: list[Any], env: Mapping[str, Any], context: Any) -> list[Any]:
            out = []
            for item in get(focus, env, context):
                result = test([item], env, context)
                if result and (result[0] if boolean else _filter(result)):
                    out.append(item)
            return out

        return _Code(run, safe=source.safe and criteria.safe and boolean)

    def select(self, source: _Code, params: list[Mapping[str, Any]]) -> _Code:
        """select(projection): the projection of each item, flattened."""
        projection = self.expression(params[0], _ARGUMENT)
        get, project = source.run, projection.run

        def run(focus: list[Any], env: Mapping[str, Any], context: Any) -> list[Any]:
            out: list[Any] = []
            for item in get(focus, env, context):
                out.extend(project([item], env, context))
            return out

        return _Code(run, safe=source.safe and projection.safe)

    def iif(self, source: _Code, params: list[Mapping[str, Any]]) -> _Code:
        """iif(criterion, a[, b]): criterion and branches see the whole input as focus and $this."""
        criterion, *branches = (self.expression(p, _ARGUMENT) for p in params)
        get, test, boolean = _source(source), criterion.run, criterion.boolean
        then = branches[0].run
        otherwise = branches[1].run if len(branches) > 1 else None

        def run(focus: list[Any], env: Mapping[str, Any], context: Any) -> list[Any]:
            items = focus if get is None else get(focus, env, context)
            result = test(items, env, context)
            if result and (result[0] if boolean else _criterion(result)):
                return then(items, env, context)
            return otherwise(items, env, context) if otherwise is not None else []

        return _Code(
            run,
            safe=source.safe and criterion.safe and boolean and all(b.safe for b in branches),
            boolean=all(b.boolean for b in branches),
        )

    def of_type(self, source: _Code, params: list[Mapping[str, Any]]) -> _Code:
        """ofType(T): the items of type T or a subtype."""
        test = self.type_test(str(params[0].get("text", "")))
        get = source.run

        def run(focus: list[Any], env: Mapping[str, Any], context: Any) -> list[Any]:
            return [item for item in get(focus, env, context) if test(item)]

        return _Code(run)

    def intersect(self, source: _Code, params: list[Mapping[str, Any]]) -> _Code:
        """intersect(other): the items also in `other`, without duplicates (JSON value equality)."""
        other = self.expression(params[0], _DETACHED)
        get, get_other = source.run, other.run

        def run(focus: list[Any], env: Mapping[str, Any], context: Any) -> list[Any]:
            theirs = [_data(i) for i in get_other(focus, env, context)]
            out: list[Any] = []
            kept: list[Any] = []
            for item in get(focus, env, context):
                value = _data(item)
                if value in theirs and value not in kept:
                    out.append(item)
                    kept.append(value)
            return out

        return _Code(run, safe=source.safe and other.safe)

    # --------------------------------------------------------------------------- operators

    def operands(self, node: Mapping[str, Any], scope: _Scope) -> tuple[_Code, _Code]:
        """Both operands; fhirpathpy sets $this to the focus before evaluating each."""
        left, right = node["children"]
        operand_scope = _Scope(focus=scope.focus, this=scope.focus)
        return self.expression(left, operand_scope), self.expression(right, operand_scope)

    def equality_expression(self, node: Mapping[str, Any], scope: _Scope) -> _Code:
        """`=` and `!=`: {} if either side is {}; different counts are unequal; else the JSON values."""
        operator = node["terminalNodeText"][0]
        if operator not in ("=", "!="):
            raise NotNative(f"{operator} is outside the native subset")
        left, right = self.operands(node, scope)
        negate = operator == "!="
        if right.constant is not None and len(right.constant) == 1:
            return _equals_literal(left, right.constant[0], negate)
        if left.constant is not None and len(left.constant) == 1:
            return _equals_literal(right, left.constant[0], negate)
        get_left, get_right = left.run, right.run

        def run(focus: list[Any], env: Mapping[str, Any], context: Any) -> list[Any]:
            a = get_left(focus, env, context)
            b = get_right(focus, env, context)
            if not a or not b:
                return []
            if len(a) != len(b):
                return [negate]
            if len(a) > 1:
                raise Defer  # fhirpathpy compares only the first items
            return [bool(_equatable(a[0]) == _equatable(b[0])) is not negate]

        return _Code(run, boolean=True)

    def inequality_expression(self, node: Mapping[str, Any], scope: _Scope) -> _Code:
        """`<`, `<=`, `>`, `>=` on two numbers or two strings."""
        compare = _COMPARISONS[node["terminalNodeText"][0]]
        left, right = self.operands(node, scope)
        get_left, get_right = left.run, right.run

        def run(focus: list[Any], env: Mapping[str, Any], context: Any) -> list[Any]:
            a = get_left(focus, env, context)
            b = get_right(focus, env, context)
            if not a or not b:
                return []
            if len(a) > 1 or len(b) > 1:
                raise Defer
            x, y = _comparable(a[0]), _comparable(b[0])
            if (isinstance(x, str) and isinstance(y, str)) or (_is_number(x) and _is_number(y)):
                return [compare(x, y)]
            raise Defer

        return _Code(run, boolean=True)

    def membership_expression(self, node: Mapping[str, Any], scope: _Scope) -> _Code:
        """`item in collection` and `collection contains item`."""
        left, right = self.operands(node, scope)
        item_code, collection_code = (
            (right, left) if node["terminalNodeText"][0] == "contains" else (left, right)
        )
        single, get_collection = _single(item_code), collection_code.run
        literals = collection_code.constant

        def run(focus: list[Any], env: Mapping[str, Any], context: Any) -> list[Any]:
            size, item = single(focus, env, context)
            collection = literals if literals is not None else get_collection(focus, env, context)
            if not size:
                return []
            if not collection:
                return [False]
            if size > 1:
                raise Defer
            value = _data(item)
            return [any(_data(i) == value for i in collection)]

        return _Code(run, boolean=True)

    def union_expression(self, node: Mapping[str, Any], scope: _Scope) -> _Code:
        """`a | b`: both collections, duplicates removed."""
        left, right = self.operands(node, scope)
        if left.constant is not None and right.constant is not None:
            return _constant(*_distinct([*left.constant, *right.constant]))
        get_left, get_right = left.run, right.run

        def run(focus: list[Any], env: Mapping[str, Any], context: Any) -> list[Any]:
            return _distinct(get_left(focus, env, context) + get_right(focus, env, context))

        return _Code(run)

    def additive_expression(self, node: Mapping[str, Any], scope: _Scope) -> _Code:
        """`a & b`: string concatenation, {} counting as ''."""
        operator = node["terminalNodeText"][0]
        if operator != "&":
            raise NotNative(f"{operator} is outside the native subset")
        left, right = self.operands(node, scope)
        get_left, get_right = left.run, right.run

        def run(focus: list[Any], env: Mapping[str, Any], context: Any) -> list[Any]:
            a = _string(get_left(focus, env, context))
            return [a + _string(get_right(focus, env, context))]

        return _Code(run)

    def type_expression(self, node: Mapping[str, Any], scope: _Scope) -> _Code:
        """`a is T` on a single item."""
        if node["terminalNodeText"][0] != "is":
            raise NotNative("`as` is outside the native subset")
        left, specifier = node["children"]
        operand = self.expression(left, _Scope(focus=scope.focus, this=scope.focus))
        test = self.type_test(str(specifier.get("text", "")))
        get = _source(operand)

        def run(focus: list[Any], env: Mapping[str, Any], context: Any) -> list[Any]:
            items = focus if get is None else get(focus, env, context)
            if not items:
                return []
            if len(items) > 1:
                raise Defer
            return [test(items[0])]

        return _Code(run, boolean=True)

    def logic_expression(self, node: Mapping[str, Any], scope: _Scope) -> _Code:
        """and, or, xor, implies with {} as unknown. fhirpathpy evaluates both operands (and fails on a bad
        right one even when the left decides), so the right one is skipped only when it cannot fail."""
        operator = node["terminalNodeText"][0]
        left, right = self.operands(node, scope)
        get_left, get_right = left.run, right.run
        table = _LOGIC[operator]
        decisive = _DECISIVE.get(operator) if right.safe and right.boolean else None
        decided = [table[decisive, None]]
        plain = left.boolean and right.boolean  # both give [] or [bool]: no checks needed

        def run(focus: list[Any], env: Mapping[str, Any], context: Any) -> list[Any]:
            a_items = get_left(focus, env, context)
            a = (a_items[0] if a_items else None) if plain else _truth(a_items)
            if a is decisive and a is not None:
                return list(decided)
            b_items = get_right(focus, env, context)
            b = (b_items[0] if b_items else None) if plain else _truth(b_items)
            result = table[a, b]
            return [] if result is None else [result]

        return _Code(run, safe=left.safe and left.boolean and right.safe and right.boolean, boolean=True)

    # --------------------------------------------------------------------------- types

    def type_test(self, text: str) -> Callable[[Any], bool]:
        """A predicate `item is T` for a type specifier `T`, `FHIR.T` or `System.T`."""
        if not _TYPE_NAME.fullmatch(text):
            raise NotNative(f"type specifier {text!r} is outside the native subset")
        namespace, _, name = text.rpartition(".")
        known: dict[tuple[str, str], bool] = {}

        def test(item: Any) -> bool:
            kind = _type_of(item)
            answer = known.get(kind)
            if answer is None:
                answer = self.conforms(kind, namespace, name)
                if len(known) < _CACHE_LIMIT:
                    known[kind] = answer
            return answer

        return test

    def conforms(self, kind: tuple[str, str], namespace: str, name: str) -> bool:
        """Whether a value of type `kind` (namespace, name) is a `namespace.name`: FHIR types by the
        model's hierarchy, System types by name."""
        own_namespace, own_name = kind
        if namespace and namespace != own_namespace:
            return False
        if own_namespace == "System":
            return own_name == name
        seen: set[str] = set()
        current: str | None = own_name
        while current and current not in seen:
            if current == name:
                return True
            seen.add(current)
            current = self.parent_type.get(current) or self.path_type.get(current)
        return False


def _equals_literal(operand: _Code, literal: Any, negate: bool) -> _Code:
    """`operand = 'literal'` (or !=), the usual shape, without building the literal's collection."""
    get = _source(operand)
    if get is None:

        def on_focus(focus: list[Any], env: Mapping[str, Any], context: Any) -> list[Any]:
            if not focus:
                return []
            if len(focus) != 1:
                return [negate]
            return [bool(_equatable(focus[0]) == literal) is not negate]

        return _Code(on_focus, boolean=True)
    single = _single(operand)

    def run(focus: list[Any], env: Mapping[str, Any], context: Any) -> list[Any]:
        size, item = single(focus, env, context)
        if not size:
            return []
        if size != 1:
            return [negate]
        return [bool(_equatable(item) == literal) is not negate]

    return _Code(run, boolean=True)


_HANDLERS: Final[dict[str, Handler]] = {
    "TermExpression": _Compiler.term_expression,
    "InvocationExpression": _Compiler.invocation_expression,
    "PolarityExpression": _Compiler.polarity_expression,
    "IndexerExpression": _Compiler.indexer_expression,
    "EqualityExpression": _Compiler.equality_expression,
    "InequalityExpression": _Compiler.inequality_expression,
    "MembershipExpression": _Compiler.membership_expression,
    "UnionExpression": _Compiler.union_expression,
    "AdditiveExpression": _Compiler.additive_expression,
    "TypeExpression": _Compiler.type_expression,
    "AndExpression": _Compiler.logic_expression,
    "OrExpression": _Compiler.logic_expression,
    "XorExpression": _Compiler.logic_expression,
    "ImpliesExpression": _Compiler.logic_expression,
}

_FUNCTIONS: Final[dict[tuple[str, int], FunctionHandler]] = {
    ("exists", 0): _Compiler.exists,
    ("exists", 1): _Compiler.exists,
    ("empty", 0): _Compiler.empty,
    ("count", 0): _Compiler.count,
    ("not", 0): _Compiler.not_,
    ("where", 1): _Compiler.where,
    ("select", 1): _Compiler.select,
    ("iif", 2): _Compiler.iif,
    ("iif", 3): _Compiler.iif,
    ("ofType", 1): _Compiler.of_type,
    ("intersect", 1): _Compiler.intersect,
}


def _type_of(item: Any) -> tuple[str, str]:
    """(namespace, name) of an item: resource items by their model path, computed values by Python type."""
    if type(item) is Node:
        path = item.path
        if not path or not isinstance(path, str):
            raise Defer  # fhirpathpy fails on items it cannot type
        if path.startswith("System."):
            return ("System", path[len("System.") :])
        return ("FHIR", path if "." not in path else "BackboneElement")
    if isinstance(item, bool):
        return ("System", "Boolean")
    if isinstance(item, int):
        return ("System", "Integer")
    if isinstance(item, float | Decimal):
        return ("System", "Decimal")
    if isinstance(item, str):
        return ("System", "String")
    if isinstance(item, Mapping):
        return ("System", "Object")
    raise Defer


def _identifier(node: Mapping[str, Any]) -> str:
    """The name in an Identifier node; delimited (`...`) names are outside the subset."""
    text = str(node.get("text", ""))
    if node.get("type") != "Identifier" or "`" in text or '"' in text:
        raise NotNative(f"identifier {text!r} is outside the native subset")
    return text


def _number(text: str) -> int | Decimal:
    """A number literal as fhirpathpy reads it: an int when integral (1.0 is 1), else a Decimal."""
    value = Decimal(text)
    return int(value) if value == int(value) else value


def _lt(a: Any, b: Any) -> bool:
    return bool(a < b)


def _le(a: Any, b: Any) -> bool:
    return bool(a <= b)


def _gt(a: Any, b: Any) -> bool:
    return bool(a > b)


def _ge(a: Any, b: Any) -> bool:
    return bool(a >= b)


_COMPARISONS: Final[dict[str, Callable[[Any, Any], bool]]] = {"<": _lt, "<=": _le, ">": _gt, ">=": _ge}


def _and(a: bool | None, b: bool | None) -> bool | None:
    if a is False or b is False:
        return False
    return None if a is None or b is None else True


def _or(a: bool | None, b: bool | None) -> bool | None:
    if a is True or b is True:
        return True
    return None if a is None or b is None else False


def _xor(a: bool | None, b: bool | None) -> bool | None:
    return None if a is None or b is None else a != b


def _implies(a: bool | None, b: bool | None) -> bool | None:
    if a is False or b is True:
        return True
    return None if a is None or b is None else False


# FHIRPath's three-valued boolean operators (None: empty), shared with the presence evaluator.
BOOLEAN_OPERATORS: Final[dict[str, Callable[[bool | None, bool | None], bool | None]]] = {
    "and": _and,
    "or": _or,
    "xor": _xor,
    "implies": _implies,
}


def _truth_table(rule: Callable[[bool | None, bool | None], bool | None]) -> dict[tuple[Any, Any], Any]:
    """A three-valued truth table (None is {}) from its rule."""
    values = (True, False, None)
    return {(a, b): rule(a, b) for a in values for b in values}


_LOGIC: Final = {
    "and": _truth_table(_and),
    "or": _truth_table(_or),
    "xor": _truth_table(_xor),
    "implies": _truth_table(_implies),
}
# The left value that decides an operator whatever the right one is.
_DECISIVE: Final[dict[str, bool]] = {"and": False, "or": True, "implies": False}


def compile_native(tree: Mapping[str, Any], model: Mapping[str, Any]) -> Program:
    """Compile fhirpathpy's parse tree of a whole expression; NotNative if it leaves the subset.

    The program takes what a fhirpathpy compiled expression takes (the context, a resource dict or a
    typed node, and the variables) and returns the same list, or raises Defer.
    """
    try:
        (root,) = tree["children"]
        code = _Compiler(model).expression(root, _ROOT)
    except NotNative:
        raise
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise NotNative(f"unexpected parse tree shape: {exc!r}") from None
    run, boolean = code.run, code.boolean

    def program(context: Any, env: Mapping[str, Any]) -> list[Any]:
        if isinstance(context, list):
            focus = [_adapt(c) for c in context]
        else:
            focus = [] if context is None else [_adapt(context)]
        result = run(focus, env, context)
        return result if boolean else _output(result)

    return program


def member_counter(name: str, model: Mapping[str, Any]) -> Callable[[Any], int]:
    """How many items the member `name` yields on one context (what `name.count()` gives there), counted
    exactly as compiled programs navigate (choice elements, `_name` extension objects); NotNative for a
    name outside the subset. Plain dicts and `Node`s are counted directly (this runs on every value an
    invariant applies to); other contexts go through the general navigation."""
    if not _MEMBER.fullmatch(name) or name == "length":
        raise NotNative(f"member {name!r} is outside the native subset")
    step = _Step(name, _Compiler(model).fields)
    lookup = step.lookup
    by_path: dict[Any, Fields] = {}

    def counter(context: Any) -> int:
        kind = type(context)
        if kind is Node:
            data, path = context.data, context.path
            if type(data) is dict and "resourceType" in data:
                path = data["resourceType"]
        elif kind is dict:
            data, path = context, context.get("resourceType")
        else:
            return step.count([_adapt(context)])
        if type(data) is not dict:
            return step.count([context])
        fields = by_path.get(path)
        if fields is None:
            fields = lookup(path, name)
            if len(by_path) < _CACHE_LIMIT:
                by_path[path] = fields
        for key, extension_key, _ in fields:
            value = data.get(key)
            extension = data.get(extension_key)
            if value is not None or extension is not None:
                total = 0
                for part in (value, extension):
                    if type(part) is list:
                        total += len(part)
                    elif part is not None:
                        total += 1
                return total
        return 0

    return counter
