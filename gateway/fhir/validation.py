"""Validation on every write: FHIR structure (fhir.resources R4B models), the base R4 rules, then the
gateway's profiles.

R4B's models accept R4 content for the types served here (see STANDARDS.md). They check element names,
cardinality of the base spec, primitive formats and choice types; they do not check code values or
invariants. The base R4 rules (`base_rules`: required bindings, invariants, empty and null elements,
contained resources) add what the specification requires of every resource, and the profiles in
`profiles/` what the gateway requires of its own.
"""

from __future__ import annotations

import importlib
from functools import cache
from typing import Any, Final, Protocol

from pydantic import BaseModel, ValidationError

from gateway.fhir.base_rules import BaseRules
from gateway.fhir.json_types import check_json_types, checked_walk
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
    issues = check_json_types(resource, model_class(resource["resourceType"]), _model_or_none)
    return issues + _model_issues(resource, issues)


# Structural shapes already accepted by the full model; cleared when it grows past this many.
_SHAPE_LIMIT = 20_000


class Validator:
    """Structure and the base R4 rules in one walk, the model where needed, then the gateway's profiles.

    Building the full model costs 0.2-0.5 ms per resource, and feeds send the same shapes over and over.
    So one walk checks every primitive value against its declared FHIR type (cheap, and remembered) and
    applies the base R4 rules (`base_rules`: required bindings by set lookups, invariants, empty and null
    elements, contained resources), and the full model only runs for a (type, shape) it has not accepted
    before: with the values valid, the model's verdict depends on the shape alone. Resources with a
    narrative always get the full model (its XHTML is checked as a whole).

    Every problem is reported: a value of the wrong JSON type does not hide an unknown element elsewhere.
    The profiles run when the structure holds (they assume well-formed input), whatever the base bindings
    and invariants say, so that a profile's own findings are listed too.
    """

    def __init__(self, profiles: ProfileChecker | None = None, base: BaseRules | None = None) -> None:
        self.profiles = profiles
        self.base = base if base is not None else BaseRules.shipped()
        self._accepted_shapes: set[Any] = set()

    def validate(self, resource: dict[str, Any]) -> list[Issue]:
        """Every issue of the resource, errors first (a reader of the OperationOutcome sees them first)."""
        issues, well_formed = self._structure_or_too_deep(resource)
        if well_formed and self.profiles is not None:
            issues += _new_findings(self.profiles.validate(resource), issues)
        return sorted(issues, key=_severity_rank)

    def validate_structure(self, resource: dict[str, Any]) -> list[Issue]:
        """Issues of structure and of the base R4 rules (everything but the profiles)."""
        return self._structure_or_too_deep(resource)[0]

    def _structure_or_too_deep(self, resource: dict[str, Any]) -> tuple[list[Issue], bool]:
        """`_structure`, or one error for content nested deeper than the walks can follow (Python's
        recursion limit; FHIR content is never that deep), which must not become a 500."""
        try:
            return self._structure(resource)
        except RecursionError:
            message = "The resource is nested too deeply to be validated"
            return [Issue("error", "structure", message, (str(resource["resourceType"]),))], False

    def _structure(self, resource: dict[str, Any]) -> tuple[list[Issue], bool]:
        """The issues, and whether the structure holds (no JSON type, value, empty-element or model error)."""
        model = model_class(resource["resourceType"])
        shape, walk = checked_walk(resource, model, _model_or_none, values=True, rules=self.base)
        issues = walk.issues
        if walk.structural:
            issues += _model_issues(_without_unknown_resources(resource, self.base), issues)
            return issues, False
        if "text" in resource:
            shape = None
        if shape is not None and shape in self._accepted_shapes:
            return issues, True
        model_errors = _model_issues(resource, issues)
        issues += model_errors
        if model_errors:
            return issues, False
        if shape is not None:
            if len(self._accepted_shapes) >= _SHAPE_LIMIT:
                self._accepted_shapes.clear()
            self._accepted_shapes.add(shape)
        return issues, True


def _model_issues(resource: dict[str, Any], known: list[Issue]) -> list[Issue]:
    """The R4B model's errors at places no issue in `known` names already."""
    resource_type = resource["resourceType"]
    seen = {e for i in known for e in i.expression}
    try:
        model_class(resource_type).model_validate(resource)
    except ValidationError as exc:
        found = (_issue_from_error(resource_type, err) for err in exc.errors(include_url=False))
        return [issue for issue in found if not seen.intersection(issue.expression)]
    except Exception as exc:  # content the model chokes on is still the client's error, never a 500
        return [
            Issue("error", "structure", f"The resource cannot be read as FHIR R4: {exc!r}", (resource_type,))
        ]
    return []


def _without_unknown_resources(node: Any, base: BaseRules, root: bool = True) -> Any:
    """A copy without the nested resources the walk refused (unknown types), which the model cannot even
    look at; they are reported already."""
    if type(node) is dict:
        if not root and "resourceType" in node:
            rtype = node["resourceType"]
            if base.resource_problem(rtype, _model_or_none(rtype) if isinstance(rtype, str) else None):
                return None
        copied = {k: _without_unknown_resources(v, base, False) for k, v in node.items()}
        return {k: v for k, v in copied.items() if v is not None or node[k] is None}
    if type(node) is list:
        return [c for c in (_without_unknown_resources(v, base, False) for v in node) if c is not None]
    return node


_RANKS: Final = {"fatal": 0, "error": 0, "warning": 1, "information": 2}


def _severity_rank(issue: Issue) -> int:
    return _RANKS.get(issue.severity, 3)


def _new_findings(found: list[Issue], known: list[Issue]) -> list[Issue]:
    """Profile issues, without the code-invalid ones a base binding has already reported at the same place."""
    invalid_codes = {e for i in known if i.code == "code-invalid" for e in i.expression}
    return [i for i in found if not (i.code == "code-invalid" and invalid_codes.intersection(i.expression))]
