"""A strict walk over a resource's primitives: their JSON types, and their values.

The R4B models coerce like Python does: "yes" passes as a boolean, "13.2" as a decimal, "3" as an integer.
FHIR's JSON format forbids that (booleans and numbers are JSON booleans and numbers, everything else a
string), and a feed that sends strings there has a bug worth reporting. This walk checks exactly that,
using the models' own field tables so it knows every element's type.

It can also validate each primitive value with the very type the model declares for it (a FHIR dateTime,
code, id, ...), remembering values already seen valid. Together with the structural shape of a resource
(`shape_of`), that lets the validator skip rebuilding the full model for shapes it has already accepted:
the model's verdict depends only on the shape and on each value's own validity.
"""

from __future__ import annotations

import datetime
import decimal
import types
import typing
from functools import cache
from typing import Any

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
_SEEN_LIMIT = 200_000
_NUL_MESSAGE = "The value holds a NUL character (U+0000), which FHIR text may not contain"


class _Field(typing.NamedTuple):
    kind: Any  # a primitive kind name, a model class, or "resource"
    repeats: bool
    annotation: Any  # the declared primitive type (with its FHIR constraints), for value checks


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


@cache
def _adapter(annotation: Any) -> TypeAdapter[Any]:
    return TypeAdapter(annotation)


_seen: dict[int, set[Any]] = {}  # id(declared type) -> values already validated


def _value_problem(annotation: Any, value: Any) -> str | None:
    """Why a primitive value is invalid for its declared FHIR type, or None; valid values are remembered."""
    seen = _seen.get(id(annotation))
    if seen is not None and value in seen:
        return None
    try:
        _adapter(annotation).validate_python(value)
    except ValidationError as exc:
        return str(exc.errors(include_url=False)[0].get("msg", "invalid value")).removeprefix("Value error, ")
    if sum(len(s) for s in _seen.values()) > _SEEN_LIMIT:
        _seen.clear()
    _seen.setdefault(id(annotation), set()).add(value)
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
    resource: dict[str, Any], model: type, model_for: Any, *, values: bool = False
) -> tuple[Any, list[Issue]]:
    """One pass over a resource: its shape (see `shape_of`) and the issues `check_json_types` reports."""
    issues: list[Issue] = []
    shape = _walk(resource, model, resource["resourceType"], issues, model_for, values)
    return shape, issues


def _item_path(path: str, key: str, index: int | None) -> str:
    return f"{path}.{key}" + (f"[{index}]" if index is not None else "")


def _check(
    item: Any,
    spec: _Field,
    where: tuple[str, str, int | None],
    issues: list[Issue],
    model_for: Any,
    values: bool,
) -> Any:
    """The shape of one value, checking it on the way."""
    kind = spec.kind
    if type(kind) is str and kind != "resource":
        if item is None:
            return None
        if not _kind_ok(kind, item):
            found = _JSON_NAMES.get(type(item), type(item).__name__)
            issues.append(
                Issue(
                    "error", "value", f"Expected {_EXPECTED[kind]}, got a JSON {found}", (_item_path(*where),)
                )
            )
        elif type(item) is str and "\x00" in item:
            # FHIR strings carry no control characters but tab, CR and LF; PostgreSQL cannot store a NUL in
            # text at all, so this one is refused always, on every backend.
            issues.append(Issue("error", "value", _NUL_MESSAGE, (_item_path(*where),)))
        elif values and spec.annotation is not None:
            problem = _value_problem(spec.annotation, item)
            if problem is not None:
                issues.append(Issue("error", "value", problem, (_item_path(*where),)))
        return _json_type(item)
    if type(item) is dict:
        if kind == "resource":
            rtype = item.get("resourceType")
            inner = model_for(rtype) if isinstance(rtype, str) else None
            if inner is None:
                return shape_of(item)
            return _walk(item, inner, _item_path(*where), issues, model_for, values)
        return _walk(item, kind, _item_path(*where), issues, model_for, values)
    return shape_of(item)


def _walk(
    node: dict[str, Any], model: type, path: str, issues: list[Issue], model_for: Any, values: bool
) -> Any:
    fields = _fields(model)
    shape = []
    for key, value in node.items():
        spec = fields.get(key)
        if spec is None:
            # unknown elements are the model's to report; resourceType's value is part of the shape
            shape.append((key, value if key == "resourceType" else shape_of(value)))
            continue
        if spec.repeats and type(value) is list:
            shape.append(
                (
                    key,
                    (
                        "list",
                        frozenset(
                            _check(v, spec, (path, key, i), issues, model_for, values)
                            for i, v in enumerate(value)
                        ),
                    ),
                )
            )
        else:
            shape.append((key, _check(value, spec, (path, key, None), issues, model_for, values)))
    return frozenset(shape)


def shape_of(node: Any) -> Any:
    """The structure of a JSON value without its primitive values: which keys, nesting and JSON types.

    A contained resource's type is part of its shape; list order and length are not (each item is valid
    or not on its own).
    """
    if isinstance(node, dict):
        return frozenset(
            (key, node[key] if key == "resourceType" else shape_of(value)) for key, value in node.items()
        )
    if isinstance(node, list):
        return ("list", frozenset(shape_of(item) for item in node))
    return _json_type(node)


def repeats(model: type, element: str) -> bool | None:
    """Whether a top-level element of a model repeats (a JSON array); None if there is no such element."""
    spec = _fields(model).get(element)
    return spec.repeats if spec is not None else None
