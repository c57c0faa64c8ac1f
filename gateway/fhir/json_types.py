"""A strict walk over a resource's primitives: their JSON types, and their values; and the one pass in
which the base R4 rules are applied.

The R4B models coerce like Python does: "yes" passes as a boolean, "13.2" as a decimal, "3" as an integer.
FHIR's JSON format forbids that (booleans and numbers are JSON booleans and numbers, everything else a
string), and a feed that sends strings there has a bug worth reporting. This walk checks exactly that,
using the models' own field tables so it knows every element's type.

It can also validate each primitive value with the very type the model declares for it (a FHIR dateTime,
code, id, ...), remembering values already seen valid. Together with the structural shape of a resource
(`shape_of`), that lets the validator skip rebuilding the full model for shapes it has already accepted:
the model's verdict depends only on the shape and on each value's own validity.

Every element must have a value or children (ele-1: no null, no empty object or array), which the models
do not check; the walk does. Given `Rules` (the base R4 rules, `base_rules`), it also checks each value
against the rules of its element as it passes: required bindings, invariants, nested resources.
"""

from __future__ import annotations

import datetime
import decimal
import re
import types
import typing
from functools import cache
from typing import Any, Final

from pydantic import TypeAdapter, ValidationError

from gateway.fhir.jsonio import DecimalLiteral
from gateway.types import Issue

_KINDS: dict[Any, str] = {
    bool: "boolean",
    int: "integer",
    decimal.Decimal: "decimal",
    str: "string",
    datetime.date: "string",
    datetime.datetime: "string",
    datetime.time: "string",
    bytes: "string",
}
_JSON_NAMES = {
    bool: "boolean",
    int: "number",
    float: "number",
    DecimalLiteral: "number",
    str: "string",
    dict: "object",
    list: "array",
}
_EXPECTED = {
    "boolean": "a JSON boolean",
    "integer": "a JSON integer",
    "decimal": "a JSON number",
    "string": "a JSON string",
}
# Primitive values already validated, per declared type; cleared when it grows past this many. A decimal
# is remembered by its value: 7.20 and 7.2 are the same entry, which is right because a FHIR decimal's
# validity never depends on how it was written (every JSON number literal is a valid FHIR decimal).
_SEEN_LIMIT = 50_000  # codes and units repeat, ids and times do not: a larger set held memory, not hits


class _Field(typing.NamedTuple):
    kind: Any  # a primitive kind name, a model class, or "resource"
    repeats: bool
    annotation: Any  # the declared primitive type (with its FHIR constraints), for value checks
    # Added by base rules (see `Rules`); plain tables leave them empty.
    codes: frozenset[str] | None = None  # a code's required binding: the codes allowed
    rule: Any = None  # anything else checked on each value (see `Rules`)
    path: str | None = None  # for a complex kind: the element path whose rules its values follow


class Table(typing.NamedTuple):
    """What the walk needs about one model class: its elements by JSON name, and the rules on its values."""

    fields: dict[str, _Field]
    invariants: tuple[Any, ...] = ()  # rules on each object of this class (see `Rules`)
    path: str | None = None


class Rules(typing.Protocol):
    """Base rules the walk applies besides JSON types (`gateway.fhir.base_rules`).

    The rules in tables (`_Field.rule`, `Table.invariants`) have `check(value, expression, walk, shape)`;
    `shape` is the value's shape for objects (None for primitives), which rules may key results by.
    """

    tables: dict[type, Table]  # the tables made so far, by model class

    def table(self, model: type, path: str) -> Table:
        """The class's elements, with their bindings and rules as elements of `path`."""
        ...

    def resource_problem(self, resource_type: Any, model: type | None) -> str | None:
        """Why a resource of this type (nested in another) cannot be accepted, or None."""
        ...

    def resource_done(self, resource: dict[str, Any], expression: str, walk: Walk, contained: bool) -> None:
        """Rules on a whole resource (contained resources, narrative), once its elements are walked."""
        ...


def _unwrap(annotation: Any) -> tuple[Any, bool, Any]:
    """(base type, repeats, primitive annotation) of a field: strips Optional, List and Annotated."""
    repeats = False
    primitive = None
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            primitive = annotation
            annotation = typing.get_args(annotation)[0]
        elif origin in (typing.Union, types.UnionType):
            annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
        elif origin in (list, typing.List):  # noqa: UP006 (the models use typing.List)
            annotation, repeats = typing.get_args(annotation)[0], True
        else:
            return annotation, repeats, primitive if primitive is not None else annotation


