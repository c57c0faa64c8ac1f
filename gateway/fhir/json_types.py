"""JSON value types of FHIR primitives, checked strictly.

The R4B models coerce like Python does: "yes" passes as a boolean, "13.2" as a decimal, "3" as an integer.
FHIR's JSON format forbids that (booleans and numbers are JSON booleans and numbers, everything else a
string), and a feed that sends strings there has a bug worth reporting. This walk checks exactly that,
using the models' own field tables so it knows every element's type.
"""

from __future__ import annotations

import datetime
import decimal
import types
import typing
from functools import cache
from typing import Any

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
_JSON_NAMES = {bool: "boolean", int: "number", float: "number", str: "string", dict: "object", list: "array"}
_EXPECTED = {
    "boolean": "a JSON boolean",
    "integer": "a JSON integer",
    "decimal": "a JSON number",
    "string": "a JSON string",
}


def _unwrap(annotation: Any) -> tuple[Any, bool]:
    """(base type, repeats) of a field annotation: strips Optional, Annotated and List."""
    repeats = False
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (typing.Union, types.UnionType):
            annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
        elif origin in (list, typing.List):  # noqa: UP006 (the models use typing.List)
            annotation, repeats = typing.get_args(annotation)[0], True
        else:
            return annotation, repeats


@cache
def _fields(model: type) -> dict[str, tuple[Any, bool]]:
    """JSON name -> (primitive kind or model class or "resource", repeats) for one model class."""
    table: dict[str, tuple[Any, bool]] = {}
    for field in model.model_fields.values():  # type: ignore[attr-defined]
        base, repeats = _unwrap(field.annotation)
        if base in _KINDS:
            table[field.alias] = (_KINDS[base], repeats)
        elif hasattr(base, "get_model_klass"):
            klass = base.get_model_klass()
            table[field.alias] = (
                "resource" if klass.__name__ in ("Resource", "ResourceType") else klass,
                repeats,
            )
    return table


def _kind_ok(kind: str, value: Any) -> bool:
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "decimal":
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, str)


def check_json_types(resource: dict[str, Any], model: type, model_for: Any) -> list[Issue]:
    """Issues for primitives of the wrong JSON type; `model_for(type)` resolves contained resources."""
    issues: list[Issue] = []
    _walk(resource, model, resource["resourceType"], issues, model_for)
    return issues


def _walk(node: dict[str, Any], model: type, path: str, issues: list[Issue], model_for: Any) -> None:
    fields = _fields(model)
    for key, value in node.items():
        spec = fields.get(key)
        if spec is None:
            continue  # unknown elements are the model's to report
        kind, repeats = spec
        items = list(enumerate(value)) if repeats and isinstance(value, list) else [(None, value)]
        for index, item in items:
            where = f"{path}.{key}" + (f"[{index}]" if index is not None else "")
            if isinstance(kind, str) and kind != "resource":
                if item is not None and not _kind_ok(kind, item):
                    found = _JSON_NAMES.get(type(item), type(item).__name__)
                    issues.append(
                        Issue("error", "value", f"Expected {_EXPECTED[kind]}, got a JSON {found}", (where,))
                    )
            elif isinstance(item, dict):
                if kind == "resource":
                    rtype = item.get("resourceType")
                    inner = model_for(rtype) if isinstance(rtype, str) else None
                    if inner is not None:
                        _walk(item, inner, where, issues, model_for)
                else:
                    _walk(item, kind, where, issues, model_for)


def repeats(model: type, element: str) -> bool | None:
    """Whether a top-level element of a model repeats (a JSON array); None if there is no such element."""
    spec = _fields(model).get(element)
    return spec[1] if spec is not None else None
