"""The compiled form of a profile: a tree of rule nodes, plus the JSON comparisons its rules are judged by.

`Node` holds the rules on one element (or slice) and the nodes of its constrained children; `Profile` is a
compiled StructureDefinition and `Rule` an enforcement rule. `equal` and `contains` give fixed[x] and
pattern[x] their JSON meaning. Built by the compiler, read by the walker; imports only `fhirpath`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

from gateway.fhir.profiles.fhirpath import Evaluator
from gateway.types import Severity

STRENGTH_SEVERITY: Final[dict[str, Severity]] = {
    "required": "error",
    "extensible": "warning",
    "preferred": "information",
}


class _Nothing:
    """Marks an absent fixed[x]/pattern[x] (None and False are legitimate JSON values)."""


NOTHING: Final = _Nothing()


@dataclass(frozen=True, slots=True)
class Constraint:
    key: str
    severity: Severity
    human: str
    evaluate: Evaluator


@dataclass(frozen=True, slots=True)
class Binding:
    strength: str
    value_set: str
    pairs: frozenset[tuple[str | None, str]]
    codes: frozenset[str]  # the codes alone, for `code` elements whose system the binding implies
    kind: str | None  # "code", "Coding", "CodeableConcept" or None to decide from the JSON shape


@dataclass(eq=False, slots=True)
class Node:
    """The rules on one element (or one slice) of a profile, and the nodes of its constrained children."""

    name: str  # JSON property; for a choice, the name without [x]
    model_path: str | None  # fhirpathpy type path; None under a choice, where it is known only at run time
    slice_name: str | None = None
    min: int = 0
    max: int | None = None  # None: unbounded
    choice: tuple[str, ...] | None = None  # type suffixes in the base (valueQuantity -> "Quantity")
    allowed: frozenset[str] | None = None  # suffixes the profile allows; None: every one
    fixed: Any = NOTHING
    pattern: Any = NOTHING
    binding: Binding | None = None
    targets: frozenset[str] | None = None  # resource types a Reference may point at; None: any
    constraints: list[Constraint] = field(default_factory=list)
    sliced: bool = False
    closed: bool = False
    slices: list[Node] = field(default_factory=list)
    children: list[Node] = field(default_factory=list)

    checks_items: bool = False  # whether any rule looks inside the values (else only the count matters)

    def finish(self) -> None:
        """Precompute `checks_items` for this subtree once the differential is read."""
        for child in (*self.children, *self.slices):
            child.finish()
        self.checks_items = bool(
            self.fixed is not NOTHING
            or self.pattern is not NOTHING
            or self.binding
            or self.targets is not None
            or self.constraints
            or self.slices
            or self.children
        )


@dataclass(frozen=True, slots=True)
class Profile:
    url: str
    name: str
    type: str
    base: str
    root: Node


@dataclass(frozen=True, slots=True)
class Rule:
    profile: str
    when: Evaluator | None


def equal(a: Any, b: Any) -> bool:
    """JSON equality: unlike Python's ==, true is not 1."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(equal(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return (
            isinstance(b, list) and len(a) == len(b) and all(equal(x, y) for x, y in zip(a, b, strict=True))
        )
    return isinstance(a, bool) == isinstance(b, bool) and a == b


def contains(value: Any, pattern: Any) -> bool:
    """pattern[x] semantics: every property of the pattern present with a matching value; each array item
    of the pattern matched by some item of the value."""
    if isinstance(pattern, dict):
        return isinstance(value, dict) and all(
            k in value and contains(value[k], p) for k, p in pattern.items()
        )
    if isinstance(pattern, list):
        return isinstance(value, list) and all(any(contains(v, p) for v in value) for p in pattern)
    return equal(value, pattern)