@cache
def _fields(model: type) -> dict[str, _Field]:
    """JSON name -> field description, for one model class."""
    table: dict[str, _Field] = {}
    for field in model.model_fields.values():  # type: ignore[attr-defined]
        base, repeats, primitive = _unwrap(field.annotation)
        if base in _KINDS:
            table[field.alias] = _Field(_KINDS[base], repeats, primitive)
        elif hasattr(base, "get_model_klass"):
            klass = base.get_model_klass()
            kind = "resource" if klass.__name__ in ("Resource", "ResourceType") else klass
            table[field.alias] = _Field(kind, repeats, None)
    return table


def _plain_table(model: type) -> Table:
    """The table of a model class without rules (remembered in `_PLAIN_TABLES`)."""
    table = Table(_fields(model))
    _PLAIN_TABLES[model] = table
    return table


def model_fields(model: type) -> dict[str, _Field]:
    """The JSON elements of a model class (for tables that add rules to them)."""
    return _fields(model)


@cache
def _adapter(annotation: Any) -> TypeAdapter[Any]:
    return TypeAdapter(annotation)


_NUL_MESSAGE = "The value holds a NUL character (U+0000), which FHIR text may not contain"

# R4 defines uri (and url, canonical) as `\S*`; the R4B models accept whitespace in them.
_NO_WHITESPACE: Final = frozenset({"Uri", "Url", "Canonical"})
_WHITESPACE: Final = re.compile(r"\s")


def _forbids_whitespace(annotation: Any) -> bool:
    return any(type(meta).__name__ in _NO_WHITESPACE for meta in typing.get_args(annotation)[1:])


# By id of the declared type (the models' annotations live as long as the process, and each is kept here
# too): hashing an Annotated type hashes all its metadata, which cost more than most checks.
_checkers: dict[int, tuple[Any, TypeAdapter[Any], bool]] = {}  # id -> (the type, its adapter, no whitespace)
_seen: dict[int, set[Any]] = {}  # id(declared type) -> values already validated
_seen_count = 0


def _value_problem(annotation: Any, value: Any) -> str | None:
    """Why a primitive value is invalid for its declared FHIR type, or None; valid values are remembered."""
    global _seen_count
    key = id(annotation)
    seen = _seen.get(key)
    if seen is not None and value in seen:
        return None
    checker = _checkers.get(key)
    if checker is None:
        checker = _checkers[key] = (annotation, _adapter(annotation), _forbids_whitespace(annotation))
    try:
        checker[1].validate_python(value)
    except ValidationError as exc:
        return str(exc.errors(include_url=False)[0].get("msg", "invalid value")).removeprefix("Value error, ")
    if type(value) is str and checker[2] and _WHITESPACE.search(value):
        return "A uri, url or canonical has no whitespace (FHIR R4 uri: \\S*)"
    if _seen_count >= _SEEN_LIMIT:
        _seen.clear()
        _seen_count = 0
        seen = None
    if seen is None:
        seen = _seen[key] = set()
    seen.add(value)
    _seen_count += 1
    return None


def _json_type(value: Any) -> type:
    """The Python type standing for a value's JSON type in shapes: a decimal literal is a float there, so
    content parsed with literals (`jsonio`) and content built in code share accepted shapes."""
    found = type(value)
    return float if found is DecimalLiteral else found


def _kind_ok(kind: str, value: Any) -> bool:
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "decimal":
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, str)


def check_json_types(
    resource: dict[str, Any], model: type, model_for: Any, *, values: bool = False
) -> list[Issue]:
    """Issues for primitives of the wrong JSON type and, with `values`, of invalid value for their FHIR type.

    `model_for(resourceType)` resolves contained resources.
    """
    return checked_shape(resource, model, model_for, values=values)[1]


