"""Validation on every write: FHIR structure (fhir.resources R4B models) and then the gateway's profiles.

R4B's models accept R4 content for the types served here (see STANDARDS.md). They check element names,
cardinality of the base spec, primitive formats and choice types; they do not check code values or
invariants, which is what the profiles in `profiles/` add.
"""

from __future__ import annotations

import importlib
from functools import cache
from typing import Any, Protocol

from pydantic import BaseModel, ValidationError

from gateway.fhir.json_types import check_json_types, checked_shape
from gateway.types import Issue

_MODEL_MODULES = "fhir.resources.R4B"


class ProfileChecker(Protocol):
    def validate(self, resource: dict[str, Any]) -> list[Issue]: ...


@cache
def model_class(resource_type: str) -> type[BaseModel]:
    """The R4B pydantic model for a resource type (imported on first use: the models are large)."""
    module = importlib.import_module(f"{_MODEL_MODULES}.{resource_type.lower()}")
    cls: type[BaseModel] = getattr(module, resource_type)
    return cls


def _location(resource_type: str, loc: tuple[int | str, ...]) -> str:
    path = resource_type
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part == "resource_type":
            path += ".resourceType"
        else:
            path += f".{part}"
    return path


def _issue_from_error(resource_type: str, error: Any) -> Issue:
    kind = error.get("type", "")
    loc = tuple(error.get("loc", ()))
    message = str(error.get("msg", "invalid"))
    if kind == "missing":
        code, message = "required", f"Missing required element '{loc[-1] if loc else resource_type}'"
    elif kind == "extra_forbidden":
        code, message = "structure", f"Unknown element '{loc[-1]}'"
    elif kind.startswith("fhir-validation-wrong-resource-type"):
        code, message = "invalid", message.split(". Make sure", 1)[0].replace("``", "'").replace("\n", " ")
        message = " ".join(message.split())
    else:
        code = "value"
        message = message.removeprefix("Value error, ")
    return Issue("error", code, message, (_location(resource_type, loc),))


def _model_or_none(resource_type: str) -> type[BaseModel] | None:
    try:
        return model_class(resource_type)
    except (ImportError, AttributeError):
        return None


def validate_structure(resource: dict[str, Any]) -> list[Issue]:
    """Issues from the R4B model of `resource['resourceType']` (which the caller has checked is served),
    plus primitives of the wrong JSON type, which the models would coerce."""
    resource_type = resource["resourceType"]
    model = model_class(resource_type)
    issues = check_json_types(resource, model, _model_or_none)
    try:
        model.model_validate(resource)
    except ValidationError as exc:
        seen = {e for i in issues for e in i.expression}
        issues += [
            issue
            for issue in (_issue_from_error(resource_type, err) for err in exc.errors(include_url=False))
            if not seen.intersection(issue.expression)
        ]
    return issues


# Structural shapes already accepted by the full model; cleared when it grows past this many.
_SHAPE_LIMIT = 20_000


class Validator:
    """Structure first; profiles only when the structure holds (they assume well-formed input).

    Building the full model costs 0.2-0.5 ms per resource, and feeds send the same shapes over and over.
    So every primitive value is checked against its declared FHIR type (cheap, and remembered), and the
    full model only runs for a (type, shape) it has not accepted before: with the values valid, the
    model's verdict depends on the shape alone. Resources with a narrative always get the full model
    (its XHTML is checked as a whole).
    """

    def __init__(self, profiles: ProfileChecker | None = None) -> None:
        self.profiles = profiles
        self._accepted_shapes: set[Any] = set()

    def validate(self, resource: dict[str, Any]) -> list[Issue]:
        issues = self.validate_structure(resource)
        if any(i.is_error for i in issues) or self.profiles is None:
            return issues
        return issues + self.profiles.validate(resource)

    def validate_structure(self, resource: dict[str, Any]) -> list[Issue]:
        model = model_class(resource["resourceType"])
        shape, issues = checked_shape(resource, model, _model_or_none, values=True)
        if any(i.is_error for i in issues):
            return issues
        if "text" in resource:
            shape = None
        if shape is not None and shape in self._accepted_shapes:
            return issues
        issues += validate_structure(resource)
        if shape is not None and not any(i.is_error for i in issues):
            if len(self._accepted_shapes) >= _SHAPE_LIMIT:
                self._accepted_shapes.clear()
            self._accepted_shapes.add(shape)
        return issues