def checked_shape(
    resource: dict[str, Any], model: type, model_for: Any, *, values: bool = False, rules: Rules | None = None
) -> tuple[Any, list[Issue]]:
    """One pass over a resource: its shape (see `shape_of`) and the issues `check_json_types` reports, plus,
    with `rules`, what base rules say (bindings, invariants, empty and null elements, contained resources).

    Issues of JSON types and values, empty or null elements and unknown nested resource types are
    `Walk.structural` (the content is malformed); bindings and invariants are not.
    """
    shape, walk = checked_walk(resource, model, model_for, values=values, rules=rules)
    return shape, walk.issues


def checked_walk(
    resource: dict[str, Any], model: type, model_for: Any, *, values: bool = False, rules: Rules | None = None
) -> tuple[Any, Walk]:
    """`checked_shape`, returning the finished walk (its issues and whether any is structural)."""
    walk = Walk(resource, model_for, values, rules)
    shape = walk.resource(resource, model, resource["resourceType"], contained=False)
    return shape, walk


ELE_1: Final = "ele-1: All FHIR elements must have a @value or children"


class Walk:
    """One pass over a resource: checks every value against its element and builds the resource's shape.

    `issues` collects what is wrong; `structural` counts the issues that make the content malformed (JSON
    types, primitive values, empty or null elements, unknown resource types), after which the model's
    verdict and the profiles' are unreliable. `env` holds the FHIRPath variables of the
    resource being walked (%resource, %rootResource): contained resources get their own %resource.
    """

    __slots__ = ("env", "issues", "model_for", "root", "rules", "structural", "tables", "values")

    def __init__(self, root: dict[str, Any], model_for: Any, values: bool, rules: Rules | None) -> None:
        self.root = root
        self.model_for = model_for
        self.values = values
        self.rules = rules
        # model class -> Table, shared with the rules (a dict read here saves a call per object)
        self.tables: dict[type, Table] = rules.tables if rules is not None else _PLAIN_TABLES
        self.issues: list[Issue] = []
        self.structural = 0
        self.env: dict[str, Any] = {"resource": root, "rootResource": root}

    def problem(self, code: str, message: str, expression: str, *, structural: bool = False) -> None:
        self.issues.append(Issue("error", code, message, (expression,)))
        if structural:
            self.structural += 1

    def table(self, model: type, path: str | None) -> Table:
        """The table of a model class (at `path`, when rules apply to it)."""
        found = self.tables.get(model)
        if found is not None:
            return found
        rules = self.rules
        if rules is None or path is None:
            return _plain_table(model)
        return rules.table(model, path)

    def resource(self, node: dict[str, Any], model: type, expression: str, *, contained: bool) -> Any:
        """Walk a resource (the root, a contained one or one nested elsewhere, e.g. in a Bundle entry)."""
        rtype = node.get("resourceType")
        env = self.env
        self.env = {"resource": node, "rootResource": env["rootResource"] if contained else node}
        try:
            shape = self.walk(node, self.table(model, rtype if isinstance(rtype, str) else None), expression)
            if self.rules is not None:
                self.rules.resource_done(node, expression, self, contained)
        finally:
            self.env = env
        return shape

    def walk(self, node: dict[str, Any], table: Table, path: str) -> Any:
        """Check the elements of one object; its shape (rules on the whole object run last, with it)."""
        fields = table.fields
        check = self.check
        shape: list[tuple[str, Any]] = []
        append = shape.append
        for key, value in node.items():
            spec = fields.get(key)
            if spec is None:
                # unknown elements are the model's to report; resourceType's value is part of the shape
                typed = key == "resourceType" and isinstance(
                    value, str
                )  # a list there is no type (nor hashable)
                append((key, value if typed else shape_of(value)))
            elif value is None:
                self.problem("invariant", f"{ELE_1} (null is not a value)", f"{path}.{key}", structural=True)
                append((key, None))
            elif spec.repeats and type(value) is list:
                if not value:
                    self.problem(
                        "invariant", f"{ELE_1} (an array is never empty)", f"{path}.{key}", structural=True
                    )
                items: list[Any] = []
                for i, v in enumerate(value):
                    if v is None:
                        self.null_item(node, key, i, spec, path)
                        items.append(None)
                    else:
                        items.append(check(v, spec, path, key, i))
                append((key, ("list", frozenset(items))))
            else:
                append((key, check(value, spec, path, key, None)))
        frozen = frozenset(shape)
        for invariant in table.invariants:
            invariant.check(node, path, self, frozen)
        return frozen

    def null_item(self, node: dict[str, Any], key: str, index: int, spec: _Field, path: str) -> None:
        """A null in an array of primitives stands for a value whose `_key` item (id, extensions) is given
        instead, and a null in a `_key` array for an item with nothing but its value; anywhere else it is
        no value at all."""
        if key.startswith("_"):
            companion = node.get(key[1:])
            if type(companion) is list and index < len(companion) and companion[index] is not None:
                return
        elif type(spec.kind) is str and spec.kind != "resource":
            companion = node.get("_" + key)
            if type(companion) is list and index < len(companion) and companion[index]:
                return
        self.problem("invariant", f"{ELE_1} (null is not a value)", f"{path}.{key}[{index}]", structural=True)

    def check(self, item: Any, spec: _Field, path: str, key: str, index: int | None) -> Any:
        """The shape of one value, checking it on the way."""
        kind, _, annotation, codes, rule, child_path = spec
        if type(kind) is str and kind != "resource":
            if not _kind_ok(kind, item):
                found = _JSON_NAMES.get(type(item), type(item).__name__)
                message = f"Expected {_EXPECTED[kind]}, got a JSON {found}"
                self.problem("value", message, _item_path(path, key, index), structural=True)
            elif type(item) is str and "\x00" in item:
                # FHIR strings carry no control characters but tab, CR and LF; PostgreSQL cannot store a
                # NUL in text at all, so this one is refused always, on every backend.
                self.problem("value", _NUL_MESSAGE, _item_path(path, key, index), structural=True)
            elif self.values and annotation is not None and (problem := _value_problem(annotation, item)):
                self.problem("value", problem, _item_path(path, key, index), structural=True)
            elif codes is not None:
                if item not in codes:
                    rule.check(item, _item_path(path, key, index), self, None)
            elif rule is not None:
                rule.check(item, _item_path(path, key, index), self, None)
            return float if type(item) is DecimalLiteral else type(item)
        if type(item) is not dict:
            return shape_of(item)
        expression = f"{path}.{key}" if index is None else f"{path}.{key}[{index}]"
        if not item or (len(item) == 1 and "id" in item and kind != "resource"):
            self.problem("invariant", f"{ELE_1} (an object needs some content)", expression, structural=True)
            return shape_of(item)
        if kind == "resource":
            return self.nested_resource(item, expression, key == "contained")
        table = self.tables.get(kind) or self.table(kind, child_path)
        shape = self.walk(item, table, expression)
        if rule is not None:
            rule.check(item, expression, self, shape)
        return shape

    def nested_resource(self, item: dict[str, Any], expression: str, contained: bool) -> Any:
        """A resource inside the resource: a contained one, or one in a Bundle entry or a Parameters."""
        rtype = item.get("resourceType")
        inner = self.model_for(rtype) if isinstance(rtype, str) else None
        if self.rules is not None:
            reason = self.rules.resource_problem(rtype, inner)
            if reason is not None:
                self.problem("structure", reason, expression, structural=True)
                return shape_of(item)
        if inner is None:
            return shape_of(item)
        return self.resource(item, inner, expression, contained=contained)


_PLAIN_TABLES: dict[type, Table] = {}


def _item_path(path: str, key: str, index: int | None) -> str:
    return f"{path}.{key}" + (f"[{index}]" if index is not None else "")


def shape_of(node: Any) -> Any:
    """The structure of a JSON value without its primitive values: which keys, nesting and JSON types.

    A contained resource's type is part of its shape; list order and length are not (each item is valid
    or not on its own).
    """
    if isinstance(node, dict):
        # Only a string resourceType is a type; any other value (a list, an object) has a shape like the rest
        # (it is reported as a problem, and must not make the shape unhashable).
        return frozenset(
            (key, value if key == "resourceType" and isinstance(value, str) else shape_of(value))
            for key, value in node.items()
        )
    if isinstance(node, list):
        return ("list", frozenset(shape_of(item) for item in node))
    return _json_type(node)


def repeats(model: type, element: str) -> bool | None:
    """Whether a top-level element of a model repeats (a JSON array); None if there is no such element."""
    spec = _fields(model).get(element)
    return spec.repeats if spec is not None else None
